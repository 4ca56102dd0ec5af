"""Tricubic (4x4x4-point Lagrange) interpolation of structure factors on the HKL grid."""
from __future__ import annotations

import torch


def lagrange4_weights(x: torch.Tensor) -> torch.Tensor:
    """Weights (..., 4) of the cubic through nodes floor(x)-1 .. floor(x)+2, evaluated at x."""
    x0 = torch.floor(x)
    nodes = x0.unsqueeze(-1) + torch.arange(-1, 3, dtype=x.dtype, device=x.device)
    d = x.unsqueeze(-1) - nodes                                   # (..., 4): x - x_j
    w = []
    for j in range(4):
        num = torch.ones_like(x)
        den = 1.0
        for m in range(4):
            if m != j:
                num = num * d[..., m]
                den *= float(j - m)
        w.append(num / den)
    return torch.stack(w, dim=-1)


def tricubic_interpolate(grid_flat: torch.Tensor, shape, hkl_min, h, k, l) -> torch.Tensor:
    """Interpolate F at fractional (h, k, l) (each shape (...)).

    ``grid_flat`` is the structure-factor grid flattened in C order with
    ``shape`` = (H, K, L) and origin ``hkl_min``.  The caller guarantees that the
    4x4x4 neighbourhood lies inside the grid.
    """
    H, K, L = shape
    wh, wk, wl = lagrange4_weights(h), lagrange4_weights(k), lagrange4_weights(l)
    off = torch.arange(-1, 3, device=h.device)
    ih = (torch.floor(h).long() - hkl_min[0]).unsqueeze(-1) + off      # (..., 4)
    ik = (torch.floor(k).long() - hkl_min[1]).unsqueeze(-1) + off
    il = (torch.floor(l).long() - hkl_min[2]).unsqueeze(-1) + off
    idx = (ih[..., :, None, None] * K + ik[..., None, :, None]) * L + il[..., None, None, :]
    vals = grid_flat[idx.clamp(0, grid_flat.numel() - 1)]             # (..., 4, 4, 4)
    return torch.einsum("...i,...j,...k,...ijk->...", wh, wk, wl, vals)
