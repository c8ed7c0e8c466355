"""`comptune demo`: the case study end to end on the bundled model and decomposition; above the
study (the sweep), the report and the browser, which it runs one after the other.

The presets are the YAML files `configs/demo.yaml` (a few budgets, 2 seeds, 9–12.5 minutes on two
cores) and `configs/full.yaml` (the write-up's protocol); `comptune demo --full` is exactly
`comptune sweep configs/full.yaml` followed by `comptune report` and `comptune browse` with the
report's edits.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from .study.config import SweepConfig


def configs_dir() -> Path:
    """`configs/` at the root of the source tree (beside `src/`)."""
    return Path(__file__).resolve().parents[2] / "configs"


def preset_config(full: bool = False) -> SweepConfig:
    path = configs_dir() / ("full.yaml" if full else "demo.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"preset {path} is missing: the demo runs from a source checkout of comptune (configs/ beside src/)")
    return SweepConfig.from_file(path)


def run_demo(full: bool = False, out_dir: str | Path | None = None, workers: int = 1, device=None, log=print) -> Path:
    """Selection → sweep → report on the bundled model; returns the report's summary.md."""
    from .report import make_report
    from .study.sweep import run_sweep

    config = preset_config(full)
    out = Path(out_dir) if out_dir is not None else Path("results") / config.name
    for what, path in (("model", config.model_dir()), ("decomposition", config.decomposition_dir())):
        if path is not None and not path.is_dir():
            raise FileNotFoundError(f"the bundled {what} is missing at {path}; build it (`comptune pretrain` / `comptune decompose`) or restore data/")
    log(f"comptune demo{' --full' if full else ''}: {len(config.methods)} methods ({', '.join(m.name for m in config.methods)}), "
        f"budgets {config.budgets}, seeds {config.seeds}, {config.n_runs()} runs on {workers} worker{'s' * (workers > 1)} → {out}; "
        f"after the selection, each finished run prints the remaining time")
    t0 = time.perf_counter()
    run_sweep(config, out, workers=workers, device=device, log=log)
    summary = make_report(out, log=log)
    site = build_demo_site(out, config, device=device, log=log)
    log(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min; summary: {summary}")
    if site is not None:
        log(f"look at the decomposition's subcomponents and the demo's edits: open {site} in a browser")
    return summary


def build_demo_site(out: Path, config: SweepConfig, device=None, log=print) -> Path | None:
    """The component browser for the demo's decomposition, with a page for each method's edit in
    the report (its chosen run at the largest budget); None for a study without a decomposition."""
    from .browse.site import BrowseConfig, build_site
    from .report.summary import load_results, rollout_picks

    if config.decomposition_dir() is None:
        return None
    edits = [str(out / str(r.edit)) for r in rollout_picks(load_results(out)).values()]
    browse = BrowseConfig(model=str(config.model_dir()), decomposition=str(config.decomposition_dir()), blocks=16, edits=edits,
                          edit_blocks=8, rollouts=config.rollout, title="comptune demo: the bundled decomposition and the demo's edits")
    return build_site(browse, out / "browse", device=device, log=log)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the case study on the bundled model: selection, a small sweep, the report and a browser site (9–12.5 min on 2 cores)")
    p.add_argument("--full", action="store_true",
                   help="the whole study instead (configs/full.yaml: budgets 2..2048, 9 seeds, the write-up's lr/alpha grid, "
                   "patience 300 / ceiling 3000: 3240 runs, days on 2 cores; resumable)")
    p.add_argument("--out", type=Path, help="results directory (default: results/demo or results/full); re-running resumes it")
    p.add_argument("--workers", type=int, default=_cores(),
                   help=f"runs at a time, each in its own process with one torch thread; default: the cores this process may use ({_cores()} here)")
    p.add_argument("--device", default=None, help="where the runs train (default: cpu)")
    p.set_defaults(func=_demo, kept_on_interrupt="every finished run is kept in its results folder's runs.jsonl")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _demo(args) -> int:
    from ._device import resolve_device

    run_demo(full=args.full, out_dir=args.out, workers=args.workers, device=resolve_device(args.device) if args.device else None)
    return 0
