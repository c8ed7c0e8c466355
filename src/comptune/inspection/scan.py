"""Dose scan: choose what to edit by its measured effect, not by where it fires.

For each candidate unit (a subcomponent, an MLP unit or a singular direction — any basis given as
path -> Components(V [d_in, r], U [r, d_out])) the scan sets its scale s by hand, alone,

    edited layer:  y = W x + (s − 1) u_c (v_cᵀ x)        (ComponentScale's edit with one key)

and reads the held-out CE on a target dataset (what the edit should remove, e.g. German) and on a
reference dataset (what it must spare, e.g. English). Going outward from s = 1 on both sides over
a grid of |s − 1|, it stops at the first scale whose reference damage exceeds the bound and bisects
between it and the last scale within the bound. A candidate's result is its best target gain among
the scales within the bound, that s, and the whole curve.

Causal importance says where a subcomponent may be *ablated* (s ∈ [0, 1]); it does not say what an
inverted or amplified one writes where its CI is low but its activation is not zero. The scan
measures exactly that, in every basis.

Fast path: forward only; the frozen blocks before the candidate's layer run once per batch, in the
unedited pass that gives the base CE (their recorded output is replayed); the K (candidate, s) points of a round share one batched forward, each copy of
the batch carrying its own rank-1 add-on. CE is the evaluation's definition (first token of each
block never scored, mean over N·(T−1) predictions, float32 softmax, float64 sums).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..decomposition.components import Components, parse_component_key, validate_keys
from ..errors import UserError
from ..model.outputs import logits_of
from ..model.prefix import block_index, decoder_blocks, prefix_replayed, recording, repeat_output

# |s − 1| tried outward from s = 1 on each side before bisection; the German MLP unit of the
# bundled model needs s ≈ −32, so the grid reaches well past that
DEFAULT_GRID = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)


@dataclass
class ScanPoint:
    s: float
    gain: float | None  # target CE(s) − CE(1), nats; None at bisection points that only measured damage
    damage: float  # reference CE(s) − CE(1), nats


@dataclass
class CandidateScan:
    key: str
    best_gain: float  # largest target gain among points with damage ≤ bound (0 at s = 1)
    best_s: float
    best_damage: float
    curve: list[ScanPoint] = field(default_factory=list)  # every evaluated point, sorted by s

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def _rank1_add_ons(module: nn.Module, v: torch.Tensor, u: torch.Tensor, delta: torch.Tensor) -> Iterator[None]:
    """Copy k of the batch (the batch is K copies stacked) gets y += δ_k u_k (v_kᵀ x).
    v [K, d_in], u [K, d_out], δ [K]."""
    K = delta.shape[0]

    def hook(mod, args, output):
        x = args[0]
        xk = x.reshape(K, -1, *x.shape[1:])  # [K, B, T, d_in]
        a = torch.einsum("kbti,ki->kbt", xk.to(v.dtype), v) * delta[:, None, None]  # [K, B, T]
        add = a[..., None] * u[:, None, None, :]  # [K, B, T, d_out]
        return output + add.reshape(output.shape).to(output.dtype)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return logits_of(model(input_ids=ids))


def _nll_sums(logits: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
    """Summed next-token NLL per copy: logits [K·B, T, V], ids [B, T] -> [K] float64. The targets
    are shifted (last position ignored), not the logits, so the logits are never copied."""
    V = logits.shape[-1]
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = ids[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, V).float(), targets.repeat(k, 1).reshape(-1), ignore_index=-100, reduction="none")
    return nll.view(k, -1).double().sum(1)


class DoseScanner:
    """Evaluates hand-set single-unit scales on a target and a reference dataset, prefix cached.

    `datasets` maps a name to token blocks [N, T]; every evaluation returns the mean CE per dataset.
    """

    def __init__(self, model: nn.Module, basis: Mapping[str, Components], datasets: Mapping[str, torch.Tensor],
            *, batch_size: int = 8, points_per_forward: int = 8):
        if batch_size < 1 or points_per_forward < 1:
            raise UserError("batch_size and points_per_forward must be >= 1")
        for name, b in datasets.items():
            if b.dim() != 2 or b.shape[0] < 1 or b.shape[1] < 2 or b.dtype != torch.long:
                raise UserError(f"dataset {name!r} must be a LongTensor [N >= 1, T >= 2] of token blocks, got {b.dtype} {tuple(b.shape)}")
        self.model, self.basis, self.datasets = model, basis, dict(datasets)
        self.batch_size, self.K = batch_size, points_per_forward
        self.device = next(model.parameters()).device
        self.blocks_name, self.blocks = decoder_blocks(model)
        # (dataset, batch start) -> every block's output, recorded by the unedited pass below
        self._block_outputs: dict[tuple[str, int], dict[int, object]] = {}
        self.base = self._evaluate(None, [], torch.zeros(0))

    def _batches(self, name: str):
        blocks = self.datasets[name]
        for start in range(0, len(blocks), self.batch_size):
            yield start, blocks[start : start + self.batch_size].to(self.device)

    @contextmanager
    def _recording(self, name: str, start: int) -> Iterator[None]:
        """Record every block's output on this batch: what the edited passes replay."""
        with recording(self.blocks, range(len(self.blocks))) as outputs:
            yield
        self._block_outputs[(name, start)] = outputs

    @torch.inference_mode()
    def _evaluate(self, path: str | None, indices: list[int], deltas: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Mean CE per dataset (all, or `names`) for K points (index, δ = s − 1) of one module: {name: [K]} (K ≥ 1)."""
        k = max(len(indices), 1)
        out = {}
        was_training = self.model.training
        self.model.eval()
        try:
            for name in names or list(self.datasets):
                blocks = self.datasets[name]
                total = torch.zeros(k, dtype=torch.float64)
                for start, ids in self._batches(name):
                    # the unedited pass gives the base CE and records the block outputs edited passes replay
                    with self._recording(name, start) if path is None else self._edited(path, indices, deltas, (name, start)):
                        logits = _logits(self.model, ids.repeat(k, 1))
                    total += _nll_sums(logits, ids, k).cpu()
                out[name] = total / (blocks.shape[0] * (blocks.shape[1] - 1))
        finally:
            self.model.train(was_training)
        return out

    @contextmanager
    def _edited(self, path: str, indices: list[int], deltas: torch.Tensor, batch: tuple[str, int]) -> Iterator[None]:
        """K copies of `batch`, copy k with unit indices[k] of `path` scaled by 1 + deltas[k]; the
        blocks before the edited one are frozen, so their recorded output is replayed."""
        comp = self.basis[path]
        idx = torch.tensor(indices)
        v = comp.V[:, idx].T.to(self.device)  # [K, d_in]
        u = comp.U[idx].to(self.device)  # [K, d_out]
        layer = block_index(self.blocks_name, path)
        replay = prefix_replayed(self.blocks, layer, repeat_output(self._block_outputs[batch][layer - 1], len(indices))) if layer else nullcontext()
        with replay, _rank1_add_ons(self.model.get_submodule(path), v, u, deltas.to(self.device, v.dtype)):
            yield

    def ce_at(self, points: list[tuple[str, float]], names: list[str] | None = None) -> list[dict[str, float]]:
        """Mean CE per dataset (all, or `names`) with each (key, s) applied alone; points of one module share forwards."""
        results: list[dict[str, float] | None] = [None] * len(points)
        by_path: dict[str, list[int]] = {}
        for i, (key, _) in enumerate(points):
            by_path.setdefault(parse_component_key(key)[0], []).append(i)
        for path, rows in by_path.items():
            for j in range(0, len(rows), self.K):
                chunk = rows[j : j + self.K]
                indices = [parse_component_key(points[i][0])[1] for i in chunk]
                deltas = torch.tensor([points[i][1] - 1.0 for i in chunk], dtype=torch.float64)
                ce = self._evaluate(path, indices, deltas, names)
                for n, i in enumerate(chunk):
                    results[i] = {name: float(v[n]) for name, v in ce.items()}
        return results  # type: ignore[return-value]


def _midpoint(lo: float, hi: float) -> float:
    """Between the last dose within the bound (lo, 0 = none) and the first beyond it (hi): geometric
    once lo > 0, since doses span decades."""
    return math.sqrt(lo * hi) if lo > 0 else hi / 2


def dose_scan(scanner, keys: list[str], *, target: str, reference: str, bound: float = 0.1,
              grid: tuple[float, ...] = DEFAULT_GRID, bisect_steps: int = 5, log=None) -> list[CandidateScan]:
    """Scan every key on both sides of s = 1 (see the module docstring); best candidates first.

    `scanner` is a DoseScanner (anything with `datasets`, `basis`, `base` and `ce_at`). All
    candidates advance together one grid level (then one bisection step) per round, so a round's
    points share batched forwards. Grid points measure both datasets; bisection needs only the
    damage, so it reads the reference alone, and the target is read once more at each side's final
    dose within the bound (where the gain is largest when it grows with the dose)."""
    if bound <= 0:
        raise UserError(f"the damage bound must be > 0 nats, got {bound}")
    for name in (target, reference):
        if name not in scanner.datasets:
            raise UserError(f"dataset {name!r} is not among the scanner's datasets {sorted(scanner.datasets)}")
    if not grid or any(m <= 0 for m in grid) or list(grid) != sorted(grid):
        raise UserError(f"grid must be increasing positive |s − 1| values, got {grid}")
    validate_keys(scanner.basis, keys)
    base_t, base_r = float(scanner.base[target][0]), float(scanner.base[reference][0])
    curves: dict[str, dict[float, ScanPoint]] = {k: {1.0: ScanPoint(1.0, 0.0, 0.0)} for k in keys}
    # (key, sign) -> last magnitude within the bound (0 = none), and the first beyond it (None = none yet)
    within: dict[tuple[str, float], float] = {(k, sign): 0.0 for k in keys for sign in (-1.0, 1.0)}
    beyond: dict[tuple[str, float], float | None] = dict.fromkeys(within)

    def measure(todo: list[tuple[str, float, float]], names: list[str]) -> None:
        """Evaluate (key, sign, magnitude) points on `names`; record them; move each side's bracket."""
        points = [(k, 1.0 + sign * m) for k, sign, m in todo]
        for (k, sign, m), (_, s), ce in zip(todo, points, scanner.ce_at(points, names)):
            old = curves[k].get(s)
            gain = ce[target] - base_t if target in ce else (old.gain if old else None)
            if reference in ce:
                damage = ce[reference] - base_r
                if damage <= bound:
                    within[k, sign] = m
                else:
                    beyond[k, sign] = m
            else:
                assert old is not None  # points measured on the target alone had their damage measured before
                damage = old.damage
            curves[k][s] = ScanPoint(s, gain, damage)

    for m in grid:
        todo = [(k, sign, m) for (k, sign), hi in beyond.items() if hi is None]  # still within the bound at the last level
        if not todo:
            break
        measure(todo, [target, reference])
        if log:
            log(f"scan: |s − 1| = {m:g}: {len(todo)} points, {sum(1 for hi in beyond.values() if hi is None)} sides still within the bound")
    for _ in range(bisect_steps):
        todo = [(k, sign, _midpoint(within[k, sign], hi)) for (k, sign), hi in beyond.items() if hi is not None]
        if not todo:
            break
        measure(todo, [reference])
    finals = [(k, sign, lo) for (k, sign), lo in within.items() if lo > 0 and curves[k][1.0 + sign * lo].gain is None]
    if finals:
        measure(finals, [target])
    out = []
    for k in keys:
        curve = sorted(curves[k].values(), key=lambda p: p.s)
        best_gain, best = max(((p.gain, p) for p in curve if p.gain is not None and p.damage <= bound), key=lambda gp: gp[0])
        out.append(CandidateScan(k, best_gain, best.s, best.damage, curve))
    out.sort(key=lambda c: c.best_gain, reverse=True)
    return out


@torch.no_grad()
def attribution_scores(model: nn.Module, basis: Mapping[str, Components], datasets: Mapping[str, torch.Tensor],
        *, batch_size: int = 8) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """Per dataset and unit: `dce_ds`, the first-order effect dCE/ds at s = 1, and `write_power`, the
    mean squared write (v_cᵀ x)²·‖u_c‖² per token. {name: {path: [r]}} for each of the two."""
    device = next(model.parameters()).device
    out: dict[str, dict[str, dict[str, torch.Tensor]]] = {"dce_ds": {}, "write_power": {}}
    for name, blocks in datasets.items():
        grads = {p: torch.zeros(c.V.shape[1], dtype=torch.float64) for p, c in basis.items()}
        power = {p: torch.zeros(c.V.shape[1], dtype=torch.float64) for p, c in basis.items()}
        n_pred = blocks.shape[0] * (blocks.shape[1] - 1)
        for start in range(0, len(blocks), batch_size):
            ids = blocks[start : start + batch_size].to(device)
            zs, handles = {}, []
            for path, comp in basis.items():
                V, U = comp.V.to(device), comp.U.to(device)
                z = torch.zeros(V.shape[1], device=device, dtype=V.dtype, requires_grad=True)
                zs[path] = z

                def hook(mod, args, output, V=V, U=U, z=z, path=path):
                    a = args[0].to(V.dtype) @ V  # [B, T, r]
                    power[path] += (a.detach().pow(2).flatten(0, 1).double().sum(0) * U.detach().pow(2).sum(1).double().cpu())
                    return output + ((a * z) @ U).to(output.dtype)  # z = 0: the model is unchanged

                handles.append(model.get_submodule(path).register_forward_hook(hook))
            try:
                with torch.enable_grad():
                    logits = _logits(model, ids)
                    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="sum")
                    g = torch.autograd.grad(nll, list(zs.values()))
            finally:
                for h in handles:
                    h.remove()
            for path, gz in zip(zs, g):
                grads[path] += gz.double().cpu()
        out["dce_ds"][name] = {p: (v / n_pred).float() for p, v in grads.items()}
        out["write_power"][name] = {p: (v / (blocks.shape[0] * blocks.shape[1])).float() for p, v in power.items()}
    return out


RANKINGS = ("ci_difference", "ci_specificity", "attribution", "write_ratio")


def candidate_rankings(model: nn.Module, basis: Mapping[str, Components], datasets: Mapping[str, torch.Tensor], *, target: str, reference: str,
                       protected: list[str], decomposition=None, batch_size: int = 8) -> dict[str, list[tuple[str, float]]]:
    """Every unit ranked, best first, by each criterion this basis supports:
    - ci_difference / ci_specificity (subcomponents only): mean CI on target − reference / − max(protected);
    - attribution: |dCE_target/ds| − |dCE_reference/ds| at s = 1;
    - write_ratio: mean squared write on target / on reference."""
    from .stats import _ranked, component_stats, rank_by_difference, rank_by_specificity

    rankings = {}
    if decomposition is not None:
        stats = component_stats(decomposition, {n: datasets[n] for n in dict.fromkeys([target, reference, *protected])}, batch_size=batch_size)
        rankings["ci_difference"] = rank_by_difference(stats, target, reference)
        if protected:
            rankings["ci_specificity"] = rank_by_specificity(stats, target, protected)
    attr = attribution_scores(model, basis, {n: datasets[n] for n in (target, reference)}, batch_size=batch_size)
    t, r = attr["dce_ds"][target], attr["dce_ds"][reference]
    pt, pr = attr["write_power"][target], attr["write_power"][reference]
    rankings["attribution"] = _ranked({p: t[p].abs() - r[p].abs() for p in basis}, None, None)
    rankings["write_ratio"] = _ranked({p: pt[p] / (pr[p] + 1e-12) for p in basis}, None, None)
    return rankings


def pool_candidates(rankings: Mapping[str, list[tuple[str, float]]], top: int) -> list[str]:
    """The union of each ranking's top `top` keys, in order of first appearance."""
    keys: dict[str, None] = {}
    for ranked in rankings.values():
        keys.update(dict.fromkeys(k for k, _ in ranked[:top]))
    return list(keys)


def scan_report(*, model, tokenizer, decomposition, basis_name: str, modules: list[str] | None, target: str, reference: str,
                protected: list[str], keys: list[str] | None = None, n_blocks: int = 16, block_len: int = 128, bound: float = 0.1,
                top_per_ranking: int = 16, grid: tuple[float, ...] = DEFAULT_GRID, bisect_steps: int = 5, batch_size: int = 8,
                log=print) -> dict:
    """The whole scan as one JSON-able dict: candidates pooled from every ranking of the basis (or the
    given keys), each scanned; config, base CE, rankings' top keys and every curve recorded."""
    import fnmatch
    import time

    from .._io import versions
    from ..corpus.datasets import dataset_blocks
    from ..decomposition.bases import default_neuron_modules, linear_module_paths, neuron_components, svd_components

    if basis_name == "components":
        if decomposition is None:
            raise UserError("the components basis needs a decomposition")
        paths = list(decomposition.module_paths)
    elif basis_name == "neurons":
        paths = default_neuron_modules(model)
    elif basis_name == "svd":
        paths = linear_module_paths(model)
    else:
        raise UserError(f"unknown basis {basis_name!r}; choose components, neurons or svd")
    if modules:
        chosen = [p for p in paths if any(fnmatch.fnmatch(p, m) for m in modules)]
        if not chosen:
            raise UserError(f"--modules {modules} match none of the basis's modules: {', '.join(paths)}")
        paths = chosen
    if basis_name == "components":
        basis = {p: decomposition.get_components(p) for p in paths}
    else:
        basis = (neuron_components if basis_name == "neurons" else svd_components)(model, paths)
    names = list(dict.fromkeys([target, reference, *protected]))
    start = time.perf_counter()
    datasets = {}
    for n in names:
        blocks = dataset_blocks(n, tokenizer, block_len, max_blocks=n_blocks)
        if len(blocks) < n_blocks:
            raise UserError(f"dataset {n!r} has only {len(blocks)} blocks of {block_len} tokens, the scan asks for {n_blocks}; "
                             "lower --scan-blocks or give a larger dataset")
        datasets[n] = blocks
    rankings: dict[str, list[tuple[str, float]]] = {}
    if keys:
        candidates = list(keys)
    else:
        log(f"scan: ranking the {basis_name} basis of {len(paths)} modules"
            f" by {', '.join(RANKINGS if decomposition is not None and basis_name == 'components' else RANKINGS[2:])}")
        comp_decomp = decomposition if basis_name == "components" else None
        if comp_decomp is not None and set(paths) != set(decomposition.module_paths):
            comp_decomp = None  # CI rankings cover the whole decomposition; restricted modules rank by effect only
        rankings = candidate_rankings(model, basis, datasets, target=target, reference=reference, protected=protected,
                                      decomposition=comp_decomp, batch_size=batch_size)
        candidates = pool_candidates(rankings, top_per_ranking)
    log(f"scan: {len(candidates)} candidates, |s − 1| grid {list(grid)}, bound {bound} nats on {reference}")
    scanner = DoseScanner(model, basis, {target: datasets[target], reference: datasets[reference]}, batch_size=batch_size)
    results = dose_scan(scanner, candidates, target=target, reference=reference, bound=bound, grid=grid, bisect_steps=bisect_steps, log=log)
    ranks = {name: {k: i + 1 for i, (k, _) in enumerate(r)} for name, r in rankings.items()}
    ratios = dict(rankings.get("write_ratio", []))
    chance = math.log(model.get_output_embeddings().weight.shape[0])
    needed = chance - float(scanner.base[target][0])
    best = results[0]
    return {
        "config": {"basis": basis_name, "modules": paths, "target": target, "reference": reference, "protected": protected,
                   "keys": keys, "blocks_per_dataset": n_blocks, "block_len": block_len, "bound": bound,
                   "top_per_ranking": top_per_ranking, "grid": list(grid), "bisect_steps": bisect_steps, "seed": "deterministic (no sampling)"},
        "base_ce": {n: float(v[0]) for n, v in scanner.base.items()},
        "seconds": round(time.perf_counter() - start, 1),
        "rankings_top": {name: [[k, round(v, 6)] for k, v in r[:top_per_ranking]] for name, r in rankings.items()},
        "chance": chance,
        # the bar: one unit, scaled alone, puts the target at chance within the damage bound
        "bar": {"gain_to_chance": needed, "best_key": best.key, "best_gain": best.best_gain, "best_s": best.best_s,
                "best_damage": best.best_damage, "met": best.best_gain >= needed},
        "candidates": [{**r.to_dict(), "rank_in": {name: rk.get(r.key) for name, rk in ranks.items()}, "write_ratio": ratios.get(r.key)}
                       for r in results],
        "versions": versions(),
    }


def render_scan_text(report: dict, top: int = 20) -> str:
    cfg = report["config"]
    lines = [f"Dose scan ({cfg['basis']} basis): best {cfg['target']} gain with ≤ {cfg['bound']} nats damage on {cfg['reference']} "
             f"(base CE {report['base_ce'][cfg['target']]:.3f} / {report['base_ce'][cfg['reference']]:.3f})",
             f"  {'':>3}  {'key':<28} {'gain':>7} {'s':>9} {'damage':>7}  rank in " + ", ".join(report["rankings_top"]) ]
    for i, c in enumerate(report["candidates"][:top]):
        ranks = ", ".join("-" if v is None else str(v) for v in c["rank_in"].values())
        ratio = "" if c.get("write_ratio") is None else f"  write ratio {c['write_ratio']:.3g}"
        lines.append(f"  {i + 1:>3}. {c['key']:<28} {c['best_gain']:+7.3f} {c['best_s']:9.3g} {c['best_damage']:+7.3f}  {ranks}{ratio}")
    bar = report["bar"]
    lines.append(f"bar: {cfg['target']} at chance (ln|V| = {report['chance']:.3f}) needs +{bar['gain_to_chance']:.3f} nats; the best unit, "
                 f"{bar['best_key']}, reaches {bar['best_gain']:+.3f} at s = {bar['best_s']:.3g}: {'met' if bar['met'] else 'not met'}")
    return "\n".join(lines)


def plot_scan(report: dict, stem, top: int = 8) -> list:
    """The best candidates' curves: target gain against reference damage, the bound marked."""
    import matplotlib.pyplot as plt

    from .._figures import save_figure

    cfg = report["config"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, c in enumerate(report["candidates"][:top]):
        pts = sorted((p for p in c["curve"] if p["gain"] is not None), key=lambda p: p["s"])
        for side, sel in (("s<1", [p for p in pts if p["s"] <= 1]), ("s>1", [p for p in pts if p["s"] >= 1])):
            if len(sel) > 1:
                ax.plot([p["damage"] for p in sel], [p["gain"] for p in sel], marker="o", ms=2.5, lw=1, color=f"C{i % 10}",
                        ls="-" if side == "s<1" else ":", label=f"{c['key']} (best s={c['best_s']:.3g})" if side == "s<1" else None)
    ax.axvline(cfg["bound"], color="k", lw=0.8, ls="--")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel(f"damage: CE increase on {cfg['reference']} (nats; symlog scale, linear within ±0.01)")
    ax.set_ylabel(f"gain: CE increase on {cfg['target']} (nats)")
    ax.set_title(f"Dose scan, {cfg['basis']} basis (solid s<1, dotted s>1)", fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, stem)
