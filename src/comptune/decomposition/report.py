"""The quality figures every decomposition is reported with (SPEC §6).

All cross-entropies are next-token CE in nats, over every position but the last of each block (so
the first token of a block is never a target). "Unmasked", "CI-masked" and "rounded" leave Δ out;
"stochastic" uses m = g + (1 − g) r with r ~ U(0, 1), all modules routed and the Δ channel on
with a uniform mask, as the reference evaluation does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from .decomposed import Decomposition
from .losses import eval_pgd_kl, kl_target_to_masked, sample_stochastic_sources, source_masked_logits

ROUNDING_THRESHOLDS = (0.0, 0.1, 0.5)
ALIVE_THRESHOLD = 1e-6


def next_token_ce_sum(logits: torch.Tensor, input_ids: torch.Tensor) -> float:
    """Summed CE of predicting token t+1 from positions ≤ t, over B·(T−1) predictions."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(), reduction="sum").item()


@torch.no_grad()
def quality_report(
    decomposition: Decomposition,
    blocks: torch.Tensor,
    batch_size: int = 8,
    pgd_steps: int = 20,
    pgd_step_size: float = 0.1,
    seed: int = 0,
) -> dict:
    """SPEC §6 figures over the token blocks [N, T] (held-out text).

    Returns {"n_tokens", "ce": {target, unmasked, stochastic, ci_masked, rounded_<thr>}, "kl": {...},
    "l0": {path: mean count of CI > 0 per token, "total": sum}, "alive": {path: count with mean
    CI > 1e-6, "total"}, "pgd_kl"}.
    """
    if blocks.ndim != 2 or blocks.shape[0] == 0 or blocks.shape[1] < 2:
        raise UserError(f"quality_report needs token blocks [N, T] with N ≥ 1 and T ≥ 2, got shape {tuple(blocks.shape)}")
    device = next(decomposition.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    paths = decomposition.module_paths
    ce_sums: dict[str, float] = {}
    kl_sums: dict[str, float] = {}
    l0_sums = {p: 0.0 for p in paths}
    ci_sums = {p: torch.zeros(decomposition.C(p), device=device) for p in paths}
    pgd_sum, n_pred, n_pos = 0.0, 0, 0

    def add(name: str, logits: torch.Tensor, target_logits: torch.Tensor, ids: torch.Tensor) -> None:
        ce_sums[name] = ce_sums.get(name, 0.0) + next_token_ce_sum(logits, ids)
        kl_sums[name] = kl_sums.get(name, 0.0) + kl_target_to_masked(logits, target_logits).item() * ids.numel()

    for start in range(0, blocks.shape[0], batch_size):
        ids = blocks[start : start + batch_size].to(device)
        ci = decomposition.causal_importance(ids)
        g, target = ci.lower, ci.target_logits
        assert target is not None  # causal_importance always keeps the clean forward's logits
        ce_sums["target"] = ce_sums.get("target", 0.0) + next_token_ce_sum(target, ids)
        add("unmasked", decomposition.masked_logits(ids, {p: torch.ones_like(g[p]) for p in paths}), target, ids)
        add("stochastic", source_masked_logits(decomposition, ids, g, sample_stochastic_sources(g, generator)), target, ids)
        add("ci_masked", decomposition.masked_logits(ids, g), target, ids)
        for thr in ROUNDING_THRESHOLDS:
            add(f"rounded_{thr}", decomposition.masked_logits(ids, {p: (g[p] > thr).to(g[p].dtype) for p in paths}), target, ids)
        for p in paths:
            l0_sums[p] += (g[p] > 0).sum().item()
            ci_sums[p] += g[p].flatten(0, -2).sum(0)
        pgd_sum += eval_pgd_kl(decomposition, ids, target, g, pgd_steps, pgd_step_size, generator) * ids.numel()
        n_pred += ids.shape[0] * (ids.shape[1] - 1)
        n_pos += ids.numel()

    l0 = {p: l0_sums[p] / n_pos for p in paths}
    alive = {p: int((ci_sums[p] / n_pos > ALIVE_THRESHOLD).sum()) for p in paths}
    return {
        "n_tokens": n_pos,
        "ce": {k: v / n_pred for k, v in ce_sums.items()},
        "kl": {k: v / n_pos for k, v in kl_sums.items()},
        "l0": {**l0, "total": sum(l0.values())},
        "alive": {**alive, "total": sum(alive.values())},
        "C": {**{p: decomposition.C(p) for p in paths}, "total": sum(decomposition.C(p) for p in paths)},
        "pgd_kl": pgd_sum / n_pos,
        "pgd": {"steps": pgd_steps, "step_size": pgd_step_size},
    }


@torch.no_grad()
def faithfulness_by_dataset(decomposition: Decomposition, datasets: dict[str, torch.Tensor], batch_size: int = 8) -> dict[str, dict]:
    """Per dataset (e.g. per language): the target's CE, the CI-masked model's CE, the increase, and
    the mean L0 — whether the decomposition reconstructs every kind of input, not just the mix."""
    out = {}
    device = next(decomposition.parameters()).device
    for name, blocks in datasets.items():
        if blocks.ndim != 2 or blocks.shape[0] == 0 or blocks.shape[1] < 2:
            raise UserError(f"dataset {name!r} needs token blocks [N, T] with N ≥ 1 and T ≥ 2, got shape {tuple(blocks.shape)}")
        target = masked = l0 = 0.0
        for start in range(0, blocks.shape[0], batch_size):
            ids = blocks[start : start + batch_size].to(device)
            ci = decomposition.causal_importance(ids)
            assert ci.target_logits is not None  # causal_importance always keeps the clean forward's logits
            target += next_token_ce_sum(ci.target_logits, ids)
            masked += next_token_ce_sum(decomposition.masked_logits(ids, ci.lower), ids)
            l0 += sum((g > 0).sum().item() for g in ci.lower.values())
        n_pred = blocks.shape[0] * (blocks.shape[1] - 1)
        out[name] = {"target": target / n_pred, "ci_masked": masked / n_pred, "increase": (masked - target) / n_pred, "l0": l0 / blocks.numel()}
    return out


def format_report(report: dict) -> str:
    """A plain-text table of a `quality_report` result."""
    ce = report["ce"]
    lines = [f"tokens evaluated: {report['n_tokens']}", "", f"{'cross-entropy (nats)':<28}{'CE':>9}{'Δ vs target':>14}{'KL':>10}"]
    for name, value in ce.items():
        kl = report["kl"].get(name)
        lines.append(f"{name:<28}{value:>9.4f}{value - ce['target']:>+14.4f}{'' if kl is None else f'{kl:>10.4f}'}")
    lines.append(f"{'PGD KL (' + str(report['pgd']['steps']) + ' steps)':<28}{report['pgd_kl']:>9.4f}")
    lines += ["", f"{'module':<28}{'C':>7}{'alive':>8}{'mean L0':>10}"]
    for path in [p for p in report["l0"] if p != "total"] + ["total"]:
        lines.append(f"{path:<28}{report['C'][path]:>7}{report['alive'][path]:>8}{report['l0'][path]:>10.2f}")
    if report.get("by_dataset"):
        lines += ["", f"{'faithfulness by dataset':<28}{'target CE':>10}{'CI-masked':>11}{'increase':>10}{'L0':>9}"]
        for name, r in report["by_dataset"].items():
            lines.append(f"{name:<28}{r['target']:>10.4f}{r['ci_masked']:>11.4f}{r['increase']:>+10.4f}{r['l0']:>9.1f}")
    return "\n".join(lines)
