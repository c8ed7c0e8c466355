"""Where subcomponents fire: causal-importance statistics per dataset, and rankings for selection.

Statistics are over every position of every block (the first token included: CI is a property
of the input, not of a prediction).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..decomposition.components import format_component_key, parse_component_key
from ..errors import UserError, UserKeyError


@dataclass
class UnitScores:
    """One score per dataset × unit, a tensor [n_datasets, r] per module path: what the rankings
    read. Mean CI for subcomponents; other bases (neurons, singular directions) supply their own."""

    datasets: list[str]
    values: dict[str, torch.Tensor]

    def row(self, dataset: str) -> int:
        if dataset not in self.datasets:
            raise UserKeyError(f"dataset {dataset!r} not in these statistics; have {self.datasets}")
        return self.datasets.index(dataset)


@dataclass
class ComponentStats:
    """Per dataset × subcomponent statistics, one tensor [n_datasets, C] per module path."""

    datasets: list[str]
    threshold: float
    mean_ci: dict[str, torch.Tensor]
    firing_freq: dict[str, torch.Tensor]  # fraction of positions with CI > threshold
    mean_abs_inner_act: dict[str, torch.Tensor]  # mean |v_cᵀ x|
    tokens: dict[str, int]  # positions seen per dataset

    def scores(self, measure: str = "mean_ci") -> UnitScores:
        return UnitScores(self.datasets, getattr(self, measure))

    def profile(self, key: str) -> dict[str, dict[str, float]]:
        """Mean CI, firing frequency and mean |inner act| of one subcomponent on every dataset."""
        path, idx = parse_component_key(key)
        if path not in self.mean_ci:
            raise UserKeyError(f"unknown module {path!r}; modules: {sorted(self.mean_ci)}")
        return {
            d: {
                "mean_ci": float(self.mean_ci[path][i, idx]),
                "firing_freq": float(self.firing_freq[path][i, idx]),
                "mean_abs_inner_act": float(self.mean_abs_inner_act[path][i, idx]),
            }
            for i, d in enumerate(self.datasets)
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in ("mean_ci", "firing_freq", "mean_abs_inner_act"):
            for path, t in getattr(self, name).items():
                out[f"{name}.{path}"] = t
        return out


@torch.no_grad()
def component_stats(decomposition, datasets: dict[str, torch.Tensor], *, threshold: float = 0.1, batch_size: int = 8) -> ComponentStats:
    """Mean CI, firing frequency (CI > threshold) and mean |inner activation| per dataset."""
    if not datasets:
        raise UserError("component_stats needs at least one dataset")
    names = list(datasets)
    sums = {k: {p: torch.zeros(len(names), decomposition.C(p), dtype=torch.float64) for p in decomposition.module_paths} for k in ("ci", "fire", "act")}
    tokens = {}
    for row, name in enumerate(names):
        blocks = datasets[name]
        if blocks.numel() == 0:
            raise UserError(f"dataset {name!r} is empty")
        tokens[name] = blocks.numel()
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start : start + batch_size]
            ci = decomposition.causal_importance(batch)
            for p in decomposition.module_paths:
                lower = ci.lower[p].flatten(0, 1).double()  # [B*T, C]
                acts = decomposition.get_components(p).inner_acts(ci.pre_weight_acts[p]).flatten(0, 1).double()
                sums["ci"][p][row] += lower.sum(0)
                sums["fire"][p][row] += (lower > threshold).double().sum(0)
                sums["act"][p][row] += acts.abs().sum(0)
    n = torch.tensor([tokens[d] for d in names], dtype=torch.float64)[:, None]
    return ComponentStats(
        datasets=names, threshold=threshold,
        mean_ci={p: (s / n).float() for p, s in sums["ci"].items()},
        firing_freq={p: (s / n).float() for p, s in sums["fire"].items()},
        mean_abs_inner_act={p: (s / n).float() for p, s in sums["act"].items()},
        tokens=tokens,
    )


def _ranked(scores: dict[str, torch.Tensor], top: int | None, modules: list[str] | None) -> list[tuple[str, float]]:
    flat = [(format_component_key(p, i), float(v)) for p, s in scores.items() if modules is None or p in modules for i, v in enumerate(s.tolist())]
    flat.sort(key=lambda kv: kv[1], reverse=True)
    return flat[:top] if top is not None else flat


def rank_by_difference(stats: ComponentStats | UnitScores, target: str, reference: str,
        *, top: int | None = None, modules: list[str] | None = None) -> list[tuple[str, float]]:
    """The study's criterion: score (mean CI for ComponentStats) on `target` minus on `reference`
    (e.g. German − English), best first."""
    s = _unit_scores(stats)
    t, r = s.row(target), s.row(reference)
    return _ranked({p: m[t] - m[r] for p, m in s.values.items()}, top, modules)


def rank_by_specificity(stats: ComponentStats | UnitScores, target: str, protected: list[str],
                        *, top: int | None = None, modules: list[str] | None = None) -> list[tuple[str, float]]:
    """Score on `target` minus the maximum over every protected dataset (e.g. German − max(other languages)):
    penalises a unit that fires on *any* dataset the edit should spare."""
    if not protected:
        raise UserError("rank_by_specificity needs at least one protected dataset")
    s = _unit_scores(stats)
    t = s.row(target)
    rows = [s.row(d) for d in protected]
    return _ranked({p: m[t] - m[rows].max(0).values for p, m in s.values.items()}, top, modules)


def _unit_scores(stats: ComponentStats | UnitScores) -> UnitScores:
    return stats.scores() if isinstance(stats, ComponentStats) else stats
