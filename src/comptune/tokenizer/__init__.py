"""Byte-level BPE tokenizer trained on the corpus (HF `tokenizers`)."""

from .train import BOS_TOKEN, train_tokenizer

__all__ = ["BOS_TOKEN", "train_tokenizer"]
