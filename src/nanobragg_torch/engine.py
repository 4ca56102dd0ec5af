"""The accumulation over pixels x subpaths, vectorized and chunked over pixels.

For every rendered pixel the sum runs over detector layers (T), sub-pixels
(O x O), sources (S) and lattice orientations (phi steps x mosaic domains, M):

    I = I_bg + sum F_cell(h)^2 F_latt(h)^2,   h = lattice . q,   q = (d - i) / lambda

then ``pixel = r_e^2 fluence I / steps * capture * polar * omega``.  The three
factors follow the reference program's caching rules (see
``docs/design.md``): solid angle from the first sub-pixel of the first layer,
capture fraction from the first sub-pixel of the last layer, polarization from
the first (sub-pixel, source) pair that survives the d_min cut -- unless the
matching ``oversample_*`` switch asks for them at every step, in which case the
running sum is multiplied by the factor after every term.

Shapes are named where tensors are built; the flattened evaluation axis of a
chunk is ordered (pixel, layer, sub_s, sub_f, source, phi, mosaic), the
reference program's loop order, so "first in loop order" is "first along the
flattened axis".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .physics.detector_response import capture_fraction, solid_angle
from .physics.interpolation import tricubic_interpolate
from .physics.lattice import (lattice_gauss, lattice_round, lattice_square, lattice_tophat)
from .physics.polarization import polarization_factor
from .physics.rotation import rotate_axis


@dataclass
class RenderProblem:
    """Everything the engine needs, as tensors of the compute dtype/device."""
    spixels: int
    fpixels: int
    pixel_size: torch.Tensor
    oversample: int
    thicksteps: int
    thickstep: torch.Tensor
    mu: torch.Tensor
    thickness_on: bool
    fdet: torch.Tensor
    sdet: torch.Tensor
    odet: torch.Tensor
    pix0: torch.Tensor
    beam_vector: torch.Tensor
    distance: torch.Tensor
    close_distance: torch.Tensor
    curved: bool
    point_pixel: bool
    incident: torch.Tensor        # (S, 3)
    wavelength: torch.Tensor      # (S,)
    polar_vector: torch.Tensor
    kahn: torch.Tensor
    nopolar: bool
    lattices: torch.Tensor        # (M, 3, 3) rows a, b, c (m)
    lattices_first: Optional[torch.Tensor]   # C-PARITY-001: the run's first evaluation
    recip: torch.Tensor           # (3, 3) rows a*, b*, c* (1/Angstrom), unrotated
    Na: torch.Tensor
    Nb: torch.Tensor
    Nc: torch.Tensor
    shape: str
    fudge: torch.Tensor
    F_grid: Optional[torch.Tensor]    # flat C-order grid
    F_shape: tuple
    hkl_min: tuple
    hkl_max: tuple
    hkls: int
    default_F: torch.Tensor
    interpolate: bool
    fluence: torch.Tensor
    r_e_sqr: float
    steps: int
    I_bg: torch.Tensor
    water: bool
    dmin: float
    oversample_thick: bool
    oversample_polar: bool
    oversample_omega: bool
    pixels: torch.Tensor          # (P,) flat indices of rendered pixels, raster order
    reduced_sincg: bool = False


@dataclass
class RenderState:
    """Order-dependent state carried from chunk to chunk (the C's loop-carried variables)."""
    interpolate: bool = False
    first_done: bool = False
    oob_warning: Optional[tuple] = None


@dataclass
class RenderResult:
    image: torch.Tensor           # (spixels, fpixels)
    omega_sum: torch.Tensor
    state: RenderState = field(default_factory=RenderState)


def _subpixel_positions(pb: RenderProblem, pix: torch.Tensor):
    """Lab positions (P, T, O, O, 3) of every sub-pixel of every layer of the chunk."""
    O = pb.oversample
    dtype = pb.fdet.dtype
    dev = pb.fdet.device
    sub = pb.pixel_size / O
    fp = (pix % pb.fpixels).to(dtype)
    sp = torch.div(pix, pb.fpixels, rounding_mode="floor").to(dtype)
    ar = torch.arange(O, dtype=dtype, device=dev)
    Fdet = sub * (fp[:, None] * O + ar) + sub / 2.0             # (P, O)   sub_f
    Sdet = sub * (sp[:, None] * O + ar) + sub / 2.0             # (P, O)   sub_s
    Odet = torch.arange(pb.thicksteps, dtype=dtype, device=dev) * pb.thickstep   # (T,)
    pos = (Fdet[:, None, None, :, None] * pb.fdet
           + Sdet[:, None, :, None, None] * pb.sdet
           + Odet[None, :, None, None, None] * pb.odet
           + pb.pix0)                                           # (P, T, O, O, 3)
    if pb.curved:
        v = pb.distance * pb.beam_vector
        ang_s = (pos[..., 1] / pb.distance).unsqueeze(-1)
        ang_f = (pos[..., 2] / pb.distance).unsqueeze(-1)
        newv = rotate_axis(v.expand_as(pos), pb.sdet, ang_s[..., 0])
        pos = rotate_axis(newv, pb.fdet, ang_f[..., 0])
    return pos


def _lattice_factor(pb: RenderProblem, hkl: torch.Tensor) -> torch.Tensor:
    h, k, l = hkl[..., 0], hkl[..., 1], hkl[..., 2]
    if pb.shape == "square":
        return lattice_square(h, k, l, pb.Na, pb.Nb, pb.Nc, reduced=pb.reduced_sincg)
    hkl0 = torch.ceil(hkl - 0.5)
    dh = hkl - hkl0
    NNN = pb.Na * pb.Nb * pb.Nc
    if pb.shape == "round":
        hrad = dh[..., 0] ** 2 * pb.Na ** 2 + dh[..., 1] ** 2 * pb.Nb ** 2 + dh[..., 2] ** 2 * pb.Nc ** 2
        return lattice_round(hrad, NNN, pb.fudge)
    dstar = dh @ pb.recip                                        # (..., 3) 1/Angstrom
    rad = (dstar * dstar).sum(-1) * pb.Na ** 2 * pb.Nb ** 2 * pb.Nc ** 2
    if pb.shape == "gauss":
        return lattice_gauss(rad, NNN, pb.fudge)
    return lattice_tophat(rad, NNN, pb.fudge)


def _nearest_F(pb: RenderProblem, hkl: torch.Tensor) -> torch.Tensor:
    if pb.hkls == 0 or pb.F_grid is None:
        return pb.default_F.expand(hkl.shape[:-1])
    hkl0 = torch.ceil(hkl - 0.5)
    lo = torch.tensor(pb.hkl_min, dtype=hkl.dtype, device=hkl.device)
    hi = torch.tensor(pb.hkl_max, dtype=hkl.dtype, device=hkl.device)
    inside = ((hkl0 >= lo) & (hkl0 <= hi)).all(-1)
    idx = (hkl0 - lo).long()
    H, K, L = pb.F_shape
    flat = (idx[..., 0] * K + idx[..., 1]) * L + idx[..., 2]
    flat = torch.where(inside, flat, torch.zeros_like(flat))
    vals = pb.F_grid[flat]
    return torch.where(inside, vals, pb.default_F.to(vals.dtype))


def _interp_out_of_range(pb: RenderProblem, hkl: torch.Tensor) -> torch.Tensor:
    lo = torch.tensor(pb.hkl_min, dtype=hkl.dtype, device=hkl.device)
    rng = torch.tensor([mx - mn + 1 for mn, mx in zip(pb.hkl_min, pb.hkl_max)], dtype=hkl.dtype, device=hkl.device)
    return ((hkl - lo + 3 > rng) | (hkl - 2 < lo)).any(-1)


def _structure_factor(pb: RenderProblem, hkl: torch.Tensor, evaluated: torch.Tensor, state: RenderState):
    """F_cell for every evaluation (E..., M), honouring the interpolation switch-off rule."""
    if not state.interpolate:
        return _nearest_F(pb, hkl)
    oob = _interp_out_of_range(pb, hkl) & evaluated
    flat_oob = oob.reshape(-1)
    n = flat_oob.numel()
    if bool(flat_oob.any()):
        first = int(torch.argmax(flat_oob.to(torch.int8)))
        state.interpolate = False
        h, k, l = hkl.reshape(-1, 3)[first].tolist()
        state.oob_warning = (h, k, l)
        use_interp = (torch.arange(n, device=hkl.device) < first).reshape(oob.shape)
    else:
        use_interp = torch.ones_like(oob)
    F = _nearest_F(pb, hkl)
    if bool(use_interp.any()):
        sel = use_interp.reshape(-1)
        hk = hkl.reshape(-1, 3)[sel]
        Fi = tricubic_interpolate(pb.F_grid, pb.F_shape, pb.hkl_min, hk[:, 0], hk[:, 1], hk[:, 2])
        F = F.reshape(-1).clone()
        F[sel] = Fi.to(F.dtype)
        F = F.reshape(oob.shape)
    return F


def render_chunk(pb: RenderProblem, pix: torch.Tensor, state: RenderState):
    """Float image values (P,) and omega sum for the pixels ``pix`` (flat indices)."""
    P = pix.shape[0]
    T, O = pb.thicksteps, pb.oversample
    pos = _subpixel_positions(pb, pix)                                 # (P, T, O, O, 3)
    airpath = torch.linalg.vector_norm(pos, dim=-1)                    # (P, T, O, O)
    diffracted = pos / airpath.unsqueeze(-1)

    # solid angle: cached from the first sub-pixel of the first layer unless oversampled
    if pb.oversample_omega:
        omega = solid_angle(pb.pixel_size, airpath, pb.close_distance, pb.point_pixel)    # (P,T,O,O)
        omega_sum = omega.sum()
    else:
        omega = solid_angle(pb.pixel_size, airpath[:, 0, 0, 0], pb.close_distance, pb.point_pixel)  # (P,)
        omega_sum = omega.sum() * (T * O * O)

    # capture fraction of each layer; cached value: first sub-pixel of the last layer
    if pb.thickness_on:
        parallax = (diffracted * pb.odet).sum(-1)                      # (P,T,O,O)
        layer = torch.arange(T, dtype=pos.dtype, device=pos.device).view(1, T, 1, 1)
        capture = capture_fraction(layer, pb.thickstep, pb.mu, parallax)
    else:
        capture = torch.ones_like(airpath)

    # scattering vectors for every source
    q = (diffracted.unsqueeze(-2) - pb.incident) / pb.wavelength.unsqueeze(-1)   # (P,T,O,O,S,3)
    S = q.shape[-2]
    if pb.dmin > 0:
        stol = 0.5 * torch.linalg.vector_norm(q, dim=-1)
        keep = ~((stol > 0) & (pb.dmin > 0.5 / torch.where(stol > 0, stol, torch.ones_like(stol))))
    else:
        keep = torch.ones(q.shape[:-1], dtype=torch.bool, device=q.device)  # (P,T,O,O,S)

    # polarization
    if pb.nopolar:
        polar_cached = torch.ones(P, dtype=pos.dtype, device=pos.device)
        polar_each = None
    else:
        inc = pb.incident.expand(P, T, O, O, S, 3)
        dif = diffracted.unsqueeze(-2).expand(P, T, O, O, S, 3)
        if pb.oversample_polar:
            polar_each = polarization_factor(pb.kahn, inc, dif, pb.polar_vector)        # (P,T,O,O,S)
            polar_cached = None
        else:
            polar_each = None
            kf = keep.reshape(P, -1)
            first = torch.argmax(kf.to(torch.int8), dim=1)                             # (P,)
            anyk = kf.any(dim=1)
            i_sel = inc.reshape(P, -1, 3)[torch.arange(P), first]
            d_sel = dif.reshape(P, -1, 3)[torch.arange(P), first]
            polar_cached = polarization_factor(pb.kahn, i_sel, d_sel, pb.polar_vector)
            polar_cached = torch.where(anyk, polar_cached, torch.zeros_like(polar_cached))

    # Miller indices for every lattice orientation
    M = pb.lattices.shape[0]
    hkl = torch.einsum("...c,mrc->...mr", q, pb.lattices)             # (P,T,O,O,S,M,3)
    if pb.lattices_first is not None and not state.first_done:
        kf = keep.reshape(-1)
        if bool(kf.any()):
            first = int(torch.argmax(kf.to(torch.int8)))
            q_first = q.reshape(-1, 3)[first]
            hkl_first = torch.einsum("c,mrc->mr", q_first, pb.lattices_first)
            hkl = hkl.reshape(-1, M, 3).clone()
            hkl[first] = hkl_first
            hkl = hkl.reshape(P, T, O, O, S, M, 3)
            state.first_done = True

    F_latt = _lattice_factor(pb, hkl)                                  # (P,T,O,O,S,M)
    evaluated = keep.unsqueeze(-1) & ((F_latt != 0) | pb.water)
    F_cell = _structure_factor(pb, hkl, evaluated, state)
    term = F_cell * F_cell * F_latt * F_latt
    term = torch.where(keep.unsqueeze(-1), term, torch.zeros_like(term))

    if not (pb.oversample_thick or pb.oversample_polar or pb.oversample_omega):
        I = pb.I_bg + term.reshape(P, -1).sum(-1)
    else:
        fac = torch.ones_like(term)
        if pb.oversample_thick:
            fac = fac * capture[..., None, None]
        if pb.oversample_polar:
            fac = fac * polar_each[..., None]
        if pb.oversample_omega:
            fac = fac * omega[..., None, None]
        fac = torch.where(evaluated, fac, torch.ones_like(fac)).reshape(P, -1)
        suffix = torch.flip(torch.cumprod(torch.flip(fac, [1]), dim=1), [1])   # prod_{e' >= e}
        I = pb.I_bg * suffix[:, 0] + (term.reshape(P, -1) * suffix).sum(-1)

    value = pb.r_e_sqr * pb.fluence * I / pb.steps
    if not pb.oversample_thick:
        value = value * capture[:, T - 1, 0, 0]
    if not pb.oversample_polar:
        value = value * polar_cached
    if not pb.oversample_omega:
        value = value * omega
    return value, omega_sum


def choose_chunk(pb: RenderProblem, max_elements: int) -> int:
    per_pixel = pb.thicksteps * pb.oversample ** 2 * pb.incident.shape[0] * pb.lattices.shape[0]
    if pb.interpolate:
        per_pixel *= 24
    return max(1, int(max_elements // max(per_pixel, 1)))


def render(pb: RenderProblem, max_elements: int = 1 << 21,
           progress: Optional[Callable[[int, int], None]] = None) -> RenderResult:
    """Render the whole image; pixels not in ``pb.pixels`` stay zero."""
    state = RenderState(interpolate=pb.interpolate)
    dtype = pb.fdet.dtype
    dev = pb.fdet.device
    n = pb.pixels.shape[0]
    chunk = choose_chunk(pb, max_elements)
    values = []
    omega_sum = torch.zeros((), dtype=dtype, device=dev)
    for start in range(0, n, chunk):
        pix = pb.pixels[start:start + chunk]
        v, osum = render_chunk(pb, pix, state)
        values.append(v)
        omega_sum = omega_sum + osum
        if progress is not None:
            progress(min(start + chunk, n), n)
    flat = torch.zeros(pb.spixels * pb.fpixels, dtype=dtype, device=dev)
    if n:
        flat = flat.index_put((pb.pixels,), torch.cat(values))
    return RenderResult(image=flat.reshape(pb.spixels, pb.fpixels), omega_sum=omega_sum, state=state)
