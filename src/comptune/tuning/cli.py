"""`comptune tune`: train one edit on the unlearning objective and save it with its result."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

from .._device import add_device_argument
from ..errors import UserError
from .config import Method


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="train one edit (component scalars, SVD/neuron scalars, LoRA) to unlearn the forget text while keeping the retain text",
        description="Train one edit with loss −min(CE_forget, ln|V|) + λ·KL(orig ‖ edited) on retain text (+ l1·Σ|s − 1|) "
        "until the EMA of the loss plateaus. Writes OUT/edit/ (the adapter), optionally OUT/edit_lora/ (the exact PEFT "
        "LoRA of a scalar edit) and, last, OUT/tune_result.json (config, seed, versions, steps, wall time, final scalars).",
    )
    p.add_argument("--config", type=Path, help="YAML file of TuneConfig fields; the flags below override it")
    p.add_argument("--method", choices=get_args(Method))
    p.add_argument("--keys", nargs="+", help="what to scale, '<module path>:<index>' (e.g. h.3.attn.v_proj:513)")
    p.add_argument("--modules", nargs="+", help="scale every index of these modules instead (use with --l1)")
    p.add_argument("--budget", type=int, help="number of forget tokens to train on (the study: 2 … 2048)")
    p.add_argument("--seed", type=int, help="picks the forget block, retain batches and LoRA init")
    p.add_argument("--lr", type=float)
    p.add_argument("--lambda-retain", type=float, dest="lambda_retain")
    p.add_argument("--l1", type=float, help="coefficient of Σ|s − 1| (scalar methods)")
    p.add_argument("--lora-rank", type=int, dest="lora_rank")
    p.add_argument("--lora-alpha", type=float, dest="lora_alpha")
    p.add_argument("--ci-threshold", type=float, dest="ci_threshold", help="CI-gated scaling: scale only where CI exceeds this")
    p.add_argument("--max-steps", type=int, dest="max_steps")
    p.add_argument("--patience", type=int)
    p.add_argument("--seq-len", type=int, dest="seq_len", help="tokens per forget sequence and retain window (≤ the model's context)")
    p.add_argument("--model", type=Path, default=None, help="target model folder (default: the bundled model)")
    p.add_argument("--decomposition", type=Path, default=None, help="decomposition folder (default: the bundled one); used by component_scale")
    p.add_argument("--forget", default="forget.de", help="bundled dataset name or text/JSONL path of the text to unlearn")
    p.add_argument("--retain", default="retain.en", help="bundled dataset name or text/JSONL path of the text to keep")
    p.add_argument("--out", type=Path, required=True, help="output folder (must not hold a finished run)")
    p.add_argument("--export-lora", action="store_true", help="also write a scalar edit as an exact PEFT LoRA to OUT/edit_lora")
    p.add_argument("--no-progress", action="store_true")
    add_device_argument(p)
    p.set_defaults(func=_tune)

    a = sub.add_parser("adapter", help="merge a saved component-scale edit into a plain model, or export it as an exact PEFT LoRA")
    asub = a.add_subparsers(dest="adapter_command", metavar="ACTION", required=True)
    for name, helptext in (("merge", "write the plain model with W' = W + Σ(s−1)u vᵀ (save_pretrained; loads in transformers without comptune)"),
                           ("export-lora", "write an exact PEFT LoRA (rank = scaled subcomponents per module) for PeftModel.from_pretrained")):
        q = asub.add_parser(name, help=helptext)
        q.add_argument("adapter", type=Path, help="adapter folder (OUT/edit of `comptune tune`, or a sweep's saved edit)")
        q.add_argument("--model", type=Path, default=None, help="the model the adapter was trained on (default: the bundled model)")
        q.add_argument("--out", type=Path, required=True)
        q.add_argument("--dose", type=float, default=1.0,
                       help="interpolate each scalar toward the identity first, s -> 1 + t (s - 1): 0 = the base model, "
                       "1 = the edit as trained (default), up to 1.5")
        q.set_defaults(func=_adapter, adapter_action=name)


def _adapter(args) -> int:
    from .._io import share_files
    from ..corpus.bundle import bundled_model_dir
    from ..model.loading import load_model_and_tokenizer
    from .component_scale import load_adapter
    from .edits import check_dose, dosed_scales

    check_dose(args.dose)  # before any loading
    model, tokenizer = load_model_and_tokenizer(args.model or bundled_model_dir())
    edited = load_adapter(args.adapter, model)
    if args.dose != 1.0:
        edited.set_scales(dosed_scales(edited.scales(), args.dose))
    if args.adapter_action == "merge":
        merged = edited.merge_and_unload()
        merged.save_pretrained(args.out)  # type: ignore[operator]  # the HF model the adapter wrapped
        tokenizer.save_pretrained(args.out)
        share_files(args.out)
        print(f"merged model written to {args.out}")
    else:
        edited.export_peft_lora(args.out)
        print(f"PEFT LoRA written to {args.out}")
    return 0


_OVERRIDES = ("method", "budget", "seed", "lr", "lambda_retain", "l1", "lora_rank", "lora_alpha", "ci_threshold", "max_steps", "patience", "seq_len")


def _tune(args) -> int:
    from .._device import resolve_device
    from .._io import versions, write_json_atomic
    from ..corpus.bundle import bundled_decomposition_dir, bundled_model_dir
    from ..corpus.datasets import dataset_texts
    from ..corpus.loading import token_stream
    from ..model.loading import load_model_and_tokenizer
    from .config import TuneConfig
    from .train import tune

    device = resolve_device(args.device)  # before anything is read or loaded
    result_path = args.out / "tune_result.json"
    if result_path.exists():
        raise UserError(f"{args.out} already holds a finished run ({result_path}); choose another --out")
    fields = TuneConfig.from_file(args.config).model_dump() if args.config else {}
    fields.update({k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None})
    if args.keys or args.modules:
        fields["selection"] = {"keys": args.keys or [], "modules": args.modules or []}
    config = TuneConfig.model_validate(fields)
    if args.export_lora and (config.method not in ("component_scale", "svd_scale") or config.ci_threshold is not None):
        raise UserError(f"--export-lora applies to ungated scalar edits (component_scale, svd_scale), not to method {config.method}"
                         + (" with --ci-threshold" if config.ci_threshold is not None else ""))

    model_dir = args.model or bundled_model_dir()
    model, tokenizer = load_model_and_tokenizer(model_dir, device=device)
    decomposition, decomposition_dir = None, None
    if config.method == "component_scale":
        from ..decomposition import Decomposition

        decomposition_dir = args.decomposition or bundled_decomposition_dir()
        decomposition = Decomposition.load(decomposition_dir, model)
    forget = token_stream(tokenizer, dataset_texts(args.forget))
    retain = token_stream(tokenizer, dataset_texts(args.retain))

    tunable, result = tune(config, model, forget, retain, decomposition, decomposition_dir=decomposition_dir, progress=not args.no_progress)
    tunable.save(args.out / "edit")
    if args.export_lora:
        tunable.model.export_peft_lora(args.out / "edit_lora")
    write_json_atomic(result_path, {
        "result": result.model_dump(mode="json"),
        "inputs": {"model": str(model_dir), "decomposition": str(decomposition_dir) if decomposition_dir else None,
                   "forget": args.forget, "retain": args.retain},
        "versions": versions(),
    })
    print(f"{config.method}: {result.steps} steps ({result.stopped_reason}) in {result.wall_time_s:.1f}s, "
          f"forget CE {result.final_forget_ce:.3f}, retain KL {result.final_retain_kl:.4f}")
    if result.final_scalars and len(result.final_scalars) <= 16:
        print("scalars: " + ", ".join(f"{k} {v:+.3f}" for k, v in result.final_scalars.items()))
    print(f"edit saved to {args.out / 'edit'}, result to {result_path}")
    return 0
