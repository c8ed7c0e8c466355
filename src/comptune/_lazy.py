"""Package namespaces that import their modules on first use, so that `comptune --help` and an
argument error never pay for importing torch, transformers and peft (PEP 562 `__getattr__`)."""

from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, exports: dict[str, str]):
    """(`__getattr__`, `__dir__`) for package `package` whose public names live in the given
    modules ({name: relative module}); a name's module is imported when the name is first used."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
