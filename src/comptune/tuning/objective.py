"""The unlearning objective shared by every method (scalars, LoRA, SVD-, neuron-scale):

    loss = −min(CE_forget, ln|V|) + λ · KL(p_orig ‖ p_edited)[retain] + l1 · Σ|s − 1|

The forget term is capped at chance: once the forget CE reaches ln|V| it contributes no gradient,
so nothing pushes the model past "knows nothing" into "confidently wrong". CE is per predicted
token; the first token of each sequence is context only, never a target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..decomposition.losses import TargetDistribution, kl_target_to_masked


@dataclass
class LossTerms:
    total: torch.Tensor  # scalar with grad
    forget_ce: torch.Tensor  # mean CE on the forget tokens (nats), detached
    retain_kl: torch.Tensor  # mean KL(orig ‖ edited) per retain position (nats), detached
    l1: torch.Tensor  # Σ|s − 1| (before its coefficient), detached


def next_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE of logits[:, t] predicting labels[:, t+1]; label −100 is ignored. logits [B, T, V], labels [B, T]."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1), ignore_index=-100)


def capped_forget_term(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(−min(CE, ln|V|), CE). At and above chance the term is the constant −ln|V| (zero gradient)."""
    ce = next_token_ce(logits, labels)
    chance = torch.tensor(math.log(logits.size(-1)), dtype=ce.dtype, device=ce.device)
    # written so a NaN CE propagates (NaN >= chance is False) instead of hiding behind the cap
    return -torch.where(ce >= chance, chance, ce), ce


def retain_kl(logits: torch.Tensor, orig: torch.Tensor | TargetDistribution) -> torch.Tensor:
    """KL(p_orig ‖ p_edited) summed over the vocabulary, averaged over positions. logits [B, T, V];
    `orig`: the original model's logits or their precomputed `TargetDistribution`. The
    decomposition's reconstruction divergence, with the original model as the reference."""
    return kl_target_to_masked(logits, orig)


def tuning_loss(
    forget_logits: torch.Tensor,
    forget_labels: torch.Tensor,
    retain_logits: torch.Tensor,
    retain_orig: torch.Tensor | TargetDistribution,
    *,
    lambda_retain: float,
    l1_coef: float = 0.0,
    l1_penalty: torch.Tensor | None = None,
) -> LossTerms:
    forget, ce = capped_forget_term(forget_logits, forget_labels)
    kl = retain_kl(retain_logits, retain_orig)
    l1 = l1_penalty if l1_penalty is not None else torch.zeros((), device=ce.device)
    total = forget + lambda_retain * kl + l1_coef * l1
    return LossTerms(total=total, forget_ce=ce.detach(), retain_kl=kl.detach(), l1=l1.detach())
