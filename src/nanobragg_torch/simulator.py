"""The simulator: a function, ``simulate``, and a ``torch.nn.Module`` wrapper, ``Simulator``.

    >>> from nanobragg_torch import simulate, BeamConfig, DetectorConfig, CrystalConfig, StructureFactorConfig
    >>> res = simulate(CrystalConfig(cell=(100, 100, 100, 1.5708, 1.5708, 1.5708), Na=5, Nb=5, Nc=5),
    ...                DetectorConfig(fpixels=64, spixels=64), BeamConfig(wavelength=6.2e-10),
    ...                StructureFactorConfig(default_F=100))
    >>> res.image.shape
    torch.Size([64, 64])

Every float input (config fields given as tensors, the structure-factor grid)
is differentiable; the image is in photons per pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from .config import (AVOGADRO, R_E_SQR, WATER_F, WATER_MW, BeamConfig, CrystalConfig,
                     DetectorConfig, SimulationOptions, StructureFactorConfig)
from .engine import RenderProblem, render
from .models.beam import Beam, Sources
from .models.crystal import Crystal, Lattice
from .models.detector import Detector, DetectorGeometry

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _dtype(d) -> torch.dtype:
    return DTYPES[d] if isinstance(d, str) else d


def _t(x, dtype, device):
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype, device=device)
    return torch.as_tensor(x, dtype=dtype, device=device)


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
    image: torch.Tensor                   # (spixels, fpixels), photons per pixel
    prepared: Prepared
    omega_sum: torch.Tensor
    interp_warning: Optional[tuple] = None


def rendered_pixels(det: DetectorConfig, device="cpu") -> torch.Tensor:
    """Flat indices (raster order) of the pixels inside the ROI and not masked."""
    S, F = det.spixels, det.fpixels
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


def prepare(crystal: CrystalConfig, detector: DetectorConfig, beam: BeamConfig,
            device="cpu", dtype=torch.float64) -> Prepared:
    dt = _dtype(dtype)
    bm = Beam(beam)
    geo = Detector(detector).geometry(bm.beam_vector(dt, device), dtype=dt, device=device)
    xt = Crystal(crystal)
    lat = xt.lattice(dt, device)
    N = xt.cell_counts(lat, dt, device)
    sizes = tuple(float(n) * float(torch.linalg.vector_norm(v)) for n, v in zip(N, (lat.a, lat.b, lat.c)))
    xtalsize_max = max(sizes)
    recip_pixel = float(beam.wavelength) * float(geo.distance) / float(detector.pixel_size)
    recommended = int(math.ceil(3.0 * xtalsize_max / recip_pixel)) if recip_pixel != 0 else 1
    if recommended <= 0:
        recommended = 1
    oversample = detector.oversample if detector.oversample > 0 else recommended
    src = bm.sources(dt, device)
    domains = 1 if crystal.mosaic_umats is None else len(crystal.mosaic_umats)
    steps = src.incident.shape[0] * domains * crystal.phisteps * oversample * oversample
    water = _t(beam.water_size, dt, device)
    I_bg = WATER_F * WATER_F * R_E_SQR * _t(beam.fluence, dt, device) * water ** 3 * 1e6 * AVOGADRO / WATER_MW
    return Prepared(geometry=geo, lattice=lat, N=N, oversample=oversample,
                    recommended_oversample=recommended, sources=src, steps=steps, I_bg=I_bg,
                    pixels=rendered_pixels(detector, device), xtal_size=sizes)


def _plain(x, conv):
    """A Python float unless x carries a gradient (plain numbers select cheaper kernels)."""
    if isinstance(x, torch.Tensor) and x.requires_grad:
        return conv(x)
    return float(x)


def build_problem(prep: Prepared, crystal: CrystalConfig, detector: DetectorConfig, beam: BeamConfig,
                  sf: StructureFactorConfig, options: SimulationOptions) -> RenderProblem:
    dt = _dtype(options.dtype)
    dev = options.device
    c = lambda x: _t(x, dt, dev)
    geo = prep.geometry
    xt = Crystal(crystal)
    lat_all = xt.rotated_lattices(prep.lattice, torch.float64, prep.lattice.a.device)
    lat_first = None
    if crystal.phi_carryover:
        lat_first = xt.rotated_lattices(prep.lattice, torch.float64, prep.lattice.a.device, first=True)
        if torch.equal(lat_first, lat_all):
            lat_first = None
    F_grid = None
    F_shape = (0, 0, 0)
    if sf.grid is not None:
        g = sf.grid if isinstance(sf.grid, torch.Tensor) else torch.as_tensor(np.asarray(sf.grid))
        F_shape = tuple(g.shape)
        F_grid = c(g).reshape(-1)
    return RenderProblem(
        spixels=detector.spixels, fpixels=detector.fpixels, pixel_size=c(detector.pixel_size),
        oversample=prep.oversample, thicksteps=detector.thicksteps, thickstep=c(detector.thickstep),
        mu=c(detector.mu), thickness_on=bool(float(detector.thickness) != 0.0),
        fdet=c(geo.fdet), sdet=c(geo.sdet), odet=c(geo.odet), pix0=c(geo.pix0),
        beam_vector=c(geo.beam_vector), distance=c(geo.distance), close_distance=c(geo.close_distance),
        curved=detector.curved, point_pixel=detector.point_pixel,
        incident=c(prep.sources.incident), wavelength=c(prep.sources.wavelength),
        polar_vector=c(Beam(beam).polar_vector(torch.float64)), kahn=c(beam.polarization), nopolar=beam.nopolar,
        lattices=c(lat_all), lattices_first=None if lat_first is None else c(lat_first),
        recip=c(prep.lattice.reciprocal_matrix()),
        Na=_plain(prep.N[0], c), Nb=_plain(prep.N[1], c), Nc=_plain(prep.N[2], c), shape=crystal.shape, fudge=c(crystal.fudge),
        F_grid=F_grid, F_shape=F_shape, hkl_min=tuple(sf.hkl_min), hkl_max=tuple(sf.hkl_max),
        hkls=sf.hkls, default_F=c(sf.default_F), interpolate=bool(sf.interpolate and sf.hkls > 0),
        fluence=c(beam.fluence), r_e_sqr=R_E_SQR, steps=prep.steps, I_bg=c(prep.I_bg),
        water=bool(float(beam.water_size) != 0.0), dmin=float(options.dmin),
        oversample_thick=detector.oversample_thick, oversample_polar=detector.oversample_polar,
        oversample_omega=detector.oversample_omega, pixels=prep.pixels.to(dev),
        reduced_sincg=(dt != torch.float64),
    )


def simulate(crystal: CrystalConfig, detector: DetectorConfig, beam: BeamConfig,
             structure_factors: StructureFactorConfig, options: Optional[SimulationOptions] = None,
             progress: Optional[Callable[[int, int], None]] = None) -> SimulationResult:
    """Render one image.

    Returns a :class:`SimulationResult` whose ``image`` (spixels, fpixels) is in
    photons per pixel, with the options' dtype and device.  Set-up geometry is
    computed in float64 and cast to the compute dtype.
    """
    options = options or SimulationOptions()
    prep = prepare(crystal, detector, beam, device=options.device, dtype=torch.float64)
    pb = build_problem(prep, crystal, detector, beam, structure_factors, options)
    res = render(pb, options.max_chunk_elements, progress=progress)
    return SimulationResult(image=res.image, prepared=prep, omega_sum=res.omega_sum,
                            interp_warning=res.state.oob_warning)


class Simulator(torch.nn.Module):
    """``torch.nn.Module`` wrapper: holds the configurations, ``forward()`` renders.

    Tensors placed in the configurations (for example ``CrystalConfig.cell``
    entries, ``DetectorConfig.distance``) are registered as parameters when
    they require grad, so optimisers can find them through ``parameters()``.
    """

    def __init__(self, crystal: CrystalConfig, detector: DetectorConfig, beam: BeamConfig,
                 structure_factors: StructureFactorConfig, options: Optional[SimulationOptions] = None):
        super().__init__()
        self.crystal, self.detector, self.beam = crystal, detector, beam
        self.structure_factors = structure_factors
        self.options = options or SimulationOptions()
        n = 0
        for cfg in (crystal, detector, beam, structure_factors):
            for name, val in vars(cfg).items():
                vals = val if isinstance(val, (list, tuple)) else [val]
                for v in vals:
                    if isinstance(v, torch.nn.Parameter) or (isinstance(v, torch.Tensor) and v.requires_grad):
                        self.register_parameter(f"p{n}_{name}", v if isinstance(v, torch.nn.Parameter)
                                                else torch.nn.Parameter(v, requires_grad=True) if v.is_leaf else None)
                        n += 1

    def forward(self) -> torch.Tensor:
        return simulate(self.crystal, self.detector, self.beam, self.structure_factors, self.options).image
