"""Lattice transforms (shape factors) of a finite crystal.

Each returns F_latt, the amplitude whose square multiplies |F_cell|^2.
"""
from __future__ import annotations

import functools
import math

import torch

ROUND_VOLUME_FACTOR = 0.723601254558268   # sqrt of the cube/sphere volume ratio used by nanoBragg
GAUSS_WIDTH = 0.63
TOPHAT_RADIUS_SQR = 0.3969


def sincg(x: torch.Tensor, N) -> torch.Tensor:
    """Grating function sin(N x)/sin(x), equal to N at x = 0 (the C formula, term for term)."""
    safe = torch.where(x == 0, torch.ones_like(x), x)
    val = torch.sin(safe * N) / torch.sin(safe)
    return torch.where(x == 0, torch.as_tensor(N, dtype=x.dtype, device=x.device).expand_as(x), val)


def sincg_reduced(h: torch.Tensor, N) -> torch.Tensor:
    """sin(pi N h)/sin(pi h) evaluated on the fractional part d = h - round(h).

    Equal to ``sincg(pi*h, N)`` in exact arithmetic but accurate in single
    precision, where pi*h loses the digits that matter near integer h.  For a
    plain integer N the sign factor (-1)^(n(N-1)) is applied exactly; for a
    tensor N (continuous, differentiable) sin(pi N (n + d)) is expanded.
    """
    n = torch.round(h)
    d = h - n
    den = torch.sin(math.pi * d)
    if isinstance(N, torch.Tensor):
        Nn = N * n
        Nn = Nn - 2.0 * torch.floor(Nn * 0.5)                 # N n mod 2, exact for the sine below
        num = torch.sin(math.pi * Nn) * torch.cos(math.pi * N * d) + torch.cos(math.pi * Nn) * torch.sin(math.pi * N * d)
        sign = 1.0 - 2.0 * (n - 2.0 * torch.floor(n * 0.5))   # (-1)^n
        limit = N * torch.cos(math.pi * Nn) * sign
        return torch.where(den == 0, limit, num * sign / torch.where(den == 0, torch.ones_like(den), den))
    num = torch.sin((math.pi * N) * d)
    val = torch.where(den == 0, torch.full_like(den, float(N)), num / den)
    if int(N) % 2 == 0:                                      # (-1)^(n (N-1)) = (-1)^n for even N
        val = val * (1.0 - 2.0 * torch.remainder(n, 2.0))
    return val


def sincg_squared_reduced(h: torch.Tensor, N) -> torch.Tensor:
    """(sin(pi N h)/sin(pi h))^2 for a plain integer N: the sign is not needed."""
    d = h - torch.round(h)
    den = torch.sin(math.pi * d)
    num = torch.sin((math.pi * N) * d)
    safe = torch.where(den == 0, torch.ones_like(den), den)   # no 0/0 in the unused branch (NaN gradients)
    return torch.where(den == 0, torch.full_like(den, float(N) ** 2), (num / safe) ** 2)


CHEBYSHEV_MAX_N = 12          # float32: error of the polynomial below stays under 1e-4 of the peak N^2
CHEBYSHEV_MAX_N_DOUBLE = 20   # float64: under 1e-9 of the peak


def chebyshev_u_coefficients(N: int):
    """Coefficients of U_{N-1}(c) = sin(N x)/sin(x), c = cos x, as a polynomial in s = c^2.

    Highest power first; for even N the polynomial is multiplied by c.
    U_n(c) = sum_k (-1)^k C(n-k, k) (2c)^(n-2k).
    """
    n = int(N) - 1
    return [float((-1) ** k * math.comb(n - k, k) * 2 ** (n - 2 * k)) for k in range(n // 2 + 1)]


@functools.lru_cache(maxsize=256)
def _scalar(v: float, dtype, device) -> torch.Tensor:
    """A cached 0-d tensor (building one costs more than the arithmetic on a chunk)."""
    return torch.tensor(v, dtype=dtype, device=device)


def sincg_chebyshev(x: torch.Tensor, N: int) -> torch.Tensor:
    """sin(N x)/sin(x) for a plain integer N as the Chebyshev polynomial U_{N-1}(cos x).

    Equal to the grating function everywhere (including N at x = k pi, without
    0/0), one transcendental instead of two and no division.  Well conditioned
    near the Bragg peaks, where the polynomial is flat; the rounding of large
    coefficients limits it to N <= CHEBYSHEV_MAX_N in single precision.
    Out-of-place, so it is differentiable.
    """
    c = torch.cos(x)
    coef = chebyshev_u_coefficients(N)
    if len(coef) == 1:
        p = torch.full_like(c, coef[0])
    else:
        s = c * c
        k = lambda v: _scalar(v, c.dtype, c.device)
        p = torch.add(k(coef[1]), s, alpha=coef[0])           # Horner: p = p*s + a, one pass a step
        for a in coef[2:]:
            p = torch.addcmul(k(a), p, s)
    if (int(N) - 1) % 2 == 1:
        p = p * c
    return p


def sincg_chebyshev_inplace(u: torch.Tensor, N: int, pi_scaled: bool = False) -> torch.Tensor:
    """:func:`sincg_chebyshev` of ``pi * u`` (of ``u`` when ``pi_scaled``) with in-place arithmetic (no autograd)."""
    c = torch.cos(u) if pi_scaled else torch.mul(u, math.pi).cos_()
    coef = chebyshev_u_coefficients(N)
    odd = (int(N) - 1) % 2 == 1
    if len(coef) == 1:                   # N = 1: 1;  N = 2: 2c
        return c.mul_(coef[0]) if odd else c.fill_(coef[0])
    s = torch.mul(c, c)
    k = lambda v: _scalar(v, c.dtype, c.device)                # noqa: E731
    p = torch.add(k(coef[1]), s, alpha=coef[0])               # Horner, one pass a step
    for a in coef[2:]:
        p = torch.addcmul(k(a), p, s)
    return p.mul_(c) if odd else p


def sinc3(x: torch.Tensor) -> torch.Tensor:
    """Fourier transform of a sphere, 3 (sin x - x cos x)/x^3, equal to 1 at x = 0."""
    safe = torch.where(x == 0, torch.ones_like(x), x)
    val = 3.0 * (torch.sin(safe) / safe - torch.cos(safe)) / (safe * safe)
    return torch.where(x == 0, torch.ones_like(x), val)


def lattice_square(h, k, l, Na, Nb, Nc, reduced: bool = False) -> torch.Tensor:
    """Parallelepiped crystal: product of grating functions for the axes with N > 1."""
    f = sincg_reduced if reduced else (lambda u, N: sincg(math.pi * u, N))
    out = None
    for u, N in ((h, Na), (k, Nb), (l, Nc)):
        if isinstance(N, torch.Tensor) or N > 1:
            term = f(u, N)
            if isinstance(N, torch.Tensor):
                term = torch.where(N > 1, term, torch.ones_like(term))
            out = term if out is None else out * term
    return torch.ones_like(h) if out is None else out


def lattice_round(hrad_sqr: torch.Tensor, NaNbNc, fudge) -> torch.Tensor:
    """Ellipsoidal crystal: N^3 * 0.7236 * sinc3(pi sqrt(hrad^2 fudge))."""
    return NaNbNc * ROUND_VOLUME_FACTOR * sinc3(math.pi * torch.sqrt(hrad_sqr * fudge))


def lattice_gauss(rad_star_sqr: torch.Tensor, NaNbNc, fudge) -> torch.Tensor:
    """Gaussian spots: N^3 exp(-rad*^2 fudge / 0.63)."""
    return NaNbNc * torch.exp(-(rad_star_sqr / GAUSS_WIDTH * fudge))


def lattice_tophat(rad_star_sqr: torch.Tensor, NaNbNc, fudge) -> torch.Tensor:
    """Flat-top spots: N^3 inside rad*^2 fudge < 0.3969, zero outside."""
    return NaNbNc * (rad_star_sqr * fudge < TOPHAT_RADIUS_SQR).to(rad_star_sqr.dtype)
