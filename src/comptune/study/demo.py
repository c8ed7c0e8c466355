"""`comptune demo`: the case study end to end on the bundled model and decomposition.

The presets are the YAML files `configs/demo.yaml` (a few budgets, 2 seeds, ~10 minutes on two
cores) and `configs/full.yaml` (the write-up's protocol); `comptune demo --full` is exactly
`comptune sweep configs/full.yaml` followed by `comptune report`.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import SweepConfig


def configs_dir() -> Path:
    """`configs/` at the root of the source tree (beside `src/`)."""
    return Path(__file__).resolve().parents[3] / "configs"


def preset_config(full: bool = False) -> SweepConfig:
    path = configs_dir() / ("full.yaml" if full else "demo.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"preset {path} is missing: the demo runs from a source checkout of comptune (configs/ beside src/)")
    return SweepConfig.from_file(path)


def run_demo(full: bool = False, out_dir: str | Path | None = None, workers: int = 1, log=print) -> Path:
    """Selection → sweep → report on the bundled model; returns the report's summary.md."""
    from ..report import make_report
    from .sweep import run_sweep

    config = preset_config(full)
    out = Path(out_dir) if out_dir is not None else Path("results") / config.name
    for what, path in (("model", config.model_dir()), ("decomposition", config.decomposition_dir())):
        if path is not None and not path.is_dir():
            raise FileNotFoundError(f"the bundled {what} is missing at {path}; build it (`comptune pretrain` / `comptune decompose`) or restore data/")
    log(f"comptune demo{' --full' if full else ''}: {len(config.methods)} methods ({', '.join(m.name for m in config.methods)}), "
        f"budgets {config.budgets}, seeds {config.seeds}, {config.n_runs()} runs → {out}")
    t0 = time.perf_counter()
    run_sweep(config, out, workers=workers, log=log)
    summary = make_report(out, log=log)
    log(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min; summary: {summary}")
    return summary
