"""Beam model: incident directions and wavelengths of every source point.

Sources come from a source file or from the divergence grid (horizontal and
vertical angles, trimmed to an ellipse unless ``round_div`` is off) times the
dispersion steps, in the reference program's order (hdiv outer, vdiv, then
wavelength).  Each source is stored as the unit vector from the sample towards
the source; the incident direction is its negative.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch

from ..config import BeamConfig
from ..physics.rotation import rotate_axis


def _t(x, dtype, device):
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype, device=device)
    return torch.as_tensor(x, dtype=dtype, device=device)


def divergence_grid(c: BeamConfig) -> List[Tuple[float, float]]:
    """(hdiv, vdiv) pairs (radians) kept by the elliptical trim, in loop order."""
    out = []
    for ih in range(c.hdivsteps):
        for iv in range(c.vdivsteps):
            hdiv = c.hdivstep * ih - c.hdivrange / 2.0
            vdiv = c.vdivstep * iv - c.vdivrange / 2.0
            with np.errstate(divide="ignore", invalid="ignore"):
                hr = np.float64(c.hdivrange)
                vr = np.float64(c.vdivrange)
                test = (hdiv * hdiv - c.hdivstep * c.hdivstep / 4.0 * (1 - c.hdivsteps % 2)) / hr / hr
                test = test + (vdiv * vdiv - c.vdivstep * c.vdivstep / 4.0 * (1 - c.vdivsteps % 2)) / vr / vr
            if c.round_div and test * 4.0 > 1.1:
                continue
            out.append((hdiv, vdiv))
    return out


@dataclass
class Sources:
    incident: torch.Tensor      # (S, 3) unit vectors along the incident beam
    wavelength: torch.Tensor    # (S,) metres
    position: torch.Tensor      # (S, 3) as given / generated (before normalising), for reports
    weight: torch.Tensor        # (S,) reported only
    divsteps: int


class Beam:
    """An X-ray beam built from a :class:`BeamConfig`; the wavelength, fluence
    and polarization may be tensors that require grad."""

    def __init__(self, config: BeamConfig):
        self.config = config

    def beam_vector(self, dtype=torch.float64, device="cpu") -> torch.Tensor:
        b = _t(self.config.beam_vector, dtype, device)
        return b / torch.linalg.vector_norm(b)

    def polar_vector(self, dtype=torch.float64, device="cpu") -> torch.Tensor:
        p = _t(self.config.polar_vector, dtype, device)
        n = torch.linalg.vector_norm(p)
        return torch.where(n > 0, p / torch.where(n > 0, n, torch.ones_like(n)), p)

    def sources(self, dtype=torch.float64, device="cpu") -> Sources:
        c = self.config
        beam = self.beam_vector(dtype, device)
        lam0 = _t(c.wavelength, dtype, device)
        if c.source_xyz is not None and len(c.source_xyz) > 0:
            xyz = np.array(c.source_xyz, dtype=np.float64).reshape(-1, 3)
            pos = torch.as_tensor(xyz, dtype=dtype, device=device)
            missing = torch.isnan(pos)
            pos = torch.where(missing, (-c.source_distance * beam).expand_as(pos), pos)
            lam = np.array(c.source_lambda, dtype=np.float64)
            lam_t = torch.as_tensor(lam, dtype=dtype, device=device)
            lam_t = torch.where(torch.isnan(lam_t), lam0.expand_as(lam_t), lam_t)
            w = np.array(c.source_weight if c.source_weight is not None else np.ones(len(xyz)), dtype=np.float64)
            w = np.where(np.isnan(w), 1.0, w)
            weight = torch.as_tensor(w, dtype=dtype, device=device)
            divsteps = 0
        else:
            polar = self.polar_vector(dtype, device)
            vert = torch.linalg.cross(beam, polar)
            vn = torch.linalg.vector_norm(vert)
            vert = torch.where(vn > 0, vert / torch.where(vn > 0, vn, torch.ones_like(vn)), vert)
            grid = divergence_grid(c)
            divsteps = len(grid)
            start = -c.source_distance * beam
            dirs = []
            for hdiv, vdiv in grid:
                v = rotate_axis(start, polar, hdiv * 0 + vdiv)
                v = rotate_axis(v, vert, hdiv)
                dirs.append(v)
            lam_f = [1.0 + c.dispstep * d - c.dispersion / 2.0 for d in range(c.dispsteps)]
            pos = torch.stack([v for v in dirs for _ in lam_f]) if dirs else torch.zeros(0, 3, dtype=dtype, device=device)
            lam_t = torch.stack([lam0 * f for _ in dirs for f in lam_f]) if dirs else torch.zeros(0, dtype=dtype, device=device)
            n = max(len(dirs) * len(lam_f), 1)
            weight = torch.full((len(dirs) * len(lam_f),), 1.0 / n, dtype=dtype, device=device)
        norm = torch.linalg.vector_norm(pos, dim=-1, keepdim=True)
        unit = torch.where(norm > 0, pos / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(pos))
        return Sources(incident=-unit, wavelength=lam_t, position=pos, weight=weight, divsteps=divsteps)
