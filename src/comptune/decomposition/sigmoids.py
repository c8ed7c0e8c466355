"""The two leaky hard sigmoids that turn causal-importance logits into importances (SPEC §2).

- `lower_leaky_hard_sigmoid` builds every mask. Forward clamp(z, 0, 1). Backward: the gradient
  passes unchanged on (0, 1]; above 1 it is blocked; at or below 0 it leaks as α·grad, but only
  where the incoming gradient is negative — i.e. where the loss wants the importance to *rise*.
  That one-sided leak lets a dead subcomponent come back without pushing dead ones further down.
- `upper_leaky_hard_sigmoid` is used only in the minimality loss: it keeps growing with slope α
  above 1, so logits that overshoot 1 are still penalised. Plain autograd gives its gradient
  (0 below 0, 1 on (0, 1], α above 1).
"""

from __future__ import annotations

import torch


class _LowerLeakyHardSigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.alpha = alpha
        return z.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        (z,) = ctx.saved_tensors
        leak = grad_out.clamp(max=0).mul_(ctx.alpha)  # leak only towards "more important"
        return torch.where(z > 0, grad_out, leak).masked_fill_(z > 1, 0.0), None


def lower_leaky_hard_sigmoid(z: torch.Tensor, alpha: float = 0.01) -> torch.Tensor:
    """clamp(z, 0, 1) with a sign-gated leak below 0 in the backward pass (see module doc)."""
    return _LowerLeakyHardSigmoid.apply(z, alpha)


def upper_leaky_hard_sigmoid(z: torch.Tensor, alpha: float = 0.01) -> torch.Tensor:
    """1 + α(z − 1) above 1, else clamp(z, 0, 1)."""
    return torch.where(z > 1, 1 + alpha * (z - 1), z.clamp(0.0, 1.0))
