"""MOSFLM orientation matrices (the A matrix: reciprocal vectors times the wavelength)."""
from __future__ import annotations

import numpy as np

from ..cutil import is_number
from .hkl import InputFileError


def read_mosflm_matrix(path: str, wavelength_m: float) -> np.ndarray:
    """Rows a*, b*, c* (1/Angstrom) from the first three lines of a MOSFLM matrix file.

    The file's first nine numbers are the matrix, row by row: line 1 holds the
    x components of a*, b*, c* (in units of 1/wavelength), line 2 the y and
    line 3 the z components.  The wavelength is divided out.
    """
    try:
        with open(path, "r") as fh:
            tokens = fh.read().split()
    except OSError as e:
        raise InputFileError(f"{path}: cannot read matrix file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: not a text matrix file") from None
    nums = []
    for tok in tokens:
        if len(nums) == 9:
            break
        if not is_number(tok):
            raise InputFileError(f"{path}: non-numeric matrix element {tok!r}")
        nums.append(float(tok))
    if len(nums) < 9:
        raise InputFileError(f"{path}: expected a 3x3 matrix (9 numbers), found {len(nums)}")
    m = np.array(nums, dtype=np.float64).reshape(3, 3)   # rows = x, y, z components
    if not np.all(np.isfinite(m)) or abs(np.linalg.det(m)) < 1e-30:
        raise InputFileError(f"{path}: matrix is singular (zero determinant)")
    scale = 1e-10 / wavelength_m
    return (m.T * scale).copy()                          # rows a*, b*, c*
