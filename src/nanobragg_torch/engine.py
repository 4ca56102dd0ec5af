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


Tensor = torch.Tensor
Number = object          # a Python float, or a 0-d tensor where it carries a gradient / is fractional


@dataclass
class DetectorPart:
    """The pixel array: lab-frame geometry and the sensor (tensors of the compute dtype/device)."""
    spixels: int                  # rows (slow axis)
    fpixels: int                  # columns (fast axis)
    pixel_size: Tensor            # () m
    oversample: int               # sub-pixels per pixel edge (O)
    thicksteps: int               # sensor layers (T)
    thickstep: Tensor             # () m, one layer
    mu: Tensor                    # () 1/m, sensor attenuation coefficient
    thickness_on: bool            # a sensor thickness was given (capture fraction applies)
    fdet: Tensor                  # (3,) unit, fast axis
    sdet: Tensor                  # (3,) unit, slow axis
    odet: Tensor                  # (3,) unit, detector normal
    pix0: Tensor                  # (3,) m, sample -> corner of the first pixel
    beam_vector: Tensor           # (3,) unit, along the beam
    distance: Tensor              # () m, sample to detector plane along the beam
    close_distance: Tensor        # () m, sample to detector plane along the normal
    curved: bool                  # spherical detector (every pixel at `distance`)
    point_pixel: bool             # solid angle 1/R^2 (no obliquity factor)
    pixels: Tensor                # (P,) int64 flat indices rendered (ROI, mask), raster order


@dataclass
class SourcesPart:
    """The incident beam: one entry per source point (divergence x dispersion, or a source file)."""
    incident: Tensor              # (S, 3) unit, source -> sample
    wavelength: Tensor            # (S,) m
    polar_vector: Tensor          # (3,) unit, the E-vector
    kahn: Tensor                  # () Kahn polarization factor (0: unpolarized)
    nopolar: bool                 # polarization factor 1
    fluence: Tensor               # () photons/m^2


@dataclass
class CrystalPart:
    """The crystal: its lattices for every (phi step, mosaic domain) and its shape."""
    lattices: Tensor              # (M, 3, 3) m, rows a, b, c; M = phi steps x mosaic domains, phi slowest
    lattices_first: Optional[Tensor]   # (M, 3, 3) m: the C's phi carry-over for the run's first evaluation
    recip: Tensor                 # (3, 3) 1/Angstrom, rows a*, b*, c*, unrotated
    Na: Number                    # unit cells along a (float; tensor if fractional or with grad)
    Nb: Number
    Nc: Number
    shape: str                    # square | round | gauss | tophat
    fudge: Tensor                 # () shape-transform width factor


@dataclass
class StructureFactorsPart:
    """F_cell: a grid of structure factors (or none) and the value outside it."""
    F_grid: Optional[Tensor]      # (H*K*L,) electrons, flat C-order grid; None without a grid
    F_shape: tuple                # (H, K, L) grid extent
    hkl_min: tuple                # (3,) int, first index of the grid
    hkl_max: tuple                # (3,) int, last index (inclusive)
    hkls: int                     # points in the grid (0: none)
    default_F: Tensor             # () electrons, outside the grid or without one
    interpolate: bool             # tricubic interpolation (switched off by the C's rule)


@dataclass
class Switches:
    """Scale and the rules of the sum."""
    r_e_sqr: float                # m^2, Thomson cross section
    steps: int                    # sources x mosaic domains x phi steps x O^2 (the sum's normaliser)
    I_bg: Tensor                  # () water background added to every pixel's sum
    water: bool                   # a water background was asked for (terms with F_latt = 0 still count)
    dmin: float                   # m, resolution cut (0: none)
    oversample_thick: bool        # capture fraction at every sub-pixel and layer
    oversample_polar: bool        # polarization at every sub-pixel and source
    oversample_omega: bool        # solid angle at every sub-pixel
    reduced_sincg: bool = False   # lattice factor on reduced arguments (float32 accuracy)
    legacy_oversample: bool = False   # the C's compounding -oversample_* rule (-c_legacy)


_PARTS = (("detector", DetectorPart), ("sources", SourcesPart), ("crystal", CrystalPart),
          ("structure_factors", StructureFactorsPart), ("switches", Switches))
_FIELD_PART = {f.name: part for part, cls in _PARTS for f in dataclasses.fields(cls)}


@dataclass
class RenderProblem:
    """Everything a backend needs, as five typed records (tensors of the compute dtype/device).

    Every field of the records is also readable and writable by its own name on the problem
    (``pb.fdet`` is ``pb.detector.fdet``), which is how the kernels read them.
    """
    detector: DetectorPart
    sources: SourcesPart
    crystal: CrystalPart
    structure_factors: StructureFactorsPart
    switches: Switches

    @classmethod
    def from_fields(cls, **values) -> "RenderProblem":
        """Build the records from every field given by name (see the record classes)."""
        parts = {}
        for part, pcls in _PARTS:
            names = [f.name for f in dataclasses.fields(pcls)]
            parts[part] = pcls(**{n: values.pop(n) for n in names if n in values})
        if values:
            raise TypeError(f"RenderProblem: unknown fields {sorted(values)}")
        return cls(**parts)

    def replace(self, **values) -> "RenderProblem":
        """A copy with the named fields (any record's) replaced; the other records are shared."""
        by_part = {}
        for name, v in values.items():
            if name not in _FIELD_PART:
                raise TypeError(f"RenderProblem: unknown field {name!r}")
            by_part.setdefault(_FIELD_PART[name], {})[name] = v
        return RenderProblem(**{part: dataclasses.replace(getattr(self, part), **by_part[part])
                                if part in by_part else getattr(self, part) for part, _ in _PARTS})

    def tensor_fields(self):
        """(name, tensor) of every tensor field of the records."""
        for part, pcls in _PARTS:
            rec = getattr(self, part)
            for f in dataclasses.fields(pcls):
                v = getattr(rec, f.name)
                if isinstance(v, torch.Tensor):
                    yield f.name, v


def _delegate(name: str, part: str):
    return property(lambda self: getattr(getattr(self, part), name),
                    lambda self, v: setattr(getattr(self, part), name, v),
                    doc=f"``{part}.{name}``")


for _name, _part in _FIELD_PART.items():
    setattr(RenderProblem, _name, _delegate(_name, _part))


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
    backend: str = "torch"        # the backend that rendered it (see nanobragg_torch.backends)


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


@dataclass
class ChunkGeometry:
    """Stage 1 of a chunk: sizes, per-render constants and every sub-pixel's position.

    ``px``, ``py``, ``pz``, ``airpath``: (T, O, O, P) lab position components (m) and
    distance to the sample of every sub-pixel of every layer of the chunk's P pixels.
    """
    P: int
    T: int
    O: int
    S: int
    M: int
    K: int                     # subpaths per orientation: T * O * O * S
    dtype: torch.dtype
    dev: torch.device
    cst: _ChunkConstants
    px: torch.Tensor
    py: torch.Tensor
    pz: torch.Tensor
    airpath: torch.Tensor

    def diffracted_at(self, t: int) -> torch.Tensor:
        """Unit diffracted vectors (P, 3) of the first sub-pixel of layer t."""
        i = t * self.O * self.O
        first = lambda x: x.view(-1, self.P)[i]                         # noqa: E731
        return torch.stack([first(self.px), first(self.py), first(self.pz)], -1) / first(self.airpath).unsqueeze(-1)


def subpixel_geometry(pb: RenderProblem, pix: torch.Tensor, state: RenderState) -> ChunkGeometry:
    """Stage 1: sub-pixel positions (flat or curved detector) and distances."""
    P = pix.shape[0]
    T, O = pb.thicksteps, pb.oversample
    S = pb.incident.shape[0]
    M = pb.lattices.shape[0]
    cst = _constants(pb, state)
    if pb.curved:
        pos = _subpixel_positions(pb, pix).permute(1, 2, 3, 0, 4)      # (T, O, O, P, 3)
        px, py, pz = (pos[..., c].contiguous() for c in range(3))
    else:
        coords = _subpixel_coordinates(pb, pix)
        px, py, pz = (_separable(coords, cst.fdet[c], cst.sdet[c], cst.odet[c], cst.pix0[c]) for c in range(3))
    airpath = torch.addcmul(torch.addcmul(px * px, py, py), pz, pz).sqrt()   # (T, O, O, P)
    return ChunkGeometry(P=P, T=T, O=O, S=S, M=M, K=T * O * O * S, dtype=pb.fdet.dtype, dev=pb.fdet.device,
                         cst=cst, px=px, py=py, pz=pz, airpath=airpath)


def solid_angle_stage(pb: RenderProblem, g: ChunkGeometry):
    """Stage 2: solid angle, (T, O, O, P) with -oversample_omega, else cached from the first
    sub-pixel of the first layer (P,); and the chunk's solid-angle sum."""
    if pb.oversample_omega:
        omega = solid_angle(pb.pixel_size, g.airpath, pb.close_distance, pb.point_pixel)
        return omega, omega.sum()
    omega = solid_angle(pb.pixel_size, g.airpath[0, 0, 0], pb.close_distance, pb.point_pixel)
    return omega, omega.sum() * (g.T * g.O * g.O)


def capture_stage(pb: RenderProblem, g: ChunkGeometry):
    """Stage 3: sensor capture fraction: (every (T, O, O, P) with -oversample_thick, cached (P,)
    from the first sub-pixel of the last layer otherwise); None without a sensor thickness."""
    capture = capture_cached = None
    if pb.thickness_on:
        if pb.oversample_thick:
            c = g.cst
            parallax = (g.px * c.odet[0] + g.py * c.odet[1] + g.pz * c.odet[2]) / g.airpath   # (T, O, O, P)
            layer = torch.arange(g.T, dtype=g.dtype, device=g.dev).view(g.T, 1, 1, 1)
            capture = capture_fraction(layer, pb.thickstep, pb.mu, parallax)
        else:
            parallax = g.diffracted_at(g.T - 1) @ pb.odet                                 # (P,)
            capture_cached = capture_fraction(float(g.T - 1), pb.thickstep, pb.mu, parallax)
    return capture, capture_cached


def scattering_stage(pb: RenderProblem, g: ChunkGeometry):
    """Stage 4: dq = d - i for every source, components (T, O, O, S, P), and the d_min cut
    ``keep`` (same shape; None: every evaluation is kept).

    (d - i) first: near the direct beam it is small, and forming it before the product
    with the lattice keeps float32 Miller indices as accurate as the C's order; 1/lambda
    is applied to the lattice vectors instead (one pass less).
    """
    c = g.cst
    dq = [torch.addcdiv(c.minus_incident[i], v.unsqueeze(-2), g.airpath.unsqueeze(-2))
          for i, v in enumerate((g.px, g.py, g.pz))]
    keep = None
    if pb.dmin > 0:
        stol = 0.5 * torch.addcmul(torch.addcmul(dq[0] * dq[0], dq[1], dq[1]), dq[2], dq[2]).sqrt() / c.lam
        keep = ~((stol > 0) & (pb.dmin > 0.5 / torch.where(stol > 0, stol, torch.ones_like(stol))))
    return dq, keep


def polarization_stage(pb: RenderProblem, g: ChunkGeometry, keep):
    """Stage 5: polarization, every (T, O, O, S, P) with -oversample_polar, else cached (P,)
    from the first (sub-pixel, source) pair that survives d_min (0 if none does)."""
    P, S, K = g.P, g.S, g.K
    polar_each = polar_cached = None
    if pb.nopolar:
        polar_cached = torch.ones(P, dtype=g.dtype, device=g.dev)
    elif pb.oversample_polar:
        dif = torch.stack([g.px, g.py, g.pz], -1) / g.airpath.unsqueeze(-1)           # (T, O, O, P, 3)
        dif = dif.unsqueeze(-3)                                                         # (T, O, O, 1, P, 3)
        inc = pb.incident.view(S, 1, 3)
        polar_each = polarization_factor(pb.kahn, inc, dif, pb.polar_vector)          # (T, O, O, S, P)
    elif keep is None:
        polar_cached = polarization_factor(pb.kahn, pb.incident[0], g.diffracted_at(0), pb.polar_vector)
    else:
        kf = keep.reshape(K, P)
        first = torch.argmax(kf.to(torch.int8), dim=0)                                # (P,) first in loop order
        sub_first = torch.div(first, S, rounding_mode="floor")
        cols = torch.arange(P, device=g.dev)
        d_sel = torch.stack([c.reshape(-1, P)[sub_first, cols] for c in (g.px, g.py, g.pz)], -1)
        d_sel = d_sel / g.airpath.reshape(-1, P)[sub_first, cols].unsqueeze(-1)
        polar_cached = polarization_factor(pb.kahn, pb.incident[first % S], d_sel, pb.polar_vector)
        polar_cached = torch.where(kf.any(dim=0), polar_cached, torch.zeros_like(polar_cached))
    return polar_each, polar_cached


def miller_stage(pb: RenderProblem, g: ChunkGeometry, dq, keep, state: RenderState, pi_scaled: bool,
                 patched: Optional[list] = None):
    """Stage 6: fractional Miller indices h, k, l, (K, P, M) each (times pi when ``pi_scaled``),
    with the C's carry-over patch of the run's first evaluation (C-PARITY-001); the
    (subpath, pixel) it patched is appended to ``patched`` when given (the trace reports it)."""
    K, P, M, S = g.K, g.P, g.M, g.S
    c = g.cst
    lat_scale = math.pi if pi_scaled else 1.0
    if M > 1:
        qf = torch.stack([(v / c.lam).reshape(-1) for v in dq], -1)                     # (K P, 3)
        h, k, l = (u.view(K, P, M) for u in miller_indices(pb, qf, c.pi_lattices if pi_scaled else None))
    else:
        lat = c.lat_over_lam[1 if pi_scaled else 0]                                    # [row a b c][x y z]: (S, 1)
        h, k, l = (torch.addcmul(torch.addcmul(dq[0] * lat[r][0], dq[1], lat[r][1]), dq[2], lat[r][2]).view(K, P, 1)
                   for r in range(3))
    if pb.lattices_first is not None and not state.first_done:
        # the run's very first evaluation (in loop order) uses the unrotated lattice
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
            d = torch.stack([v.reshape(-1, P)[sub, p] for v in (g.px, g.py, g.pz)]) / g.airpath.reshape(-1, P)[sub, p]
            q1 = ((d - pb.incident[src]) / pb.wavelength[src]).unsqueeze(0)
            hf, kf_, lf = miller_indices(pb, q1, pb.lattices_first * lat_scale)
            h, k, l = h.clone(), k.clone(), l.clone()
            h[kk, p], k[kk, p], l[kk, p] = hf[0], kf_[0], lf[0]
            state.first_done = True
            if patched is not None:
                patched.append((kk, p))
    return h, k, l


def evaluation_intensity(pb: RenderProblem, h, k, l, keep3, state: RenderState, F_constant: bool,
                         pi_scaled: bool):
    """The per-evaluation intensity: F_cell^2 F_latt^2 for Miller indices (K, P, M) (loop order
    (pixel, subpath, orientation) when permuted), zero where d_min cuts; F_cell^2 is left out
    (None returned as F_cell) when it is the constant default_F^2.  Returns (term, F2_latt, F_cell)."""
    F2_latt = lattice_factor_sq(pb, h, k, l, pi_scaled)                # (K, P, M)
    if F_constant:
        F_cell = None
    else:
        evaluated = (F2_latt != 0) | pb.water
        if keep3 is not None:
            evaluated = evaluated & keep3
        loop = lambda x: x.permute(1, 0, 2)                            # noqa: E731  (P, K, M): loop order
        F_cell = loop(structure_factor(pb, loop(h), loop(k), loop(l), loop(evaluated), state))
    term = F2_latt if F_cell is None else F_cell * F_cell * F2_latt
    if keep3 is not None:
        term = torch.where(keep3, term, torch.zeros_like(term))
    return term, F2_latt, F_cell


def accumulate_stage(pb: RenderProblem, g: ChunkGeometry, term, F2_latt, F_cell, keep3, capture, polar_each,
                     omega) -> torch.Tensor:
    """Stage 8: the sum over subpaths, I (P,), by the -oversample_* rule (corrected, or the
    C's compounding one with legacy_oversample)."""
    K, P, M, T, O, S = g.K, g.P, g.M, g.T, g.O, g.S
    if not (pb.oversample_thick or pb.oversample_polar or pb.oversample_omega):
        I = term.reshape(K, P).sum(0) if M == 1 else term.sum(-1).sum(0)     # contiguous reductions first
        if F_cell is None:
            I = I * (pb.default_F * pb.default_F)
        return pb.I_bg + I
    if F_cell is None:
        term = term * (pb.default_F * pb.default_F)
    fac = oversampled_factor(pb, capture, polar_each, omega, (T, O, O, S, P))  # (T, O, O, S, P)
    if not pb.legacy_oversample:
        # each term weighted by its own factors (terms not evaluated are zero already)
        return pb.I_bg + (term * fac.reshape(K, P, 1)).sum(-1).sum(0)
    # the unmodified C: I *= factor after every evaluated term, I_bg included
    fac = fac.reshape(K, P, 1).expand(K, P, M)
    evaluated = (F2_latt != 0) | pb.water
    if keep3 is not None:
        evaluated = evaluated & keep3
    fac = torch.where(evaluated, fac, torch.ones_like(term))
    fac = fac.permute(1, 0, 2).reshape(P, K * M)                   # loop order per pixel
    suffix = torch.flip(torch.cumprod(torch.flip(fac, [1]), dim=1), [1])   # prod_{e' >= e}
    return pb.I_bg * suffix[:, 0] + (term.permute(1, 0, 2).reshape(P, K * M) * suffix).sum(-1)


def pixel_value(pb: RenderProblem, I, capture_cached, polar_cached, omega) -> torch.Tensor:
    """Stage 9: photons per pixel from the sum, with the cached factors."""
    value = pb.r_e_sqr * pb.fluence * I / pb.steps
    if not pb.oversample_thick and capture_cached is not None:
        value = value * capture_cached
    if not pb.oversample_polar:
        value = value * polar_cached
    if not pb.oversample_omega:
        value = value * omega
    return value


def render_chunk(pb: RenderProblem, pix: torch.Tensor, state: RenderState):
    """Float image values (P,) and omega sum for the pixels ``pix`` (flat indices), by stages.

    Per-evaluation tensors are laid out (layer, sub_s, sub_f, source, pixel
    [, orientation]), vector quantities as separate x, y, z tensors: every
    operation then runs over the contiguous pixel axis.  Loop order (the
    reference program's, which decides "first") is (pixel, layer, sub_s, sub_f,
    source, orientation); where it matters the code permutes to it explicitly.
    """
    g = subpixel_geometry(pb, pix, state)
    omega, omega_sum = solid_angle_stage(pb, g)
    capture, capture_cached = capture_stage(pb, g)
    dq, keep = scattering_stage(pb, g)
    polar_each, polar_cached = polarization_stage(pb, g, keep)
    # With a constant default_F and the Chebyshev lattice factor only cos(pi h) is needed:
    # the lattice vectors then carry the factor pi.
    F_constant = not state.interpolate and (pb.hkls == 0 or pb.F_grid is None)
    pi_scaled = F_constant and chebyshev_lattice(pb, g.dtype)
    h, k, l = miller_stage(pb, g, dq, keep, state, pi_scaled)
    keep3 = None if keep is None else keep.reshape(g.K, g.P, 1)
    term, F2_latt, F_cell = evaluation_intensity(pb, h, k, l, keep3, state, F_constant, pi_scaled)
    I = accumulate_stage(pb, g, term, F2_latt, F_cell, keep3, capture, polar_each, omega)
    return pixel_value(pb, I, capture_cached, polar_cached, omega), omega_sum


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
    return [name for name, t in pb.tensor_fields() if t.requires_grad]


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
           compiled: bool = False, backend: str = "auto") -> RenderResult:
    """Render the whole image through a backend (:mod:`nanobragg_torch.backends`).

    ``backend``: ``auto`` (the fused CPU kernel where it takes the problem and no gradient
    is asked for, else the torch reference), or ``torch``, ``fused``, ``compile`` by name
    (ValueError if that one cannot take the problem).  ``compiled=True`` (``-compile``) with
    ``auto`` asks for ``compile`` where it takes the problem and the eager torch backend
    otherwise.  ``result.backend`` names the backend that rendered.
    """
    from .backends import REGISTRY, request_for, select
    if compiled and backend == "auto":
        # -compile is a preference: the compiled chunks where they can be used, else the eager torch path
        backend = "compile" if REGISTRY["compile"].supports(pb, request_for(pb))[0] else "torch"
    return select(pb, backend).render(pb, max_elements, progress=progress)


def render_torch(pb: RenderProblem, max_elements: Optional[int] = None,
                 progress: Optional[Callable[[int, int], None]] = None,
                 compiled: bool = False) -> RenderResult:
    """The torch backend: render the whole image; pixels not in ``pb.pixels`` stay zero.

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
                        compiled_chunks=n_compiled, backend="compile" if compiled else "torch")
