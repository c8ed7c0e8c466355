"""Rank-1 subcomponents of one weight matrix (SPEC §1).

W ≈ Σ_c u_c v_cᵀ with V [d_in, C] (column c = read vector v_c) and U [C, d_out] (row c = write
vector u_c), so the effective weight in nn.Linear layout is (V U)ᵀ [d_out, d_in]. HF `Conv1D`
stores its weight as [d_in, d_out]; `kind` records which layout the target module uses so the
comparison with W is always made in nn.Linear layout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple, Protocol, Union

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from ..errors import UserError

SUPPORTED_MODULE_TYPES = (nn.Linear, Conv1D)


def module_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, Conv1D):
        return "conv1d"
    raise UserError(
        f"cannot decompose a {type(module).__name__}: only nn.Linear and transformers Conv1D weights are supported; "
        "choose patterns that match linear layers only"
    )


def linear_layout_weight(module: nn.Module) -> torch.Tensor:
    """The module's weight as [d_out, d_in] (a view for Conv1D, which stores [d_in, d_out])."""
    return module.weight.T if module_kind(module) == "conv1d" else module.weight  # type: ignore[return-value]


def format_component_key(path: str, index: int) -> str:
    """("h.3.attn.v_proj", 513) -> "h.3.attn.v_proj:513"."""
    return f"{path}:{index}"


def parse_component_key(key: str) -> tuple[str, int]:
    """"h.3.attn.v_proj:513" -> ("h.3.attn.v_proj", 513)."""
    path, sep, idx = key.rpartition(":")
    if not sep or not path or not idx.isdigit():
        raise UserError(f"component key {key!r} is not of the form '<module path>:<index>' (e.g. 'h.3.attn.v_proj:513')")
    return path, int(idx)


class Components(NamedTuple):
    """Rank-1 subcomponents of one matrix: V [d_in, C] (columns v_c), U [C, d_out] (rows u_c)."""

    V: torch.Tensor
    U: torch.Tensor


class ReadWrite(Protocol):
    """One module's subcomponents: `Components`, or a decomposition's `LinearComponents`."""

    @property
    def V(self) -> torch.Tensor: ...  # [d_in, C]

    @property
    def U(self) -> torch.Tensor: ...  # [C, d_out]


class Decomposed(Protocol):
    """What a component key can name a subcomponent of, as a `Decomposition` offers it."""

    @property
    def module_paths(self) -> list[str]: ...

    def get_components(self, path: str) -> ReadWrite: ...


# A Decomposition, or a plain basis path -> subcomponents or a (V, U) pair (e.g. `svd_components(...)`)
ComponentSource = Union[Decomposed, Mapping[str, Union[ReadWrite, tuple[torch.Tensor, torch.Tensor]]]]


def source_module_paths(source: ComponentSource) -> list[str]:
    return list(source) if isinstance(source, Mapping) else list(source.module_paths)


def source_components(source: ComponentSource, path: str) -> Components:
    comps = source[path] if isinstance(source, Mapping) else source.get_components(path)
    V, U = comps if isinstance(comps, tuple) else (comps.V, comps.U)  # Components is a (V, U) pair too
    return Components(V.detach(), U.detach())


def validate_keys(source: ComponentSource, keys: list[str]) -> dict[str, list[int]]:
    """Group keys by module, checking each names a decomposed module and an index in 0..C−1."""
    if not keys:
        raise UserError("no component keys given; select at least one subcomponent ('<module path>:<index>')")
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise UserError(f"component keys repeat: {dup}")
    paths = source_module_paths(source)
    by_module: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}
    for key in keys:
        path, idx = parse_component_key(key)
        if path not in paths:
            valid = ", ".join(f"{p} (0..{source_components(source, p).V.shape[1] - 1})" for p in paths)
            raise UserError(f"unknown component key {key!r}: module {path!r} is not in the decomposition; valid modules (index range): {valid}")
        if path not in sizes:
            sizes[path] = source_components(source, path).V.shape[1]
        if idx >= sizes[path]:
            raise UserError(f"unknown component key {key!r}: {path} has {sizes[path]} subcomponents, valid indices 0..{sizes[path] - 1}")
        by_module.setdefault(path, []).append(idx)
    return by_module


def module_keys(source: ComponentSource, paths: list[str]) -> list[str]:
    """Every subcomponent key of the given modules (the "all subcomponents + L1" variant)."""
    known = source_module_paths(source)
    for path in paths:
        if path not in known:
            raise UserError(f"module {path!r} is not in the decomposition; valid modules: {', '.join(known)}")
    return [format_component_key(path, c) for path in paths for c in range(source_components(source, path).V.shape[1])]


class LinearComponents(nn.Module):
    """C rank-1 subcomponents of one [d_out, d_in] weight; the target module itself is not held here."""

    def __init__(self, d_in: int, d_out: int, C: int, kind: str = "linear"):
        super().__init__()
        if C <= 0:
            raise UserError(f"the number of subcomponents C must be positive, got {C}")
        if kind not in ("linear", "conv1d"):
            raise UserError(f"kind must be 'linear' or 'conv1d', got {kind!r}")
        self.d_in, self.d_out, self.C, self.kind = d_in, d_out, C, kind
        # init of the reference: V ~ N(0, 1/d_in), U ~ N(0, 1/C)
        self.V = nn.Parameter(torch.randn(d_in, C) / math.sqrt(d_in))  # [d_in, C]
        self.U = nn.Parameter(torch.randn(C, d_out) / math.sqrt(C))  # [C, d_out]

    @classmethod
    def for_module(cls, module: nn.Module, C: int) -> "LinearComponents":
        d_out, d_in = linear_layout_weight(module).shape
        comps = cls(d_in, d_out, C, module_kind(module))
        return comps.to(device=module.weight.device)  # type: ignore[arg-type]

    def weight(self) -> torch.Tensor:
        """Σ_c u_c v_cᵀ in nn.Linear layout [d_out, d_in]."""
        return (self.V @ self.U).T

    def inner_acts(self, x: torch.Tensor) -> torch.Tensor:
        """a_c = v_cᵀ x: [..., d_in] -> [..., C]."""
        return x @ self.V

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Σ_c m_c a_c u_c: x [..., d_in], mask [..., C] -> [..., d_out] (no Δ, no bias)."""
        return (self.inner_acts(x) * mask) @ self.U

    def masked_output(
        self,
        x: torch.Tensor,
        target_out: torch.Tensor,
        bias: torch.Tensor | None,
        coefficient: torch.Tensor,
        delta_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """y = Σ_c m_c a_c u_c + m_Δ Δx + b from the coefficients k_c = m_c − m_Δ and the target module's
        own output Wx + b: as Δx = Wx − Σ_c a_c u_c, y = Σ_c k_c a_c u_c + m_Δ (Wx + b) + (1 − m_Δ) b.

        One batched [.., C] @ [C, d_out] product and no d_out×d_in matrix per step; the Δ channel's
        gradient into U and V is the same as with Δ materialised; where k = 0 and m_Δ = 1 it is the
        module's own output exactly. delta_mask: [..., 1], or None for no Δ (m_Δ = 0, k = m).
        """
        out = self.forward(x, coefficient)
        if delta_mask is None:
            return out if bias is None else out + bias
        out = torch.addcmul(out, delta_mask, target_out)
        return out if bias is None else torch.addcmul(out, 1 - delta_mask, bias)  # + 0 exactly where m_Δ = 1

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, C={self.C}, kind={self.kind}"
