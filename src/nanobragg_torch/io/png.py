"""8-bit greyscale PNG preview (through Pillow): for looking at, not for measuring.

Bright means more photons.  Three scales:

``asinh`` (default)
    ``255 * asinh(I/s) / asinh(Imax/s)`` with ``s = mean + 5 rmsd`` (the C
    program's PGM white level): linear up to ``s``, logarithmic above, never
    clipped, so the spots show over a dark background and the brightest spots
    are the brightest grey levels (checked by eye on the golden cases
    misset_cubic, mosaic and mat_triclinic; tests/test_rough_edges.py keeps the ordering).
``log``
    ``255 * log(1 + I/I0) / log(1 + Imax/I0)`` with ``I0 = Imax * 1e-5`` (or
    the smallest positive pixel, whichever is larger): five decades, for the
    faint structure between the spots (the side lobes of a small crystal then
    look like a cross-hatch brighter than the spots' surroundings).
``linear``
    ``255 * I / (mean + 5 rmsd)``, clipped: the choice the C program makes
    for its PGM preview (5 rms deviations above the mean are white).

Negative values and NaN are black, +Inf white.
"""
from __future__ import annotations

import numpy as np

__all__ = ["png_pixels", "write_png", "SCALES"]

SCALES = ("asinh", "log", "linear")


def png_pixels(image: np.ndarray, scale: str = "asinh") -> np.ndarray:
    """The uint8 (slow, fast) preview of ``image`` on the ``asinh``, ``log`` or ``linear`` scale."""
    if scale not in SCALES:
        from .formats import FormatError
        raise FormatError(f"PNG scale must be one of {'|'.join(SCALES)}, got {scale!r}")
    f = np.asarray(image, dtype=np.float64)
    posinf = np.isposinf(f)
    f = np.where(np.isfinite(f) & (f > 0), f, 0.0)
    out = np.zeros(f.shape, dtype=np.float64)
    vmax = float(f.max()) if f.size else 0.0
    if vmax > 0:
        if scale == "asinh":
            soft = float(f.mean() + 5.0 * f.std())
            if not soft > 0:
                soft = vmax
            out = 255.0 * np.arcsinh(f / soft) / np.arcsinh(vmax / soft)
        elif scale == "log":
            positive = f[f > 0]
            i0 = max(vmax * 1e-5, float(positive.min()))
            out = 255.0 * np.log1p(f / i0) / np.log1p(vmax / i0)
        else:
            top = float(f.mean() + 5.0 * f.std())
            if not top > 0:
                top = vmax
            out = 255.0 * f / top
    out = np.clip(np.rint(out), 0, 255)
    out[posinf] = 255
    return out.astype(np.uint8)


def write_png(path: str, image: np.ndarray, scale: str = "asinh") -> None:
    """Write the preview of ``image`` to ``path`` atomically."""
    from PIL import Image

    from .atomic import atomic_open

    pixels = np.ascontiguousarray(png_pixels(image, scale))
    with atomic_open(path, "wb") as fh:
        Image.fromarray(pixels).save(fh, format="PNG")
