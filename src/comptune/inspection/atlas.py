"""Everything a browser shows about every unit of a basis, from one pass over the data.

A unit is a VPD subcomponent (its score at a position is its causal importance, in [0, 1]) or a
unit of another basis: an MLP unit or a singular direction, scored by its activation |v_cᵀ x|
relative to its largest on these data (so one threshold means "firing" in every basis).

The pass stores every unit's score at every position ([N positions, r] per module, float16), then
works per module with whole-tensor operations, so the bundled decomposition's 8,192 subcomponents
cost about as much as a few of them:

- profile: mean score, firing frequency (score > threshold) and max per dataset;
- density: a histogram of the score over all positions;
- examples: per dataset, the blocks where the unit scores highest (one example per block, so the
  list is not the same sentence k times), as token windows with the unit's score at every token;
- input/output-token PMI (as in `inspect_components`);
- co-firing: the units of the same matrix whose firing positions overlap most (Jaccard);
- write vector: tokens its write vector promotes / suppresses through the unembedding;
- label: the language(s) of its top examples and its per-language profile (`labels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn as nn

from ..decomposition.components import Components, format_component_key
from ..errors import UserError
from .examples import top_logit_tokens, write_vector_logits
from .labels import dataset_languages, example_language, language_label, language_profile

SCORE_NAMES = {"components": "CI", "neurons": "activation", "svd": "activation"}


@dataclass
class AtlasSettings:
    threshold: float = 0.1  # score above which a unit counts as firing
    n_examples: int = 5  # top examples per dataset
    before: int = 12  # tokens shown before the top token
    after: int = 4  # and after it
    lang_context: int = 24  # tokens either side read by the language identifier
    n_label_examples: int = 20  # top examples over all datasets that the label reads
    n_pmi: int = 10
    min_count: int = 3  # PMI lists only tokens seen this often where the unit fires
    n_cofiring: int = 5
    n_write: int = 8
    bins: int = 20
    batch_size: int = 8


@dataclass
class Atlas:
    basis: str  # components | neurons | svd
    score_name: str
    datasets: list[str]
    languages: dict[str, str]  # dataset -> language ("de", "code", …)
    settings: AtlasSettings
    units: dict[str, dict] = field(default_factory=dict)  # key -> JSON-able record

    def index_rows(self) -> list[dict]:
        """One short row per unit, for a table of every unit."""
        return [{"key": k, "module": u["module"], "layer": u["layer"], "freq": u["freq"], "max": u["max"],
                 "mean": [u["profile"][d]["mean"] for d in self.datasets], "label": u["label"]} for k, u in self.units.items()]


def _layer_of(path: str) -> int | None:
    parts = [p for p in path.split(".") if p.isdigit()]
    return int(parts[0]) if parts else None


@torch.no_grad()
def _scores(model: nn.Module, decomposition, basis: Mapping[str, Components], units: dict[str, list[int]],
            blocks: Mapping[str, torch.Tensor], batch_size: int) -> dict[str, torch.Tensor]:
    """{path: [N, r] float16}: every unit's score at every position of every dataset, in order."""
    n = sum(b.numel() for b in blocks.values())
    out = {p: torch.empty(n, len(idx), dtype=torch.float16) for p, idx in units.items()}
    captured: dict[str, torch.Tensor] = {}
    handles = []
    if decomposition is None:  # activation bases: read each module's input with a hook
        for p in units:
            handles.append(model.get_submodule(p).register_forward_hook(
                lambda mod, args, output, p=p: captured.__setitem__(p, args[0].detach())))
    try:
        row = 0
        for name, b in blocks.items():
            if b.numel() == 0:
                raise UserError(f"dataset {name!r} is empty")
            for start in range(0, len(b), batch_size):
                batch = b[start : start + batch_size]
                if decomposition is not None:
                    ci = decomposition.causal_importance(batch)
                    per = {p: ci.lower[p][..., idx] for p, idx in units.items()}
                else:
                    model(input_ids=batch)
                    per = {p: (captured[p].to(basis[p].V.dtype) @ basis[p].V[:, idx]).abs() for p, idx in units.items()}
                for p, s in per.items():
                    out[p][row : row + batch.numel()] = s.flatten(0, 1).to(torch.float16)
                row += batch.numel()
    finally:
        for h in handles:
            h.remove()
    return out


@torch.no_grad()
def build_atlas(model: nn.Module, tokenizer, blocks: Mapping[str, torch.Tensor], *, decomposition=None,
                basis: Mapping[str, Components] | None = None, basis_name: str = "components",
                units: dict[str, list[int]] | None = None, settings: AtlasSettings | None = None, log=print) -> Atlas:
    """The atlas of a decomposition's subcomponents (`decomposition`) or of another basis (`basis`,
    path -> Components, named `basis_name`). `units` restricts it to some units per module."""
    cfg = settings or AtlasSettings()
    if (decomposition is None) == (basis is None):
        raise UserError("build_atlas takes either a decomposition or another basis, not both or neither")
    if not blocks:
        raise UserError("build_atlas needs at least one dataset")
    if decomposition is not None:
        basis = {p: decomposition.get_components(p) for p in decomposition.module_paths}
        basis_name = "components"
    assert basis is not None  # exactly one of decomposition and basis was given (checked above)
    units = units or {p: list(range(c.U.shape[0])) for p, c in basis.items()}
    unknown = sorted(set(units) - set(basis))
    if unknown:
        raise UserError(f"modules {unknown} are not in the {basis_name} basis; its modules: {', '.join(basis)}")
    lengths = {b.shape[1] for b in blocks.values()}
    if len(lengths) != 1:
        raise UserError(f"every dataset's blocks must have one length, got {sorted(lengths)}")
    T = lengths.pop()
    names = list(blocks)
    ids = torch.cat([b.flatten() for b in blocks.values()]).cpu()  # [N]
    n_blocks = [len(b) for b in blocks.values()]
    block_start = torch.tensor([0, *n_blocks]).cumsum(0).tolist()  # dataset d's blocks: block_start[d] .. block_start[d+1]
    block_dataset = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(n_blocks))  # [NB]
    log(f"atlas: scoring {sum(map(len, units.values()))} units of {len(units)} modules on {len(names)} datasets "
        f"({ids.numel()} positions)")
    scores = _scores(model, decomposition, basis, units, blocks, cfg.batch_size)
    languages = dataset_languages(blocks, tokenizer)
    vocab = model.get_output_embeddings().weight.shape[0]  # type: ignore[operator]
    decode_one = _cached_decoder(tokenizer)
    lang_of = _example_language(ids, T, block_dataset, names, languages, tokenizer, cfg.lang_context)
    atlas = Atlas(basis=basis_name, score_name=SCORE_NAMES[basis_name], datasets=names, languages=languages, settings=cfg)
    for path, idx in units.items():
        S = scores.pop(path).float()  # [N, r]
        raw_max = None
        if decomposition is None:  # activations relative to each unit's largest here
            raw_max = S.max(0).values
            S = S / raw_max.clamp(min=1e-12)
        write = write_vector_logits(model, path, basis[path].U[idx])
        _module_records(atlas, path, idx, S, raw_max, ids, T, block_start, block_dataset, vocab, decode_one, lang_of, write, cfg)
    return atlas


def _cached_decoder(tokenizer) -> Callable[[int], str]:
    cache: dict[int, str] = {}

    def decode(i: int) -> str:
        if i not in cache:
            cache[i] = tokenizer.decode([i])
        return cache[i]

    return decode


def _example_language(ids: torch.Tensor, T: int, block_dataset: torch.Tensor, names: list[str], languages: dict[str, str],
                      tokenizer, context: int):
    """lang_of(block, t): the language of the text around position t of a block (`example_language`)."""
    cache: dict[tuple[int, int], str] = {}

    def lang_of(block: int, t: int) -> str:
        if (block, t) not in cache:
            lo, hi = block * T + max(0, t - context), block * T + min(T, t + context + 1)
            cache[block, t] = example_language(tokenizer.decode(ids[lo:hi].tolist()), languages[names[int(block_dataset[block])]])
        return cache[block, t]

    return lang_of


def _module_records(atlas: Atlas, path: str, idx: list[int], S: torch.Tensor, raw_max, ids: torch.Tensor, T: int,
                    block_start: list[int], block_dataset: torch.Tensor, vocab: int, decode, lang_of, write, cfg: AtlasSettings) -> None:
    N, r = S.shape
    NB = N // T
    names = atlas.datasets
    fired = S > cfg.threshold  # [N, r]
    # per-dataset profile
    per_block = S.view(NB, T, r)
    profile_mean, profile_freq, profile_max = [], [], []
    for d in range(len(names)):
        rows = per_block[block_start[d] : block_start[d + 1]].reshape(-1, r)
        profile_mean.append(rows.mean(0))
        profile_freq.append((rows > cfg.threshold).float().mean(0))
        profile_max.append(rows.max(0).values)
    mean, freq, mx = torch.stack(profile_mean), torch.stack(profile_freq), torch.stack(profile_max)  # [D, r]
    # density of the score over every position
    bins = (S.clamp(0, 1) * cfg.bins).long().clamp(max=cfg.bins - 1)  # [N, r]
    hist = torch.zeros(r, cfg.bins).scatter_add_(1, bins.T, torch.ones(r, N))
    # one example per block, at the block's top position; blocks ranked by top score plus mean score,
    # since CI saturates at 1 and many blocks tie on their top alone
    block_max = per_block.max(1).values  # [NB, r]
    # the top position: among tied scores (CI saturates at 1) the one with most left context to show
    context = (torch.arange(T).clamp(max=cfg.before).float() * 1e-6)[None, :, None]
    block_arg = (per_block + context).argmax(1)  # [NB, r]
    block_rank = block_max + per_block.mean(1)
    examples = _examples(atlas, S, ids, T, block_start, block_rank, block_arg, cfg)
    # over every dataset; no more than the smallest dataset has blocks, or a unit of one language
    # could never fill the list with its own
    n_label = min(cfg.n_label_examples, *(block_start[d + 1] - block_start[d] for d in range(len(names))))
    label_top = block_rank.topk(n_label, dim=0)
    block_arg_l = block_arg.tolist()
    block_max_l = block_max.tolist()
    input_pmi, output_pmi = _pmi_lists(fired, ids, T, vocab, cfg, decode)
    cofiring = _cofiring(fired, cfg.n_cofiring)
    promoted = suppressed = None
    if write is not None:
        promoted, suppressed = top_logit_tokens(write, cfg.n_write, decode)
    overall_freq = fired.float().mean(0).tolist()
    overall_max = S.max(0).values.tolist()
    mean_l, freq_l, max_l = mean.tolist(), freq.tolist(), mx.tolist()
    label_blocks = label_top.indices.T.tolist()
    for j, unit in enumerate(idx):
        key = format_component_key(path, unit)
        profile = {d: {"mean": round(mean_l[i][j], 5), "freq": round(freq_l[i][j], 5), "max": round(max_l[i][j], 4)}
                   for i, d in enumerate(names)}
        langs = [lang_of(b, block_arg_l[b][j]) for b in label_blocks[j] if block_max_l[b][j] > cfg.threshold]
        label, evidence = language_label(langs, language_profile({d: p['mean'] for d, p in profile.items()}, atlas.languages), atlas.score_name, cfg.threshold)
        rec = {
            "key": key, "module": path, "layer": _layer_of(path), "index": unit,
            "freq": round(overall_freq[j], 5), "max": round(overall_max[j], 4),
            "profile": profile,
            "hist": [int(c) for c in hist[j].tolist()],
            "examples": {d: examples[d][j] for d in names},
            "input_pmi": input_pmi[j], "output_pmi": output_pmi[j],
            "cofiring": [{"key": format_component_key(path, idx[k]), "jaccard": round(v, 3)} for k, v in cofiring[j]],
            "write": None if promoted is None or suppressed is None else {"promoted": promoted[j], "suppressed": suppressed[j]},
            "label": label, "evidence": evidence,
        }
        if raw_max is not None:
            rec["activation_max"] = round(float(raw_max[j]), 4)
        atlas.units[key] = rec


def _examples(atlas: Atlas, S: torch.Tensor, ids: torch.Tensor, T: int, block_start: list[int], block_rank: torch.Tensor,
              block_arg: torch.Tensor, cfg: AtlasSettings) -> dict[str, list[list[dict]]]:
    """{dataset: per unit, its top examples}: each {"ids", "scores", "at" (index of the top token), "score"},
    from the dataset's best-ranked blocks."""
    r = S.shape[1]
    offsets = torch.arange(-cfg.before, cfg.after + 1)  # [W]
    out = {}
    for d, name in enumerate(atlas.datasets):
        lo, hi = block_start[d], block_start[d + 1]
        k = min(cfg.n_examples, hi - lo)
        top = block_rank[lo:hi].topk(k, dim=0)  # [k, r]
        blocks = top.indices + lo  # [k, r] global block index
        t = block_arg[blocks, torch.arange(r)]  # [k, r]
        pos = (t[..., None] + offsets).clamp(0, T - 1)  # [k, r, W]; repeated edge positions are dropped below
        flat = blocks[..., None] * T + pos
        win_ids = ids[flat].tolist()  # [k, r, W]
        win_scores = _rounded(S[flat, torch.arange(r)[None, :, None]], 2).tolist()
        values, ts = S[blocks * T + t, torch.arange(r)].tolist(), t.tolist()
        per_unit: list[list[dict]] = [[] for _ in range(r)]
        for e in range(k):
            for j in range(r):
                start = max(0, ts[e][j] - cfg.before)
                n = min(T, ts[e][j] + cfg.after + 1) - start
                skip = start - (ts[e][j] - cfg.before)  # window positions clamped at the block's start
                per_unit[j].append({"ids": win_ids[e][j][skip : skip + n], "scores": win_scores[e][j][skip : skip + n],
                                    "at": ts[e][j] - start, "score": round(values[e][j], 4)})
        out[name] = per_unit
    return out


def _rounded(x: torch.Tensor, digits: int) -> torch.Tensor:
    """Rounded in float64, so the JSON holds 0.78, not 0.7799999713897705."""
    scale = 10.0 ** digits
    return (x.double() * scale).round() / scale


def _pmi_lists(fired: torch.Tensor, ids: torch.Tensor, T: int, vocab: int, cfg: AtlasSettings, decode) -> tuple[list, list]:
    """Input- and output-token PMI per unit: log P(token | unit fires) / P(token), tokens seen ≥ min_count
    times where it fires; tokens seen only when firing tie on PMI, the more often seen first."""
    r = fired.shape[1]
    nxt = torch.full_like(ids, -1)
    nxt[:-1] = ids[1:]
    nxt[T - 1 :: T] = -1  # a block's last position has no next token in the block
    lists = []
    for tokens in (ids, nxt):
        valid = tokens >= 0
        overall = torch.bincount(tokens[valid], minlength=vocab).double()
        p_tok = overall / overall.sum()
        n, c = (fired & valid[:, None]).nonzero(as_tuple=True)
        pairs, counts = torch.unique(c * vocab + tokens[n], return_counts=True)  # (unit, token) pairs, sorted by unit
        unit, tok = pairs // vocab, pairs % vocab
        n_fired = torch.bincount(unit, weights=counts.double(), minlength=r)
        keep = counts >= cfg.min_count
        unit, tok, counts = unit[keep], tok[keep], counts[keep]
        pmi = torch.log(counts.double() / n_fired[unit] / p_tok[tok])
        order = torch.sort(pmi + counts * 1e-9, descending=True, stable=True).indices
        order = order[torch.sort(unit[order], stable=True).indices]  # by unit, best first within a unit
        per_unit: list[list[dict]] = [[] for _ in range(r)]
        for j, p, i, k in zip(unit[order].tolist(), pmi[order].tolist(), tok[order].tolist(), counts[order].tolist()):
            if len(per_unit[j]) < cfg.n_pmi:
                per_unit[j].append({"token": decode(i), "pmi": round(p, 3), "count": k})
        lists.append(per_unit)
    return lists[0], lists[1]


def _cofiring(fired: torch.Tensor, top: int) -> list[list[tuple[int, float]]]:
    """Per unit, the units of its matrix whose firing positions overlap its own most (Jaccard > 0)."""
    f = fired.float()
    co = f.T @ f  # [r, r]
    n = co.diagonal()
    jac = co / (n[:, None] + n[None, :] - co).clamp(min=1)
    jac.fill_diagonal_(0)
    best = jac.topk(min(top, max(jac.shape[1] - 1, 1)), dim=1)
    return [[(i, v) for v, i in zip(vs, ix) if v > 0] for vs, ix in zip(best.values.tolist(), best.indices.tolist())]
