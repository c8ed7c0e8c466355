"""Reading logits out of whatever a causal LM's forward returns."""

from __future__ import annotations

import torch


def logits_of(output) -> torch.Tensor:
    """The logits [B, T, V] of a forward's output: Hugging Face's `.logits`, a bare tensor, or the
    first element of a tuple (Goodfire's LlamaSimpleMLP returns `(logits, loss)`)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}: "
                    "expected a tensor, an object with .logits, or a tuple whose first element is the logits")


def model_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) of `model` on `input_ids` (passed positionally, as every causal LM takes them)."""
    return logits_of(model(input_ids))
