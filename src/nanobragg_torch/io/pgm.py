"""8-bit PGM (P5) preview image, as the reference program writes it.

Layout: ``P5\\n<fast> <slow>\\n# pixels scaled by <scale %g>\\n255\\n`` followed
by one unsigned byte per pixel, slow rows of fast pixels.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .atomic import atomic_write_bytes
from .smv import Roi, _roi_slices, c_cast_unsigned, c_format_g

__all__ = ["pgm_image", "write_pgm", "read_pgm"]


def pgm_image(
    float_image: np.ndarray,
    pgm_scale: float,
    intfile_scale: float,
    rmsd: float,
    roi: Roi = None,
) -> Tuple[np.ndarray, float]:
    """The reference program's 8-bit preview of a float image (photons/pixel).

    ``pgm_scale <= 0`` selects the automatic scale: ``250/(5*rmsd)`` when
    ``rmsd > 0`` (``rmsd``: the float image's rms deviation from its mean,
    photons), else ``intfile_scale`` (the scale the integer image used, after
    its own automatic choice).  Each pixel inside ``roi = (xmin, xmax, ymin,
    ymax)`` (inclusive; None = whole image) becomes ``pixel*scale`` in double
    precision, clipped above at 255 and converted to ``unsigned char`` like C
    (truncation); pixels outside the ROI are 0.
    Returns ``(uint8 image (S, F), scale used)``.
    """
    img = np.asarray(float_image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"float_image must be 2-D (slow, fast), got shape {img.shape}")
    scale = float(pgm_scale)
    if scale <= 0.0:
        scale = float(intfile_scale)
        if rmsd > 0.0:
            scale = 250.0 / (5.0 * float(rmsd))
    rows, cols = _roi_slices(img.shape, roi)
    from ..backends import cio
    fast = cio.pgm_image(img, rows, cols, scale)            # the same steps in one C pass
    if fast is not None:
        return fast, scale
    value = img[rows, cols].astype(np.float64) * scale
    value = np.where(value > 255.0, 255.0, value)
    out = np.zeros(img.shape, dtype=np.uint8)
    out[rows, cols] = c_cast_unsigned(value, 8)
    return out, scale


def pgm_header(nfast: int, nslow: int, scale: float) -> bytes:
    """The C program's PGM header for an image of ``nfast`` x ``nslow`` pixels."""
    text = "P5\n%d %d\n# pixels scaled by %s\n255\n" % (nfast, nslow, c_format_g(scale))
    return text.encode("ascii")


def write_pgm(path, image_uint8: np.ndarray, scale: float) -> None:
    """Write a (S, F) ``uint8`` image as binary PGM atomically; ``scale`` goes in the comment."""
    img = np.asarray(image_uint8)
    if img.dtype != np.uint8:
        raise TypeError(f"PGM image must be uint8, got {img.dtype}")
    if img.ndim != 2:
        raise ValueError(f"PGM image must be 2-D (slow, fast), got shape {img.shape}")
    nslow, nfast = img.shape
    atomic_write_bytes(path, pgm_header(nfast, nslow, scale) + np.ascontiguousarray(img).tobytes())


def read_pgm(path) -> Tuple[np.ndarray, Optional[str]]:
    """Read a binary (P5, maxval < 256) PGM: ``(uint8 image (S, F), first comment or None)``."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if not raw.startswith(b"P5"):
        raise ValueError(f"{path}: not a binary PGM (P5) file")
    fields = []
    comment = None
    pos = 2
    while len(fields) < 3:
        while pos < len(raw) and raw[pos:pos + 1].isspace():
            pos += 1
        if pos >= len(raw):
            raise ValueError(f"{path}: truncated PGM header")
        if raw[pos:pos + 1] == b"#":
            end = raw.find(b"\n", pos)
            end = len(raw) if end < 0 else end
            if comment is None:
                comment = raw[pos + 1:end].decode("latin-1").strip()
            pos = end + 1
            continue
        start = pos
        while pos < len(raw) and raw[pos:pos + 1].isdigit():
            pos += 1
        if start == pos:
            raise ValueError(f"{path}: malformed PGM header")
        fields.append(int(raw[start:pos]))
    nfast, nslow, maxval = fields
    if maxval > 255:
        raise ValueError(f"{path}: 16-bit PGM (maxval {maxval}) is not supported")
    pos += 1  # the single whitespace character after maxval
    data = raw[pos:pos + nfast * nslow]
    if len(data) < nfast * nslow:
        raise ValueError(f"{path}: truncated PGM data ({len(data)} of {nfast * nslow} bytes)")
    return np.frombuffer(data, dtype=np.uint8).reshape(nslow, nfast).copy(), comment
