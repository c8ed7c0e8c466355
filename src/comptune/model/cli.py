"""`comptune pretrain`: train the bundled target model (tokenizer included) on the bundled corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._device import add_device_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="train a tokenizer and a small Llama-style LM on the bundled corpus (resumable)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, then the HF model + tokenizer")
    p.add_argument("--config", type=Path, help="YAML with PretrainConfig fields (unknown keys are an error)")
    p.add_argument("--max-steps", type=int, help="override config.max_steps")
    p.add_argument("--max-minutes", type=float, help="stop and save after this wall time")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    add_device_argument(p)
    p.set_defaults(func=_pretrain)


def _pretrain(args) -> int:
    from .._device import resolve_device
    from .pretrain import PretrainConfig, prepare_data, pretrain

    device = resolve_device(args.device)  # before anything is read or loaded
    cfg = PretrainConfig.from_file(args.config) if args.config else PretrainConfig()
    if args.max_steps is not None:
        cfg.max_steps = args.max_steps
    if args.max_minutes is not None:
        cfg.max_minutes = args.max_minutes
    tokenizer, streams = prepare_data(cfg, args.out)
    pretrain(cfg, args.out, streams, tokenizer, resume=not args.no_resume, device=device)
    print(f"model saved to {args.out}")
    return 0
