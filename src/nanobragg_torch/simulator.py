"""The simulator: a function, :func:`simulate`, and a ``torch.nn.Module`` wrapper, :class:`Simulator`.

    >>> import math, torch
    >>> from nanobragg_torch import Beam, Crystal, Detector, StructureFactors, simulate
    >>> crystal = Crystal(cell=(100, 100, 100, math.pi / 2, math.pi / 2, math.pi / 2), N=5)
    >>> detector = Detector(fpixels=64, spixels=64, distance=0.1)
    >>> beam = Beam(wavelength=6.2e-10)
    >>> res = simulate(crystal, detector, beam, StructureFactors(default_F=100))
    >>> res.image.shape
    torch.Size([64, 64])

The models (:mod:`nanobragg_torch.models`) may equally be given as the plain
configuration records of :mod:`nanobragg_torch.config` (as the command line
resolves them); either may hold tensors that require grad, and the image is
differentiable with respect to all of them.  The image is in photons per pixel.

The command line is a thin layer over :func:`prepare`, :func:`build_problem`
and :func:`nanobragg_torch.engine.render`, which :func:`simulate` chains.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Union

import numpy as np
import torch

from .config import (AVOGADRO, R_E_SQR, WATER_F, WATER_MW, BeamConfig, CrystalConfig,
                     DetectorConfig, SimulationOptions, StructureFactorConfig)
from .engine import RenderProblem, render
from .devices import device_problem
from .models.base import RefTracked, to_float
from .models.beam import Beam, Sources
from .models.crystal import Crystal, Lattice
from .models.detector import Detector, DetectorGeometry, geometry_problem, precision_problem
from .models.structure_factors import StructureFactors

DTYPES = {"float32": torch.float32, "float64": torch.float64}

CrystalLike = Union[Crystal, CrystalConfig]
DetectorLike = Union[Detector, DetectorConfig]
BeamLike = Union[Beam, BeamConfig]
SFLike = Union[StructureFactors, StructureFactorConfig]


def _dtype(d) -> torch.dtype:
    return DTYPES[d] if isinstance(d, str) else d


def _t(x, dtype, device):
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype, device=device)
    return torch.as_tensor(x, dtype=dtype, device=device)


def as_models(crystal: CrystalLike, detector: DetectorLike, beam: BeamLike, structure_factors: SFLike = None):
    """The four inputs as models (configuration records are wrapped; models pass through)."""
    xt = crystal if isinstance(crystal, Crystal) else Crystal(crystal)
    det = detector if isinstance(detector, Detector) else Detector(detector)
    bm = beam if isinstance(beam, Beam) else Beam(beam)
    sf = structure_factors
    if sf is not None and not isinstance(sf, StructureFactors):
        sf = StructureFactors(sf)
    return xt, det, bm, sf


@dataclass
class Prepared:
    """Derived quantities of a set-up (float64 on the set-up device), for reports and the engine."""
    geometry: DetectorGeometry
    lattice: Lattice
    N: tuple
    oversample: int
    recommended_oversample: int
    sources: Sources
    steps: int
    I_bg: torch.Tensor
    pixels: torch.Tensor
    xtal_size: tuple


@dataclass
class SimulationResult:
    """What :func:`simulate` returns.

    ``image`` (spixels, fpixels): photons per pixel, compute dtype/device.
    ``prepared``: the set-up geometry (float64).  ``omega_sum``: solid angle
    summed over all rendered sub-pixels (sr).  ``intermediates``: with
    ``return_intermediates=True``, per-pixel diagnostics at pixel centres (see
    :func:`pixel_intermediates`).
    """
    image: torch.Tensor
    prepared: Prepared
    omega_sum: torch.Tensor
    interp_warning: Optional[tuple] = None
    intermediates: Optional[Dict[str, torch.Tensor]] = None
    backend: str = "torch"            # the backend that rendered (nanobragg_torch.backends)


def rendered_pixels(det: Union[DetectorConfig, Detector], device="cpu") -> torch.Tensor:
    """Flat indices (raster order) of the pixels inside the ROI and not masked."""
    if isinstance(det, Detector):
        det = det.settings
    S, F = det.spixels, det.fpixels
    if det.mask is None:
        # a rectangle: its raster-order indices directly (a 6M-pixel mask scan costs ~0.1 s)
        x0, x1, y0, y1 = det.roi if det.roi is not None else (0, F - 1, 0, S - 1)
        x0, x1, y0, y1 = max(int(x0), 0), min(int(x1), F - 1), max(int(y0), 0), min(int(y1), S - 1)
        if x1 < x0 or y1 < y0:
            return torch.zeros(0, dtype=torch.long, device=device)
        if (x0, x1) == (0, F - 1):
            return torch.arange(y0 * F, (y1 + 1) * F, dtype=torch.long, device=device)
        rows = torch.arange(y0, y1 + 1, dtype=torch.long) * F
        cols = torch.arange(x0, x1 + 1, dtype=torch.long)
        return (rows[:, None] + cols[None, :]).reshape(-1).to(device)
    keep = np.ones((S, F), dtype=bool)
    if det.roi is not None:
        x0, x1, y0, y1 = det.roi
        fi = np.arange(F)
        si = np.arange(S)
        keep &= ((fi >= x0) & (fi <= x1))[None, :]
        keep &= ((si >= y0) & (si <= y1))[:, None]
    if det.mask is not None:
        keep &= np.asarray(det.mask).reshape(S, F) != 0
    return torch.as_tensor(np.flatnonzero(keep.reshape(-1)), dtype=torch.long, device=device)


def prepare(crystal: CrystalLike, detector: DetectorLike, beam: BeamLike,
            device=None, dtype=torch.float64) -> Prepared:
    """Set-up geometry: detector basis and origin, lattice, crystal size, sources, oversampling.

    Computed in ``dtype`` (float64 by default) on ``device`` (default: the
    crystal model's device, CPU for configuration records).
    """
    xt, det, bm, _ = as_models(crystal, detector, beam)
    dt = _dtype(dtype)
    device = xt.device if device is None else device
    geo = det.geometry(bm.beam_vector_unit(dt, device), dtype=dt, device=device)
    lat = xt.lattice(dt, device)
    N = xt.cell_counts(lat, dt, device)
    sizes = tuple(to_float(n) * to_float(torch.linalg.vector_norm(v)) for n, v in zip(N, (lat.a, lat.b, lat.c)))
    xtalsize_max = max(sizes)
    pixel_size = det.plain("pixel_size")
    recip_pixel = bm.plain("wavelength") * to_float(geo.distance) / pixel_size
    # a non-finite distance (a beam all but parallel to the detector plane) is refused by the
    # geometry check that follows (pipeline.check_work); the recommendation must not fail first
    ok = recip_pixel != 0 and math.isfinite(recip_pixel) and math.isfinite(xtalsize_max)
    recommended = int(math.ceil(3.0 * xtalsize_max / recip_pixel)) if ok else 1
    if recommended <= 0:
        recommended = 1
    oversample = det.settings.oversample if det.settings.oversample > 0 else recommended
    src = bm.sources(dt, device)
    steps = src.incident.shape[0] * xt.domains * xt.settings.phisteps * oversample * oversample
    water = bm.value("water_size", dt, device)
    I_bg = WATER_F * WATER_F * R_E_SQR * bm.value("fluence", dt, device) * water ** 3 * 1e6 * AVOGADRO / WATER_MW
    return Prepared(geometry=geo, lattice=lat, N=N, oversample=oversample,
                    recommended_oversample=recommended, sources=src, steps=steps, I_bg=I_bg,
                    pixels=rendered_pixels(det.settings, device), xtal_size=sizes)


def _plain(x, conv):
    """A Python float unless x carries a gradient or is not a whole number (plain whole
    numbers select cheaper kernels; a fractional N needs the continuous-N formulas)."""
    if isinstance(x, torch.Tensor) and (x.requires_grad or float(x.detach()) != math.floor(float(x.detach()))):
        return conv(x)
    return float(x)


def build_problem(prep: Prepared, crystal: CrystalLike, detector: DetectorLike, beam: BeamLike,
                  sf: SFLike, options: SimulationOptions) -> RenderProblem:
    """The engine's input: everything cast to the options' dtype and device."""
    xt, det, bm, sfm = as_models(crystal, detector, beam, sf)
    dt = _dtype(options.dtype)
    dev = options.device
    c = lambda x: _t(x, dt, dev)
    v = lambda model, name: model.value(name, dt, dev)
    geo = prep.geometry
    set_dev = prep.lattice.a.device
    carryover = bool(xt.settings.phi_carryover or options.c_legacy)
    lat_all = xt.rotated_lattices(prep.lattice, torch.float64, set_dev, carryover=carryover)
    lat_first = None
    if carryover:
        lat_first = xt.rotated_lattices(prep.lattice, torch.float64, set_dev, first=True, carryover=True)
        if torch.equal(lat_first, lat_all):
            lat_first = None
    F_grid = None
    F_shape = (0, 0, 0)
    if sfm.grid is not None:
        g = sfm.value("grid", dt, dev)
        F_shape = tuple(g.shape)
        F_grid = g.reshape(-1)
    dc = det.settings
    return RenderProblem.from_fields(
        spixels=dc.spixels, fpixels=dc.fpixels, pixel_size=v(det, "pixel_size"),
        oversample=prep.oversample, thicksteps=dc.thicksteps, thickstep=v(det, "thickstep"),
        mu=v(det, "mu"), thickness_on=bool(det.plain("thickness") != 0.0),
        fdet=c(geo.fdet), sdet=c(geo.sdet), odet=c(geo.odet), pix0=c(geo.pix0),
        beam_vector=c(geo.beam_vector), distance=c(geo.distance), close_distance=c(geo.close_distance),
        curved=dc.curved, point_pixel=dc.point_pixel,
        incident=c(prep.sources.incident), wavelength=c(prep.sources.wavelength),
        polar_vector=c(bm.polar_vector_unit(torch.float64, set_dev)), kahn=v(bm, "polarization"),
        nopolar=bm.settings.nopolar,
        lattices=c(lat_all), lattices_first=None if lat_first is None else c(lat_first),
        recip=c(prep.lattice.reciprocal_matrix()),
        Na=_plain(prep.N[0], c), Nb=_plain(prep.N[1], c), Nc=_plain(prep.N[2], c), shape=xt.settings.shape,
        fudge=v(xt, "fudge"),
        F_grid=F_grid, F_shape=F_shape, hkl_min=sfm.hkl_min, hkl_max=sfm.hkl_max,
        hkls=sfm.hkls, default_F=v(sfm, "default_F"), interpolate=bool(sfm.interpolate and sfm.hkls > 0),
        fluence=v(bm, "fluence"), r_e_sqr=R_E_SQR, steps=prep.steps, I_bg=c(prep.I_bg),
        water=bool(bm.plain("water_size") != 0.0), dmin=float(options.dmin),
        oversample_thick=dc.oversample_thick, oversample_polar=dc.oversample_polar,
        oversample_omega=dc.oversample_omega, legacy_oversample=bool(options.c_legacy),
        pixels=prep.pixels.to(dev),
        reduced_sincg=(dt != torch.float64),
    )


def pixel_intermediates(pb: RenderProblem) -> Dict[str, torch.Tensor]:
    """Per-pixel diagnostics at pixel centres (first layer, first source, first orientation).

    Returns a dict of tensors (differentiable like the image):
    ``position`` (S, F, 3) m, ``diffracted`` (S, F, 3) unit vectors,
    ``scattering_vector`` (S, F, 3) 1/m, ``hkl`` (S, F, 3) fractional Miller
    indices, ``F_latt`` (S, F) lattice transform amplitude, ``F_cell`` (S, F)
    structure factor (nearest grid point, or default_F), ``solid_angle`` (S, F)
    sr, ``polarization`` (S, F), ``lattices`` (M, 3, 3) m (rows a, b, c for every
    phi step x mosaic domain).
    """
    from . import engine as eng
    S, F = pb.spixels, pb.fpixels
    pix = torch.arange(S * F, device=pb.fdet.device)
    # the render's own stages, at the pixel centres (one sub-pixel), first layer and first source
    pb1 = pb.replace(oversample=1, oversample_omega=False, oversample_polar=False)
    g = eng.subpixel_geometry(pb1, pix, eng.RenderState())
    pos = torch.stack([g.px[0, 0, 0], g.py[0, 0, 0], g.pz[0, 0, 0]], -1)   # (P, 3)
    air = g.airpath[0, 0, 0]
    d = pos / air.unsqueeze(-1)
    q = (d - pb.incident[0]) / pb.wavelength[0]
    lat0 = pb.lattices[0]
    h, k, l = q @ lat0[0], q @ lat0[1], q @ lat0[2]
    F_latt = eng.lattice_factor(pb, h, k, l)
    F_cell = eng.nearest_F(pb, h, k, l)
    omega = eng.solid_angle_stage(pb1, g)[0]
    polar = eng.polarization_stage(pb1, g, None)[1]
    shp = lambda x: x.reshape(S, F, *x.shape[1:])
    return dict(position=shp(pos), diffracted=shp(d), scattering_vector=shp(q),
                hkl=shp(torch.stack([h, k, l], -1)), F_latt=shp(F_latt), F_cell=shp(F_cell),
                solid_angle=shp(omega), polarization=shp(polar), lattices=pb.lattices)


class _RecomputedChunk(torch.autograd.Function):
    """One chunk rendered without keeping intermediates; the backward pass recomputes it.

    (``torch.utils.checkpoint`` would do the same but imports ``torch._dynamo``,
    which takes many seconds on a small machine.)
    """

    @staticmethod
    def forward(ctx, pb, pix, snapshot, holder, names, *tensors):
        from .engine import render_chunk
        st = copy.copy(snapshot)
        v, osum = render_chunk(pb, pix, st)
        holder.append(st)
        ctx.pb, ctx.pix, ctx.snapshot, ctx.names = pb, pix, snapshot, names
        ctx.save_for_backward(*tensors)
        return v, osum

    @staticmethod
    def backward(ctx, grad_v, grad_osum):
        from .engine import render_chunk
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in ctx.saved_tensors]
            pb = ctx.pb.replace(**dict(zip(ctx.names, leaves)))
            v, osum = render_chunk(pb, ctx.pix, copy.copy(ctx.snapshot))
            # a scalar (not grad_outputs: that makes autograd import sympy, seconds of start-up)
            total = None
            for o, g in ((v, grad_v), (osum, grad_osum)):
                if o.requires_grad and g is not None:
                    term = (o * g).sum()
                    total = term if total is None else total + term
            grads = (torch.autograd.grad(total, leaves, allow_unused=True) if total is not None
                     else [None] * len(leaves))
        return (None, None, None, None, None, *grads)


def render_checkpointed(pb: RenderProblem, max_elements: Optional[int] = None,
                        progress: Optional[Callable[[int, int], None]] = None):
    """:func:`nanobragg_torch.engine.render` keeping no per-chunk intermediates for backward.

    The backward pass recomputes each chunk's forward instead, so memory is
    bounded by one chunk (at the price of one extra forward pass).  The
    chunk's loop-carried state (interpolation switch-off, C-PARITY-001 first
    evaluation) is snapshotted, so the recomputation sees what the first
    computation saw.
    """
    from ._memory import keep_freed_memory
    from .engine import DEFAULT_CHUNK_ELEMENTS, RenderResult, RenderState, choose_chunk, grad_fields, render_chunk
    keep_freed_memory()
    state = RenderState(interpolate=pb.interpolate)
    dtype, dev = pb.fdet.dtype, pb.fdet.device
    n = pb.pixels.shape[0]
    # None: the CPU budget on every device (a checkpointed render is about bounded memory)
    chunk = choose_chunk(pb, DEFAULT_CHUNK_ELEMENTS if max_elements is None else max_elements)
    names = grad_fields(pb)
    tensors = [getattr(pb, n_) for n_ in names]
    values = []
    omega_sum = torch.zeros((), dtype=dtype, device=dev)
    for start in range(0, n, chunk):
        pix = pb.pixels[start:start + chunk]
        if names and torch.is_grad_enabled():
            holder = []
            v, osum = _RecomputedChunk.apply(pb, pix, copy.copy(state), holder, names, *tensors)
            state = holder[0]
        else:
            v, osum = render_chunk(pb, pix, state)
        values.append(v)
        omega_sum = omega_sum + osum
        if progress is not None:
            progress(min(start + chunk, n), n)
    flat = torch.zeros(pb.spixels * pb.fpixels, dtype=dtype, device=dev)
    if n:
        flat = flat.index_put((pb.pixels,), torch.cat(values))
    return RenderResult(image=flat.reshape(pb.spixels, pb.fpixels), omega_sum=omega_sum, state=state)


def _options_for(xt: Crystal, options: Optional[SimulationOptions]) -> SimulationOptions:
    if options is not None:
        return options
    return SimulationOptions(dtype=xt.dtype if xt.dtype in (torch.float32, torch.float64) else "float64",
                             device=str(xt.device))


def simulate(crystal: CrystalLike, detector: DetectorLike, beam: BeamLike,
             structure_factors: SFLike, options: Optional[SimulationOptions] = None,
             progress: Optional[Callable[[int, int], None]] = None,
             return_intermediates: bool = False, checkpoint: bool = False) -> SimulationResult:
    """Render one diffraction image.

    Args:
        crystal: :class:`~nanobragg_torch.models.crystal.Crystal` or
            :class:`~nanobragg_torch.config.CrystalConfig`: cell (Angstrom,
            rad), orientation, N, mosaicity, phi sweep.
        detector: :class:`~nanobragg_torch.models.detector.Detector` or
            :class:`~nanobragg_torch.config.DetectorConfig` (m, rad).
        beam: :class:`~nanobragg_torch.models.beam.Beam` or
            :class:`~nanobragg_torch.config.BeamConfig` (wavelength in m,
            fluence in photons/m^2, sources).
        structure_factors: :class:`~nanobragg_torch.models.structure_factors.StructureFactors`
            or :class:`~nanobragg_torch.config.StructureFactorConfig`.
        options: dtype ("float32"/"float64" or a torch dtype), device, chunk
            size, d_min.  Default: the crystal model's dtype and device
            (float64 on the CPU for configuration records).
        progress: optional callback ``progress(done_pixels, total_pixels)``.
        return_intermediates: also compute per-pixel diagnostics
            (:func:`pixel_intermediates`) into ``result.intermediates``.
        checkpoint: bound the memory of the backward pass by recomputing
            each chunk of pixels in the backward pass instead of keeping its
            intermediates (gradient checkpointing); costs one more forward pass.  Use
            ``options.max_chunk_elements`` to choose the chunk size.

    Returns:
        :class:`SimulationResult`; ``result.image`` has shape (spixels,
        fpixels), photons per pixel, in the compute dtype on the compute
        device, and is differentiable with respect to every tensor input that
        requires grad.  The set-up geometry is computed in float64 and cast to
        the compute dtype.
    """
    xt, det, bm, sf = as_models(crystal, detector, beam, structure_factors)
    options = _options_for(xt, options)
    problem = device_problem(options.device)
    if problem is not None:
        raise ValueError(f"device {options.device}: {problem}")
    prep = prepare(xt, det, bm, device=options.device, dtype=torch.float64)
    ds = det.settings
    problem = geometry_problem(prep.geometry, curved=ds.curved) or precision_problem(
        prep.geometry, ds.fpixels * float(ds.pixel_size), ds.spixels * float(ds.pixel_size), options.dtype, curved=ds.curved)
    if problem is not None:
        raise ValueError(problem)
    pb = build_problem(prep, xt, det, bm, sf, options)
    if checkpoint:
        res = render_checkpointed(pb, options.max_chunk_elements, progress=progress)
    else:
        res = render(pb, options.max_chunk_elements, progress=progress, compiled=options.compile,
                     backend=options.backend)
    inter = pixel_intermediates(pb) if return_intermediates else None
    return SimulationResult(image=res.image, prepared=prep, omega_sum=res.omega_sum,
                            interp_warning=res.state.oob_warning, intermediates=inter, backend=res.backend)


class Simulator(RefTracked):
    """``torch.nn.Module`` wrapper of :func:`simulate`: holds the four models, ``forward()`` renders.

    Args:
        crystal, detector, beam, structure_factors: models or configuration
            records (records are wrapped into models).  The models become
            submodules, so their ``torch.nn.Parameter`` fields appear in
            ``parameters()`` and ``.to(device, dtype)`` moves every tensor
            (parameters, fixed values and cached arrays such as mosaic
            rotations and the structure-factor grid).
        options: chunk size, d_min (and the initial dtype/device, default
            float64 on the CPU).  After construction the compute dtype and
            device follow the module (``.to()``, ``.float()``, ``.double()``).

        checkpoint: recompute chunks in the backward pass instead of storing
            their intermediates (see :func:`simulate`).

    ``forward(return_intermediates=False)`` returns the image (spixels,
    fpixels) in photons per pixel, or ``(image, intermediates)``.
    """

    def __init__(self, crystal: CrystalLike, detector: DetectorLike, beam: BeamLike,
                 structure_factors: SFLike, options: Optional[SimulationOptions] = None,
                 checkpoint: bool = False):
        xt, det, bm, sf = as_models(crystal, detector, beam, structure_factors)
        options = options or SimulationOptions()
        dt = _dtype(options.dtype)
        super().__init__(dtype=dt, device=options.device)
        self.checkpoint = checkpoint
        self.options = options
        self.crystal = xt.to(device=self.options.device, dtype=dt)
        self.detector = det.to(device=self.options.device, dtype=dt)
        self.beam = bm.to(device=self.options.device, dtype=dt)
        self.structure_factors = sf.to(device=self.options.device, dtype=dt)

    def forward(self, return_intermediates: bool = False):
        opts = dataclasses.replace(self.options, dtype=self.dtype, device=str(self.device))
        res = simulate(self.crystal, self.detector, self.beam, self.structure_factors, opts,
                       return_intermediates=return_intermediates, checkpoint=self.checkpoint)
        if return_intermediates:
            return res.image, res.intermediates
        return res.image
