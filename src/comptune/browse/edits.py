"""An edit's page: which units it scales and by how much, its held-out CE per dataset against the
base model's, and base-vs-edited greedy rollouts."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from .._io import load_safetensors
from ..decomposition.components import format_component_key, parse_component_key
from ..evaluation.ce import evaluate_ce
from ..evaluation.rollouts import rollouts
from ..study.rows import read_rows
from ..tuning.edits import edit_config, load_edit_adapter


def _sweep_name(edit_dir: Path) -> str:
    """`name budget=… seed=… lr=…` for an edit saved by a sweep (…/edits/<run_id>), else the folder's name."""
    runs = edit_dir.parent.parent / "runs.jsonl"
    if edit_dir.parent.name == "edits" and runs.is_file():
        for row in read_rows(runs):
            if row.run_id == edit_dir.name:
                return f"{row.name} budget={row.budget} seed={row.seed} lr={row.lr:g}"
    return edit_dir.name


def _basis_of(meta: dict, model, decomposition) -> str:
    """components: the keys name the loaded decomposition's subcomponents; svd: the model's singular
    directions; otherwise the edit carries vectors of a basis this site does not have."""
    from ..decomposition.bases import svd_components
    from ..tuning.component_scale import components_fingerprint

    paths = list(meta["modules"])
    theirs = meta["decomposition"]["components_fingerprint"]
    if decomposition is not None and all(p in decomposition.module_paths for p in paths) and components_fingerprint(decomposition, paths) == theirs:
        return "components"
    if components_fingerprint(svd_components(model, paths), paths) == theirs:
        return "svd"
    return "vectors"


def describe_edit(edit_dir: str | Path, model, decomposition) -> dict:
    """{"method", "basis", "scales": [{"key", "scale"}], "ci_threshold", "summary"} of a saved edit."""
    edit_dir = Path(edit_dir)
    meta = edit_config(edit_dir)
    if meta.get("format") == "comptune-component-scale":
        basis = _basis_of(meta, model, decomposition)
        method = {"components": "component_scale", "svd": "svd_scale"}.get(basis, "component_scale (another basis)")
        scales = [{"key": k, "scale": v} for k, v in meta["scales"].items()]
        ci = (meta.get("config") or {}).get("ci_threshold")
        return {"method": method, "basis": basis, "scales": scales, "ci_threshold": ci,
                "summary": f"{len(scales)} scalar{'s' * (len(scales) != 1)} in the {basis} basis"}
    peft_type = meta.get("peft_type")
    tensors = load_safetensors(edit_dir / "adapter_model.safetensors")
    if peft_type == "IA3":
        scales = []
        for name, t in tensors.items():
            path = name.removeprefix("base_model.model.").removesuffix(".ia3_l")
            values = t.flatten().tolist()
            scales += [{"key": format_component_key(path, j), "scale": v} for j, v in enumerate(values) if v != 1.0]
        scales.sort(key=lambda s: parse_component_key(s["key"]))
        return {"method": "neuron_scale", "basis": "neurons", "scales": scales, "ci_threshold": None,
                "summary": f"{len(scales)} MLP unit{'s' * (len(scales) != 1)} scaled (IA3)"}
    if peft_type == "LORA":
        modules = sorted({n.removeprefix("base_model.model.").split(".lora_")[0] for n in tensors})
        params = sum(t.numel() for t in tensors.values())
        return {"method": "lora", "basis": None, "scales": [], "ci_threshold": None,
                "summary": f"LoRA rank {meta.get('r')} (alpha {meta.get('lora_alpha')}) on {len(modules)} modules "
                           f"({', '.join(modules[:6])}{', …' if len(modules) > 6 else ''}); {params:,} parameters"}
    return {"method": str(peft_type or meta.get("format")), "basis": None, "scales": [], "ci_threshold": None,
            "summary": f"a {peft_type or meta.get('format')} adapter"}


@torch.no_grad()
def edit_records(edit_dirs: list[str], model, tokenizer, decomposition, eval_blocks: dict[str, torch.Tensor], prompts: list[str],
                 max_new_tokens: int, log=print) -> list[dict]:
    """One record per edit, in the order given: what it scales, held-out CE against the base's, rollouts."""
    if not edit_dirs:
        return []
    base_ce = evaluate_ce(model, eval_blocks).ce
    base_rollouts = rollouts({"base": model}, tokenizer, prompts, max_new_tokens=max_new_tokens)
    records = []
    for i, edit_dir in enumerate(edit_dirs):
        described = describe_edit(edit_dir, model, decomposition)
        edited = load_edit_adapter(edit_dir, copy.deepcopy(model), decomposition)
        ce = evaluate_ce(edited, eval_blocks).ce
        rows = rollouts({"edited": edited}, tokenizer, prompts, max_new_tokens=max_new_tokens)
        name = _sweep_name(Path(edit_dir))
        log(f"browse: edit {name}: " + ", ".join(f"{d} {ce[d] - base_ce[d]:+.2f}" for d in eval_blocks))
        records.append({
            "id": i, "name": name, "path": str(edit_dir), **described,
            "ce": [{"dataset": d, "base": base_ce[d], "edited": ce[d], "change": ce[d] - base_ce[d]} for d in eval_blocks],
            "ce_note": f"mean next-token CE (nats) on {len(next(iter(eval_blocks.values())))} held-out blocks per dataset "
                       f"of {next(iter(eval_blocks.values())).shape[1]} tokens",
            "rollouts": [{"prompt": p, "base": b["continuations"]["base"], "edited": e["continuations"]["edited"]}
                         for p, b, e in zip(prompts, base_rollouts, rows)],
        })
    return records
