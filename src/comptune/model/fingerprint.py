"""A content hash of a model's weights: ties decompositions and adapters to the model they belong to."""

from __future__ import annotations

import hashlib

import torch.nn as nn

from ..errors import UserKeyError


def weights_fingerprint(model: nn.Module, names: list[str] | None = None) -> str:
    """sha256 over (name, shape, bytes) of the chosen parameters (all by default), in sorted order."""
    params = dict(model.named_parameters(remove_duplicate=True))
    h = hashlib.sha256()
    for name in sorted(names if names is not None else params):
        if name not in params:
            raise UserKeyError(f"parameter {name!r} not in model")
        t = params[name].detach().float().contiguous().cpu()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]
