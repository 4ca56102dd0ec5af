"""The accumulation over pixels x subpaths, vectorized and chunked over pixels.

For every rendered pixel the sum runs over detector layers (T), sub-pixels
(O x O), sources (S) and lattice orientations (phi steps x mosaic domains, M):

    I = I_bg + sum F_cell(h)^2 F_latt(h)^2,   h = lattice . q,   q = (d - i) / lambda

then ``pixel = r_e^2 fluence I / steps * capture * polar * omega``.  The three
factors follow the reference program's caching rules (see
``docs/design.md``): solid angle from the first sub-pixel of the first layer,
capture fraction from the first sub-pixel of the last layer, polarization from
the first (sub-pixel, source) pair that survives the d_min cut -- unless the
matching ``oversample_*`` switch asks for them at every step, in which case each
term is weighted by its own factor (``I = I_bg + sum term * factor``; I_bg is not
weighted and the factor is not applied again at the end).  With
``legacy_oversample`` (``SimulationOptions.c_legacy``) the unmodified C program's
rule instead: the whole running sum, I_bg included, is multiplied by the factor
after every term, so the factors compound.

Shapes are named where tensors are built; the flattened evaluation axis of a
chunk is ordered (pixel, layer, sub_s, sub_f, source, phi, mosaic), the
reference program's loop order, so "first in loop order" is "first along the
flattened axis".
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ._memory import keep_freed_memory
from .physics.detector_response import capture_fraction, solid_angle
from .physics.interpolation import tricubic_interpolate
from .physics.lattice import (CHEBYSHEV_MAX_N, CHEBYSHEV_MAX_N_DOUBLE, lattice_gauss, lattice_round, lattice_square, lattice_tophat, sincg,
                              sincg_chebyshev, sincg_chebyshev_inplace,
                              sincg_squared_reduced)
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
    legacy_oversample: bool = False   # the C's compounding -oversample_* rule (c_legacy)


@dataclass
class RenderState:
    """Order-dependent state carried from chunk to chunk (the C's loop-carried variables)."""
    interpolate: bool = False
    first_done: bool = False
    oob_warning: Optional[tuple] = None
    constants: Optional[tuple] = None     # (pb, grad mode, _ChunkConstants) of the last chunk


@dataclass
class RenderResult:
    image: torch.Tensor           # (spixels, fpixels)
    omega_sum: torch.Tensor
    state: RenderState = field(default_factory=RenderState)
    compiled_chunks: int = 0      # chunks rendered through the compiled kernel (render(compiled=True))


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


def lattice_factor(pb: RenderProblem, h: torch.Tensor, k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """F_latt for fractional Miller indices (any matching shapes)."""
    if pb.shape == "square":
        return lattice_square(h, k, l, pb.Na, pb.Nb, pb.Nc, reduced=pb.reduced_sincg)
    dh, dk, dl = h - torch.ceil(h - 0.5), k - torch.ceil(k - 0.5), l - torch.ceil(l - 0.5)
    NNN = pb.Na * pb.Nb * pb.Nc
    if pb.shape == "round":
        hrad = dh * dh * pb.Na ** 2 + dk * dk * pb.Nb ** 2 + dl * dl * pb.Nc ** 2
        return lattice_round(hrad, NNN, pb.fudge)
    r = pb.recip                                                  # rows a*, b*, c* (1/Angstrom)
    dx = dh * r[0, 0] + dk * r[1, 0] + dl * r[2, 0]
    dy = dh * r[0, 1] + dk * r[1, 1] + dl * r[2, 1]
    dz = dh * r[0, 2] + dk * r[1, 2] + dl * r[2, 2]
    rad = (dx * dx + dy * dy + dz * dz) * pb.Na ** 2 * pb.Nb ** 2 * pb.Nc ** 2
    if pb.shape == "gauss":
        return lattice_gauss(rad, NNN, pb.fudge)
    return lattice_tophat(rad, NNN, pb.fudge)


def _sincg_sq_inplace(u: torch.Tensor, N: float) -> torch.Tensor:
    """(sin(pi N d)/sin(pi d))^2, d = u - round(u), with few temporaries (no autograd)."""
    d = torch.round(u)
    torch.sub(u, d, out=d)
    d.mul_(math.pi)
    den = torch.sin(d)
    num = d.mul_(float(N)).sin_()
    return num.div_(den).nan_to_num_(nan=float(N)).square_()


def chebyshev_lattice(pb: RenderProblem, dtype) -> bool:
    """True when F_latt^2 takes the Chebyshev path: square shape, plain integer N within range."""
    if pb.shape != "square" or any(isinstance(N, torch.Tensor) for N in (pb.Na, pb.Nb, pb.Nc)):
        return False
    nmax = CHEBYSHEV_MAX_N if dtype != torch.float64 else CHEBYSHEV_MAX_N_DOUBLE
    return all(N == int(N) and N <= nmax for N in (pb.Na, pb.Nb, pb.Nc))


def lattice_factor_sq(pb: RenderProblem, h: torch.Tensor, k: torch.Tensor, l: torch.Tensor,
                      pi_scaled: bool = False) -> torch.Tensor:
    """F_latt^2, with a cheaper path for the parallelepiped crystal and plain integer N.

    ``pi_scaled``: h, k, l are given as pi*h, pi*k, pi*l (only where
    :func:`chebyshev_lattice` holds), which saves a pass per index.
    """
    plain = not any(isinstance(N, torch.Tensor) for N in (pb.Na, pb.Nb, pb.Nc))
    if pi_scaled and not chebyshev_lattice(pb, h.dtype):
        raise ValueError("pi-scaled Miller indices need the Chebyshev lattice path")
    if pb.shape != "square" or not plain:
        f = lattice_factor(pb, h, k, l)
        return f * f
    out = None
    grad = torch.is_grad_enabled() and (h.requires_grad or k.requires_grad or l.requires_grad)
    if chebyshev_lattice(pb, h.dtype):
        # integer N: U_{N-1}(cos pi h) per axis (one cosine, no division), multiplied, squared once
        for u, N in ((h, pb.Na), (k, pb.Nb), (l, pb.Nc)):
            if N <= 1:
                continue
            if grad:
                f = sincg_chebyshev(u if pi_scaled else u * math.pi, int(N))
            else:
                f = sincg_chebyshev_inplace(u, int(N), pi_scaled)
            out = f if out is None else (out * f if grad else out.mul_(f))
        if out is None:
            return torch.ones_like(h)
        return out * out if grad else out.square_()
    for u, N in ((h, pb.Na), (k, pb.Nb), (l, pb.Nc)):
        if N <= 1:
            continue
        if not grad and pb.reduced_sincg:
            f2 = _sincg_sq_inplace(u, N)
        elif pb.reduced_sincg:
            f2 = sincg_squared_reduced(u, N)
        elif grad:
            f2 = sincg(math.pi * u, N) ** 2
        else:
            x = math.pi * u
            f2 = torch.where(x == 0, torch.full_like(x, float(N)), torch.sin(x * N) / torch.sin(x)) ** 2
        out = f2 if out is None else (out.mul_(f2) if not grad else out * f2)
    return torch.ones_like(h) if out is None else out


def nearest_F(pb: RenderProblem, h: torch.Tensor, k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Structure factor of the nearest grid point (default_F outside the grid or without a grid)."""
    if pb.hkls == 0 or pb.F_grid is None:
        return pb.default_F.expand(h.shape)
    H, K, L = pb.F_shape
    inside = None
    flat = None
    for u, lo, hi, stride in ((h, pb.hkl_min[0], pb.hkl_max[0], K * L), (k, pb.hkl_min[1], pb.hkl_max[1], L),
                              (l, pb.hkl_min[2], pb.hkl_max[2], 1)):
        u0 = torch.ceil(u - 0.5)
        ok = (u0 >= lo) & (u0 <= hi)
        idx = (u0 - lo).clamp(0, hi - lo).long() * stride
        inside = ok if inside is None else inside & ok
        flat = idx if flat is None else flat + idx
    vals = pb.F_grid[flat]
    return torch.where(inside, vals, pb.default_F.to(vals.dtype))


def interp_out_of_range(pb: RenderProblem, h, k, l) -> torch.Tensor:
    """The C's test for a 4x4x4 neighbourhood leaving the grid."""
    out = None
    for u, lo, hi in ((h, pb.hkl_min[0], pb.hkl_max[0]), (k, pb.hkl_min[1], pb.hkl_max[1]),
                      (l, pb.hkl_min[2], pb.hkl_max[2])):
        rng = hi - lo + 1
        o = (u - lo + 3 > rng) | (u - 2 < lo)
        out = o if out is None else out | o
    return out


def structure_factor(pb: RenderProblem, h, k, l, evaluated: torch.Tensor, state: RenderState):
    """F_cell for every evaluation, honouring the C's interpolation switch-off rule.

    ``h``, ``k``, ``l`` and ``evaluated`` are in loop order when flattened.  The
    first evaluation (in loop order) whose neighbourhood leaves the grid turns
    interpolation off for itself and everything after it, so interpolation
    covers a prefix of the flattened evaluations.
    """
    if not state.interpolate:
        return nearest_F(pb, h, k, l)
    flat_oob = (interp_out_of_range(pb, h, k, l) & evaluated).reshape(-1)
    if not bool(flat_oob.any()):
        return tricubic_interpolate(pb.F_grid, pb.F_shape, pb.hkl_min, h, k, l).to(pb.F_grid.dtype)
    first = int(torch.argmax(flat_oob.to(torch.int8)))
    hf, kf, lf = h.reshape(-1), k.reshape(-1), l.reshape(-1)
    state.interpolate = False
    state.oob_warning = (float(hf[first]), float(kf[first]), float(lf[first]))
    F = nearest_F(pb, hf[first:], kf[first:], lf[first:])
    if first > 0:
        Fi = tricubic_interpolate(pb.F_grid, pb.F_shape, pb.hkl_min, hf[:first], kf[:first], lf[:first])
        F = torch.cat([Fi.to(F.dtype), F])
    return F.reshape(h.shape)


def miller_indices(pb: RenderProblem, q: torch.Tensor, lattices: Optional[torch.Tensor] = None):
    """h, k, l (each (E, M)) for scattering vectors q (E, 3) and lattices (M, 3, 3)."""
    lat = pb.lattices if lattices is None else lattices
    return tuple(q @ lat[:, r, :].transpose(0, 1) for r in range(3))


def _subpixel_coordinates(pb: RenderProblem, pix: torch.Tensor):
    """Sub-pixel centres along the detector axes: Fdet (O, P) sub_f, Sdet (O, P) sub_s, Odet (T,) m."""
    O = pb.oversample
    dtype, dev = pb.fdet.dtype, pb.fdet.device
    sub = pb.pixel_size / O
    fp = (pix % pb.fpixels).to(dtype)
    sp = torch.div(pix, pb.fpixels, rounding_mode="floor").to(dtype)
    ar = torch.arange(O, dtype=dtype, device=dev).unsqueeze(-1)
    Fdet = sub * (fp * O + ar) + sub / 2.0
    Sdet = sub * (sp * O + ar) + sub / 2.0
    Odet = torch.arange(pb.thicksteps, dtype=dtype, device=dev) * pb.thickstep
    return Fdet, Sdet, Odet


def _separable(coords, fv, sv, ov, pv) -> torch.Tensor:
    """fv Fdet[sf, p] + sv Sdet[ss, p] + ov Odet[t] + pv as a (T, O, O, P) tensor.

    A flat detector's sub-pixel position is linear in its three coordinates, so
    each component is one broadcast sum along the contiguous pixel axis.
    """
    Fdet, Sdet, Odet = coords
    b = (Sdet * sv + pv).unsqueeze(0)                                  # (1, O, P)
    if Odet.shape[0] > 1:
        b = b + (Odet * ov).view(-1, 1, 1)                             # (T, O, P)
    return b.unsqueeze(2) + (Fdet * fv).unsqueeze(0).unsqueeze(0)      # (T, O, O, P)


@dataclass
class _ChunkConstants:
    """Per-render scalars and small tensors that every chunk needs (selected once, not per chunk)."""
    fdet: tuple
    sdet: tuple
    odet: tuple
    pix0: tuple
    minus_incident: tuple      # -incident[:, c] as (S, 1), c = x, y, z
    lam: torch.Tensor          # (S, 1)
    pi_lattices: torch.Tensor  # (M, 3, 3) pi * lattices
    lat_over_lam: tuple        # [scaled][r][c]: lattice row r, component c, / lambda as (S, 1); scaled: * pi


def _constants(pb: RenderProblem, state: RenderState) -> _ChunkConstants:
    grad = torch.is_grad_enabled()
    cached = state.constants
    if cached is not None and cached[0] is pb and cached[1] == grad:
        return cached[2]
    S = pb.incident.shape[0]
    lam = pb.wavelength.view(S, 1)
    lat = pb.lattices[0].unsqueeze(0) / pb.wavelength.view(S, 1, 1)      # (S, 3, 3)
    rows = lambda m: tuple(tuple(m[:, r, c:c + 1] for c in range(3)) for r in range(3))   # noqa: E731
    consts = _ChunkConstants(
        fdet=pb.fdet.unbind(), sdet=pb.sdet.unbind(), odet=pb.odet.unbind(), pix0=pb.pix0.unbind(),
        minus_incident=tuple((-pb.incident[:, c]).view(S, 1) for c in range(3)), lam=lam,
        pi_lattices=pb.lattices * math.pi, lat_over_lam=(rows(lat), rows(lat * math.pi)))
    state.constants = (pb, grad, consts)
    return consts


def oversampled_factor(pb: RenderProblem, capture, polar_each, omega, shape) -> torch.Tensor:
    """Product of the factors recomputed at every step (-oversample_thick/_polar/_omega), shape
    (T, O, O, S, P); factors not asked for, and capture without a sensor thickness or polarization
    with -nopolar, count as 1 (as in the C program)."""
    fac = None
    if pb.oversample_thick and capture is not None:
        fac = capture.unsqueeze(-2)                                     # (T, O, O, 1, P)
    if pb.oversample_polar and polar_each is not None:
        fac = polar_each if fac is None else fac * polar_each            # (T, O, O, S, P)
    if pb.oversample_omega:
        fac = omega.unsqueeze(-2) if fac is None else fac * omega.unsqueeze(-2)
    if fac is None:
        return torch.ones(shape, dtype=pb.fdet.dtype, device=pb.fdet.device)
    return fac.expand(shape)


def render_chunk(pb: RenderProblem, pix: torch.Tensor, state: RenderState):
    """Float image values (P,) and omega sum for the pixels ``pix`` (flat indices).

    Per-evaluation tensors are laid out (layer, sub_s, sub_f, source, pixel
    [, orientation]), vector quantities as separate x, y, z tensors: every
    operation then runs over the contiguous pixel axis.  Loop order (the
    reference program's, which decides "first") is (pixel, layer, sub_s, sub_f,
    source, orientation); where it matters the code permutes to it explicitly.
    """
    P = pix.shape[0]
    T, O = pb.thicksteps, pb.oversample
    S = pb.incident.shape[0]
    M = pb.lattices.shape[0]
    K = T * O * O * S                                                   # subpaths per orientation
    dtype, dev = pb.fdet.dtype, pb.fdet.device
    cst = _constants(pb, state)

    if pb.curved:
        pos = _subpixel_positions(pb, pix).permute(1, 2, 3, 0, 4)      # (T, O, O, P, 3)
        px, py, pz = (pos[..., c].contiguous() for c in range(3))
    else:
        coords = _subpixel_coordinates(pb, pix)
        px, py, pz = (_separable(coords, cst.fdet[c], cst.sdet[c], cst.odet[c], cst.pix0[c]) for c in range(3))
    airpath = torch.addcmul(torch.addcmul(px * px, py, py), pz, pz).sqrt()   # (T, O, O, P)

    def diffracted_at(t: int):
        """Unit diffracted vectors (P, 3) of the first sub-pixel of layer t."""
        i = t * O * O
        first = lambda x: x.view(-1, P)[i]                               # noqa: E731
        return torch.stack([first(px), first(py), first(pz)], -1) / first(airpath).unsqueeze(-1)

    # solid angle: cached from the first sub-pixel of the first layer unless oversampled
    if pb.oversample_omega:
        omega = solid_angle(pb.pixel_size, airpath, pb.close_distance, pb.point_pixel)    # (T, O, O, P)
        omega_sum = omega.sum()
    else:
        omega = solid_angle(pb.pixel_size, airpath[0, 0, 0], pb.close_distance, pb.point_pixel)  # (P,)
        omega_sum = omega.sum() * (T * O * O)

    # capture fraction of each layer; cached value: first sub-pixel of the last layer
    capture = capture_cached = None
    if pb.thickness_on:
        if pb.oversample_thick:
            parallax = (px * cst.odet[0] + py * cst.odet[1] + pz * cst.odet[2]) / airpath   # (T, O, O, P)
            layer = torch.arange(T, dtype=dtype, device=dev).view(T, 1, 1, 1)
            capture = capture_fraction(layer, pb.thickstep, pb.mu, parallax)
        else:
            parallax = diffracted_at(T - 1) @ pb.odet                                   # (P,)
            capture_cached = capture_fraction(float(T - 1), pb.thickstep, pb.mu, parallax)

    # scattering vectors q = (d - i) / lambda for every source, as dq = d - i, components
    # (T, O, O, S, P).  (d - i) first: near the direct beam it is small, and forming it
    # before the product with the lattice keeps float32 Miller indices as accurate as
    # the C's order; 1/lambda is applied to the lattice vectors instead (one pass less).
    lam = cst.lam
    dq = [torch.addcdiv(cst.minus_incident[i], c.unsqueeze(-2), airpath.unsqueeze(-2))
          for i, c in enumerate((px, py, pz))]
    keep = None                                                         # (T, O, O, S, P); None: all evaluated
    if pb.dmin > 0:
        stol = 0.5 * torch.addcmul(torch.addcmul(dq[0] * dq[0], dq[1], dq[1]), dq[2], dq[2]).sqrt() / lam
        keep = ~((stol > 0) & (pb.dmin > 0.5 / torch.where(stol > 0, stol, torch.ones_like(stol))))

    # polarization
    polar_each = polar_cached = None
    if pb.nopolar:
        polar_cached = torch.ones(P, dtype=dtype, device=dev)
    elif pb.oversample_polar:
        dif = torch.stack([px, py, pz], -1) / airpath.unsqueeze(-1)                 # (T, O, O, P, 3)
        dif = dif.unsqueeze(-3)                                                         # (T, O, O, 1, P, 3)
        inc = pb.incident.view(S, 1, 3)
        polar_each = polarization_factor(pb.kahn, inc, dif, pb.polar_vector)          # (T, O, O, S, P)
    else:
        if keep is None:
            polar_cached = polarization_factor(pb.kahn, pb.incident[0], diffracted_at(0),
                                               pb.polar_vector)
        else:
            kf = keep.reshape(K, P)
            first = torch.argmax(kf.to(torch.int8), dim=0)                            # (P,) first in loop order
            sub_first = torch.div(first, S, rounding_mode="floor")
            cols = torch.arange(P, device=dev)
            d_sel = torch.stack([c.reshape(-1, P)[sub_first, cols] for c in (px, py, pz)], -1)
            d_sel = d_sel / airpath.reshape(-1, P)[sub_first, cols].unsqueeze(-1)
            polar_cached = polarization_factor(pb.kahn, pb.incident[first % S], d_sel, pb.polar_vector)
            polar_cached = torch.where(kf.any(dim=0), polar_cached, torch.zeros_like(polar_cached))

    # Miller indices, (K, P, M) each.  With a constant default_F and the Chebyshev lattice
    # factor only cos(pi h) is needed: the lattice vectors then carry the factor pi.
    F_constant = not state.interpolate and (pb.hkls == 0 or pb.F_grid is None)
    pi_scaled = F_constant and chebyshev_lattice(pb, dtype)
    lat_scale = math.pi if pi_scaled else 1.0
    if M > 1:
        qf = torch.stack([(c / lam).reshape(-1) for c in dq], -1)                      # (K P, 3)
        h, k, l = (u.view(K, P, M) for u in miller_indices(pb, qf, cst.pi_lattices if pi_scaled else None))
    else:
        lat = cst.lat_over_lam[1 if pi_scaled else 0]                                  # [row a b c][x y z]: (S, 1)
        h, k, l = (torch.addcmul(torch.addcmul(dq[0] * lat[r][0], dq[1], lat[r][1]), dq[2], lat[r][2]).view(K, P, 1)
                   for r in range(3))
    if pb.lattices_first is not None and not state.first_done:
        # C-PARITY-001: the run's very first evaluation (in loop order) uses the unrotated lattice
        if keep is None:
            first = (0, 0)
        elif bool(keep.any()):
            at = int(torch.argmax(keep.reshape(K, P).transpose(0, 1).reshape(-1).to(torch.int8)))
            first = (at % K, at // K)
        else:
            first = None
        if first is not None:
            kk, p = first
            sub, src = kk // S, kk % S
            d = torch.stack([c.reshape(-1, P)[sub, p] for c in (px, py, pz)]) / airpath.reshape(-1, P)[sub, p]
            q1 = ((d - pb.incident[src]) / pb.wavelength[src]).unsqueeze(0)
            hf, kf_, lf = miller_indices(pb, q1, pb.lattices_first * lat_scale)
            h, k, l = h.clone(), k.clone(), l.clone()
            h[kk, p], k[kk, p], l[kk, p] = hf[0], kf_[0], lf[0]
            state.first_done = True

    F2_latt = lattice_factor_sq(pb, h, k, l, pi_scaled)                # (K, P, M)
    keep3 = None if keep is None else keep.reshape(K, P, 1)
    if F_constant:
        F_cell = None                                                  # constant default_F
    else:
        evaluated = (F2_latt != 0) | pb.water
        if keep3 is not None:
            evaluated = evaluated & keep3
        loop = lambda x: x.permute(1, 0, 2)                            # noqa: E731  (P, K, M): loop order
        F_cell = loop(structure_factor(pb, loop(h), loop(k), loop(l), loop(evaluated), state))
    term = F2_latt if F_cell is None else F_cell * F_cell * F2_latt
    if keep3 is not None:
        term = torch.where(keep3, term, torch.zeros_like(term))

    if not (pb.oversample_thick or pb.oversample_polar or pb.oversample_omega):
        I = term.reshape(K, P).sum(0) if M == 1 else term.sum(-1).sum(0)     # contiguous reductions first
        if F_cell is None:
            I = I * (pb.default_F * pb.default_F)
        I = pb.I_bg + I
    else:
        if F_cell is None:
            term = term * (pb.default_F * pb.default_F)
        fac = oversampled_factor(pb, capture, polar_each, omega, (T, O, O, S, P))  # (T, O, O, S, P)
        if not pb.legacy_oversample:
            # each term weighted by its own factors (terms not evaluated are zero already)
            I = pb.I_bg + (term * fac.reshape(K, P, 1)).sum(-1).sum(0)
        else:
            # the unmodified C: I *= factor after every evaluated term, I_bg included
            fac = fac.reshape(K, P, 1).expand(K, P, M)
            evaluated = (F2_latt != 0) | pb.water
            if keep3 is not None:
                evaluated = evaluated & keep3
            fac = torch.where(evaluated, fac, torch.ones_like(term))
            fac = fac.permute(1, 0, 2).reshape(P, K * M)                   # loop order per pixel
            suffix = torch.flip(torch.cumprod(torch.flip(fac, [1]), dim=1), [1])   # prod_{e' >= e}
            I = pb.I_bg * suffix[:, 0] + (term.permute(1, 0, 2).reshape(P, K * M) * suffix).sum(-1)

    value = pb.r_e_sqr * pb.fluence * I / pb.steps
    if not pb.oversample_thick and capture_cached is not None:
        value = value * capture_cached
    if not pb.oversample_polar:
        value = value * polar_cached
    if not pb.oversample_omega:
        value = value * omega
    return value, omega_sum


# Elements (pixels x subpaths) per chunk.  Small enough that a chunk's float32 temporaries
# (a few MB) stay in the L2 cache and in the allocator's reused memory, large enough that
# per-operation dispatch costs are amortised: 2^19 rendered B2 ~15x faster than 2^22 on the
# 2-core machine (benchmarks/README.md).
DEFAULT_CHUNK_ELEMENTS = 1 << 19
# On a GPU a chunk must fill the device rather than a CPU cache: with the CPU default the
# render would be a stream of small kernel launches.
DEFAULT_CHUNK_ELEMENTS_GPU = 1 << 23


def default_chunk_elements(device) -> int:
    """The chunk budget used when none is given: the CPU's or the GPU's default."""
    return DEFAULT_CHUNK_ELEMENTS if torch.device(device).type == "cpu" else DEFAULT_CHUNK_ELEMENTS_GPU


def chunk_weight(pb: RenderProblem) -> int:
    """Elements one pixel counts for in a chunk: its subpaths, times the extra work per subpath."""
    per_pixel = pb.thicksteps * pb.oversample ** 2 * pb.incident.shape[0] * pb.lattices.shape[0]
    if pb.interpolate:
        per_pixel *= 12                 # the 4x4x4 neighbourhoods (measured: B4 fastest at 12)
    if pb.oversample_thick or pb.oversample_polar or pb.oversample_omega:
        per_pixel *= 4
    return max(per_pixel, 1)


def choose_chunk(pb: RenderProblem, max_elements: int) -> int:
    """Pixels per chunk for a budget of ``max_elements`` (at least one pixel)."""
    return max(1, int(max_elements // chunk_weight(pb)))


# ---------------------------------------------------------------------------------------------
# Compiled chunks (opt-in: SimulationOptions.compile, CLI -compile).  The same render_chunk,
# traced by torch.compile into fused kernels: one pass over memory per chunk instead of ~45.
# Only for problems whose chunks carry no state from chunk to chunk (no tricubic
# interpolation, whose switch-off is order-dependent; no C-PARITY-001 first evaluation),
# and only where no gradient is asked for.  The first render of a problem pays the
# compilation (tens of seconds; inductor keeps the kernels in its on-disk cache, so a later
# process pays the tracing only); benchmarks/README.md has the figures.

_compiled_fn = None
_compile_error: Optional[str] = None


def compile_eligible(pb: RenderProblem) -> bool:
    """True when a chunk's image depends on nothing carried from earlier chunks."""
    return not pb.interpolate and pb.lattices_first is None


def grad_fields(pb: RenderProblem) -> list:
    """Names of the problem's tensor fields that require grad."""
    return [f.name for f in dataclasses.fields(pb)
            if isinstance(getattr(pb, f.name), torch.Tensor) and getattr(pb, f.name).requires_grad]


def _needs_grad(pb: RenderProblem) -> bool:
    return torch.is_grad_enabled() and bool(grad_fields(pb))


def _chunk_fresh_state(pb: RenderProblem, pix: torch.Tensor):
    return render_chunk(pb, pix, RenderState())


def _compiled_chunk(pb: RenderProblem, pix: torch.Tensor):
    """(values, omega_sum) of one chunk through the compiled kernel; None if compiling failed."""
    global _compiled_fn, _compile_error
    if _compile_error is not None:
        return None
    if _compiled_fn is None:
        import torch._dynamo
        cfg = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):     # one specialisation per problem
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 256))
        _compiled_fn = torch.compile(_chunk_fresh_state, dynamic=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # tracer notes (lru_cache wrappers) are not for users
            return _compiled_fn(pb, pix)
    except Exception as exc:                          # no C compiler, unsupported backend, ...
        _compile_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        warnings.warn(f"-compile: compiling the engine failed ({_compile_error}); rendering uncompiled",
                      RuntimeWarning, stacklevel=3)
        return None


def render(pb: RenderProblem, max_elements: Optional[int] = None,
           progress: Optional[Callable[[int, int], None]] = None,
           compiled: bool = False) -> RenderResult:
    """Render the whole image; pixels not in ``pb.pixels`` stay zero.

    ``max_elements``: evaluations per chunk; None: :func:`default_chunk_elements` of the device.

    ``compiled``: render full-size chunks through torch.compile's fused kernels where the
    problem allows (:func:`compile_eligible`, no gradient asked for); otherwise, and for the
    last, shorter chunk, the eager path.
    """
    keep_freed_memory()
    state = RenderState(interpolate=pb.interpolate)
    dtype = pb.fdet.dtype
    dev = pb.fdet.device
    if max_elements is None:
        max_elements = default_chunk_elements(dev)
    n = pb.pixels.shape[0]
    chunk = choose_chunk(pb, max_elements)
    flat = torch.zeros(pb.spixels * pb.fpixels, dtype=dtype, device=dev)
    omega_sum = torch.zeros((), dtype=dtype, device=dev)
    graph_values = []                                 # chunks that carry gradients
    use_compiled = compiled and compile_eligible(pb) and not _needs_grad(pb)
    n_compiled = 0
    for start in range(0, n, chunk):
        pix = pb.pixels[start:start + chunk]
        out = None
        if use_compiled and pix.shape[0] == chunk:    # one shape: one specialisation
            out = _compiled_chunk(pb, pix)
            n_compiled += out is not None
        v, osum = out if out is not None else render_chunk(pb, pix, state)
        if v.requires_grad:
            graph_values.append(v)
        else:
            flat[pix] = v
        omega_sum = omega_sum + osum
        if progress is not None:
            progress(min(start + chunk, n), n)
    if graph_values:
        flat = flat.index_put((pb.pixels,), torch.cat(graph_values))   # one out-of-place scatter
    return RenderResult(image=flat.reshape(pb.spixels, pb.fpixels), omega_sum=omega_sum, state=state,
                        compiled_chunks=n_compiled)
