"""Training-step time: single-scalar ComponentScale vs rank-1 LoRA (peft) vs the plain model.

One step = forward + next-token CE + backward + Adam step, on the same batch for every method, on a
4-layer d=128 vocab-8192 ComptuneLM (the bundled model's shape). The plain model trains all its
weights (full fine-tuning). Scalars sit on rank-1 subcomponents of random components with the
paper's C for v/o (1024), since only the shapes matter for the cost.

    .venv/bin/python benchmarks/bench_tuning.py [--threads 1] [--steps 30]

Writes benchmarks/results/tuning_step_time.json (config, seed, versions, per-method timings).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from comptune._io import versions, write_json_atomic
from comptune.model.modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM
from comptune.tuning import Components, apply_component_scale, linear_module_paths, next_token_ce

RESULTS = Path(__file__).parent / "results" / "tuning_step_time.json"


def make_model(seed: int) -> ComptuneLMForCausalLM:
    torch.manual_seed(seed)
    return ComptuneLMForCausalLM(ComptuneLMConfig(vocab_size=8192, n_layer=4, d_model=128, n_head=4, d_mlp=512, n_ctx=256)).eval()


def random_decomposition(model, seed: int) -> dict[str, Components]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for path in linear_module_paths(model):
        lin = model.get_submodule(path)
        C = 1024  # as the paper's v/o matrices; only the selected columns enter the adapter
        out[path] = Components(torch.randn(lin.in_features, C, generator=g), torch.randn(C, lin.out_features, generator=g))
    return out


def build(method: str, seed: int):
    """(module to call, trainable parameters) for one method on a fresh model."""
    from peft import LoraConfig, get_peft_model

    model = make_model(seed)
    if method == "plain":
        return model, list(model.parameters())
    if method == "lora_r1":
        peft_model = get_peft_model(model, LoraConfig(r=1, lora_alpha=16, target_modules=linear_module_paths(model), lora_dropout=0.0))
        return peft_model, [p for p in peft_model.parameters() if p.requires_grad]
    comps = random_decomposition(model, seed)
    keys = {
        "scalar_h3_v": ["h.3.attn.v_proj:513"],  # the study's position: last layer
        "scalar_h0_v": ["h.0.attn.v_proj:513"],  # worst case: backward through the whole network
        "top16": [f"{p}:{i}" for p, i in zip(["h.0.attn.o_proj", "h.3.mlp.down_proj", "h.3.attn.o_proj", "h.3.mlp.c_fc"] * 4, range(16))],
    }[method]
    wrapped = apply_component_scale(model, comps, keys)
    return wrapped, wrapped.scale_parameters()


def time_steps(net, params, ids: torch.Tensor, steps: int, warmup: int) -> list[float]:
    opt = torch.optim.Adam(params, lr=1e-4)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = next_token_ce(net(input_ids=ids).logits, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="methods are timed in interleaved rounds to spread background load")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ids = torch.randint(0, 8192, (args.batch, args.seq), generator=torch.Generator().manual_seed(args.seed))
    methods = ["plain", "lora_r1", "scalar_h3_v", "scalar_h0_v", "top16"]
    built = {m: build(m, args.seed) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.rounds):
        for m in methods:
            times[m] += time_steps(*built[m], ids, args.steps, args.warmup)

    rows = {}
    for m, ts in times.items():
        rows[m] = {
            "median_ms": 1e3 * statistics.median(ts),
            "mean_ms": 1e3 * statistics.fmean(ts),
            "p10_ms": 1e3 * statistics.quantiles(ts, n=10)[0],
            "p90_ms": 1e3 * statistics.quantiles(ts, n=10)[-1],
            "n_steps": len(ts),
            "trainable_parameters": sum(p.numel() for p in built[m][1]),
        }
        print(f"{m:12s} median {rows[m]['median_ms']:7.1f} ms  p10 {rows[m]['p10_ms']:7.1f}  p90 {rows[m]['p90_ms']:7.1f}  params {rows[m]['trainable_parameters']}")
    ratio = rows["scalar_h3_v"]["median_ms"] / rows["lora_r1"]["median_ms"]
    ratio_h0 = rows["scalar_h0_v"]["median_ms"] / rows["lora_r1"]["median_ms"]
    print(f"single scalar (h.3) / LoRA r1 = {ratio:.2f}; single scalar (h.0) / LoRA r1 = {ratio_h0:.2f}")
    write_json_atomic(args.out, {
        "benchmark": "training step (forward + CE + backward + Adam) per method, same batch",
        "config": vars(args) | {"out": str(args.out), "model": "ComptuneLM n_layer=4 d_model=128 n_head=4 d_mlp=512 vocab=8192"},
        "seed": args.seed,
        "results": rows,
        "scalar_h3_over_lora_r1": ratio,
        "scalar_h0_over_lora_r1": ratio_h0,
        "scalar_not_slower_than_lora": ratio <= 1.0 and ratio_h0 <= 1.0,
        "versions": versions(),
    })


if __name__ == "__main__":
    main()
