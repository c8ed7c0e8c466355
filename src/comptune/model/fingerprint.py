"""A content hash of a model's weights: ties decompositions and adapters to the model they belong to."""

from __future__ import annotations

import hashlib

import torch
import torch.nn as nn

from ..errors import UserError, UserKeyError


def weights_fingerprint(model: nn.Module, names: list[str] | None = None) -> str:
    """sha256 over (name, shape, bytes) of the chosen parameters (all by default), in sorted order."""
    params = dict(model.named_parameters(remove_duplicate=True))
    missing = [n for n in (names or []) if n not in params]
    if missing:
        raise UserKeyError(f"parameter {missing[0]!r} not in model")
    return tensors_fingerprint({n: params[n] for n in (names if names is not None else params)})


def tensors_fingerprint(named: dict[str, torch.Tensor]) -> str:
    """The same hash over named tensors (e.g. the base weights under a peft adapter's layers)."""
    h = hashlib.sha256()
    for name in sorted(named):
        t = named[name].detach().float().contiguous().cpu()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def check_target(model: nn.Module, target: dict, what: str, hint: str = "") -> None:
    """Refuse `model` unless it holds the weights `target` ({"fingerprint", "weight_names"}, as an
    artifact recorded them) describes; `what` names the artifact in the error, `hint` ends it."""
    params = dict(model.named_parameters())
    missing = [n for n in target["weight_names"] if n not in params]
    if missing:
        raise UserError(f"{what} is for another model: this model has no weights {missing[:3]}")
    fp = weights_fingerprint(model, target["weight_names"])
    if fp != target["fingerprint"]:
        raise UserError(f"{what} was trained on a model with weights fingerprint {target['fingerprint']}, "
                        f"this model's is {fp}: it belongs to another model{hint}")
