"""`comptune sweep CONFIG` and `comptune demo`: the unlearning study from the command line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run (or resume) an unlearning sweep: methods x budgets x seeds x learning rates")
    p.add_argument("config", type=Path, help="sweep YAML (SweepConfig fields; unknown keys are an error), e.g. configs/full.yaml")
    p.add_argument("--out", type=Path, help="results directory (default: results/<config name>); re-running resumes it, and a config with more seeds or budgets grows it")
    _workers_arg(p)
    p.set_defaults(func=_sweep, kept_on_interrupt="every finished run is kept in its --out folder's runs.jsonl")

    p = sub.add_parser("demo", help="the case study on the bundled model: selection, a small sweep, then the report (~10 min)")
    p.add_argument("--full", action="store_true", help="the whole study instead (configs/full.yaml: budgets 2..2048, 9 seeds, the write-up's lr/alpha grid, patience 300 / ceiling 3000: 3240 runs, days on 2 cores; resumable)")
    p.add_argument("--out", type=Path, help="results directory (default: results/demo or results/full); re-running resumes it")
    p.add_argument("--workers", type=int, default=_cores(), help=f"runs at a time, each in its own process with one torch thread; default: the cores this process may use ({_cores()} here)")
    p.set_defaults(func=_demo, kept_on_interrupt="every finished run is kept in its results folder's runs.jsonl")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _workers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=1, help="runs at a time, each in its own process with one torch thread (e.g. the number of cores); default 1")


def _sweep(args) -> int:
    from .config import SweepConfig
    from .sweep import run_sweep

    config = SweepConfig.from_file(args.config)
    out = args.out or Path("results") / config.name
    path = run_sweep(config, out, workers=args.workers)
    print(f"results: {path}\nnext: comptune report {out}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(full=args.full, out_dir=args.out, workers=args.workers)
    return 0
