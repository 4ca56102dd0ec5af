"""Where the direct beam meets the detector, computed from the written geometry alone.

Every image format that stores a "beam centre" or a "distance" means a
property of the detector plane and the incident beam, not of the steps that
built them.  The C program's printed ``Fbeam``/``Sbeam``/``distance`` come
from its construction (``distance = close_distance / ratio`` with ``ratio``
taken *before* the two-theta swing), so they differ from the geometric values
as soon as the detector is swung by ``-twotheta``.  The writers therefore take
their beam centre and distance from :func:`beam_on_detector`, which uses only
the rotated axes, the first pixel's corner and the beam direction -- the same
vectors the engine uses to place every pixel.

Frame: nanoBragg's lab frame, the sample at the origin, lengths in metres;
``pix0`` is the outer corner of the first pixel, so pixel (f, s) has its
centre at ``pix0 + (f+0.5) px fdet + (s+0.5) px sdet`` and a position of
``x`` pixels along the fast axis is ``x`` pixel widths from that corner (the
convention of CBF ``Beam_xy``, NeXus ``beam_center_x/y`` and dxtbx).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["BeamSpot", "beam_on_detector", "faces_beam"]

#: how far from perpendicular (radians) a detector may be and still count as facing the beam
FACING_TOLERANCE_RAD = 1e-9


@dataclass(frozen=True)
class BeamSpot:
    """The direct beam's intersection with the detector plane."""
    fast_m: float            # from the outer corner of the first pixel, along the fast axis
    slow_m: float            # ... along the slow axis
    distance_m: float        # sample to that point (along the beam): NXmx ``distance``
    close_distance_m: float  # sample to the detector plane along its normal (nearest point)
    normal_angle_deg: float  # angle between the beam and the detector normal (0: facing it)
    point_m: tuple           # the intersection point, lab frame

    def in_pixels(self, pixel_size_m: float):
        return self.fast_m / pixel_size_m, self.slow_m / pixel_size_m


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(3)
    n = float(np.linalg.norm(v))
    if not n > 0 or not math.isfinite(n):
        raise ValueError(f"zero or non-finite vector {v.tolist()}")
    return v / n


def beam_on_detector(pix0, fdet, sdet, beam) -> BeamSpot:
    """Where the line ``t * beam`` (t > 0) from the sample meets the plane spanned by fdet, sdet at pix0.

    ``fdet`` and ``sdet`` need not be orthogonal (custom vectors): the position
    is solved in the (fdet, sdet) basis.  Raises ValueError when the beam runs
    parallel to the plane or meets it behind the sample.
    """
    p0 = np.asarray(pix0, dtype=np.float64).reshape(3)
    f, s, b = _unit(fdet), _unit(sdet), _unit(beam)
    n = np.cross(f, s)
    nn = float(np.linalg.norm(n))
    if nn < 1e-12:
        raise ValueError("the detector's fast and slow axes are parallel")
    n /= nn
    denom = float(b @ n)
    if abs(denom) < 1e-12:
        raise ValueError("the direct beam runs parallel to the detector plane")
    t = float(p0 @ n) / denom
    if not t > 0:
        raise ValueError("the direct beam meets the detector plane behind the sample")
    hit = t * b
    d = hit - p0
    gram = np.array([[f @ f, f @ s], [s @ f, s @ s]])
    fast, slow = np.linalg.solve(gram, np.array([d @ f, d @ s]))
    angle = math.degrees(math.acos(min(1.0, abs(denom))))
    return BeamSpot(fast_m=float(fast), slow_m=float(slow), distance_m=t,
                    close_distance_m=abs(float(p0 @ n)), normal_angle_deg=angle,
                    point_m=tuple(float(x) for x in hit))


def faces_beam(fdet, sdet, beam, tol_rad: float = FACING_TOLERANCE_RAD) -> bool:
    """True when the detector plane is perpendicular to the beam and its axes are orthogonal."""
    f, s, b = _unit(fdet), _unit(sdet), _unit(beam)
    return abs(float(f @ b)) < tol_rad and abs(float(s @ b)) < tol_rad and abs(float(f @ s)) < tol_rad
