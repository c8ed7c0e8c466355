"""Tuning-step time per method: the study's real step (unedited retain pass, edited forget and
retain passes, capped CE + KL, backward, Adam) on the bundled model and corpus, at the study's
shapes (64-token sequences, 4 forget + 4 retain per step).

Methods, all through `comptune.tuning.tune`:
- scalar_h3: one ComponentScale scalar on `h.3.mlp.down_proj:69` (prefix cache: blocks 0–2 run
  only in the unedited passes); scalar_h3_uncached: the same with every pass through the whole model;
- scalar_h0: one scalar in block 0 (nothing to cache: the worst case);
- ci_gated_h3: the h.3 scalar applied only where its CI > 0.1 (gates computed once per batch);
- neuron_h3: one MLP unit (peft IA3) of h.3; lora_local_h3: peft LoRA r1 on h.3.mlp.down_proj;
- lora_r1: peft LoRA r1 on every linear weight (the reference of the ≤ 0.3× goal).
Beside them, `plain_fwd_bwd`: one forward + CE + backward of the plain model, all weights
trainable, on the same 8 × 64 tokens the step sees (forget and retain together); and
`vocab_floor`: only what every method's step spends after the last block, whatever it edits:
the final norm, the 8192-way unembedding and the softmax of its three passes (unedited retain,
edited forget and retain), the capped CE + KL, and their backward to the last hidden state. No
step can be cheaper than that floor, so its ratio to LoRA r1 bounds what a ≤ 0.3× goal can reach.

    .venv/bin/python benchmarks/bench_tuning.py [--threads 1] [--steps 40] [--rounds 3] [--device cuda]

Methods are timed in interleaved rounds so background load spreads over all of them. Writes
benchmarks/results/tuning_step_time.json (config, seed, versions, per-method ms per step, ratios);
with --device cuda, tuning_step_time_cuda.json (bf16 autocast, as `tune` runs there).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from comptune._io import versions, write_json_atomic
from comptune.corpus.bundle import bundled_decomposition_dir, bundled_model_dir, bundled_texts
from comptune.corpus.loading import token_stream
from comptune.decomposition import Decomposition
from comptune.decomposition.losses import TargetDistribution
from comptune.model.loading import load_model_and_tokenizer
from comptune.tuning import Selection, TuneConfig, next_token_ce, tune, tuning_loss

RESULTS = Path(__file__).parent / "results" / "tuning_step_time.json"
KEY_H3 = "h.3.mlp.down_proj:69"  # the German unit of the bundled model, a subcomponent of its decomposition

METHODS = {
    # name: (method, selection, extra config, cache_prefix)
    "scalar_h3": ("component_scale", Selection(keys=[KEY_H3]), {}, True),
    "scalar_h3_uncached": ("component_scale", Selection(keys=[KEY_H3]), {}, False),
    "scalar_h0": ("component_scale", Selection(keys=["h.0.mlp.down_proj:69"]), {}, True),
    "ci_gated_h3": ("component_scale", Selection(keys=[KEY_H3]), {"ci_threshold": 0.1}, True),
    "neuron_h3": ("neuron_scale", Selection(keys=[KEY_H3]), {}, True),
    "lora_local_h3": ("lora_local", Selection(keys=[KEY_H3]), {}, True),
    "lora_r1": ("lora", Selection(), {"lora_rank": 1}, True),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ms_per_step(name: str, base, decomposition, forget, retain, steps: int, seed: int) -> float:
    method, selection, extra, cache = METHODS[name]
    config = TuneConfig(method=method, selection=selection, budget=256, lr=0.01, seq_len=64, forget_batch_size=4,
                        retain_batch_size=4, max_steps=steps, patience=10**6, seed=seed, **extra)
    _, result = tune(config, copy.deepcopy(base), forget, retain, decomposition, cache_prefix=cache)
    return 1e3 * result.wall_time_s / result.steps


def plain_ms(base, forget, retain, steps: int) -> float:
    model = copy.deepcopy(base)
    for p in model.parameters():
        p.requires_grad_(True)
    device = next(model.parameters()).device
    ids = torch.cat([forget[: 4 * 64].view(4, 64), retain[: 4 * 64].view(4, 64)]).to(device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(input_ids=ids).logits
        next_token_ce(logits, ids).backward()
    _sync(device)
    return 1e3 * (time.perf_counter() - t0) / steps


def vocab_floor_ms(base, forget, retain, steps: int) -> float:
    norm, head = base.ln_f, base.get_output_embeddings()
    device = head.weight.device
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = {k: torch.randn(4, 64, head.weight.shape[1], generator=gen).to(device) for k in ("orig", "forget", "retain")}
    labels = forget[: 4 * 64].view(4, 64).to(device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.no_grad():
            orig = TargetDistribution.of(head(norm(hidden["orig"])))
        h_forget, h_retain = hidden["forget"].clone().requires_grad_(True), hidden["retain"].clone().requires_grad_(True)
        terms = tuning_loss(head(norm(h_forget)), labels, head(norm(h_retain)), orig, lambda_retain=1.0)
        terms.total.backward()
    _sync(device)
    return 1e3 * (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40, help="steps per timed run (the first step's setup is included)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="default: results/tuning_step_time[_cuda].json")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast there, as tune does)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.out = args.out or (RESULTS if device.type == "cpu" else RESULTS.with_name(f"tuning_step_time_{device.type}.json"))

    base, tokenizer = load_model_and_tokenizer(bundled_model_dir(), device=device)
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    decomposition = Decomposition.load(bundled_decomposition_dir(), copy.deepcopy(base))
    forget = token_stream(tokenizer, bundled_texts("train.de"))
    retain = token_stream(tokenizer, bundled_texts("train.en"))

    times: dict[str, list[float]] = {m: [] for m in ["plain_fwd_bwd", "vocab_floor", *METHODS]}
    ms_per_step("scalar_h3", base, decomposition, forget, retain, 3, args.seed)  # warm-up
    for _ in range(args.rounds):
        times["plain_fwd_bwd"].append(plain_ms(base, forget, retain, args.steps))
        times["vocab_floor"].append(vocab_floor_ms(base, forget, retain, args.steps))
        for name in METHODS:
            times[name].append(ms_per_step(name, base, decomposition, forget, retain, args.steps, args.seed))

    rows = {m: {"median_ms_per_step": statistics.median(ts), "runs_ms_per_step": ts} for m, ts in times.items()}
    lora, plain = rows["lora_r1"]["median_ms_per_step"], rows["plain_fwd_bwd"]["median_ms_per_step"]
    for m, r in rows.items():
        r["over_lora_r1"] = r["median_ms_per_step"] / lora
        r["over_plain_fwd_bwd"] = r["median_ms_per_step"] / plain
        print(f"{m:20s} {r['median_ms_per_step']:7.1f} ms/step   ×LoRA r1 {r['over_lora_r1']:.2f}   ×plain fwd+bwd {r['over_plain_fwd_bwd']:.2f}")
    ratio = rows["scalar_h3"]["over_lora_r1"]
    print(f"single scalar in h.3 / LoRA r1 step = {ratio:.2f} (goal ≤ 0.3; the vocabulary work alone is "
          f"{rows['vocab_floor']['over_lora_r1']:.2f}); prefix cache speed-up "
          f"{rows['scalar_h3_uncached']['median_ms_per_step'] / rows['scalar_h3']['median_ms_per_step']:.2f}×")
    write_json_atomic(args.out, {
        "benchmark": "tuning step (unedited retain pass + edited forget and retain passes + backward + Adam), per method",
        "config": vars(args) | {"out": str(args.out),
                                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                                "model": "bundled comptune-tiny (4 layers, d 128, vocab 8192)",
                                "seq_len": 64, "forget_batch_size": 4, "retain_batch_size": 4, "budget": 256},
        "seed": args.seed,
        "results": rows,
        "scalar_h3_over_lora_r1": ratio,
        "goal_scalar_h3_over_lora_r1": 0.3,
        "goal_met": ratio <= 0.3,
        "vocab_floor_over_lora_r1": rows["vocab_floor"]["over_lora_r1"],
        "versions": versions(),
    })


if __name__ == "__main__":
    main()
