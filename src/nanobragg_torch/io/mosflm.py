"""MOSFLM orientation matrices (the A matrix: reciprocal vectors times the wavelength)."""
from __future__ import annotations

import numpy as np

from .errors import InputFileError
from .text import data_lines, number


def read_mosflm_matrix(path: str, wavelength_m: float) -> np.ndarray:
    """Rows a*, b*, c* (1/Angstrom) from the first three lines of a MOSFLM matrix file.

    The file's first nine numbers are the matrix, row by row: line 1 holds the
    x components of a*, b*, c* (in units of 1/wavelength), line 2 the y and
    line 3 the z components.  The wavelength is divided out.
    """
    # the matrix is the first three lines that are neither blank nor comments, three numbers
    # each (what follows in a MOSFLM file -- missets, U matrix, cell -- is not used)
    rows = []
    for no, toks in data_lines(path, "matrix file"):
        rows.append((no, toks))
        if len(rows) == 3:
            break
    nums = []
    for no, toks in rows:
        vals = [number(path, no, i, t) for i, t in enumerate(toks)]
        if len(toks) != 3:
            raise InputFileError(f"{path}:{no}: expected 3 numbers (one row of the 3x3 matrix), "
                                 f"found {len(toks)}")
        nums.extend(vals)                          # as the C reads them (hex floats too)
    if len(nums) < 9:
        raise InputFileError(f"{path}: expected a 3x3 matrix (3 lines of 3 numbers), found {len(rows)} "
                             f"line{'s' if len(rows) != 1 else ''}")
    m = np.array(nums, dtype=np.float64).reshape(3, 3)   # rows = x, y, z components
    if not np.all(np.isfinite(m)):
        raise InputFileError(f"{path}: matrix elements must be finite")
    with np.errstate(all="ignore"):
        norms = np.prod(np.linalg.norm(m, axis=0))   # |a*| |b*| |c*|
        det = np.linalg.det(m)
    if not (np.isfinite(norms) and np.isfinite(det)):
        raise InputFileError(f"{path}: matrix elements are too large")
    if norms == 0.0 or abs(det) <= 1e-9 * norms:
        raise InputFileError(f"{path}: matrix is singular (zero determinant)")
    scale = 1e-10 / wavelength_m
    return (m.T * scale).copy()                          # rows a*, b*, c*
