"""Resolve each method's `SelectSpec` into an explicit `Selection`, once per sweep.

Component basis: the inspection's causal-importance rankings (German − English difference, or
German − max over the other languages). Neuron and SVD bases have no causal importance; they are
ranked by the same criteria on mean write magnitude |v_iᵀ x|·‖u_i‖ (for a neuron: |h_j|·‖W[:, j]‖),
i.e. how much the unit writes on each dataset.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import inspection
from ..corpus.datasets import sample_blocks
from ..decomposition.bases import default_neuron_modules, linear_module_paths, neuron_components, svd_components
from ..decomposition.components import Components, parse_component_key, validate_keys
from ..errors import UserError
from ..tuning import Selection
from .config import MethodSpec, SweepConfig


@torch.no_grad()
def write_magnitudes(model: nn.Module, basis: dict[str, Components], datasets: dict[str, torch.Tensor], batch_size: int = 8) -> inspection.UnitScores:
    """Mean |v_iᵀ x|·‖u_i‖ per dataset and basis unit ([n_datasets, r] per path, rows in `datasets` order)."""
    sums = {p: torch.zeros(len(datasets), comp.V.shape[1], dtype=torch.float64) for p, comp in basis.items()}
    row = 0
    hooks = []
    for path, comp in basis.items():
        def hook(mod, args, path=path, V=comp.V, u_norm=comp.U.norm(dim=1)):
            a = args[0] @ V.to(args[0].dtype)  # [B, T, r] inner activations
            sums[path][row] += (a.abs() * u_norm).flatten(0, 1).double().sum(0)

        hooks.append(model.get_submodule(path).register_forward_pre_hook(hook))
    try:
        for row, blocks in enumerate(datasets.values()):
            for start in range(0, len(blocks), batch_size):
                model(input_ids=blocks[start : start + batch_size])
    finally:
        for h in hooks:
            h.remove()
    n = torch.tensor([b.numel() for b in datasets.values()], dtype=torch.float64)[:, None]
    return inspection.UnitScores(list(datasets), {p: (s / n).float() for p, s in sums.items()})


def resolve_selections(config: SweepConfig, model: nn.Module, tokenizer, decomposition, log=print) -> dict[str, dict]:
    """{method name: {"selection": Selection dump, "ranking": [[key, score], ...] | None, "criterion": str}}.

    Statistics are computed once per basis and only if some method ranks in it."""
    sd = config.selection_data
    names = list(dict.fromkeys([sd.target, sd.reference, *sd.protected]))
    blocks: dict[str, torch.Tensor] | None = None
    component_stats = None
    resolved: dict[str, dict] = {}
    for spec in config.methods:
        if spec.select is None:
            resolved[spec.name] = {"selection": None, "ranking": None, "criterion": "every linear weight except (un)embedding"}
            continue
        sel = spec.select
        if sel.keys:
            _check_keys(spec, sel.keys, model, decomposition)
            resolved[spec.name] = {"selection": Selection(keys=sel.keys).model_dump(), "ranking": None, "criterion": "explicit keys"}
            continue
        modules = sel.modules or (_modules_of(resolved[sel.modules_of]) if sel.modules_of else [])
        if sel.rank is None:
            resolved[spec.name] = {"selection": Selection(modules=modules).model_dump(), "ranking": None, "criterion": f"every unit of {', '.join(modules)}"}
            continue
        top = sel.top
        assert top is not None  # SelectSpec: rank and top go together
        if blocks is None:
            blocks = {n: sample_blocks(n, tokenizer, sd.block_len, sd.max_blocks) for n in names}
        if sel.rank == "scan":
            resolved[spec.name] = _select_by_scan(config, spec, model, tokenizer, decomposition, modules, blocks, log)
            continue
        if spec.method == "component_scale":
            if component_stats is None:
                log(f"selection: causal-importance statistics on {', '.join(names)} ({sd.max_blocks} blocks of {sd.block_len} tokens each)")
                component_stats = inspection.component_stats(decomposition, blocks)
            scores, within = component_stats.scores("mean_ci"), modules or None
            measure = "mean CI"
        else:
            scores, within = write_magnitudes(model, _basis(spec, model, decomposition, modules), blocks), None
            measure = "mean write magnitude"
        if sel.rank == "difference":
            ranking = inspection.rank_by_difference(scores, sd.target, sd.reference, modules=within)
        else:
            ranking = inspection.rank_by_specificity(scores, sd.target, sd.protected, modules=within)
        criterion = (
            f"{measure} on {sd.target} − {sd.reference}" if sel.rank == "difference"
            else f"{measure} on {sd.target} − max({', '.join(sd.protected)})"
        )
        keys = [k for k, _ in ranking[:top]]
        if len(keys) < top:
            raise UserError(f"method {spec.name!r}: asked for the top {top} but the candidate modules hold only {len(keys)} units")
        shown = [[k, round(v, 6)] for k, v in ranking[: max(sd.show_top, top)]]
        resolved[spec.name] = {"selection": Selection(keys=keys).model_dump(), "ranking": shown, "criterion": criterion}
        log(f"selection {spec.name} ({spec.method}): top {top} by {criterion}")
        for i, (k, v) in enumerate(shown):
            log(f"  {i + 1:3d} {k:28s} {v:+.4f}{'  *' if i < top else ''}")
    return resolved


def _modules_of(resolved: dict) -> list[str]:
    sel = resolved["selection"]
    if sel is None:
        raise UserError("select.modules_of must name a method with a selection (not global LoRA)")
    return sel["modules"] or list(dict.fromkeys(parse_component_key(k)[0] for k in sel["keys"]))


def _check_keys(spec: MethodSpec, keys: list[str], model: nn.Module, decomposition) -> None:
    """Fail before any run on a key that names no unit (the tuning code checks again per run)."""
    if spec.method == "component_scale":
        validate_keys(decomposition, keys)
    elif spec.method == "svd_scale":
        validate_keys(svd_components(model, list(dict.fromkeys(parse_component_key(k)[0] for k in keys))), keys)


def _basis(spec: MethodSpec, model: nn.Module, decomposition, modules: list[str]) -> dict[str, Components]:
    if spec.method == "component_scale":
        return {p: decomposition.get_components(p) for p in (modules or decomposition.module_paths)}
    if spec.method == "neuron_scale":
        return neuron_components(model, modules or default_neuron_modules(model))
    return svd_components(model, modules or linear_module_paths(model))


def _select_by_scan(config: SweepConfig, spec: MethodSpec, model: nn.Module, tokenizer, decomposition, modules: list[str],
                    blocks: dict[str, torch.Tensor], log) -> dict:
    """`rank: scan`: candidates from every ranking on the selection data, chosen by their dose scan on
    the validation pair (config validation keeps those out of the evaluation sets)."""
    from ..inspection.scan import DoseScanner, candidate_rankings, dose_scan, pool_candidates

    sd, sc, sel = config.selection_data, config.scoring, spec.select
    assert sel is not None and sel.top is not None  # a `rank: scan` selection, whose top is required
    top = sel.top
    basis = _basis(spec, model, decomposition, modules)
    ci_source = decomposition if spec.method == "component_scale" and not modules else None
    rankings = candidate_rankings(model, basis, blocks, target=sd.target, reference=sd.reference, protected=sd.protected, decomposition=ci_source)
    candidates = pool_candidates(rankings, sel.candidates)
    if len(candidates) < top:
        raise UserError(f"method {spec.name!r}: asked for the top {top} by scan"
            f" but the rankings give only {len(candidates)} candidates; raise select.candidates")
    valid = {}
    for name in (sc.forget_valid, sc.retain_valid):
        valid[name] = sample_blocks(name, tokenizer, sd.block_len, sd.scan_blocks)
        if len(valid[name]) < sd.scan_blocks:
            raise UserError(f"method {spec.name!r}: validation set {name!r} has {len(valid[name])} blocks of {sd.block_len} tokens, "
                             f"the scan asks for {sd.scan_blocks}; lower selection_data.scan_blocks")
    log(f"selection {spec.name} ({spec.method}): dose scan of {len(candidates)} candidates on {sc.forget_valid} vs {sc.retain_valid} "
        f"(≤ {sc.max_damage} nats damage)")
    scanned = dose_scan(DoseScanner(model, basis, valid), candidates, target=sc.forget_valid, reference=sc.retain_valid, bound=sc.max_damage)
    keys = [r.key for r in scanned[:top]]
    shown = [[r.key, round(r.best_gain, 6)] for r in scanned[: max(sd.show_top, top)]]
    for i, r in enumerate(scanned[: max(sd.show_top, top)]):
        log(f"  {i + 1:3d} {r.key:28s} gain {r.best_gain:+.4f} at s={r.best_s:.3g} (damage {r.best_damage:+.4f}){'  *' if i < top else ''}")
    criterion = f"dose scan: {sc.forget_valid} gain within {sc.max_damage} nats damage on {sc.retain_valid}"
    return {"selection": Selection(keys=keys).model_dump(), "ranking": shown, "criterion": criterion,
            "scan": [{"key": r.key, "best_gain": r.best_gain, "best_s": r.best_s, "best_damage": r.best_damage} for r in scanned]}
