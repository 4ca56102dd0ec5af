"""Structure-factor files: the ``h k l F`` text format and the C program's ``Fdump.bin`` cache.

The grid layout is the reference program's: indices h_min..h_max (inclusive)
map to 0..h_range-1, and the array has one extra zero slab along each axis
(shape ``(h_range+1, k_range+1, l_range+1)``), which is also how ``Fdump.bin``
stores it.  Cells not listed in the file hold ``default_F``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..cutil import c_atof, is_number


MAX_INDEX = 1 << 20     # far beyond any real reflection list; keeps grid arithmetic in int64


class InputFileError(ValueError):
    """A malformed input file; the message names the file (and line)."""


@dataclass
class HKLData:
    grid: np.ndarray                   # (h_range+1, k_range+1, l_range+1) float64
    hkl_min: Tuple[int, int, int]
    hkl_max: Tuple[int, int, int]
    count: int                         # reflections read (or cells, for a dump file)

    @property
    def ranges(self):
        return tuple(mx - mn + 1 for mn, mx in zip(self.hkl_min, self.hkl_max))


def read_hkl(path: str, default_F: float = 0.0) -> HKLData:
    """Read a text file of ``h k l F`` lines (whitespace separated) into a grid."""
    try:
        with open(path, "r") as fh:
            lines = fh.readlines()
    except OSError as e:
        raise InputFileError(f"{path}: cannot read HKL file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: not a text HKL file") from None
    rows = []
    for no, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4:
            raise InputFileError(f"{path}:{no}: expected 4 columns (h k l F), found {len(fields)}")
        if not all(is_number(x) for x in fields):
            bad = next(x for x in fields if not is_number(x))
            raise InputFileError(f"{path}:{no}: non-numeric field {bad!r}")
        h, k, l, F = (c_atof(x) for x in fields)   # is_number accepts what atof reads (hex too)
        for name, v in (("h", h), ("k", k), ("l", l)):
            if not math.isfinite(v) or v != round(v):
                raise InputFileError(f"{path}:{no}: Miller index {name}={fields['hkl'.index(name)]} is not an integer")
            if abs(v) > MAX_INDEX:    # the C stores indices as int; a grid this wide cannot be built anyway
                raise InputFileError(f"{path}:{no}: Miller index {name}={fields['hkl'.index(name)]} is out of range "
                                     f"(|index| <= {MAX_INDEX})")
        if not math.isfinite(F):
            raise InputFileError(f"{path}:{no}: structure factor {fields[3]!r} is not finite")
        rows.append((int(h), int(k), int(l), F))
    if not rows:
        raise InputFileError(f"{path}: no reflections (empty HKL file)")
    arr = np.array([r[:3] for r in rows], dtype=np.int64)
    Fs = np.array([r[3] for r in rows], dtype=np.float64)
    lo = arr.min(axis=0)
    hi = arr.max(axis=0)
    rng = hi - lo + 1
    if np.prod(rng.astype(np.float64)) > 2e9:
        raise InputFileError(f"{path}: index ranges {tuple(rng)} are too large for a grid")
    grid = np.zeros(tuple(rng + 1), dtype=np.float64)
    if default_F != 0.0:
        grid[:rng[0], :rng[1], :rng[2]] = default_F
    idx = arr - lo
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = Fs   # later lines win, as in the C
    return HKLData(grid=grid, hkl_min=tuple(int(x) for x in lo), hkl_max=tuple(int(x) for x in hi),
                   count=len(rows))


def write_fdump(path: str, data: HKLData) -> None:
    """Write the binary cache the C program writes next to its output."""
    from .atomic import atomic_write_bytes
    hmin, kmin, lmin = data.hkl_min
    hmax, kmax, lmax = data.hkl_max
    header = f"{hmin} {hmax} {kmin} {kmax} {lmin} {lmax}\n\f".encode()
    atomic_write_bytes(path, header + np.ascontiguousarray(data.grid, dtype="<f8").tobytes())


def read_fdump(path: str) -> HKLData:
    """Read a ``Fdump.bin`` written by this project or by the C program."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise InputFileError(f"{path}: cannot read dump file ({e.strerror})") from None
    end = raw.find(b"\n")
    try:
        vals = [int(x) for x in raw[:end].split()]
        assert len(vals) == 6
    except Exception:
        raise InputFileError(f"{path}: not a structure-factor dump file (bad header)") from None
    pos = end + 1
    if raw[pos:pos + 1] == b"\f":   # exactly one form feed: the data may start with a 0x0c byte
        pos += 1
    hmin, hmax, kmin, kmax, lmin, lmax = vals
    rng = (hmax - hmin + 1, kmax - kmin + 1, lmax - lmin + 1)
    if min(rng) < 1:
        raise InputFileError(f"{path}: empty index range in dump file header")
    n = (rng[0] + 1) * (rng[1] + 1) * (rng[2] + 1)
    body = raw[pos:pos + 8 * n]
    if len(body) < 8 * n:
        raise InputFileError(f"{path}: truncated dump file ({len(body)} of {8 * n} bytes)")
    grid = np.frombuffer(body, dtype="<f8").reshape(rng[0] + 1, rng[1] + 1, rng[2] + 1).copy()
    return HKLData(grid=grid, hkl_min=(hmin, kmin, lmin), hkl_max=(hmax, kmax, lmax),
                   count=rng[0] * rng[1] * rng[2])
