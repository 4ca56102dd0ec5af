"""Structure-factor files: the ``h k l F`` text format and the C program's ``Fdump.bin`` cache.

The grid layout is the reference program's: indices h_min..h_max (inclusive)
map to 0..h_range-1, and the array has one extra zero slab along each axis
(shape ``(h_range+1, k_range+1, l_range+1)``), which is also how ``Fdump.bin``
stores it.  Cells not listed in the file hold ``default_F``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from .errors import InputFileError  # noqa: F401  (re-exported: the readers' error)
from .text import read_table


MAX_INDEX = 1 << 20     # far beyond any real reflection list; keeps grid arithmetic in int64


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
    """Read a text file of ``h k l F`` lines (white-space separated) into a grid.

    Blank and ``#`` lines are skipped; every other line must hold four numbers
    (read as C's ``atof`` reads them), integral Miller indices and a finite F;
    anything else is an :class:`InputFileError` naming the file and line.  Later
    lines win where an index repeats, as in the C program.
    """
    table = read_table(path, 4, min_fields=4, max_fields=4, what="HKL file", layout="h k l F")
    if table.values.shape[0] == 0:
        raise InputFileError(f"{path}: no reflections (empty HKL file)")
    hkl = table.values[:, :3]
    Fs = table.values[:, 3]
    with np.errstate(invalid="ignore"):
        integral = np.isfinite(hkl) & (hkl == np.round(hkl))
        in_range = np.abs(hkl) <= MAX_INDEX
    for ok, why in ((integral, "is not an integer"),
                    (in_range, f"is out of range (|index| <= {MAX_INDEX})")):
        if not ok.all():
            row, col = np.argwhere(~ok)[0]
            raise InputFileError(f"{path}:{table.lines[row]}: Miller index {'hkl'[col]}={hkl[row, col]:g} {why}")
    if not np.isfinite(Fs).all():
        row = int(np.argmax(~np.isfinite(Fs)))
        raise InputFileError(f"{path}:{table.lines[row]}: structure factor {Fs[row]:g} is not finite")
    arr = hkl.astype(np.int64)
    lo = arr.min(axis=0)
    hi = arr.max(axis=0)
    rng = hi - lo + 1
    if np.prod(rng.astype(np.float64)) > 2e9:
        raise InputFileError(f"{path}: index ranges {tuple(rng)} are too large for a grid")
    grid = np.zeros(tuple(rng + 1), dtype=np.float64)
    if default_F != 0.0:
        grid[:rng[0], :rng[1], :rng[2]] = default_F
    idx = arr - lo
    flat = np.ravel_multi_index((idx[:, 0], idx[:, 1], idx[:, 2]), grid.shape)
    _, last = np.unique(flat[::-1], return_index=True)           # the last line of each index wins,
    keep = len(flat) - 1 - last                                   # as in the C
    grid.reshape(-1)[flat[keep]] = Fs[keep]
    return HKLData(grid=grid, hkl_min=tuple(int(x) for x in lo), hkl_max=tuple(int(x) for x in hi),
                   count=len(Fs))


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
