"""`comptune` command line: a thin layer over the Python API; each stage registers its commands."""

from __future__ import annotations

import argparse
import importlib
import shlex
import signal
import sys

# Each module has `register(subparsers)` adding its sub-commands with `set_defaults(func=...)`.
STAGE_CLIS = [
    "comptune.corpus.cli",
    "comptune.model.cli",
    "comptune.evaluation.cli",
    "comptune.decomposition.cli",
    "comptune.inspection.cli",
    "comptune.tuning.cli",
    "comptune.study.cli",
    "comptune.report.cli",
    "comptune.browse.cli",
    "comptune.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comptune",
        description="Edit language models in their parameter-component basis: decompose (VPD), "
        "inspect subcomponents, tune scalar prefactors, evaluate against LoRA baselines.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in STAGE_CLIS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    from pydantic import ValidationError

    from .config import describe_validation_error
    from .errors import UserError

    # SIGTERM stops a command the way Ctrl-C does (loops with checkpoints handle both themselves)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        # imported only once a command runs: help and argument errors come without torch/transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Loading weights" bar per model load drowns our own progress
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        kept = getattr(args, "kept_on_interrupt", None)
        given = list(sys.argv[1:] if argv is None else argv)
        again = shlex.join(["comptune", *given, *(a for a in getattr(args, "resume_args", []) if a not in given)])
        note = f"{kept.format(**vars(args))}; resume with: {again}" if kept else f"nothing was written; run it again with: {again}"
        print(f"comptune {args.command}: interrupted; {note}", file=sys.stderr)
        return 130
    except ValidationError as e:
        print(f"comptune {args.command}: error: {describe_validation_error(e)}", file=sys.stderr)
        return 2
    except (UserError, FileNotFoundError) as e:
        # errors raised on purpose (comptune.errors) and missing files: one clear line, no traceback;
        # anything else is a bug and keeps its traceback
        print(f"comptune {args.command}: error: {e}", file=sys.stderr)
        return 2


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
