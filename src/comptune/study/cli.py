"""`comptune sweep CONFIG`: the unlearning study from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run (or resume) an unlearning sweep: methods x budgets x seeds x learning rates")
    p.add_argument("config", type=Path, help="sweep YAML (SweepConfig fields; unknown keys are an error), e.g. configs/full.yaml")
    p.add_argument("--out", type=Path,
        help="results directory (default: results/<config name>); re-running resumes it, and a config with more seeds or budgets grows it")
    p.add_argument("--workers", type=int, default=1, help="runs at a time, each in its own process with one torch thread (e.g. the number of cores); default 1")
    p.add_argument("--ray", nargs="?", const=True, default=False, metavar="ADDRESS",
                   help="run each run as a Ray task: on a local Ray cluster, or the one at ADDRESS (host:port); "
                   "CPUs/GPUs per run from the config's `resources`; needs pip install 'comptune[ray]'")
    p.add_argument("--device", default=None, help="where local runs train (default: cpu; runs with --workers share it)")
    p.set_defaults(func=_sweep, kept_on_interrupt="every finished run is kept in its --out folder's runs.jsonl")


def _sweep(args) -> int:
    from .._device import resolve_device
    from .config import SweepConfig
    from .sweep import run_sweep

    device = resolve_device(args.device) if args.device else None  # before anything is read or loaded
    config = SweepConfig.from_file(args.config)
    out = args.out or Path("results") / config.name
    path = run_sweep(config, out, workers=args.workers, ray=args.ray, device=device)
    print(f"results: {path}\nnext: comptune report {out}")
    return 0
