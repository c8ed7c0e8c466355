"""Train a byte-level BPE tokenizer and wrap it as a `PreTrainedTokenizerFast`.

One special token, `<|endoftext|>`, is BOS, EOS and padding alike (GPT-2 / GPT-NeoX style):
documents are joined with it, so the first token of every evaluation block is a real token whose
prediction is excluded from the cross-entropy.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..errors import UserError

BOS_TOKEN = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    if vocab_size < 300:
        raise UserError(f"vocab_size={vocab_size} is too small for a byte-level BPE (needs > 256 + specials)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[BOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(texts)
    if not any(t.strip() for t in texts):
        raise UserError("cannot train a tokenizer on empty text")
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=BOS_TOKEN, pad_token=BOS_TOKEN, unk_token=None,
        model_max_length=1_000_000,
    )
