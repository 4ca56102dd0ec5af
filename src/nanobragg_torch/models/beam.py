"""Beam model: incident directions and wavelengths of every source point.

Sources come from a source file or from the divergence grid (horizontal and
vertical angles, trimmed to an ellipse unless ``round_div`` is off) times the
dispersion steps, in the reference program's order (hdiv outer, vdiv, then
wavelength).  Each source is stored as the unit vector from the sample towards
the source; the incident direction is its negative.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..config import BeamConfig
from ..physics.rotation import rotate_axis
from .base import TensorModel, to_float


def divergence_indices(c) -> List[Tuple[int, int]]:
    """(ih, iv) step indices kept by the elliptical trim, in loop order.

    ``c`` is a :class:`BeamConfig` or a :class:`Beam` (its fields are read as
    floats: which grid points are kept is a discrete decision).
    """
    g = lambda name: to_float(getattr(c, name))
    hdivstep, hdivrange, vdivstep, vdivrange = g("hdivstep"), g("hdivrange"), g("vdivstep"), g("vdivrange")
    cfg = c.settings if isinstance(c, Beam) else c
    out = []
    for ih in range(cfg.hdivsteps):
        for iv in range(cfg.vdivsteps):
            hdiv = hdivstep * ih - hdivrange / 2.0
            vdiv = vdivstep * iv - vdivrange / 2.0
            with np.errstate(divide="ignore", invalid="ignore"):
                hr = np.float64(hdivrange)
                vr = np.float64(vdivrange)
                test = (hdiv * hdiv - hdivstep * hdivstep / 4.0 * (1 - cfg.hdivsteps % 2)) / hr / hr
                test = test + (vdiv * vdiv - vdivstep * vdivstep / 4.0 * (1 - cfg.vdivsteps % 2)) / vr / vr
            if cfg.round_div and test * 4.0 > 1.1:
                continue
            out.append((ih, iv))
    return out


def divergence_grid(c) -> List[Tuple[float, float]]:
    """(hdiv, vdiv) pairs (radians) kept by the elliptical trim, in loop order (floats)."""
    g = lambda name: to_float(getattr(c, name))
    hdivstep, hdivrange, vdivstep, vdivrange = g("hdivstep"), g("hdivrange"), g("vdivstep"), g("vdivrange")
    return [(hdivstep * ih - hdivrange / 2.0, vdivstep * iv - vdivrange / 2.0) for ih, iv in divergence_indices(c)]


@dataclass
class Sources:
    incident: torch.Tensor      # (S, 3) unit vectors along the incident beam
    wavelength: torch.Tensor    # (S,) metres
    position: torch.Tensor      # (S, 3) as given / generated (before normalising), for reports
    weight: torch.Tensor        # (S,) reported only
    divsteps: int


_CONTINUOUS = ("wavelength", "beam_vector", "polar_vector", "polarization", "fluence",
               "hdivrange", "hdivstep", "vdivrange", "vdivstep", "dispersion", "dispstep",
               "source_distance", "source_xyz", "source_lambda", "source_weight", "water_size")


class Beam(TensorModel):
    """An X-ray beam and its source points, as a ``torch.nn.Module``.

    Build it from a :class:`~nanobragg_torch.config.BeamConfig`, from keyword
    arguments, or both (keywords override).  Continuous fields may be tensors
    that require grad:

    ``wavelength`` (scalar, m, default 1e-10)
        central wavelength; dispersion steps and generated sources scale it;
    ``fluence`` (scalar, photons/m^2, default 1.259e29);
    ``polarization`` (scalar, Kahn factor in [-1, 1], default 0: unpolarized);
    ``beam_vector`` (3-vector, default (1, 0, 0))
        direction of propagation, source to sample;
    ``polar_vector`` (3-vector, default (0, 0, 1)): the E-vector direction;
    ``hdivrange``/``hdivstep``, ``vdivrange``/``vdivstep`` (rad), ``dispersion``/
        ``dispstep`` (fraction), ``source_distance`` (m, default 10)
        the divergence and dispersion grid (with the discrete ``hdivsteps``,
        ``vdivsteps``, ``dispsteps``, ``round_div``);
    ``source_xyz`` ((S, 3), m), ``source_lambda`` ((S,), m), ``source_weight``
        ((S,), reported only): explicit sources, replacing the grid;
    ``water_size`` (scalar, m): water background droplet size.

    ``nopolar`` switches the polarization factor off.
    """

    _fields = _CONTINUOUS

    def __init__(self, config: Optional[BeamConfig] = None, **kwargs):
        super().__init__()
        disc = self._discrete_kwargs(BeamConfig, kwargs, _CONTINUOUS)
        cfg = BeamConfig(**disc) if config is None else dataclasses.replace(config, **disc)
        object.__setattr__(self, "settings", cfg)
        src = config if config is not None else cfg
        for name in _CONTINUOUS:
            setattr(self, name, kwargs[name] if name in kwargs else getattr(src, name))

    @property
    def nopolar(self) -> bool:
        return self.settings.nopolar

    def to_config(self) -> BeamConfig:
        """A :class:`BeamConfig` holding this model's current values."""
        return dataclasses.replace(self.settings, **{n: getattr(self, n) for n in _CONTINUOUS})

    def beam_vector_unit(self, dtype=torch.float64, device=None) -> torch.Tensor:
        b = self.value("beam_vector", dtype, device)
        return b / torch.linalg.vector_norm(b)

    def polar_vector_unit(self, dtype=torch.float64, device=None) -> torch.Tensor:
        p = self.value("polar_vector", dtype, device)
        n = torch.linalg.vector_norm(p)
        return torch.where(n > 0, p / torch.where(n > 0, n, torch.ones_like(n)), p)

    def sources(self, dtype=torch.float64, device=None) -> Sources:
        """Incident directions (S, 3), wavelengths (S,), positions and weights of all sources."""
        c = self.settings
        device = self.device if device is None else device
        beam = self.beam_vector_unit(dtype, device)
        lam0 = self.value("wavelength", dtype, device)
        if self.source_xyz is not None and self.source_xyz.numel() > 0:
            pos = self.value("source_xyz", dtype, device).reshape(-1, 3)
            missing = torch.isnan(pos)
            sd = self.value("source_distance", dtype, device)
            pos = torch.where(missing, (-sd * beam).expand_as(pos), pos)
            n = pos.shape[0]
            if self.source_lambda is not None:
                lam_t = self.value("source_lambda", dtype, device).reshape(-1)
                lam_t = torch.where(torch.isnan(lam_t), lam0.expand_as(lam_t), lam_t)
            else:
                lam_t = lam0.expand(n)
            if self.source_weight is not None:
                weight = self.value("source_weight", dtype, device).reshape(-1)
                weight = torch.where(torch.isnan(weight), torch.ones_like(weight), weight)
            else:
                weight = torch.ones(n, dtype=dtype, device=device)
            divsteps = 0
        else:
            polar = self.polar_vector_unit(dtype, device)
            vert = torch.linalg.cross(beam, polar)
            vn = torch.linalg.vector_norm(vert)
            vert = torch.where(vn > 0, vert / torch.where(vn > 0, vn, torch.ones_like(vn)), vert)
            # the angles and wavelength factors are tensors of the (differentiable) ranges and steps,
            # computed in the C's order of operations (the same float64 values as the C's doubles)
            grid = divergence_indices(self)
            divsteps = len(grid)
            v = lambda name: self.value(name, dtype, device)
            hstep, hrange, vstep, vrange = v("hdivstep"), v("hdivrange"), v("vdivstep"), v("vdivrange")
            start = -v("source_distance") * beam
            dirs = []
            for ih, iv in grid:
                hdiv = hstep * ih - hrange / 2.0
                vdiv = vstep * iv - vrange / 2.0
                d = rotate_axis(start, polar, vdiv)
                d = rotate_axis(d, vert, hdiv)
                dirs.append(d)
            dstep, disp = v("dispstep"), v("dispersion")
            lam_f = [1.0 + dstep * d - disp / 2.0 for d in range(c.dispsteps)]
            pos = torch.stack([d for d in dirs for _ in lam_f]) if dirs else torch.zeros(0, 3, dtype=dtype, device=device)
            lam_t = torch.stack([lam0 * f for _ in dirs for f in lam_f]) if dirs else torch.zeros(0, dtype=dtype, device=device)
            n = max(len(dirs) * len(lam_f), 1)
            weight = torch.full((len(dirs) * len(lam_f),), 1.0 / n, dtype=dtype, device=device)
        norm = torch.linalg.vector_norm(pos, dim=-1, keepdim=True)
        unit = torch.where(norm > 0, pos / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(pos))
        return Sources(incident=-unit, wavelength=lam_t, position=pos, weight=weight, divsteps=divsteps)
