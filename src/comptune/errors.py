"""The errors comptune raises on purpose: bad input, a config or file that cannot work, a run that
diverged. Each message names the problem and the fix. The CLI prints these as one line (exit 2);
anything else is a bug and keeps its traceback.

They subclass the built-in they replace, so `except ValueError` (or KeyError, FloatingPointError)
in user code keeps working.
"""


class UserError(ValueError):
    """Input, config or files that cannot work; the message says what to change."""


class UserKeyError(UserError, KeyError):
    """A name (module, dataset, key) that does not exist where it was looked for."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NonFiniteError(UserError, FloatingPointError):
    """A loss became NaN/inf: training stopped and kept its last good state; the message says where."""
