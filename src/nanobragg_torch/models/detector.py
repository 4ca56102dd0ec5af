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

from dataclasses import dataclass

import torch

from ..config import DetectorConfig
from ..physics.rotation import rotate_axis, rotate_xyz


def _t(x, dtype, device):
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype, device=device)
    return torch.as_tensor(x, dtype=dtype, device=device)


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

    def orgx_orgy(self, pixel_size):
        return self.Fclose / pixel_size + 0.5, self.Sclose / pixel_size + 0.5

    def dials_origin_mm(self):
        p = self.pix0
        return torch.stack([1000.0 * p[2], 1000.0 * p[1], -1000.0 * p[0]])


class Detector:
    """A pixel-array detector built from a :class:`DetectorConfig`.

    Continuous parameters (distance, beam centre, rotations, two-theta, pixel
    size, thickness, attenuation) may be tensors that require grad.
    """

    def __init__(self, config: DetectorConfig):
        self.config = config

    @property
    def shape(self):
        return (self.config.spixels, self.config.fpixels)

    def geometry(self, beam_vector, dtype=torch.float64, device="cpu") -> DetectorGeometry:
        c = self.config
        t = lambda x: _t(x, dtype, device)
        beam = t(beam_vector)
        beam = beam / torch.linalg.vector_norm(beam)
        f = t(c.fdet_vector)
        f = f / torch.linalg.vector_norm(f)
        s = t(c.sdet_vector)
        s = s / torch.linalg.vector_norm(s)
        o = t(c.odet_vector)
        omag = torch.linalg.vector_norm(o)
        if float(omag) != 1.0:
            # the C regenerates the normal whenever the given one is not exactly unit length
            o = torch.linalg.cross(f, s)
            o = o / torch.linalg.vector_norm(o)
        rx, ry, rz = t(c.detector_rotx), t(c.detector_roty), t(c.detector_rotz)
        tt = t(c.twotheta)
        axis = t(c.twotheta_axis)
        axis = axis / torch.linalg.vector_norm(axis)

        ratio = torch.dot(beam, rotate_xyz(o, rx, ry, rz))
        if float(ratio) == 0.0:
            ratio = ratio + torch.finfo(torch.float64).tiny
        distance = t(c.distance)
        if c.close_distance is None:
            close = torch.abs(ratio * distance)
        else:
            close = t(c.close_distance)
        distance = close / ratio

        if c.pivot == "sample":
            pix0 = -t(c.Fclose) * f - t(c.Sclose) * s + close * o
            pix0 = rotate_xyz(pix0, rx, ry, rz)
            pix0 = rotate_axis(pix0, axis, tt)
        f = rotate_axis(rotate_xyz(f, rx, ry, rz), axis, tt)
        s = rotate_axis(rotate_xyz(s, rx, ry, rz), axis, tt)
        o = rotate_axis(rotate_xyz(o, rx, ry, rz), axis, tt)
        if c.pivot != "sample":
            pix0 = -t(c.Fbeam) * f - t(c.Sbeam) * s + distance * beam

        Fclose = -torch.dot(pix0, f)
        Sclose = -torch.dot(pix0, s)
        close = torch.dot(pix0, o)
        hit = close / ratio * beam - pix0
        Fbeam = torch.dot(f, hit)
        Sbeam = torch.dot(s, hit)
        distance = close / ratio
        return DetectorGeometry(fdet=f, sdet=s, odet=o, pix0=pix0, distance=distance,
                                close_distance=close, ratio=ratio, Fbeam=Fbeam, Sbeam=Sbeam,
                                Fclose=Fclose, Sclose=Sclose, beam_vector=beam)
