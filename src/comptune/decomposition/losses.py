"""Masks, routing and the four VPD losses (SPEC §3–§5), plus the evaluation PGD.

Everything here is a pure function of tensors and a `Decomposition`, except `PersistentPGD`,
which holds the adversary's state (sources and their Adam moments) across training steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..errors import UserError
from .decomposed import Decomposition

Masks = dict[str, torch.Tensor]
# (masked output, target output) -> scalar loss; the target output is of the kind the loss takes:
# logits, or for the KL also their TargetDistribution
Reconstruction = Callable[[torch.Tensor, Any], torch.Tensor]


# ----- masks and routing ----------------------------------------------------------------------


Sources = dict[str, tuple[torch.Tensor, torch.Tensor]]  # path -> (r [..., C], r_Δ [..., 1]), in [0, 1]
Coefficients = dict[str, tuple[torch.Tensor, torch.Tensor | None]]  # path -> (m − m_Δ [..., C], m_Δ [..., 1] or None)


class _MaskCoefficients(torch.autograd.Function):
    """k = m − m_Δ with m = g + (1 − g) r (SPEC V3.1), as r − r_Δ + g (1 − r): three elementwise
    passes forward, and backward one pass per input that needs a gradient (autograd's own graph of
    the same expression takes about three times as many, and a copy per slice of a source)."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, r: torch.Tensor, r_delta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g, r)
        return torch.addcmul(r - r_delta, g, 1 - r)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        g, r = ctx.saved_tensors
        need_g, need_r, need_delta = ctx.needs_input_grad
        grad_g = torch.addcmul(grad, grad, r, value=-1) if need_g else None  # grad · (1 − r)
        grad_r = torch.addcmul(grad, grad, g, value=-1) if need_r else None  # grad · (1 − g); autograd sums broadcast dims
        grad_delta = -grad.sum(-1, keepdim=True) if need_delta else None
        return grad_g, grad_r, grad_delta


def source_coefficients(ci_lower: Masks, sources: Sources) -> Coefficients:
    """{path: (m − m_Δ, m_Δ)} for masks m = g + (1 − g) r and Δ mask m_Δ = r_Δ: what
    `Decomposition.coefficient_logits` takes. Sources broadcast against ci [B, T, C]."""
    return {p: (_MaskCoefficients.apply(g, *sources[p]), sources[p][1]) for p, g in ci_lower.items()}


def source_masked_logits(decomposition: Decomposition, input_ids: torch.Tensor, ci_lower: Masks, sources: Sources) -> torch.Tensor:
    """Logits [B, T, V] with every module in `ci_lower` masked by m = g + (1 − g) r and m_Δ = r_Δ."""
    return decomposition.coefficient_logits(input_ids, source_coefficients(ci_lower, sources))


def uniform_source(shape: tuple[int, ...], C: int, generator: torch.Generator | None = None, device=None, dtype=None,
                   trainable: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(r [*shape, C], r_Δ [*shape, 1]) ~ U(0, 1), from one [*shape, C + 1] draw (the saved layout);
    `trainable`: two leaf tensors that require grad (an adversary's), else views of the draw."""
    full = torch.rand((*shape, C + 1), generator=generator, device=device, dtype=dtype)
    r, r_delta = full[..., :C], full[..., C:]
    return (r.clone().requires_grad_(True), r_delta.clone().requires_grad_(True)) if trainable else (r, r_delta)


def sample_stochastic_sources(ci_lower: Masks, generator: torch.Generator | None = None) -> Sources:
    """Stochastic sources: r ~ U(0, 1) per (b, t, c) and r_Δ ~ U(0, 1) per (b, t) (SPEC V3.2)."""
    return {p: uniform_source(g.shape[:-1], g.shape[-1], generator, g.device, g.dtype) for p, g in ci_lower.items()}


def route_sources(sources: Sources, routing: dict[str, torch.Tensor]) -> Sources:
    """Where `routing` leaves a module out, r = r_Δ = 1: its coefficients are then exactly 0 and
    m_Δ = 1, i.e. the module's own W x + b, and no gradient reaches its CI there (SPEC V3.2)."""
    out = {}
    for p, (r, r_delta) in sources.items():
        off = ~routing[p].unsqueeze(-1)
        out[p] = (r.masked_fill(off, 1.0), r_delta.masked_fill(off, 1.0))
    return out


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
    """mean over N positions of KL(p ‖ softmax(z)) = mean Σ p log p − Σ_{n,v} p log_softmax(z) / N.
    The forward keeps log_softmax(z) and contracts it with p in one flat dot product; the backward
    is (softmax(z) − p) / N from it: exp, then two in-place passes."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, probs: torch.Tensor, neg_entropy: torch.Tensor) -> torch.Tensor:
        log_q = torch.log_softmax(z, dim=-1)
        ctx.save_for_backward(log_q, probs)
        n = log_q.numel() // log_q.shape[-1]
        return neg_entropy.mean() - torch.dot(probs.reshape(-1), log_q.reshape(-1)) / n

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        log_q, probs = ctx.saved_tensors
        g = log_q.exp()  # not in place: a retained graph (retain_graph=True) may run this backward again
        g.sub_(probs).mul_(grad / (g.numel() // g.shape[-1]))
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
    total: torch.Tensor | float = 0.0
    numel = 0
    for path in decomposition.module_paths:
        delta = decomposition.delta(path)
        total = total + delta.pow(2).sum()
        numel += delta.numel()
    return torch.as_tensor(total / numel)  # a tensor once any module is summed


def anneal_p(step: int, total_steps: int, p_start: float, p_end: float) -> float:
    """Linear from p_start at step 0 towards p_end at step total_steps (as the reference code)."""
    frac = min(max(step / total_steps, 0.0), 1.0)
    return p_start + (p_end - p_start) * frac


def minimality_loss(ci_upper: Masks, p: float, beta: float, eps: float = 1e-12, world_size: int = 1) -> torch.Tensor:
    """Importance + frequency minimality: Σ_l Σ_c [ s_c/N + β (s_c/N) log2(1 + s_c) ].

    s_c = Σ_{b,t} (g_upper + eps)^p over this rank's N positions; under data parallelism the log
    term uses s_c·world_size, the estimate of the global count (as the reference code does).
    """
    total: torch.Tensor | float = 0.0
    for g in ci_upper.values():
        s = (g.float() + eps).pow(p).flatten(0, -2).sum(0)  # [C], fp32 whatever the CI's dtype (1e-12 vanishes in bf16)
        mean = s / math.prod(g.shape[:-1])
        total = total + (mean + beta * mean * torch.log2(1 + s * world_size)).sum()
    return torch.as_tensor(total)  # a tensor once any module is summed (0 for none)


# ----- the adversary --------------------------------------------------------------------------


class PersistentPGD:
    """Adversarial sources per module, r [B, T, C] and r_Δ [B, T, 1] (saved as one [B, T, C+1]), that
    persist across steps with their Adam moments.

    Each training step: `ascend` twice on the current batch (CI and components detached), then the
    adversarial loss term is built with live CI and components, and its source gradient (left in
    `.grad` of `leaves()` by the main backward) is applied with `adam_ascent_step`.
    """

    def __init__(self, C: dict[str, int], batch_shape: tuple[int, int], device, generator: torch.Generator | None = None,
                 betas: tuple[float, float] = (0.5, 0.99), eps: float = 1e-8):
        self.betas, self.eps = betas, eps
        self.sources: Sources = {p: uniform_source(batch_shape, c, generator, device, trainable=True) for p, c in sorted(C.items())}
        self.exp_avg: Sources = {p: (torch.zeros_like(r), torch.zeros_like(rd)) for p, (r, rd) in self.sources.items()}
        self.exp_avg_sq: Sources = {p: (torch.zeros_like(r), torch.zeros_like(rd)) for p, (r, rd) in self.sources.items()}
        self.t = 0

    def leaves(self) -> list[torch.Tensor]:
        """r, r_Δ of every module, in sorted path order: the order `adam_ascent_step` takes gradients in."""
        return _flat(self.sources)

    def loss(self, decomposition: Decomposition, input_ids: torch.Tensor, target_out: torch.Tensor | TargetDistribution,
            ci_lower: Masks, recon: Reconstruction | None = None) -> torch.Tensor:
        """Reconstruction loss (default KL(target ‖ masked)) with every module routed and the sources as masks."""
        return (recon or kl_target_to_masked)(source_masked_logits(decomposition, input_ids, ci_lower, self.sources), target_out)

    def ascend(self, decomposition: Decomposition, input_ids: torch.Tensor, target_out: torch.Tensor | TargetDistribution, ci_lower: Masks,
               lr: float, n_steps: int, recon: Reconstruction | None = None) -> None:
        """n_steps Adam ascent steps on the sources; CI and components are held fixed."""
        ci_fixed = {p: g.detach() for p, g in ci_lower.items()}
        for _ in range(n_steps):
            loss = self.loss(decomposition, input_ids, target_out, ci_fixed, recon)
            self.adam_ascent_step(list(torch.autograd.grad(loss, self.leaves())), lr)

    @torch.no_grad()
    def adam_ascent_step(self, grads: list[torch.Tensor], lr: float) -> None:
        """One Adam ascent step of every source (`grads` in `leaves()` order), clamped to [0, 1]."""
        self.t += 1
        b1, b2 = self.betas
        bias1, bias2 = 1 - b1**self.t, 1 - b2**self.t
        sources, exp_avg, exp_avg_sq = _flat(self.sources), _flat(self.exp_avg), _flat(self.exp_avg_sq)
        torch._foreach_lerp_(exp_avg, grads, 1 - b1)
        torch._foreach_mul_(exp_avg_sq, b2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - b2)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, math.sqrt(bias2))
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(sources, exp_avg, denom, value=lr / bias1)
        torch._foreach_clamp_min_(sources, 0.0)
        torch._foreach_clamp_max_(sources, 1.0)
        for t in sources:
            t.grad = None  # the next main backward accumulates afresh

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"t": torch.tensor(self.t)}
        for name, store in self._stores():
            out.update({f"{p}.{name}": torch.cat([r.detach(), r_delta.detach()], -1) for p, (r, r_delta) in store.items()})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.t = int(tensors["t"])
        with torch.no_grad():
            for name, store in self._stores():
                for p, (r, r_delta) in store.items():
                    t, expected = tensors[f"{p}.{name}"], (*r.shape[:-1], r.shape[-1] + 1)
                    if tuple(t.shape) != expected:
                        raise UserError(f"checkpointed adversary source {p}.{name} has shape {tuple(t.shape)}"
                            f", expected {expected} (batch size or C changed)")
                    r.copy_(t[..., :-1])
                    r_delta.copy_(t[..., -1:])

    def _stores(self) -> tuple[tuple[str, Sources], ...]:
        """What a checkpoint holds, by its name there; each (r, r_Δ) pair is saved as one [B, T, C+1]."""
        return (("source", self.sources), ("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq))


def _flat(store: Sources) -> list[torch.Tensor]:
    return [t for pair in store.values() for t in pair]


def eval_pgd_kl(decomposition: Decomposition, input_ids: torch.Tensor, target_logits: torch.Tensor, ci_lower: Masks,
                n_steps: int = 20, step_size: float = 0.1, generator: torch.Generator | None = None) -> float:
    """Evaluation PGD: one fresh source [1, 1, C+1] per module shared by all batch elements and
    positions, n_steps sign-gradient ascent steps of step_size, clamped to [0, 1]; the final KL."""
    device = input_ids.device
    ci_fixed = {p: g.detach() for p, g in ci_lower.items()}
    sources = {p: uniform_source((1, 1), g.shape[-1], generator, device, trainable=True) for p, g in ci_fixed.items()}
    leaves = _flat(sources)
    target = TargetDistribution.of(target_logits)

    def kl() -> torch.Tensor:
        return kl_target_to_masked(source_masked_logits(decomposition, input_ids, ci_fixed, sources), target)

    with torch.enable_grad():
        for _ in range(n_steps):
            grads = torch.autograd.grad(kl(), leaves)
            with torch.no_grad():
                for src, g in zip(leaves, grads):
                    src.add_(step_size * g.sign()).clamp_(0.0, 1.0)
    with torch.no_grad():
        return kl().item()
