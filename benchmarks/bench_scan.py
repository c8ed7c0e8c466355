"""Dose-scan throughput: seconds per scanned (unit, scale) point, prefix-cached fast path vs the plain
route (wrap the model with `apply_component_scale`, set the scale, `evaluate_ce` both datasets).

Model: the bundled model's shape (4 layers, d 128, d_mlp 512, vocab 8192), random weights; basis: the
neuron basis of `h.0` and `h.3` down projections (a layer with nothing and one with three frozen
blocks before it); data: two random datasets of `--blocks` blocks × 128 tokens. The two routes are
alternated round by round in one process; each round scans the same 8 points of one module. The
ratio of medians is reported per module, with the load average (the machine may be shared).

    .venv/bin/python benchmarks/bench_scan.py [--threads 1] [--blocks 8] [--rounds 3]

Writes benchmarks/results/scan_throughput.json (config, seed, versions, figures).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import torch

from comptune._io import versions, write_json_atomic
from comptune.decomposition.bases import neuron_components
from comptune.evaluation import evaluate_ce
from comptune.inspection.scan import DoseScanner
from comptune.model import ComptuneLMConfig, ComptuneLMForCausalLM
from comptune.tuning import ComponentScaleConfig, apply_component_scale

RESULTS = Path(__file__).parent / "results" / "scan_throughput.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=8, help="blocks per dataset")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=8192, n_layer=4, d_model=128, n_head=4, d_mlp=512, n_ctx=256)).eval()
    g = torch.Generator().manual_seed(args.seed)
    data = {n: torch.randint(0, 8192, (args.blocks, 128), generator=g) for n in ("target", "reference")}
    paths = ["h.0.mlp.down_proj", "h.3.mlp.down_proj"]
    basis = neuron_components(model, paths)
    load_start = os.getloadavg()[0]
    results = {}
    for path in paths:
        points = [(f"{path}:{i}", -4.0) for i in range(8)]
        scanner = DoseScanner(model, basis, data, batch_size=8)
        scanner.ce_at(points)  # warm-up; fills the prefix cache, as the first grid level of a scan does
        fast, plain = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            scanner.ce_at(points)
            fast.append((time.perf_counter() - t) / len(points))
            t = time.perf_counter()
            for key, s in points:
                edited = apply_component_scale(copy.deepcopy(model), basis, ComponentScaleConfig(keys=[key]))
                edited.set_scales({key: s})
                evaluate_ce(edited.model, data, batch_size=8)
            plain.append((time.perf_counter() - t) / len(points))
        results[path] = {"fast_s_per_point": statistics.median(fast), "plain_s_per_point": statistics.median(plain),
                         "speedup": statistics.median(plain) / statistics.median(fast), "fast_rounds": fast, "plain_rounds": plain}
        print(f"{path}: fast {results[path]['fast_s_per_point']:.3f} s/point, plain {results[path]['plain_s_per_point']:.3f} s/point, "
              f"{results[path]['speedup']:.2f}× faster")
    write_json_atomic(args.out, {
        "benchmark": "dose scan: seconds per (unit, scale) point on two datasets, prefix-cached fast path vs apply_component_scale + evaluate_ce",
        "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "points_per_round": 8, "block_len": 128,
                   "model": "ComptuneLM n_layer=4 d_model=128 n_head=4 d_mlp=512 vocab=8192 (random weights)"},
        "seed": args.seed, "cpu_count": os.cpu_count(), "load_average_1m": {"start": load_start, "end": os.getloadavg()[0]},
        "results": results, "versions": versions(),
    })
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
