"""What a sweep costs on this machine: measured step and evaluation times, extrapolated to its runs.

For every method of the sweep config, `tune()` runs `--steps` steps (after warm-up) at the
smallest and the largest budget with the config's trainer settings and the method's resolved
selection; one run's evaluation is timed on the config's evaluation blocks. A step's cost grows
with the number of forget sequences per step, so budgets in between are interpolated linearly in
that number. A run takes between `patience + 1` steps (the earliest plateau) and `max_steps`
steps; the estimate gives both ends, in core-hours (each run uses one thread, as sweep workers do)
and in hours on `--cores` workers.

    .venv/bin/python benchmarks/bench_study_cost.py configs/full.yaml [--steps 10] [--cores 2]

Writes benchmarks/results/study_cost_<config name>.json (config, seed, versions, every timing).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from comptune._io import versions, write_json_atomic
from comptune.evaluation.ce import evaluate_ce
from comptune.study.config import LORA_METHODS, SweepConfig
from comptune.study.selection import resolve_selections
from comptune.study.sweep import load_inputs, tune_config
from comptune.tuning import forget_sequences, tune

RESULTS = Path(__file__).parent / "results"


def forget_sequences_per_step(config: SweepConfig, budget: int) -> int:
    """How many forget sequences a step of that budget feeds (the trainer's own cut of the block)."""
    n = len(forget_sequences(torch.zeros(budget + 1, dtype=torch.long), config.train.seq_len)[0])
    return min(n, config.train.forget_batch_size or n)


def step_seconds(config: SweepConfig, inputs, method, selection: dict | None, budget: int, steps: int, warmup: int) -> float:
    """Mean seconds per step of `tune()` after `warmup` steps, for one method at one budget (fresh model copies)."""
    def train_time(n_steps: int) -> float:
        alpha = method.alphas[0] if method.method in LORA_METHODS else None
        cfg = tune_config(config, method, selection, budget=budget, seed=0, lr=method.lrs[0], alpha=alpha,
                          lambda_retain=config.lambda_retain[0], max_steps=n_steps, patience=n_steps + 1)
        _, result = tune(cfg, copy.deepcopy(inputs.model), inputs.forget_stream, inputs.retain_stream, inputs.decomposition,
                         decomposition_dir=config.decomposition_dir())
        return result.wall_time_s

    # tune() records only the total time: time the warm-up alone and subtract it
    return max(train_time(warmup + steps) - train_time(warmup), 0.0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2, help="workers the wall-time estimate assumes")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as each sweep worker
    config = SweepConfig.from_file(args.config)
    out = args.out or RESULTS / f"study_cost_{config.name}.json"

    inputs = load_inputs(config)
    selections = resolve_selections(config, inputs.model, inputs.tokenizer, inputs.decomposition, log=lambda *_: None)
    lo, hi = min(config.budgets), max(config.budgets)
    n_lo, n_hi = forget_sequences_per_step(config, lo), forget_sequences_per_step(config, hi)

    t0 = time.perf_counter()
    evaluate_ce(inputs.model, inputs.eval_blocks, batch_size=config.eval.batch_size)
    eval_s = time.perf_counter() - t0

    per_method, total_min, total_max = {}, 0.0, 0.0
    for m in config.methods:
        s_lo = step_seconds(config, inputs, m, selections[m.name]["selection"], lo, args.steps, args.warmup)
        s_hi = step_seconds(config, inputs, m, selections[m.name]["selection"], hi, args.steps, args.warmup)
        grid = len(config.seeds) * len(config.lambda_retain) * len(m.lrs) * (len(m.alphas) if m.method in LORA_METHODS else 1)
        runs_min = runs_max = 0.0
        for b in config.budgets:
            n = forget_sequences_per_step(config, b)
            s = s_lo if n_hi == n_lo else s_lo + (s_hi - s_lo) * (n - n_lo) / (n_hi - n_lo)
            runs_min += grid * ((config.train.patience + 1) * s + eval_s)
            runs_max += grid * (config.train.max_steps * s + eval_s)
        per_method[m.name] = {"step_s_smallest_budget": s_lo, "step_s_largest_budget": s_hi, "runs": grid * len(config.budgets),
                              "core_hours_min": runs_min / 3600, "core_hours_max": runs_max / 3600}
        total_min, total_max = total_min + runs_min, total_max + runs_max
        print(f"{m.name:12s} {1e3 * s_lo:6.0f} ms/step at budget {lo}, {1e3 * s_hi:6.0f} at {hi}; "
              f"{grid * len(config.budgets)} runs, {runs_min / 3600:6.1f}–{runs_max / 3600:6.1f} core-hours")
    summary = {
        "runs": config.n_runs(),
        "eval_s_per_run": eval_s,
        "core_hours_min": total_min / 3600, "core_hours_max": total_max / 3600,
        "hours_on_cores_min": total_min / 3600 / args.cores, "hours_on_cores_max": total_max / 3600 / args.cores,
    }
    print(f"{config.name}: {summary['runs']} runs, {summary['core_hours_min']:.1f}–{summary['core_hours_max']:.1f} core-hours, "
          f"{summary['hours_on_cores_min']:.1f}–{summary['hours_on_cores_max']:.1f} h on {args.cores} workers")
    write_json_atomic(out, {
        "benchmark": "sweep cost: measured tune() step time per method at the smallest and largest budget, extrapolated",
        "config": {"sweep": config.model_dump(mode="json"), "args": vars(args) | {"config": str(args.config), "out": str(out)}},
        "seed": 0,
        "per_method": per_method,
        "summary": summary,
        "versions": versions(),
    })


if __name__ == "__main__":
    main()
