"""One way to turn a dataset name (bundled) or a path (text/JSONL/HF dataset) into token blocks."""

from __future__ import annotations

import torch

from .bundle import BUNDLED_DATASETS, bundled_texts


def dataset_texts(name_or_path: str, **load_kwargs) -> list[str]:
    if name_or_path in BUNDLED_DATASETS:
        return bundled_texts(name_or_path)
    from .loading import load_texts

    return load_texts(name_or_path, **load_kwargs)


def dataset_blocks(name_or_path: str, tokenizer, block_len: int, max_blocks: int | None = None, **load_kwargs) -> torch.Tensor:
    """[N, block_len] token blocks of a bundled dataset name or a path understood by `load_texts`."""
    from .loading import tokenize_to_blocks

    return tokenize_to_blocks(tokenizer, dataset_texts(name_or_path, **load_kwargs), block_len, max_blocks=max_blocks)
