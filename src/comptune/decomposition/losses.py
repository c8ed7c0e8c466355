"""Masks, routing and the four VPD losses (SPEC §3–§5), plus the evaluation PGD.

Everything here is a pure function of tensors and a `Decomposition`, except `PersistentPGD`,
which holds the adversary's state (sources and their Adam moments) across training steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import UserError
from .decomposed import Decomposition

Masks = dict[str, torch.Tensor]
# (masked output, target output) -> scalar loss; None means KL(target ‖ masked)
Reconstruction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None


# ----- masks and routing ----------------------------------------------------------------------


def masks_from_sources(ci_lower: Masks, sources: Masks) -> tuple[Masks, Masks]:
    """m = g + (1 − g) r for the C subcomponents; the last source channel is the Δ mask, taken raw.

    sources: path -> [..., C + 1] in [0, 1] (broadcastable against ci [B, T, C]).
    Returns (masks path -> [B, T, C], delta_masks path -> [B, T]).
    """
    masks, delta_masks = {}, {}
    for path, g in ci_lower.items():
        r = sources[path]
        masks[path] = g + (1 - g) * r[..., :-1]
        delta_masks[path] = r[..., -1].expand(g.shape[:-1])
    return masks, delta_masks


def sample_stochastic_masks(ci_lower: Masks, generator: torch.Generator | None = None) -> tuple[Masks, Masks]:
    """Stochastic masks with r ~ U(0, 1) per (b, t, c), and m_Δ ~ U(0, 1) per (b, t)."""
    sources = {p: torch.rand((*g.shape[:-1], g.shape[-1] + 1), generator=generator, device=g.device, dtype=g.dtype) for p, g in ci_lower.items()}
    return masks_from_sources(ci_lower, sources)


def sample_subset_routing(paths: list[str], batch_shape: tuple[int, ...], device, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per position: k ~ Uniform{1..L}, then a uniformly random k-subset of the L modules is routed.

    Returns path -> bool [*batch_shape]; True = this module uses its components at this position.
    """
    L = len(paths)
    k = torch.randint(1, L + 1, batch_shape, generator=generator, device=device)  # [B, T]
    # the ranks of i.i.d. uniforms are a uniformly random permutation; "rank < k" is a random k-subset
    ranks = torch.rand((L, *batch_shape), generator=generator, device=device).argsort(dim=0).argsort(dim=0)
    return {p: ranks[i] < k for i, p in enumerate(paths)}


# ----- losses ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetDistribution:
    """softmax(target logits) and Σ p log p per position: what every KL against the same target
    needs, computed once per batch however many KLs (stochastic, adversary steps) use it."""

    probs: torch.Tensor  # [..., V] float32
    neg_entropy: torch.Tensor  # [...] Σ_v p log p

    @classmethod
    def of(cls, target_logits: torch.Tensor) -> "TargetDistribution":
        with torch.no_grad():
            log_p = F.log_softmax(target_logits.detach().float(), dim=-1)
            probs = log_p.exp()
            return cls(probs, (probs * log_p).sum(-1))


class _KLToTarget(torch.autograd.Function):
    """mean KL(p ‖ softmax(z)) with Σ p log q = Σ p z − logsumexp(z) (as Σ p = 1): no log-softmax
    of z is formed, and the backward is one softmax, (softmax(z) − p) / N, written in place."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, probs: torch.Tensor, neg_entropy: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z, probs)
        dot = torch.einsum("...v,...v->...", probs, z)  # a batched matmul: no [..., V] product is written
        return (neg_entropy - dot + torch.logsumexp(z, dim=-1)).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, probs = ctx.saved_tensors
        g = torch.softmax(z, dim=-1)
        g.sub_(probs).mul_(grad / (z.numel() // z.shape[-1]))
        return g, None, None


def kl_target_to_masked(masked_logits: torch.Tensor, target: torch.Tensor | TargetDistribution) -> torch.Tensor:
    """KL(softmax(target) ‖ softmax(masked)), summed over the vocabulary, mean over positions.

    `target`: the target's logits, or their `TargetDistribution` when several KLs share it. The
    target is the reference (first argument of the KL) and is not differentiated.
    """
    if not isinstance(target, TargetDistribution):
        target = TargetDistribution.of(target)
    return _KLToTarget.apply(masked_logits.float(), target.probs, target.neg_entropy)


def faithfulness_loss(decomposition: Decomposition) -> torch.Tensor:
    """Σ_l ‖Δ_l‖² / Σ_l numel(W_l), with Δ = W − (VU)ᵀ in fp32."""
    total, numel = 0.0, 0
    for path in decomposition.module_paths:
        delta = decomposition.delta(path)
        total = total + delta.pow(2).sum()
        numel += delta.numel()
    return total / numel


def anneal_p(step: int, total_steps: int, p_start: float, p_end: float) -> float:
    """Linear from p_start at step 0 towards p_end at step total_steps (as the reference code)."""
    frac = min(max(step / total_steps, 0.0), 1.0)
    return p_start + (p_end - p_start) * frac


def minimality_loss(ci_upper: Masks, p: float, beta: float, eps: float = 1e-12, world_size: int = 1) -> torch.Tensor:
    """Importance + frequency minimality: Σ_l Σ_c [ s_c/N + β (s_c/N) log2(1 + s_c) ].

    s_c = Σ_{b,t} (g_upper + eps)^p over this rank's N positions; under data parallelism the log
    term uses s_c·world_size, the estimate of the global count (as the reference code does).
    """
    total = 0.0
    for g in ci_upper.values():
        s = (g.float() + eps).pow(p).flatten(0, -2).sum(0)  # [C], fp32 whatever the CI's dtype (1e-12 vanishes in bf16)
        mean = s / math.prod(g.shape[:-1])
        total = total + (mean + beta * mean * torch.log2(1 + s * world_size)).sum()
    return total


# ----- the adversary --------------------------------------------------------------------------


class PersistentPGD:
    """Adversarial sources [B, T, C+1] per module that persist across steps with their Adam moments.

    Each training step: `ascend` twice on the current batch (CI and components detached), then the
    adversarial loss term is built from `masks(ci_lower)` with live CI and components, and its
    source gradient (left in `.grad` by the main backward) is applied with `adam_ascent_step`.
    """

    def __init__(self, C: dict[str, int], batch_shape: tuple[int, int], device, generator: torch.Generator | None = None,
                 betas: tuple[float, float] = (0.5, 0.99), eps: float = 1e-8):
        self.betas, self.eps = betas, eps
        self.sources = {p: torch.rand((*batch_shape, c + 1), generator=generator, device=device).requires_grad_(True) for p, c in sorted(C.items())}
        self.exp_avg = {p: torch.zeros_like(s) for p, s in self.sources.items()}
        self.exp_avg_sq = {p: torch.zeros_like(s) for p, s in self.sources.items()}
        self.t = 0

    def masks(self, ci_lower: Masks) -> tuple[Masks, Masks]:
        return masks_from_sources(ci_lower, self.sources)

    def loss(self, decomposition: Decomposition, input_ids: torch.Tensor, target_out: torch.Tensor,
            ci_lower: Masks, recon: Reconstruction = None) -> torch.Tensor:
        """Reconstruction loss (default KL(target ‖ masked)) with every module routed and the sources as masks."""
        masks, delta_masks = self.masks(ci_lower)
        return (recon or kl_target_to_masked)(decomposition.masked_logits(input_ids, masks, delta_masks), target_out)

    def ascend(self, decomposition: Decomposition, input_ids: torch.Tensor, target_out: torch.Tensor, ci_lower: Masks, lr: float, n_steps: int,
               recon: Reconstruction = None) -> None:
        """n_steps Adam ascent steps on the sources; CI and components are held fixed."""
        ci_fixed = {p: g.detach() for p, g in ci_lower.items()}
        for _ in range(n_steps):
            loss = self.loss(decomposition, input_ids, target_out, ci_fixed, recon)
            grads = torch.autograd.grad(loss, list(self.sources.values()))
            self.adam_ascent_step(dict(zip(self.sources, grads)), lr)

    @torch.no_grad()
    def adam_ascent_step(self, grads: Masks, lr: float) -> None:
        self.t += 1
        b1, b2 = self.betas
        bias1, bias2 = 1 - b1**self.t, 1 - b2**self.t
        for p, src in self.sources.items():
            g = grads[p]
            self.exp_avg[p].mul_(b1).add_(g, alpha=1 - b1)
            self.exp_avg_sq[p].mul_(b2).addcmul_(g, g, value=1 - b2)
            src.add_(lr * (self.exp_avg[p] / bias1) / ((self.exp_avg_sq[p] / bias2).sqrt() + self.eps))
            src.clamp_(0.0, 1.0)
            src.grad = None  # the next main backward accumulates afresh

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"t": torch.tensor(self.t)}
        for p in self.sources:
            out[f"{p}.source"] = self.sources[p].detach()
            out[f"{p}.exp_avg"] = self.exp_avg[p]
            out[f"{p}.exp_avg_sq"] = self.exp_avg_sq[p]
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.t = int(tensors["t"])
        with torch.no_grad():
            for p in self.sources:
                for name, store in (("source", self.sources), ("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                    t = tensors[f"{p}.{name}"]
                    if t.shape != store[p].shape:
                        raise UserError(f"checkpointed adversary source {p}.{name} has shape {tuple(t.shape)}"
                            f", expected {tuple(store[p].shape)} (batch size or C changed)")
                    store[p].copy_(t)


def eval_pgd_kl(decomposition: Decomposition, input_ids: torch.Tensor, target_logits: torch.Tensor, ci_lower: Masks,
                n_steps: int = 20, step_size: float = 0.1, generator: torch.Generator | None = None) -> float:
    """Evaluation PGD: one fresh source [1, 1, C+1] per module shared by all batch elements and
    positions, n_steps sign-gradient ascent steps of step_size, clamped to [0, 1]; the final KL."""
    device = input_ids.device
    ci_fixed = {p: g.detach() for p, g in ci_lower.items()}
    sources = {p: torch.rand((1, 1, g.shape[-1] + 1), generator=generator, device=device).requires_grad_(True) for p, g in ci_fixed.items()}
    target = TargetDistribution.of(target_logits)

    def kl() -> torch.Tensor:
        masks, delta_masks = masks_from_sources(ci_fixed, sources)
        return kl_target_to_masked(decomposition.masked_logits(input_ids, masks, delta_masks), target)

    with torch.enable_grad():
        for _ in range(n_steps):
            grads = torch.autograd.grad(kl(), list(sources.values()))
            with torch.no_grad():
                for src, g in zip(sources.values(), grads):
                    src.add_(step_size * g.sign()).clamp_(0.0, 1.0)
    with torch.no_grad():
        return kl().item()
