"""One way to turn a dataset name (bundled) or a path (text/JSONL/HF dataset) into token blocks."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from .bundle import BUNDLED_DATASETS, bundled_texts


def dataset_texts(name_or_path: str, **load_kwargs) -> list[str]:
    """The texts of a bundled dataset, a local file or folder, or a Hub dataset ("owner/name")."""
    if name_or_path in BUNDLED_DATASETS:
        return bundled_texts(name_or_path)
    if "/" not in name_or_path and not Path(name_or_path).exists():
        raise UserError(f"unknown dataset {name_or_path!r}: not a bundled dataset ({', '.join(BUNDLED_DATASETS)}) "
                         "and no such file or directory")
    from .loading import load_texts

    return load_texts(name_or_path, **load_kwargs)


def dataset_blocks(name_or_path: str, tokenizer, block_len: int, max_blocks: int | None = None, **load_kwargs) -> torch.Tensor:
    """[N, block_len] token blocks of a bundled dataset name or a path understood by `load_texts`."""
    from .loading import tokenize_to_blocks

    return tokenize_to_blocks(tokenizer, dataset_texts(name_or_path, **load_kwargs), block_len, max_blocks=max_blocks)


def mix_windows(streams: dict[str, torch.Tensor], mix: dict[str, float], n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """[n, length] random windows of per-language token streams, each row's language drawn with
    the mix probabilities: a pretraining batch, or a model's own training mix to decompose it on."""
    missing = sorted(set(mix) - set(streams))
    if missing:
        raise UserError(f"no token stream for language(s) {missing} of the mix; have {sorted(streams)}")
    langs = sorted(mix)
    probs = torch.tensor([mix[lang] for lang in langs], dtype=torch.float64)
    choice = torch.multinomial(probs, n, replacement=True, generator=gen)
    rows = []
    for i in choice.tolist():
        s = streams[langs[i]]
        if len(s) < length:
            raise UserError(f"token stream {langs[i]!r} has {len(s)} tokens, fewer than one window of {length}")
        start = int(torch.randint(0, len(s) - length + 1, (1,), generator=gen))
        rows.append(s[start : start + length])
    return torch.stack(rows)


# generous: BPE averages 3–5 characters per token, so this always yields max_blocks full blocks
_CHARS_PER_TOKEN_BOUND = 16


def sample_blocks(name: str, tokenizer, block_len: int, max_blocks: int) -> torch.Tensor:
    """[≤ max_blocks, block_len] blocks of a dataset, tokenizing only a spread-out sample of its text.

    The bundled training splits hold tens of MB of text; tokenizing all of it to keep a few dozen
    blocks would dominate a sweep's start-up. Documents are taken with a stride through the whole
    dataset until about `max_blocks · block_len · 16` characters are collected."""
    texts = dataset_texts(name)
    want = max_blocks * block_len * _CHARS_PER_TOKEN_BOUND
    total = sum(len(t) for t in texts)
    if total <= want:
        return _blocks_of(name, tokenizer, texts, block_len, max_blocks)
    stride = max(1, total // want)
    # every stride-th document until enough characters; only if those give fewer than max_blocks
    # blocks (a few short documents where the stride skips long ones) the documents after them too,
    # so every sample that was already full stays exactly what it was
    for offsets in sorted({1, stride}):  # one pass when the stride is 1: it already takes every document
        picked, n = [], 0
        for t in (t for offset in range(offsets) for t in texts[offset::stride]):
            picked.append(t[: want - n])
            n += len(picked[-1])
            if n >= want:
                break
        blocks = _blocks_of(name, tokenizer, picked, block_len, max_blocks, short_ok=offsets == 1 < stride)
        if len(blocks) >= max_blocks:
            break
    return blocks


def _blocks_of(name: str, tokenizer, texts: list[str], block_len: int, max_blocks: int, short_ok: bool = False) -> torch.Tensor:
    from .loading import tokenize_to_blocks

    try:
        return tokenize_to_blocks(tokenizer, texts, block_len, max_blocks=max_blocks)
    except ValueError as e:
        if short_ok:  # not even one block yet: the second pass takes more documents
            return torch.empty(0, block_len, dtype=torch.long)
        raise UserError(f"dataset {name!r}: {e}") from None
