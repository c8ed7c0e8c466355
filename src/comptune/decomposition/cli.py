"""`comptune decompose` (train or resume a decomposition) and `comptune decomposition report`.

Data-parallel: `torchrun --nproc_per_node=N $(which comptune) decompose ...` runs the same command
on N processes (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .._device import add_device_argument
from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decompose", help="decompose a model's linear weights into rank-1 subcomponents (VPD/SPD); resumable")
    p.add_argument("--model", type=Path, required=True, help="target model folder (save_pretrained layout, safetensors)")
    p.add_argument("--data", required=True,
        help="training text: a bundled dataset name, a text/JSONL path, or a .safetensors file with a `blocks` [N, T] tensor")
    p.add_argument("--eval-data", help="held-out data for the periodic quality figures (same forms as --data)")
    p.add_argument("--out", type=Path, required=True, help="output folder (decomposition, logs, checkpoint)")
    p.add_argument("--preset", choices=["paper", "small"], default="paper", help="starting config; --config overrides its fields")
    p.add_argument("--config", type=Path, help="YAML with DecomposeConfig fields (unknown keys are an error)")
    p.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
    p.add_argument("--init-from", type=Path, help="start from this decomposition's components and CI function (same model, modules, C and "
                   "CI function; fresh optimiser moments and adversary): continue a shipped decomposition with a new schedule")
    p.add_argument("--block-len", type=int, default=128, help="tokens per block when tokenizing text")
    p.add_argument("--max-blocks", type=int, help="cap on training blocks")
    p.add_argument("--eval-blocks", type=int, default=32, help="cap on evaluation blocks")
    add_device_argument(p)
    p.set_defaults(func=_decompose, kept_on_interrupt="the last checkpoint in {out} is kept (none before the first)",
                   resume_args=["--resume"])

    saved = sub.add_parser("decomposition", help="work with a saved decomposition").add_subparsers(
        dest="decomposition_command", metavar="COMMAND", required=True)
    r = saved.add_parser("report", help="quality figures (SPEC §6): CE target/unmasked/stochastic/CI-masked/rounded, L0, alive, PGD KL")
    r.add_argument("decomposition", type=Path, help="decomposition folder")
    r.add_argument("--model", type=Path, help="target model folder (default: the one recorded in the decomposition)")
    r.add_argument("--data", required=True, help="held-out data (same forms as for decompose)")
    r.add_argument("--block-len", type=int, default=128)
    r.add_argument("--blocks", type=int, default=64, help="cap on evaluation blocks")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--pgd-steps", type=int, default=20)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--datasets", nargs="+", help="also report faithfulness per dataset (e.g. parallel.de general_en ...): CI-masked CE increase on each")
    r.add_argument("--target", help="with --reference: the task bar — the best single subcomponent, scanned by hand-set scales, "
                   "and how far it moves --target within --bound nats damage on --reference (e.g. parallel.de vs general_en)")
    r.add_argument("--reference", help="the dataset the edit must spare (see --target)")
    r.add_argument("--bound", type=float, default=0.1, help="damage bound of the task bar, nats")
    r.add_argument("--scan-blocks", type=int, default=8, help="blocks per dataset for the task bar's scan")
    r.add_argument("--out", type=Path, help="also write the report as JSON here")
    add_device_argument(r)
    r.set_defaults(func=_report)

    sn = saved.add_parser("snapshot", help="save the latest checkpoint of a decompose run (even one still running) as a loadable decomposition")
    sn.add_argument("run", type=Path, help="the decompose run folder (holds checkpoint.safetensors)")
    sn.add_argument("--model", type=Path, required=True, help="the run's target model folder")
    sn.add_argument("--out", type=Path, required=True)
    sn.set_defaults(func=_snapshot)

    g = sub.add_parser(
        "import-goodfire",
        help="convert a torch-era Goodfire SPD/VPD run (final_config.yaml or experiment_config.yaml + model_<step>.pth) "
        "into a comptune decomposition",
    )
    g.add_argument("run", type=Path, metavar="RUN_DIR_OR_FILE", help="run directory (highest model_<step>.pth is used) or one checkpoint")
    g.add_argument("--out", type=Path, required=True, help="decomposition folder to write")
    g.add_argument(
        "--target-weights", type=Path,
        help="the target when the checkpoint holds no target_model.* weights (or they cannot be built alone): their "
        "pretraining run (model_config.yaml + checkpoints/model_step_<n>.pt) or a local Hugging Face model folder",
    )
    g.set_defaults(func=_import_goodfire)


def _import_goodfire(args) -> int:
    from .goodfire import import_goodfire

    decomposition = import_goodfire(args.run, args.out, target_weights=args.target_weights)
    total = sum(decomposition.C(p) for p in decomposition.module_paths)
    print(
        f"imported {len(decomposition.module_paths)} modules ({total} subcomponents), CI function "
        f"{decomposition.ci_config.type}, step {decomposition.provenance['step']} -> {args.out}"
    )
    return 0


def load_blocks(data: str, tokenizer, block_len: int, max_blocks: int | None):
    """The one input adapter: token blocks [N, T] from a .safetensors `blocks` tensor or from text."""
    import torch

    if data.endswith(".safetensors"):
        from .._io import load_safetensors

        tensors = load_safetensors(data)
        if "blocks" not in tensors:
            raise UserError(f"{data} has no `blocks` tensor (found {sorted(tensors)[:5]}); save token ids [N, T] under the key 'blocks'")
        blocks = tensors["blocks"]
        if blocks.ndim != 2 or blocks.dtype not in (torch.int64, torch.int32):
            raise UserError(f"`blocks` in {data} must be an integer tensor [N, T], got {blocks.dtype} {tuple(blocks.shape)}")
        return blocks.long()[:max_blocks]
    from ..corpus.datasets import dataset_blocks

    return dataset_blocks(data, tokenizer, block_len, max_blocks=max_blocks)


def _load_config(preset: str, path: Path | None):
    from ..config import read_config_file
    from .train import DecomposeConfig

    base = DecomposeConfig.preset(preset).model_dump()
    if path is not None:
        overrides = read_config_file(path)  # the shared reader: `extends:` works here too
        if isinstance(overrides.get("ci"), dict):  # a partial `ci:` refines the preset's CI function
            overrides["ci"] = {**base["ci"], **overrides["ci"]}
        base.update(overrides)
    return DecomposeConfig.model_validate(base)


def _decompose(args) -> int:
    from .._device import resolve_device
    from ..model.loading import load_model_and_tokenizer
    from .train import decompose

    device = resolve_device(args.device)  # before anything is read or loaded
    config = _load_config(args.preset, args.config)
    model, tokenizer = load_model_and_tokenizer(args.model)
    blocks = load_blocks(args.data, tokenizer, args.block_len, args.max_blocks)
    eval_blocks = load_blocks(args.eval_data, tokenizer, args.block_len, args.eval_blocks) if args.eval_data else None
    d = decompose(model, blocks, config, args.out, resume=args.resume, eval_blocks=eval_blocks, init_from=args.init_from, device=device)
    if d.provenance.get("completed"):
        print(f"decomposition written to {args.out}")
        return 0
    return 130  # stopped early (signal or time limit); --resume continues


def _report(args) -> int:
    from .._device import resolve_device
    from .._io import versions, write_json_atomic
    from ..model.loading import load_model_and_tokenizer
    from .decomposed import META_NAME, Decomposition
    from .report import faithfulness_by_dataset, format_report, quality_report

    device = resolve_device(args.device)  # before anything is read or loaded
    model_dir = args.model
    if model_dir is None:
        meta_path = args.decomposition / META_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"{args.decomposition} is not a decomposition folder: {META_NAME} is missing")
        recorded = json.loads(meta_path.read_text())["target"].get("name_or_path")
        if not recorded or not Path(recorded).is_dir():
            raise UserError(f"the decomposition does not record a target folder that exists here ({recorded!r}); pass --model")
        model_dir = Path(recorded)
    if (args.target is None) != (args.reference is None):
        raise UserError("--target and --reference go together (e.g. --target parallel.de --reference general_en)")
    model, tokenizer = load_model_and_tokenizer(model_dir, device=device)
    decomposition = Decomposition.load(args.decomposition, model)
    blocks = load_blocks(args.data, tokenizer, args.block_len, args.blocks)
    report = quality_report(decomposition, blocks, batch_size=args.batch_size, pgd_steps=args.pgd_steps, seed=args.seed)
    if args.datasets:
        sets = {d: load_blocks(d, tokenizer, args.block_len, args.blocks) for d in args.datasets}
        report["by_dataset"] = faithfulness_by_dataset(decomposition, sets, batch_size=args.batch_size)
    print(format_report(report))
    if args.target:
        # the task bar reads the inspection's dose scan (a layer above this one; imported only here)
        from ..inspection.scan import render_scan_text, scan_report

        protected = [d for d in (args.datasets or []) if d not in (args.target, args.reference)]
        bar = scan_report(model=model, tokenizer=tokenizer, decomposition=decomposition, basis_name="components", modules=None,
                          target=args.target, reference=args.reference, protected=protected, n_blocks=args.scan_blocks,
                          block_len=args.block_len, bound=args.bound, top_per_ranking=8, batch_size=args.batch_size)
        print("\n" + render_scan_text(bar, top=5))
        report["task_bar"] = {k: bar[k] for k in ("config", "base_ce", "chance", "bar")} | {"best": bar["candidates"][:5]}
    result = {"decomposition": str(args.decomposition), "model": str(model_dir), "data": args.data, "block_len": int(blocks.shape[1]),
              "seed": args.seed, "report": report, "versions": versions()}
    if args.out:
        write_json_atomic(args.out, result)
        print(f"report written to {args.out}")
    return 0


def _snapshot(args) -> int:
    from ..model.loading import load_model_and_tokenizer
    from .train import snapshot

    model, _ = load_model_and_tokenizer(args.model)
    d = snapshot(args.run, model, args.out)
    print(f"step {d.provenance['step']} of {d.provenance['steps_planned']} written to {args.out}")
    return 0
