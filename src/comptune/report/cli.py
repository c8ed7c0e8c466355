"""`comptune report RESULTS_DIR`: figures, tables and summary.md from a finished sweep."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._device import add_device_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="plots (PNG/SVG), tables and summary.md from a sweep's results directory")
    p.add_argument("results_dir", type=Path, help="the --out directory of `comptune sweep` / `comptune demo`")
    p.add_argument("--out", type=Path, help="where to write the report (default: RESULTS_DIR/report)")
    p.add_argument("--no-rollouts", action="store_true", help="skip the base-vs-edited continuations (no model needed)")
    p.add_argument("--robustness", type=int, nargs="+", metavar="BUDGET",
                   help="attack each method's chosen edit at these budgets (relearning, quantisation, dose; see `comptune attack`); "
                   "results are cached in RESULTS_DIR/robustness and reused")
    p.add_argument("--robustness-config", type=Path, help="YAML of AttackConfig fields for --robustness (e.g. configs/robustness.yaml)")
    add_device_argument(p)
    p.set_defaults(func=_report)


def _report(args) -> int:
    from .._device import resolve_device
    from .summary import make_report

    device = resolve_device(args.device)  # before anything is read or loaded
    overrides = None
    if args.robustness_config:
        from ..config import read_config_file

        overrides = read_config_file(args.robustness_config)
    path = make_report(args.results_dir, args.out, rollouts=not args.no_rollouts, robustness_budgets=args.robustness,
                       robustness_config=overrides, device=device)
    print(f"summary: {path}")
    return 0
