"""The C program's raw float image: ``fpixels * spixels`` little-endian float32, slow rows of fast pixels.

The file has no header, so the reader needs the shape, or assumes a square.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import numpy as np

__all__ = ["write_float", "read_float"]


def write_float(path, image) -> None:
    """Write a (slow, fast) real image as raw little-endian float32, atomically."""
    from .atomic import atomic_write_bytes
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"float image must be 2-D (slow, fast), got shape {img.shape}")
    if not (np.issubdtype(img.dtype, np.floating) or np.issubdtype(img.dtype, np.integer)):
        raise ValueError(f"float image needs real values, got {img.dtype}")
    atomic_write_bytes(os.fspath(path), np.ascontiguousarray(img, dtype="<f4").tobytes())


def read_float(path, shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Read a raw float32 image as (slow, fast) float32; ``shape`` (slow, fast), else a square.

    Raises ValueError naming the file when it is empty, its size does not
    match ``shape``, or (without ``shape``) it holds no square image.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"{path}: float image is empty")
    if size % 4:
        raise ValueError(f"{path}: {size} bytes is not a whole number of 4-byte floats")
    n = size // 4
    if shape is None:
        side = int(round(math.sqrt(n)))
        if side * side != n:
            raise ValueError(f"{path}: cannot tell the image shape ({n} values, not a square); give the shape")
        shape = (side, side)
    S, F = (int(x) for x in shape)
    if S * F != n:
        raise ValueError(f"{path}: {n} values, not the {F}x{S} (fast x slow) pixels expected")
    return np.fromfile(path, dtype="<f4").reshape(S, F)
