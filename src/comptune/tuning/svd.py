"""The SVD basis of a matrix as rank-1 "components", so ComponentScale can scale singular directions.

W = Σ_i σ_i u_i v_iᵀ: component i reads along the right singular vector v_i and writes σ_i u_i.
Index 0 is the largest singular value. Δ = 0 up to float error, so SVD-scale and the decomposition's
ComponentScale differ only in the basis — which is the comparison the baseline is for.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..decomposition.components import Components, linear_layout_weight


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
