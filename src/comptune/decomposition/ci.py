"""Causal-importance (CI) functions: map activations to one pre-sigmoid logit per subcomponent (SPEC §2).

- `LayerwiseMLPCI` (SPD): for every subcomponent a tiny MLP of its own scalar inner activation
  a_c = v_cᵀ x. All C MLPs of a module are stored batched (weights [C, in, out]) so a module costs
  one batched matmul per layer, not C small ones.
- `VectorMLPCI` (reference `vector_mlp`): for every subcomponent an MLP of the module's whole
  pre-weight activation x, batched the same way.
- `SharedMLPCI` (reference `shared_mlp`): one MLP per module mapping x to all C logits.
- `GlobalTransformerCI` (VPD): one bidirectional transformer over the sequence that sees the
  pre-weight activations of every decomposed matrix at once.

Both return {module path: logits [..., C]}; the squashing sigmoids are applied by the caller.
Modules are always visited in sorted path order, so the layout of the global function's input
and output never depends on dict order.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from ..config import StrictConfig
from ..errors import UserError

LAYERWISE_TYPES = ("layerwise_mlp", "vector_mlp", "shared_mlp")


class CIConfig(StrictConfig):
    type: Literal["global_transformer", "layerwise_mlp", "vector_mlp", "shared_mlp"] = "global_transformer"
    leaky_alpha: float = Field(default=0.01, ge=0.0)  # slope of both leaky hard sigmoids
    # layerwise types: hidden widths of each MLP (SPD: [16]; [] = a single affine map)
    hidden_dims: list[int] = Field(default_factory=lambda: [16])
    # global_transformer (paper sizes)
    d_model: int = Field(default=2048, gt=0)
    n_blocks: int = Field(default=8, ge=0)
    n_heads: int = Field(default=16, gt=0)
    d_ff: int = Field(default=8192, gt=0)
    rope_base: float = Field(default=10000.0, gt=0)

    @model_validator(mode="after")
    def _check_sizes(self) -> "CIConfig":
        if any(h <= 0 for h in self.hidden_dims):
            raise UserError(f"hidden_dims must be positive, got {self.hidden_dims}")
        if self.type == "global_transformer":
            if self.d_model % self.n_heads:
                raise UserError(f"CI d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
            if (self.d_model // self.n_heads) % 2:
                raise UserError(f"CI head size d_model/n_heads={self.d_model // self.n_heads} must be even for RoPE")
        return self

    def sizes(self) -> dict:
        """The fields that define the CI function's shape (what the saved JSON records)."""
        if self.type in LAYERWISE_TYPES:
            return {"type": self.type, "leaky_alpha": self.leaky_alpha, "hidden_dims": list(self.hidden_dims)}
        return self.model_dump(exclude={"hidden_dims"})


def dashed(path: str) -> str:
    """Module paths contain dots, which nn.ModuleDict keys may not: "h.0.attn.q_proj" -> "h-0-attn-q_proj"."""
    return path.replace(".", "-")


# ---------------------------------------------------------------------------------------------
# Layerwise: one CI function per decomposed module


class ParallelLinear(nn.Module):
    """C independent affine maps applied side by side: [..., C, d_in] -> [..., C, d_out].

    An input [..., 1, d_in] is shared by all C maps (einsum broadcasts the size-1 dimension).
    """

    def __init__(self, C: int, d_in: int, d_out: int, gain: float):
        super().__init__()
        self.W = nn.Parameter(torch.randn(C, d_in, d_out) * (gain / math.sqrt(d_in)))  # [C, in, out]
        self.b = nn.Parameter(torch.zeros(C, d_out))  # [C, out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...ci,cio->...co", x, self.W) + self.b


def _mlp_layers(widths: list[int], linear) -> nn.Sequential:
    """linear(d_in, d_out, gain) per consecutive pair of widths, exact GELU between them.

    Kaiming-normal gains as in the reference: sqrt(2) into a GELU, 1 for the output layer.
    State keys are {0,2,..}.<param>.
    """
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        layers.append(linear(d_in, d_out, 1.0 if last else math.sqrt(2.0)))
        if not last:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class ParallelMLPs(nn.Module):
    """C independent MLPs d_in -> hidden_dims -> 1, run side by side."""

    def __init__(self, C: int, d_in: int, hidden_dims: list[int]):
        super().__init__()
        self.layers = _mlp_layers([d_in, *hidden_dims, 1], lambda i, o, gain: ParallelLinear(C, i, o, gain))  # keys layers.{k}.{W,b}, as in the reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)  # [..., C or 1, d_in] -> [..., C, 1] -> [..., C]


def _normal_linear(d_in: int, d_out: int, gain: float) -> nn.Linear:
    """nn.Linear initialised like ParallelLinear (and the reference's `Linear`): N(0, gain²/d_in), zero bias."""
    linear = nn.Linear(d_in, d_out)
    nn.init.normal_(linear.weight, std=gain / math.sqrt(d_in))
    nn.init.zeros_(linear.bias)
    return linear


class LayerwiseMLPCI(nn.Module):
    """SPD: subcomponent c's logit is an MLP 1 -> hidden -> 1 of its own inner activation a_c."""

    input_kind = "inner_acts"

    def __init__(self, C: dict[str, int], hidden_dims: list[int]):
        super().__init__()
        self.module_paths = sorted(C)
        self.mlps = nn.ModuleDict({dashed(p): ParallelMLPs(C[p], 1, hidden_dims) for p in self.module_paths})

    def forward(self, inner_acts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{path: a [..., C]} -> {path: logits [..., C]}."""
        return {p: self.mlps[dashed(p)](inner_acts[p].unsqueeze(-1)) for p in self.module_paths}  # a_c is MLP c's only input


class VectorMLPCI(nn.Module):
    """Subcomponent c's logit is its own MLP d_in -> hidden -> 1 of the module's whole input x."""

    input_kind = "pre_weight_acts"

    def __init__(self, C: dict[str, int], d_in: dict[str, int], hidden_dims: list[int]):
        super().__init__()
        self.module_paths = sorted(C)
        self.mlps = nn.ModuleDict({dashed(p): ParallelMLPs(C[p], d_in[p], hidden_dims) for p in self.module_paths})

    def forward(self, pre_weight_acts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{path: x [..., d_in]} -> {path: logits [..., C]}."""
        return {p: self.mlps[dashed(p)](pre_weight_acts[p].unsqueeze(-2)) for p in self.module_paths}  # all C MLPs read x


class SharedMLPCI(nn.Module):
    """One MLP per module, d_in -> hidden -> C, on the module's input x (raw, not normalised)."""

    input_kind = "pre_weight_acts"

    def __init__(self, C: dict[str, int], d_in: dict[str, int], hidden_dims: list[int]):
        super().__init__()
        self.module_paths = sorted(C)
        self.mlps = nn.ModuleDict({dashed(p): _mlp_layers([d_in[p], *hidden_dims, C[p]], _normal_linear) for p in self.module_paths})

    def forward(self, pre_weight_acts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{path: x [..., d_in]} -> {path: logits [..., C]}."""
        return {p: self.mlps[dashed(p)](pre_weight_acts[p]) for p in self.module_paths}


# ---------------------------------------------------------------------------------------------
# VPD: global bidirectional transformer


def _rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate-half RoPE over positions of x [B, H, T, dh]."""
    T, dh = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, dh, 2, device=x.device, dtype=torch.float32) / dh))
    freqs = torch.outer(torch.arange(T, device=x.device, dtype=torch.float32), inv_freq)  # [T, dh/2]
    cos, sin = freqs.cos().to(x.dtype), freqs.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def _rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],))  # no learned scale


class CIAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, rope_base: float):
        super().__init__()
        self.n_heads, self.rope_base = n_heads, rope_base
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = (proj(x).view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = _rope(q, self.rope_base), _rope(k, self.rope_base)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=False)  # bidirectional: CI may look ahead
        return self.o_proj(y.transpose(1, 2).reshape(B, T, D))


class CIBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, rope_base: float):
        super().__init__()
        self.attn = CIAttention(d_model, n_heads, rope_base)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))  # exact GELU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(_rms_norm(x))
        return x + self.mlp(_rms_norm(x))


class GlobalTransformerCI(nn.Module):
    input_kind = "pre_weight_acts"

    def __init__(self, C: dict[str, int], d_in: dict[str, int], d_model: int, n_blocks: int, n_heads: int, d_ff: int, rope_base: float):
        super().__init__()
        self.module_paths = sorted(C)
        self.C_splits = [C[p] for p in self.module_paths]
        self.input_proj = nn.Linear(sum(d_in[p] for p in self.module_paths), d_model)
        self.blocks = nn.ModuleList([CIBlock(d_model, n_heads, d_ff, rope_base) for _ in range(n_blocks)])
        self.output_head = nn.Linear(d_model, sum(self.C_splits))  # no final norm, as in the reference

    def forward(self, pre_weight_acts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{path: x [B, T, d_in]} -> {path: logits [B, T, C]}."""
        x = torch.cat([_rms_norm(pre_weight_acts[p]) for p in self.module_paths], dim=-1)  # [B, T, Σd_in]
        x = self.input_proj(x)  # [B, T, d_model]
        for block in self.blocks:
            x = block(x)
        logits = self.output_head(x)  # [B, T, ΣC]
        return dict(zip(self.module_paths, logits.split(self.C_splits, dim=-1)))


def build_ci_fn(config: CIConfig, C: dict[str, int], d_in: dict[str, int]) -> nn.Module:
    if config.type == "layerwise_mlp":
        return LayerwiseMLPCI(C, config.hidden_dims)
    if config.type == "vector_mlp":
        return VectorMLPCI(C, d_in, config.hidden_dims)
    if config.type == "shared_mlp":
        return SharedMLPCI(C, d_in, config.hidden_dims)
    return GlobalTransformerCI(C, d_in, config.d_model, config.n_blocks, config.n_heads, config.d_ff, config.rope_base)
