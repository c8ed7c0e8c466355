"""`comptune corpus ...` commands."""

from __future__ import annotations

import argparse
from pathlib import Path


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
