"""Detector model: basis vectors, origin (pix0), pivots, and derived beam centres.

Follows the reference program's geometry step for step:

1. unit fast/slow/normal vectors (the normal is regenerated as f x s if it is
   not a unit vector);
2. ``ratio`` = beam . (normal rotated by rotx, roty, rotz); the close distance
   defaults to |ratio * distance| and the distance becomes close/ratio;
3. sample pivot: the origin is placed from the near point before rotation and
   swung with the detector; beam pivot: the origin is placed after rotation so
   that the direct beam hits (Fbeam, Sbeam);
4. near point, beam centre, XDS ORGX/ORGY and the DIALS origin are recomputed
   from the rotated detector.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from ..config import DetectorConfig
from ..physics.rotation import rotate_axis, rotate_xyz
from .base import TensorModel, as_tensor, to_float


@dataclass
class DetectorGeometry:
    """Tensors describing the rotated detector (metres)."""
    fdet: torch.Tensor
    sdet: torch.Tensor
    odet: torch.Tensor
    pix0: torch.Tensor
    distance: torch.Tensor          # sample to beam spot along the beam, after the r-factor update
    close_distance: torch.Tensor    # sample to detector plane along its normal
    ratio: torch.Tensor
    Fbeam: torch.Tensor
    Sbeam: torch.Tensor
    Fclose: torch.Tensor
    Sclose: torch.Tensor
    beam_vector: torch.Tensor
    # the intermediate values of the construction above, under the names of the C's -DTRACING build
    # (initial_fdet, fdet_after_rotz, fdet_after_twotheta, twotheta_axis, term_fast, pix0_after_rotz, ...);
    # read by the per-pixel trace
    stages: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def orgx_orgy(self, pixel_size):
        return self.Fclose / pixel_size + 0.5, self.Sclose / pixel_size + 0.5

    def dials_origin_mm(self):
        p = self.pix0
        return torch.stack([1000.0 * p[2], 1000.0 * p[1], -1000.0 * p[0]])


_CONTINUOUS = ("pixel_size", "distance", "close_distance", "Fbeam", "Sbeam", "Fclose", "Sclose",
               "fdet_vector", "sdet_vector", "odet_vector", "detector_rotx", "detector_roty",
               "detector_rotz", "twotheta", "twotheta_axis", "thickness", "mu", "thickstep")


class Detector(TensorModel):
    """A flat (or curved) pixel-array detector, as a ``torch.nn.Module``.

    Build it from a :class:`~nanobragg_torch.config.DetectorConfig` (as the
    command line resolves one), from keyword arguments, or both (keywords
    override the record's fields).  Continuous fields are tensors that may
    require grad (see :mod:`nanobragg_torch.models.base`); all lengths are in
    metres and angles in radians:

    ``distance`` (scalar, m, default 0.1)
        sample to the beam spot on the detector, along the beam (before the
        C's r-factor update for a rotated detector);
    ``close_distance`` (scalar, m, default None = derived from distance)
        sample to the detector plane along its normal;
    ``Fbeam``, ``Sbeam`` (scalars, m)
        where the direct beam hits, along the fast/slow axes from the first
        pixel's outer corner (beam pivot).  Default (keywords only): the
        MOSFLM-convention default of the C program for this detector size,
        ``size/2 + pixel_size``; for a pixel coordinate ``x`` (0 = centre of the
        first pixel) use ``(x + 0.5) * pixel_size``;
    ``Fclose``, ``Sclose`` (scalars, m)
        the near point (sample pivot), default size/2;
    ``pixel_size`` (scalar, m, default 1e-4);
    ``detector_rotx``, ``detector_roty``, ``detector_rotz`` (scalars, rad, default 0)
        rotations about the lab x, y, z axes, applied in that order;
    ``twotheta`` (scalar, rad, default 0) about ``twotheta_axis`` (3-vector);
    ``fdet_vector``, ``sdet_vector``, ``odet_vector`` (3-vectors)
        unrotated fast, slow and normal axes (default MOSFLM: z, -y, x);
    ``thickness`` (scalar, m, default 0), ``mu`` (scalar, 1/m: attenuation
        coefficient; default 1/thickness when a thickness is given as a keyword,
        as the command line), ``thickstep`` (scalar, m; default
        thickness/(thicksteps-1) when thickness is given as a keyword).

    Discrete fields (``fpixels``, ``spixels``, ``pivot``, ``oversample``,
    ``thicksteps``, ``curved``, ``point_pixel``, ``oversample_*``, ``roi``,
    ``mask``, ``convention``) are taken as given.  The model moves with
    ``.to(device, dtype)``.
    """

    _fields = _CONTINUOUS

    def __init__(self, config: Optional[DetectorConfig] = None, **kwargs):
        super().__init__()
        disc = self._discrete_kwargs(DetectorConfig, kwargs, _CONTINUOUS)
        if config is None:
            cfg = DetectorConfig(**disc)
            px = to_float(kwargs.get("pixel_size", cfg.pixel_size))
            size_f = cfg.detsize_f if cfg.detsize_f is not None else cfg.fpixels * px
            size_s = cfg.detsize_s if cfg.detsize_s is not None else cfg.spixels * px
            # the C's MOSFLM defaults for this detector size
            defaults = dict(Fbeam=size_f / 2 + px, Sbeam=size_s / 2 + px, Fclose=size_f / 2, Sclose=size_s / 2)
            for k, v in defaults.items():
                kwargs.setdefault(k, v)
            if "Xbeam" not in kwargs:
                cfg.Xbeam, cfg.Ybeam = (size_s + px) / 2, (size_f + px) / 2
                cfg.Xclose, cfg.Yclose = size_f / 2, size_s / 2
            if "thickness" in kwargs and "thickstep" not in kwargs:
                n = cfg.thicksteps
                if to_float(kwargs["thickness"]) > 0 and n < 2:
                    n = cfg.thicksteps = 2
                kwargs["thickstep"] = kwargs["thickness"] / (n - 1) if n > 1 else kwargs["thickness"]
            if "thickness" in kwargs and "mu" not in kwargs and to_float(kwargs["thickness"]) > 0:
                kwargs["mu"] = 1.0 / to_float(kwargs["thickness"])     # the C's default attenuation
        else:
            cfg = dataclasses.replace(config, **disc)
        object.__setattr__(self, "settings", cfg)
        for name in _CONTINUOUS:
            setattr(self, name, kwargs[name] if name in kwargs else getattr(config or cfg, name))

    # -- discrete settings ------------------------------------------------------
    @property
    def shape(self):
        """(spixels, fpixels)."""
        return (self.settings.spixels, self.settings.fpixels)

    @property
    def fpixels(self) -> int:
        return self.settings.fpixels

    @property
    def spixels(self) -> int:
        return self.settings.spixels

    def to_config(self) -> DetectorConfig:
        """A :class:`DetectorConfig` holding this model's current values (tensors as stored)."""
        return dataclasses.replace(self.settings, **{n: getattr(self, n) for n in _CONTINUOUS})

    # -- geometry ---------------------------------------------------------------
    def geometry(self, beam_vector, dtype=torch.float64, device=None) -> DetectorGeometry:
        """Rotated basis, origin and derived beam centres for an incident ``beam_vector`` (3,)."""
        c = self.settings
        device = self.device if device is None else device
        t = lambda name: self.value(name, dtype, device)
        beam = as_tensor(beam_vector, dtype, device)
        beam = beam / torch.linalg.vector_norm(beam)
        f = t("fdet_vector")
        f = f / torch.linalg.vector_norm(f)
        s = t("sdet_vector")
        s = s / torch.linalg.vector_norm(s)
        o = t("odet_vector")
        omag = torch.linalg.vector_norm(o)
        if to_float(omag) != 1.0:
            # the C regenerates the normal whenever the given one is not exactly unit length
            o = torch.linalg.cross(f, s)
            o = o / torch.linalg.vector_norm(o)
        rx, ry, rz = t("detector_rotx"), t("detector_roty"), t("detector_rotz")
        tt = t("twotheta")
        axis = t("twotheta_axis")
        axis = axis / torch.linalg.vector_norm(axis)

        ratio = torch.dot(beam, rotate_xyz(o, rx, ry, rz))
        if to_float(ratio) == 0.0:
            ratio = ratio + torch.finfo(torch.float64).tiny
        distance = t("distance")
        if self.close_distance is None:
            close = torch.abs(ratio * distance)
        else:
            close = t("close_distance")
        distance = close / ratio

        stages = {"angles_rad": torch.stack([rx, ry, rz, tt]).detach(),
                  "initial_fdet": f, "initial_sdet": s, "initial_odet": o}
        if c.pivot == "sample":
            # (-F) f + (-S) s == -F f - S s exactly: the terms are the summands themselves
            stages["term_fast_before_rot"] = -t("Fclose") * f
            stages["term_slow_before_rot"] = -t("Sclose") * s
            stages["term_close_before_rot"] = close * o
            pix0 = stages["term_fast_before_rot"] + stages["term_slow_before_rot"] + stages["term_close_before_rot"]
            stages["pix0_before_rotation"] = pix0
            pix0 = rotate_xyz(pix0, rx, ry, rz)
            stages["pix0_after_rotz"] = pix0
            pix0 = rotate_axis(pix0, axis, tt)
            stages["pix0_after_twotheta"] = pix0
        f = rotate_xyz(f, rx, ry, rz)
        s = rotate_xyz(s, rx, ry, rz)
        o = rotate_xyz(o, rx, ry, rz)
        stages.update(fdet_after_rotz=f, sdet_after_rotz=s, odet_after_rotz=o)
        f = rotate_axis(f, axis, tt)
        s = rotate_axis(s, axis, tt)
        o = rotate_axis(o, axis, tt)
        stages.update(twotheta_axis=axis, fdet_after_twotheta=f, sdet_after_twotheta=s, odet_after_twotheta=o)
        if c.pivot != "sample":
            stages["term_fast"] = -t("Fbeam") * f
            stages["term_slow"] = -t("Sbeam") * s
            stages["term_beam"] = distance * beam
            pix0 = stages["term_fast"] + stages["term_slow"] + stages["term_beam"]

        Fclose = -torch.dot(pix0, f)
        Sclose = -torch.dot(pix0, s)
        close = torch.dot(pix0, o)
        hit = close / ratio * beam - pix0
        Fbeam = torch.dot(f, hit)
        Sbeam = torch.dot(s, hit)
        distance = close / ratio
        return DetectorGeometry(fdet=f, sdet=s, odet=o, pix0=pix0, distance=distance,
                                close_distance=close, ratio=ratio, Fbeam=Fbeam, Sbeam=Sbeam,
                                Fclose=Fclose, Sclose=Sclose, beam_vector=beam, stages=stages)


#: |beam . detector normal| below this: the beam runs in the detector plane
MIN_BEAM_NORMAL_COSINE = 1e-12
#: farther than this (m) the geometry overflows 4-byte floats on the way to the image (NaN)
MAX_DETECTOR_DISTANCE = 1e15


#: the closest approach of a flat detector plane must exceed this many rounding units of the
#: pixel positions (|position| x eps of the render dtype): a 0.1 % error of R at most
MIN_CLOSE_IN_ROUNDING_UNITS = 1000.0


def precision_problem(geo: DetectorGeometry, width_m: float, height_m: float, dtype: str,
                      curved: bool = False) -> Optional[str]:
    """Why this flat detector cannot be rendered in ``dtype`` (one line), or None.

    A flat detector's pixel positions are sums of vectors as long as the detector is wide;
    where part of the detector comes closer to the sample than their rounding error (a 1 mm
    pixel 1e-12 m from the sample in float32), R of the nearest pixels is noise and can
    round to 0 (an infinite solid angle, NaN pixels).  A curved detector's pixels all lie at the
    distance (no such cancellation).  float64 resolves ~1e9 times finer.
    """
    if curved:
        return None
    import numpy as np
    eps = float(np.finfo(np.float32 if str(dtype).endswith("float32") else np.float64).eps)
    pix0, f, s = (v.detach().double() for v in (geo.pix0, geo.fdet, geo.sdet))
    corners = [pix0 + a * f + b * s for a in (0.0, width_m) for b in (0.0, height_m)]
    extent = max(to_float(torch.linalg.vector_norm(c)) for c in corners)
    # the detector's point nearest to the sample: the foot of the perpendicular, clamped to the area
    a = min(max(-to_float(pix0 @ f), 0.0), width_m)
    b = min(max(-to_float(pix0 @ s), 0.0), height_m)
    nearest = to_float(torch.linalg.vector_norm(pix0 + a * f + b * s))
    limit = MIN_CLOSE_IN_ROUNDING_UNITS * eps * extent
    if nearest < limit:
        single = eps > 1e-10
        return ("the detector comes within %.3g m of the sample, closer than -dtype %s resolves the "
                "positions of pixels up to %.3g m away (%.2g m): %smove the detector away"
                % (nearest, "float32" if single else "float64", extent, limit,
                   "render with -dtype float64, or " if single else ""))
    return None


def geometry_problem(geo: DetectorGeometry, curved: bool = False) -> Optional[str]:
    """Why this detector geometry cannot be rendered (one line), or None.

    The classes refused are those where the image is undefined rather than zero:
    non-finite vectors; a beam that runs in the detector plane (beam . normal = 0:
    the C program divides 0 by 0 for the distance and renders NaN); a detector
    plane through the sample (every pixel edge-on, a pixel at the sample has
    R = 0); a spot or a detector corner so far away that 4-byte floats overflow.
    """
    axes = {"fast": geo.fdet.detach(), "slow": geo.sdet.detach(), "normal": geo.odet.detach()}
    if all(bool(torch.isfinite(v).all()) for v in axes.values()):
        for a, b in (("fast", "slow"), ("fast", "normal"), ("slow", "normal")):
            if to_float(torch.linalg.vector_norm(torch.linalg.cross(axes[a], axes[b]))) < 1e-9:
                return ("the detector's %s and %s axes are parallel (-fdet_vector, -sdet_vector, "
                        "-odet_vector): they do not span a detector frame" % (a, b))
    ratio = abs(to_float(geo.ratio))
    if ratio < MIN_BEAM_NORMAL_COSINE:
        return ("the beam runs parallel to the detector plane (beam . detector normal = %.3g after the "
                "rotations): it never meets the detector; tilt the detector or the beam"
                % (ratio if ratio > 1e-300 else 0.0))
    parts = [geo.pix0, geo.fdet, geo.sdet, geo.odet, geo.distance.reshape(1), geo.close_distance.reshape(1)]
    if not all(bool(torch.isfinite(p.detach()).all()) for p in parts):
        return "the detector geometry is not finite (degenerate detector vectors or rotations)"
    far_spot = abs(to_float(geo.distance))
    if far_spot > MAX_DETECTOR_DISTANCE:
        return ("the direct beam meets the detector plane %g m from the sample: the beam runs "
                "(nearly) parallel to the detector; tilt it less, or pivot about the sample "
                "(-pivot sample, -close_distance)" % far_spot)
    far = to_float(torch.linalg.vector_norm(geo.pix0.detach()))
    if far > MAX_DETECTOR_DISTANCE:
        return "the detector's first pixel lies %g m from the sample: too far to render" % far
    if to_float(geo.close_distance) == 0.0 or (curved and to_float(geo.distance) == 0.0):
        return "the sample lies in the detector plane (close distance 0): every pixel is edge-on"
    return None
