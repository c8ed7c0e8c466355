"""Evaluation throughput of `evaluate_ce`: forward tokens per second by batch size.

Model: a 4-layer d=128 vocab-8192 ComptuneLM (the bundled model's shape), random weights; data:
random token blocks of length 256. Each batch size evaluates the same blocks `rounds` times after
one warm-up pass; the median round is reported. The machine may be shared (a training job):
the load average at start and end is recorded beside the numbers.

    .venv/bin/python benchmarks/bench_eval.py [--threads 1 2] [--blocks 64] [--rounds 3]

Writes benchmarks/results/eval_throughput.json (config, seed, versions, throughput per thread count and batch size).
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch

from comptune._io import versions, write_json_atomic
from comptune.evaluation import evaluate_ce
from comptune.model import ComptuneLMConfig, ComptuneLMForCausalLM

RESULTS = Path(__file__).parent / "results" / "eval_throughput.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to measure")
    parser.add_argument("--blocks", type=int, default=64, help="blocks evaluated per round")
    parser.add_argument("--block-len", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    cfg = ComptuneLMConfig(vocab_size=8192, n_layer=4, d_model=128, n_head=4, d_mlp=512, n_ctx=args.block_len)
    model = ComptuneLMForCausalLM(cfg).eval()
    blocks = torch.randint(0, cfg.vocab_size, (args.blocks, args.block_len), generator=torch.Generator().manual_seed(args.seed))

    load_start = os.getloadavg()
    results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch_size in args.batch_sizes:
            evaluate_ce(model, {"random": blocks[:batch_size]}, batch_size=batch_size)  # warm-up
            rates = [evaluate_ce(model, {"random": blocks}, batch_size=batch_size).tokens_per_s for _ in range(args.rounds)]
            results[f"threads={threads} batch={batch_size}"] = {
                "threads": threads, "batch_size": batch_size,
                "median_tokens_per_s": statistics.median(rates), "rounds_tokens_per_s": rates,
            }
            print(f"threads {threads} batch {batch_size:>3}: {statistics.median(rates):,.0f} tokens/s "
                  f"(rounds: {', '.join(f'{r:,.0f}' for r in rates)})")

    write_json_atomic(args.out, {
        "benchmark": "evaluate_ce throughput (forward tokens/s, no grad) by batch size",
        "config": {**vars(args), "model": f"ComptuneLM n_layer={cfg.n_layer} d_model={cfg.d_model} n_head={cfg.n_head} "
                                         f"d_mlp={cfg.d_mlp} vocab={cfg.vocab_size}"},
        "seed": args.seed,
        "load_average_1m": {"start": load_start[0], "end": os.getloadavg()[0]},
        "cpu_count": os.cpu_count(),
        "results": results,
        "versions": versions(),
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
