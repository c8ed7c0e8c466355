"""Decomposition training speed: steps/s, tokens/s and peak memory of one VPD step, and what dominates it.

One step = clean target forward + CI function, 2 adversary ascent steps (forward + backward to the
sources), the stochastic (subset-routed) and adversarial masked forwards, the main backward, and
both AdamW steps: exactly `VPDTrainer.train_step`, the step `decompose` runs.

Cases:
- bundled: the bundled model's shape (ComptuneLM 4 layers, d 128, d_mlp 512, vocab 8192) with the
  "small" preset (C 256 for q/k/v/o = 2×d, 512 for c_fc/down_proj = 4×d; CI transformer d 256 × 2 blocks).
- paper: the paper's 67M "Pile 4L" shape (d 768, 6 heads, d_mlp 3072, vocab 50277) with the paper's
  C per matrix (q/k 512, v/o 1024, c_fc 3072, down 3584) and the paper's CI transformer
  (d 2048, 8 blocks, 16 heads, d_ff 8192), at a small batch.

Each case runs in its own process so its peak resident memory (ru_maxrss) is its own.

    .venv/bin/python benchmarks/bench_decompose.py [--cases bundled paper] [--threads 1] [--device cuda]

Writes benchmarks/results/decompose_step_time.json (config, seed, versions, per-case figures); with
--device cuda, decompose_step_time_cuda.json (bf16 autocast, as `decompose` runs there; peak
memory is then the GPU's).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "decompose_step_time.json"

CASES = {
    "bundled": {
        "model": dict(vocab_size=8192, n_layer=4, d_model=128, n_head=4, d_mlp=512, n_ctx=256),
        "preset": "small",
        "overrides": {},
        "batch": 8,
        "seq": 128,
        "steps": 10,
    },
    "paper": {
        "model": dict(vocab_size=50277, n_layer=4, d_model=768, n_head=6, d_mlp=3072, n_ctx=512),
        "preset": "paper",
        "overrides": {},
        "batch": 1,
        "seq": 64,
        "steps": 3,
    },
}


def run_case(name: str, threads: int, seed: int, steps: int | None, device: str = "cpu") -> dict:
    from torch.profiler import ProfilerActivity, profile

    from comptune.decomposition.decomposed import Decomposition
    from comptune.decomposition.train import DecomposeConfig, VPDTrainer
    from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM

    torch.set_num_threads(threads)
    device = torch.device(device)
    cuda = device.type == "cuda"
    case = CASES[name]
    steps = steps or case["steps"]
    config = DecomposeConfig.preset(case["preset"], batch_size=case["batch"], steps=1000, seed=seed, **case["overrides"])
    torch.manual_seed(seed)
    model = ComptuneLMForCausalLM(ComptuneLMConfig(**case["model"])).eval().to(device)
    decomposition = Decomposition.create(model, config.patterns, config.ci).to(device)
    trainer = VPDTrainer(decomposition, config, device)
    batch = torch.randint(0, case["model"]["vocab_size"], (case["batch"], case["seq"]), generator=torch.Generator().manual_seed(seed)).to(device)
    n_components = sum(p.numel() for p in decomposition.component_parameters())
    n_ci = sum(p.numel() for p in decomposition.ci_fn.parameters())

    trainer.train_step(batch, 0)  # warm-up: allocations, the adversary's sources
    times = []
    for step in range(1, steps + 1):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        trainer.train_step(batch, step)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)

    # what one step spends its time on: the step's phases, then the heaviest operators (host time)
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])], record_shapes=True) as prof:
        trainer.train_step(batch, steps + 1)
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    phases = {e.key: e.cpu_time_total / 1e3 for e in events if e.key.startswith("vpd/")}
    top_ops = sorted((e for e in events if not e.key.startswith("vpd/")), key=lambda e: -e.self_cpu_time_total)[:8]
    by_shape = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)[:10]

    median = statistics.median(times)
    return {
        "case": name,
        "model": case["model"],
        "config": config.model_dump(mode="json"),
        "batch": case["batch"],
        "seq": case["seq"],
        "tokens_per_step": case["batch"] * case["seq"],
        "component_parameters": n_components,
        "ci_parameters": n_ci,
        "timed_steps": steps,
        "step_s_median": median,
        "step_s_all": times,
        "steps_per_s": 1 / median,
        "tokens_per_s": case["batch"] * case["seq"] / median,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "profile_ms": {"step_total": total_us / 1e3, **phases},
        "top_ops_self_ms": {e.key: e.self_cpu_time_total / 1e3 for e in top_ops},
        "top_ops_by_input_shape_self_ms": [{"op": e.key, "shapes": str(e.input_shapes), "calls": e.count, "ms": e.self_cpu_time_total / 1e3} for e in by_shape],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, help="timed steps per case (default: per case)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="default: results/decompose_step_time[_cuda].json")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast there, as decompose does)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in this process, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one, args.threads, args.seed, args.steps, args.device)))
        return

    from comptune._io import versions, write_json_atomic

    args.out = args.out or (RESULTS if args.device == "cpu" else RESULTS.with_name(f"decompose_step_time_{torch.device(args.device).type}.json"))

    results = {}
    for name in args.cases:
        cmd = [sys.executable, __file__, "--one", name, "--threads", str(args.threads), "--seed", str(args.seed), "--device", args.device]
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"case {name} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[name] = r
        print(f"{name:8s} {r['step_s_median']:.3f} s/step  {r['steps_per_s']:.2f} steps/s  {r['tokens_per_s']:.0f} tokens/s  "
              f"peak RSS {r['peak_rss_gb']:.2f} GB  (components {r['component_parameters']:,}, CI {r['ci_parameters']:,} parameters)")
        for phase, ms in r["profile_ms"].items():
            print(f"    {phase:26s} {ms:9.1f} ms")
        print("    heaviest operators (self time): " + ", ".join(f"{k} {v:.0f} ms" for k, v in list(r["top_ops_self_ms"].items())[:5]))
    write_json_atomic(args.out, {
        "benchmark": "one VPD training step (VPDTrainer.train_step) per case, same batch every step, CPU",
        "config": {"cases": args.cases, "threads": args.threads, "steps": args.steps, "case_definitions": {k: CASES[k] for k in args.cases}},
        "seed": args.seed,
        "machine": {"cpu_count": __import__("os").cpu_count(), "torch_threads": args.threads},
        "results": results,
        "versions": versions(),
    })
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
