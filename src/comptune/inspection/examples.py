"""What a subcomponent does: activating examples, input/output-token PMI, write-vector logit effects.

One pass over the data serves every requested key: causal importance is computed once per batch.
- Input-token PMI: log P(token at the position | subcomponent fires) / P(token).
- Output-token PMI: the same for the *next* token in the text (what the model should predict
  where the subcomponent fires).
- Write-vector effects: the tokens whose logits the write vector u_c raises and lowers through the
  unembedding (direct path only; for a value or MLP-in vector it is first mapped through the
  module that reads it: o_proj for v_proj, down_proj for c_fc — the latter ignores the GELU).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter

import torch

from ..decomposition.components import parse_component_key, validate_keys
from ..errors import UserError

# where a module's output goes before it reaches the residual stream
_READER_OF = {"v_proj": "o_proj", "c_fc": "down_proj"}
# modules whose output only forms attention scores (GPT-2's fused c_attn mixes q, k and v)
_NOT_RESIDUAL = {"q_proj", "k_proj", "c_attn"}


def _parsed_keys(decomposition, keys: list[str]) -> list[tuple[str, int]]:
    validate_keys(decomposition, keys)
    return [parse_component_key(k) for k in keys]


@torch.no_grad()
def inspect_components(
    decomposition,
    tokenizer,
    datasets: dict[str, torch.Tensor],
    keys: list[str],
    *,
    threshold: float = 0.1,
    n_examples: int = 8,
    window: int = 12,
    n_tokens: int = 12,
    min_count: int = 3,
    batch_size: int = 8,
) -> dict[str, dict]:
    """Per key: the top `n_examples` activating examples of each dataset, in the datasets' order
    (firing token marked ⟦…⟧ with its CI; per dataset, so a subcomponent ranked for German shows
    German examples even where it fires harder elsewhere), firing counts per dataset, and
    input/output-token PMI lists (tokens seen at least `min_count` times when firing; equal PMI
    ranked by count)."""
    parsed = _parsed_keys(decomposition, keys)
    heaps: dict[str, dict[str, list]] = {k: {name: [] for name in datasets} for k in keys}
    fire_in: dict[str, Counter[int]] = {k: Counter() for k in keys}
    fire_out: dict[str, Counter[int]] = {k: Counter() for k in keys}
    fires: dict[str, Counter[str]] = {k: Counter() for k in keys}
    all_in: Counter[int] = Counter()
    all_out: Counter[int] = Counter()
    counter = 0  # tie-breaker so heap entries never compare tensors
    for name, blocks in datasets.items():
        if blocks.numel() == 0:
            raise UserError(f"dataset {name!r} is empty")
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start : start + batch_size]  # [B, T]
            all_in.update(batch.flatten().tolist())
            all_out.update(batch[:, 1:].flatten().tolist())
            ci = decomposition.causal_importance(batch)
            for key, (path, idx) in zip(keys, parsed):
                c = ci.lower[path][..., idx]  # [B, T]
                for b, t in (c > threshold).nonzero().tolist():
                    fires[key][name] += 1
                    fire_in[key][int(batch[b, t])] += 1
                    if t + 1 < batch.shape[1]:
                        fire_out[key][int(batch[b, t + 1])] += 1
                    item = (float(c[b, t]), counter, batch[b], t)
                    counter += 1
                    heap = heaps[key][name]
                    if len(heap) < n_examples:
                        heapq.heappush(heap, item)
                    else:
                        heapq.heappushpop(heap, item)
    n_in, n_out = sum(all_in.values()), sum(all_out.values())
    reports = {}
    for key in keys:
        examples: dict[str, list[dict]] = {}
        for name, heap in heaps[key].items():
            examples[name] = []
            for value, _, row, t in sorted(heap, key=lambda it: -it[0]):
                lo, hi = max(0, t - window), min(len(row), t + window // 3 + 1)
                left = tokenizer.decode(row[lo:t].tolist())
                tok = tokenizer.decode(row[t : t + 1].tolist())
                right = tokenizer.decode(row[t + 1 : hi].tolist())
                examples[name].append({"ci": round(value, 4), "text": f"{left}⟦{tok}⟧{right}", "token": tok})
        reports[key] = {
            "fires": dict(fires[key]),
            "examples": examples,
            "input_pmi": _pmi(fire_in[key], all_in, n_in, tokenizer, n_tokens, min_count),
            "output_pmi": _pmi(fire_out[key], all_out, n_out, tokenizer, n_tokens, min_count),
        }
    return reports


def _pmi(fired: Counter, overall: Counter, n_overall: int, tokenizer, top: int, min_count: int) -> list[dict]:
    n_fired = sum(fired.values())
    if n_fired == 0:
        return []
    rows = [
        (math.log((c / n_fired) / (overall[tok] / n_overall)), tok, c)
        for tok, c in fired.items() if c >= min_count
    ]
    rows.sort(key=lambda r: (r[0], r[2]), reverse=True)  # tokens seen only when firing tie on PMI: more often first
    return [{"token": tokenizer.decode([tok]), "pmi": round(p, 3), "count": c} for p, tok, c in rows[:top]]


@torch.no_grad()
def write_vector_logits(model, path: str, U: torch.Tensor) -> torch.Tensor | None:
    """[r, V]: how much each write vector (rows of U [r, d_out], written by module `path`) raises each
    token's logit along the direct path to the unembedding. None where the module's output never
    enters the residual stream linearly (q, k) or is not in its basis."""
    module_name = path.rsplit(".", 1)[-1]
    if module_name in _NOT_RESIDUAL:
        return None
    u = U.detach().float()  # [r, d_out]
    if module_name in _READER_OF:
        reader = dict(model.named_modules()).get(f"{path.rsplit('.', 1)[0]}.{_READER_OF[module_name]}")  # sibling module
        if reader is None:
            return None
        u = u @ reader.weight.detach().float().T  # [r, d_model]
    unembed = model.get_output_embeddings().weight.detach().float()  # [V, d_model]
    if u.shape[1] != unembed.shape[1]:
        return None  # a module whose output is not in the residual basis
    norm = getattr(model, "ln_f", None)
    if norm is not None and getattr(norm, "weight", None) is not None:
        u = u * norm.weight.detach().float()  # the final norm's gain, without its data-dependent scale
    return u @ unembed.T  # [r, V]


def top_logit_tokens(logits: torch.Tensor, top: int, decode) -> tuple[list[list[dict]], list[list[dict]]]:
    """Per row of logits [r, V]: the `top` promoted and the `top` suppressed tokens."""
    up, down = logits.topk(top, dim=-1), (-logits).topk(top, dim=-1)
    promoted = [[{"token": decode(i), "logit": round(v, 3)} for v, i in zip(vs, ids)]
                for vs, ids in zip(up.values.tolist(), up.indices.tolist())]
    suppressed = [[{"token": decode(i), "logit": round(-v, 3)} for v, i in zip(vs, ids)]
                  for vs, ids in zip(down.values.tolist(), down.indices.tolist())]
    return promoted, suppressed


def write_vector_effects(model, decomposition, key: str, *, top: int = 10, tokenizer=None) -> dict | None:
    """Tokens whose logits u_c most raises / lowers along the direct path to the unembedding.
    None for subcomponents whose output never enters the residual stream linearly (q, k)."""
    (path, idx), = _parsed_keys(decomposition, [key])
    logits = write_vector_logits(model, path, decomposition.get_components(path).U[idx : idx + 1])
    if logits is None:
        return None
    promoted, suppressed = top_logit_tokens(logits, top, (lambda i: tokenizer.decode([i])) if tokenizer is not None else str)
    return {"promoted": promoted[0], "suppressed": suppressed[0]}
