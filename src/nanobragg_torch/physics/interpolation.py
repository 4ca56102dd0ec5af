"""Tricubic (4x4x4-point Lagrange) interpolation of structure factors on the HKL grid."""
from __future__ import annotations

import functools

import torch


def lagrange4_weights(x: torch.Tensor) -> torch.Tensor:
    """Weights (..., 4) of the cubic through nodes floor(x)-1 .. floor(x)+2, evaluated at x.

    With t = x - floor(x) the Lagrange basis polynomials of the nodes -1, 0, 1, 2 are
    -t(t-1)(t-2)/6, (t+1)(t-1)(t-2)/2, -(t+1)t(t-2)/2 and (t+1)t(t-1)/6.
    """
    t = x - torch.floor(x)
    tp1, tm1, tm2 = t + 1.0, t - 1.0, t - 2.0
    a = t * tm1
    b = tp1 * tm2
    return torch.stack([a * tm2 * (-1.0 / 6.0), b * tm1 * 0.5, b * t * -0.5, a * tp1 * (1.0 / 6.0)], dim=-1)


def _windows(grid_flat: torch.Tensor) -> torch.Tensor:
    """View (N-3, 4) of the flat grid: row b holds grid[b:b+4] (four consecutive l values)."""
    n = grid_flat.numel()
    return grid_flat.as_strided((max(n - 3, 1), min(4, n)), (1, 1))


class _GatherRuns(torch.autograd.Function):
    """Runs of four grid values, with a deterministic backward (a sum per grid point).

    The backward of index_select/gather accumulates with atomic adds on a GPU, so two
    backward passes can differ in the last bits; gradcheck (and reproducible
    refinement) want the same gradient every time.  index_put_ with accumulation under
    deterministic algorithms sorts the indices instead.
    """

    @staticmethod
    def forward(ctx, grid_flat, runs):
        ctx.save_for_backward(runs)
        ctx.n = grid_flat.numel()
        return _windows(grid_flat).index_select(0, runs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        runs, = ctx.saved_tensors
        idx = (runs.unsqueeze(-1) + torch.arange(4, device=runs.device)).reshape(-1)
        out = torch.zeros(ctx.n, dtype=grad.dtype, device=grad.device)
        before = torch.are_deterministic_algorithms_enabled()
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            out.index_put_((idx,), grad.reshape(-1), accumulate=True)
        finally:
            torch.use_deterministic_algorithms(before, warn_only=warn_only)
        return out, None


def tricubic_interpolate(grid_flat: torch.Tensor, shape, hkl_min, h, k, l) -> torch.Tensor:
    """Interpolate F at fractional (h, k, l) (each shape (...)).

    ``grid_flat`` is the structure-factor grid flattened in C order with
    ``shape`` = (H, K, L) and origin ``hkl_min``.  The caller guarantees that the
    4x4x4 neighbourhood lies inside the grid wherever the value is used; elsewhere
    the neighbourhood is clamped into the grid (a finite, unused value).

    The neighbourhood is gathered as 16 runs of 4 consecutive l values (one
    index per run into a strided view of the grid), then contracted with the
    (h, k) weights and finally with the l weights.
    """
    H, K, L = shape
    shp = h.shape
    h, k, l = h.reshape(-1), k.reshape(-1), l.reshape(-1)
    E = h.shape[0]
    wh, wk, wl = lagrange4_weights(h), lagrange4_weights(k), lagrange4_weights(l)   # (E, 4)
    if min(H, K, L) < 4:                  # a grid too thin for any neighbourhood: never used
        return torch.zeros_like(h).reshape(shp)
    corner = None                          # flat index of the (-1, -1, -1) corner, clamped into the grid
    for u, lo, n, stride in ((h, hkl_min[0], H, K * L), (k, hkl_min[1], K, L), (l, hkl_min[2], L, 1)):
        c = (torch.floor(u).long() - (lo + 1)).clamp_(0, n - 4) * stride
        corner = c if corner is None else corner + c
    runs = (corner.unsqueeze(-1) + _run_offsets(K, L, h.device)).reshape(-1)           # (E * 16,)
    if torch.is_grad_enabled() and grid_flat.requires_grad:
        vals = _GatherRuns.apply(grid_flat, runs)
    else:
        vals = _windows(grid_flat).index_select(0, runs)
    vals = vals.reshape(E, 16, 4).to(h.dtype)                                           # [e, (i, j), m]
    w_hk = (wh.unsqueeze(-1) * wk.unsqueeze(-2)).reshape(E, 1, 16)
    along_l = torch.bmm(w_hk, vals).reshape(E, 4)                                       # sum over (i, j)
    return (along_l * wl).sum(-1).reshape(shp)


@functools.lru_cache(maxsize=32)
def _run_offsets(K: int, L: int, device) -> torch.Tensor:
    """Flat offsets (16,) of the 4x4 (h, k) runs from the neighbourhood's corner."""
    r = torch.arange(4, device=device)
    return ((r[:, None] * K + r[None, :]) * L).reshape(16)
