"""`comptune corpus ...` commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="build or describe the bundled multilingual corpus")
    csub = p.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    b = csub.add_parser("build", help="rebuild the corpus from Debian packages (needs apt-get, dpkg-deb, groff)")
    b.add_argument("--out", type=Path, default=None, help="output folder (default: the shipped data/corpus)")
    b.add_argument("--cache", type=Path, default=Path(".cache/debian"), help="where .deb files are downloaded and unpacked")
    b.add_argument("--workers", type=int, default=2)
    b.set_defaults(func=_build)
    s = csub.add_parser("stats", help="characters per split and language of the shipped corpus")
    s.set_defaults(func=_stats)
    m = csub.add_parser("blocks",
        help="sample token windows of a language mix into a .safetensors `blocks` tensor (e.g. to decompose a model on its training mix)")
    m.add_argument("--tokenizer", type=Path, required=True, help="tokenizer (or model) folder")
    m.add_argument("--split", default="train", choices=["train", "valid", "eval"], help="bundled split to draw from")
    m.add_argument("--mix", default="en=0.70,de=0.07,fr=0.05,es=0.05,it=0.05,code=0.08", help="lang=weight,... (the bundled model's training mix)")
    m.add_argument("--n", type=int, required=True, help="number of windows")
    m.add_argument("--block-len", type=int, default=128)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", type=Path, required=True)
    m.set_defaults(func=_blocks)


def _build(args) -> int:
    from .build import build_corpus
    from .bundle import corpus_dir

    manifest = build_corpus(args.out or corpus_dir(), args.cache, workers=args.workers)
    _print_chars(manifest["chars"])
    return 0


def _stats(args) -> int:
    import json

    from .bundle import corpus_dir

    path = corpus_dir() / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `comptune corpus build`")
    _print_chars(json.loads(path.read_text())["chars"])
    return 0


def _print_chars(chars: dict[str, int]) -> None:
    for name, n in chars.items():
        print(f"{name:<16} {n:>12,} chars")


def _blocks(args) -> int:
    import torch

    from .._io import save_safetensors_atomic
    from ..model.loading import load_tokenizer
    from .bundle import bundled_texts
    from .datasets import mix_windows
    from .loading import token_stream

    try:
        mix = {lang: float(w) for lang, w in (item.split("=") for item in args.mix.split(","))}
    except ValueError:
        raise UserError(f"--mix must look like en=0.7,de=0.07; got {args.mix!r}") from None
    tokenizer = load_tokenizer(args.tokenizer)
    streams = {lang: token_stream(tokenizer, bundled_texts(f"{args.split}.{lang}")) for lang in mix}
    blocks = mix_windows(streams, mix, args.n, args.block_len, torch.Generator().manual_seed(args.seed))
    meta = {"split": args.split, "mix": args.mix, "seed": str(args.seed), "tokenizer": str(args.tokenizer)}
    save_safetensors_atomic({"blocks": blocks}, args.out, metadata=meta)
    print(f"{tuple(blocks.shape)} blocks written to {args.out}")
    return 0
