"""`comptune inspect`: rank subcomponents by where they fire and report what the top ones do."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="causal-importance statistics, rankings and per-subcomponent reports")
    p.add_argument("--decomposition", type=Path, default=None, help="decomposition folder (default: the bundled one)")
    p.add_argument("--model", type=Path, default=None, help="target model folder (default: the bundled model)")
    p.add_argument("--datasets", nargs="+", default=["train.de", "train.en", "train.fr", "train.es", "train.it", "train.code"],
                   help="bundled dataset names or text/JSONL paths to compute statistics on")
    p.add_argument("--target", default="train.de", help="dataset the edit should act on")
    p.add_argument("--reference", default="train.en", help="dataset for the difference criterion (target − reference)")
    p.add_argument("--criterion", choices=["difference", "specificity"], default="difference",
                   help="difference: target − reference; specificity: target − max over every other dataset")
    p.add_argument("--top", type=int, default=16, help="how many subcomponents to rank and report")
    p.add_argument("--keys", nargs="*", help="report these keys (e.g. h.3.attn.v_proj:513) instead of the top ranked")
    p.add_argument("--blocks", type=int, default=64, help="blocks per dataset")
    p.add_argument("--block-len", type=int, default=128)
    p.add_argument("--threshold", type=float, default=0.1, help="CI above which a subcomponent counts as firing")
    p.add_argument("--out", type=Path, help="write the full report as JSON here")
    p.set_defaults(func=_inspect)


def _inspect(args) -> int:
    from .report import inspection_report, render_text

    report = inspection_report(
        decomposition_dir=args.decomposition, model_dir=args.model, datasets=args.datasets, target=args.target,
        reference=args.reference, criterion=args.criterion, top=args.top, keys=args.keys, n_blocks=args.blocks,
        block_len=args.block_len, threshold=args.threshold,
    )
    print(render_text(report))
    if args.out:
        from .._io import write_json_atomic

        write_json_atomic(args.out, report)
        print(f"\nreport written to {args.out}")
    return 0
