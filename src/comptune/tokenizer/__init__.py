"""Byte-level BPE tokenizer trained on the corpus (HF `tokenizers`)."""

from .._lazy import lazy_exports

__all__ = ["BOS_TOKEN", "train_tokenizer"]

# imported on first use (comptune --help must not import torch)
__getattr__, __dir__ = lazy_exports(__name__, {
    "BOS_TOKEN": ".train",
    "train_tokenizer": ".train",
})
