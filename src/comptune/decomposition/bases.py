"""Other bases of a weight matrix as rank-1 units, in the shape of a decomposition's subcomponents.

A basis is a mapping path -> Components(V [d_in, r], U [r, d_out]) with (V U)ᵀ = W, so every tool
that takes subcomponents (ComponentScale, the dose scan, the rankings) takes these too:

- SVD: W = Σ_i σ_i u_i v_iᵀ; unit i reads along the right singular vector v_i and writes σ_i u_i
  (index 0 is the largest singular value). Δ = 0 up to float error, so SVD-scale and the
  decomposition's ComponentScale differ only in the basis — which is the comparison it is for.
- neurons (MLP output projections): unit j reads hidden unit h_j (V = I) and writes column j of W
  (U = Wᵀ), so scaling unit j is exactly neuron-scale's (IA3's) edit.
"""

from __future__ import annotations

import fnmatch

import torch
import torch.nn as nn

from ..errors import UserError
from .components import SUPPORTED_MODULE_TYPES, Components, linear_layout_weight

# MLP output projections, whose inputs are the hidden units (ComptuneLM/Llama, GPT-2)
NEURON_MODULE_PATTERNS = ("*mlp.down_proj", "*mlp.c_proj", "*mlp.dense_4h_to_h")  # Llama/ComptuneLM, GPT-2, GPT-NeoX


def linear_module_paths(model: nn.Module) -> list[str]:
    """Every nn.Linear / Conv1D except the unembedding (embeddings are nn.Embedding already)."""
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None  # type: ignore[operator]
    return [name for name, m in model.named_modules() if isinstance(m, SUPPORTED_MODULE_TYPES) and m is not out_emb]


@torch.no_grad()
def svd_components(model: nn.Module, paths: list[str]) -> dict[str, Components]:
    """{path: Components(V [d_in, r], U [r, d_out])} with (V U)ᵀ = W, r = min(d_in, d_out)."""
    out = {}
    for path in paths:
        layer = model.get_submodule(path)
        W = linear_layout_weight(layer).double()  # [d_out, d_in]
        left, sigma, right_t = torch.linalg.svd(W, full_matrices=False)  # W = left diag(σ) right_t
        dtype = layer.weight.dtype
        out[path] = Components(V=right_t.T.to(dtype).contiguous(), U=(left * sigma).T.to(dtype).contiguous())
    return out


def neuron_components(model: nn.Module, paths: list[str]) -> dict[str, Components]:
    """{path: Components(V = I [d_hidden, d_hidden], U = Wᵀ [d_hidden, d_out])}: one unit per hidden unit."""
    out = {}
    for path in paths:
        layer = model.get_submodule(path)
        W = linear_layout_weight(layer).detach()  # [d_out, d_hidden]
        out[path] = Components(V=torch.eye(W.shape[1], dtype=W.dtype, device=W.device), U=W.T.contiguous())
    return out


def default_neuron_modules(model: nn.Module) -> list[str]:
    paths = [p for p in linear_module_paths(model) if any(fnmatch.fnmatch(p, pat) for pat in NEURON_MODULE_PATTERNS)]
    if not paths:
        raise UserError(f"found no MLP output projection ({', '.join(NEURON_MODULE_PATTERNS)}) for the neuron basis; name the modules")
    return paths
