"""The inspection report: rankings plus, per chosen subcomponent, its language profile, examples,
token PMI and write-vector effects — as one JSON-able dict and as readable text."""

from __future__ import annotations

from pathlib import Path

from .._io import versions
from ..decomposition.components import parse_component_key
from ..errors import UserError
from .atlas import AtlasSettings, build_atlas
from .examples import inspect_components, write_vector_effects
from .stats import component_stats, rank_by_difference, rank_by_specificity


def inspection_report(
    *, decomposition_dir: Path | None, model_dir: Path | None, datasets: list[str], target: str, reference: str,
    criterion: str = "difference", top: int = 16, keys: list[str] | None = None, n_blocks: int = 64,
    block_len: int = 128, threshold: float = 0.1, seed_note: str = "deterministic (no sampling)", device=None,
) -> dict:
    from ..corpus.bundle import bundled_decomposition_dir, bundled_model_dir
    from ..corpus.datasets import dataset_blocks
    from ..decomposition import Decomposition
    from ..model.loading import load_model_and_tokenizer

    if target not in datasets:
        raise UserError(f"target {target!r} must be one of --datasets {datasets}")
    model, tokenizer = load_model_and_tokenizer(model_dir or bundled_model_dir(), device=device)
    decomposition = Decomposition.load(decomposition_dir or bundled_decomposition_dir(), model)
    datasets = [target, *(d for d in datasets if d != target)]  # the target's examples come first
    blocks = {d: dataset_blocks(d, tokenizer, block_len, max_blocks=n_blocks) for d in datasets}
    stats = component_stats(decomposition, blocks, threshold=threshold)
    if criterion == "difference":
        if reference not in datasets:
            raise UserError(f"reference {reference!r} must be one of --datasets {datasets}")
        ranking = rank_by_difference(stats, target, reference, top=top)
    else:
        ranking = rank_by_specificity(stats, target, [d for d in datasets if d != target], top=top)
    chosen = keys or [k for k, _ in ranking]
    details = inspect_components(decomposition, tokenizer, blocks, chosen, threshold=threshold)
    # labels as the browser gives them: from the atlas of just these subcomponents
    units: dict[str, list[int]] = {}
    for key in chosen:
        path, idx = parse_component_key(key)
        units.setdefault(path, []).append(idx)
    atlas = build_atlas(model, tokenizer, blocks, decomposition=decomposition, units=units, settings=AtlasSettings(threshold=threshold), log=lambda _: None)
    for key in chosen:
        details[key]["profile"] = stats.profile(key)
        details[key]["write_vector"] = write_vector_effects(model, decomposition, key, tokenizer=tokenizer)
        details[key]["label"], details[key]["label_evidence"] = atlas.units[key]["label"], atlas.units[key]["evidence"]
    return {
        "config": {"datasets": datasets, "target": target, "reference": reference, "criterion": criterion, "top": top,
                   "keys": keys, "blocks_per_dataset": n_blocks, "block_len": block_len, "threshold": threshold, "seed": seed_note,
                   "decomposition": str(decomposition_dir or bundled_decomposition_dir()), "model": str(model_dir or bundled_model_dir())},
        "ranking": [{"key": k, "score": round(s, 5)} for k, s in ranking],
        "components": details,
        "versions": versions(),
    }


def render_text(report: dict) -> str:
    cfg = report["config"]
    crit = f"{cfg['target']} − {cfg['reference']}" if cfg["criterion"] == "difference" else f"{cfg['target']} − max(other datasets)"
    lines = [f"Ranking by mean causal importance, {crit}:"]
    lines += [f"  {i + 1:>3}. {r['key']:<28} {r['score']:+.4f}" for i, r in enumerate(report["ranking"])]
    for key, d in report["components"].items():
        lines.append(f"\n== {key}: {d['label']}")
        lines.append("  mean CI by dataset: " + ", ".join(f"{n} {p['mean_ci']:.4f}" for n, p in d["profile"].items()))
        lines.append("  input-token PMI:  " + ", ".join(f"{t['token']!r} {t['pmi']:.2f}" for t in d["input_pmi"][:8]))
        lines.append("  output-token PMI: " + ", ".join(f"{t['token']!r} {t['pmi']:.2f}" for t in d["output_pmi"][:8]))
        if d["write_vector"]:
            lines.append("  write vector promotes:  " + ", ".join(repr(t["token"]) for t in d["write_vector"]["promoted"][:8]))
            lines.append("  write vector suppresses: " + ", ".join(repr(t["token"]) for t in d["write_vector"]["suppressed"][:8]))
        for name, examples in d["examples"].items():
            for ex in examples[:3]:
                text = ex["text"].replace("\n", "⏎")
                lines.append(f"    [{name} ci={ex['ci']:.2f}] {text}")
    return "\n".join(lines)
