"""`comptune inspect`: rank subcomponents by where they fire and report what the top ones do."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._device import add_device_argument
from ..errors import UserError


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
    add_device_argument(p)
    s = p.add_argument_group("dose scan (--scan): choose what to edit by its measured effect")
    s.add_argument("--scan", action="store_true", help="hand-set each candidate's scale on both sides of 1, bisect to the damage bound on "
                   "--reference, report its best gain on --target (candidates: the top of every ranking, or --keys)")
    s.add_argument("--basis", choices=["components", "neurons", "svd"], default="components",
                   help="scan the decomposition's subcomponents, MLP units (down projections) or singular directions")
    s.add_argument("--modules", nargs="+", help="restrict the basis to these module patterns (fnmatch, e.g. 'h.3.mlp.*')")
    s.add_argument("--bound", type=float, default=0.1, help="damage bound on --reference, nats")
    s.add_argument("--top-per-ranking", type=int, default=16, help="candidates taken from the top of each ranking")
    s.add_argument("--scan-blocks", type=int, default=16, help="blocks per dataset for the scan (held-out text, e.g. valid.* or parallel.*)")
    p.set_defaults(func=_inspect)


def _inspect(args) -> int:
    from .._device import resolve_device

    if args.scan:
        return _scan(args)
    from .report import inspection_report, render_text

    report = inspection_report(
        decomposition_dir=args.decomposition, model_dir=args.model, datasets=args.datasets, target=args.target,
        reference=args.reference, criterion=args.criterion, top=args.top, keys=args.keys, n_blocks=args.blocks,
        block_len=args.block_len, threshold=args.threshold, device=resolve_device(args.device),
    )
    print(render_text(report))
    if args.out:
        from .._io import write_json_atomic

        write_json_atomic(args.out, report)
        print(f"\nreport written to {args.out}")
    return 0


def _scan(args) -> int:
    from .._device import resolve_device
    from .._io import write_json_atomic
    from ..corpus.bundle import bundled_decomposition_dir, bundled_model_dir
    from ..decomposition import Decomposition
    from ..model.loading import load_model_and_tokenizer
    from .scan import plot_scan, render_scan_text, scan_report

    if args.bound <= 0:
        raise UserError(f"--bound must be > 0 nats, got {args.bound}")
    model, tokenizer = load_model_and_tokenizer(args.model or bundled_model_dir(), device=resolve_device(args.device))
    decomposition = None
    if args.basis == "components":
        decomposition = Decomposition.load(args.decomposition or bundled_decomposition_dir(), model)
    protected = [d for d in args.datasets if d != args.target]
    report = scan_report(model=model, tokenizer=tokenizer, decomposition=decomposition, basis_name=args.basis, modules=args.modules,
                         target=args.target, reference=args.reference, protected=protected, keys=args.keys, n_blocks=args.scan_blocks,
                         block_len=args.block_len, bound=args.bound, top_per_ranking=args.top_per_ranking)
    report["config"].update({"model": str(args.model or bundled_model_dir()),
                             "decomposition": str(args.decomposition or bundled_decomposition_dir()) if decomposition is not None else None})
    print(render_scan_text(report))
    if args.out:
        write_json_atomic(args.out, report)
        figures = plot_scan(report, args.out.with_suffix(""))
        print(f"\nscan written to {args.out}; curves in {', '.join(map(str, figures))}")
    return 0
