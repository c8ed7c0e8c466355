"""Run a model from block ℓ on: frozen blocks before an edit are computed once and replayed.

An edit confined to block ℓ and later leaves the output of blocks 0..ℓ−1 unchanged, so a pass
of the unedited model can record it and every edited pass on the same input replays it: the
blocks before ℓ are swapped for a module that returns the recorded output, whatever its input.
Works for any model whose blocks form one nn.ModuleList (ComptuneLM `h`, GPT-2 `transformer.h`,
Llama `model.layers`, GPT-NeoX `gpt_neox.layers`); the embedding still runs (its output is ignored).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.nn as nn

from ..errors import UserError


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of transformer blocks: the longest nn.ModuleList of same-typed modules."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) and len({type(b) for b in m}) == 1:
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    if best is None:
        raise UserError(f"{type(model).__name__} has no stack of blocks (nn.ModuleList) to cache a prefix of")
    return best


def block_index(blocks_name: str, path: str) -> int | None:
    """Index of the block holding module `path` ("h.3.mlp.down_proj" -> 3), None if outside the stack."""
    m = re.match(re.escape(blocks_name) + r"\.(\d+)\.", path)
    return int(m.group(1)) if m else None


def first_edited_block(model: nn.Module, paths: Iterable[str]) -> int:
    """The first block an edit of modules `paths` (paths in `model`) touches; 0 (nothing to cache)
    when any of them lies outside the block stack, e.g. the embedding or the unembedding."""
    try:
        blocks_name, _ = decoder_blocks(model)
    except ValueError:
        return 0
    layers = [block_index(blocks_name, p) for p in paths]
    in_stack = [layer for layer in layers if layer is not None]
    return min(in_stack) if in_stack and len(in_stack) == len(layers) else 0


class _Replay(nn.Module):
    """Stands in for a frozen block: returns the output the prefix computed."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


def _map_hidden(output, fn):
    """Apply fn to a block output's hidden state (a tensor, or the first element of a tuple)."""
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (fn(output[0]), *output[1:])
    raise TypeError(f"cannot replay a block output of type {type(output).__name__}")


def repeat_output(output, k: int):
    """k copies of a recorded block output stacked along the batch (a K-point batched forward)."""
    return output if k == 1 else _map_hidden(output, lambda h: h.repeat(k, *([1] * (h.dim() - 1))))


def select_output(output, rows: torch.Tensor):
    """The rows of a recorded block output that a minibatch picks."""
    return _map_hidden(output, lambda h: h[rows])


@contextmanager
def recording(blocks: nn.ModuleList, which: Iterable[int]) -> Iterator[dict[int, object]]:
    """Record the outputs of blocks `which` during the forwards inside the context: {index: output}."""
    outputs: dict[int, object] = {}

    def hook(i):
        return lambda mod, args, out: outputs.__setitem__(i, out)

    handles = [blocks[i].register_forward_hook(hook(i)) for i in which]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


@contextmanager
def prefix_replayed(blocks: nn.ModuleList, upto: int, output) -> Iterator[None]:
    """Blocks 0..upto−1 replaced by a replay of block upto−1's `output` (their inputs are ignored)."""
    saved = [blocks[i] for i in range(upto)]
    try:
        for i in range(upto):
            blocks[i] = _Replay(output)
        yield
    finally:
        for i, b in enumerate(saved):
            blocks[i] = b
