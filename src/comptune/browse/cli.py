"""`comptune browse`: build (and optionally serve) the component browser."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .._device import add_device_argument

if TYPE_CHECKING:
    from .site import BrowseConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("browse", help="a static site of every subcomponent (and edits): profiles, examples, labels; opens from disk")
    p.add_argument("decomposition", nargs="?", default=None, help="decomposition folder (default: the bundled one)")
    p.add_argument("--model", default=None, help="target model folder (default: the bundled model)")
    p.add_argument("--data", nargs="+", default=None, metavar="DATASET",
                   help="bundled dataset names or text/JSONL paths the statistics and examples come from (default: train.de train.en train.fr "
                   "train.es train.it train.code)")
    p.add_argument("--out", type=Path, default=Path("results/browse"), help="site folder (default: results/browse); replaced if it is a previous site")
    p.add_argument("--force", action="store_true", help="replace --out even if it is not a previous browse site")
    p.add_argument("--blocks", type=int, default=None, help="blocks per dataset (default 32)")
    p.add_argument("--block-len", type=int, default=None, help="tokens per block (default 128)")
    p.add_argument("--threshold", type=float, default=None, help="CI above which a subcomponent counts as firing (default 0.1)")
    p.add_argument("--edit", action="append", default=[], metavar="ADAPTER_DIR", help="a saved edit to give a page (repeatable)")
    p.add_argument("--scan", action="append", default=[], metavar="SCAN_JSON",
                   help="a dose-scan report (comptune inspect --scan --out) whose curves go on the unit pages (repeatable)")
    p.add_argument("--config", type=Path, help="BrowseConfig YAML (flags given here override it), e.g. to set autointerp")
    a = p.add_argument_group("LLM labels (optional)")
    a.add_argument("--autointerp-url", help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    a.add_argument("--autointerp-model", help="model name the endpoint serves")
    a.add_argument("--autointerp-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    a.add_argument("--autointerp-max", type=int, default=64, help="label at most this many units")
    p.add_argument("--serve", type=int, metavar="PORT", help="after building, serve the site on 127.0.0.1:PORT")
    add_device_argument(p)
    p.set_defaults(func=_browse, kept_on_interrupt="nothing was written to --out (the site is built beside it and moved in when complete)")


def config_from_args(args) -> BrowseConfig:
    from ..config import read_config_file
    from ..errors import UserError
    from .site import BrowseConfig

    fields = read_config_file(args.config) if args.config else {}
    given = {"decomposition": args.decomposition, "model": args.model, "datasets": args.data, "blocks": args.blocks,
             "block_len": args.block_len, "threshold": args.threshold}
    fields.update({k: v for k, v in given.items() if v is not None})
    if args.edit:
        fields["edits"] = args.edit
    if args.scan:
        fields["scans"] = args.scan
    if args.autointerp_url or args.autointerp_model:
        if not (args.autointerp_url and args.autointerp_model):
            raise UserError("LLM labels need both --autointerp-url and --autointerp-model")
        fields["autointerp"] = {"base_url": args.autointerp_url, "model": args.autointerp_model,
                                "api_key_env": args.autointerp_key_env, "max_units": args.autointerp_max}
    return BrowseConfig.model_validate(fields)


def _browse(args) -> int:
    from .._device import resolve_device
    from .site import build_site, serve

    config = config_from_args(args)
    index = build_site(config, args.out, force=args.force, device=resolve_device(args.device))
    print(f"open {index.resolve()} in a browser")
    if args.serve:
        serve(args.out, args.serve)
    return 0
