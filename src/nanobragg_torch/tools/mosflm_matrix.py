"""nb-mosflm-matrix: write a MOSFLM orientation matrix file (``-mat``) from a cell and an orientation
(what the C program's users do with ``UBtoA.awk``).

    nb-mosflm-matrix --cell 57 68 79 90 90 90 --lambda 1.0 [--misset 10 20 30 | --random [--seed N]] [-o A.mat]

The orientation is nanoBragg's ``-misset`` (degrees: the reciprocal axes of
the standard setting rotated about x, then y, then z), or a uniformly random
rotation.  ``nanoBragg -mat A.mat`` then renders the same crystal as
``-cell ... -misset ...``.  File layout (MOSFLM): three lines of the A matrix
(a*, b*, c* as columns, times the wavelength), the missetting angles (0),
the U matrix, the cell, the missetting angles again.  Bad input: one line on
stderr, exit 2.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import List, Optional

import numpy as np

EXIT_OK, EXIT_INPUT, EXIT_IO = 0, 2, 1


def reciprocal_vectors(cell, misset_deg=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Rows a*, b*, c* (1/Angstrom) that nanoBragg builds from ``-cell`` (A, deg) and ``-misset`` (deg).

    The reciprocal of the real-space vectors the crystal model builds (its
    lattice step rescales them to the cell's exact lengths), so ``-mat``,
    which derives the real vectors from these, reproduces ``-cell``.
    """
    from ..config import CrystalConfig
    from ..models.crystal import Crystal
    cfg = CrystalConfig(cell=[float(x) for x in cell[:3]] + [math.radians(float(x)) for x in cell[3:]],
                        user_cell=True, misset=[math.radians(float(x)) for x in misset_deg])
    lat = Crystal(cfg).lattice()
    real = np.stack([lat.a.detach().numpy(), lat.b.detach().numpy(), lat.c.detach().numpy()]) * 1e10
    return np.linalg.inv(real).T          # rows a*, b*, c*: a* . a = 1, a* . b = 0, ...


def random_rotation(seed: Optional[int]) -> np.ndarray:
    """A rotation matrix drawn uniformly (a random unit quaternion)."""
    q = np.random.default_rng(seed).normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_text(recip: np.ndarray, wavelength_A: float, cell, U: np.ndarray) -> str:
    """The MOSFLM file text for reciprocal rows ``recip`` (1/A)."""
    A = recip.T * wavelength_A           # columns a*, b*, c*; row i = i-th components
    lines = [" ".join("%14.10f" % v for v in row) for row in A]
    lines.append("%14.10f %14.10f %14.10f" % (0.0, 0.0, 0.0))
    lines += [" ".join("%14.10f" % v for v in row) for row in U]
    lines.append(" ".join("%12.4f" % float(v) for v in cell))
    lines.append("%14.10f %14.10f %14.10f" % (0.0, 0.0, 0.0))
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="nb-mosflm-matrix", description="Write a MOSFLM A matrix for "
                                 "nanoBragg -mat from a cell and an orientation.")
    ap.add_argument("--cell", nargs=6, type=float, required=True, metavar=("A", "B", "C", "AL", "BE", "GA"))
    ap.add_argument("--lambda", dest="wavelength", type=float, required=True, help="wavelength in A")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--misset", nargs=3, type=float, metavar=("RX", "RY", "RZ"),
                   help="orientation as nanoBragg's -misset, degrees (default 0 0 0)")
    g.add_argument("--random", action="store_true", help="a uniformly random orientation")
    ap.add_argument("--seed", type=int, default=None, help="seed of --random")
    ap.add_argument("-o", "--output", default="A.mat", help="output file (default A.mat)")
    try:
        opts = ap.parse_args(argv)
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_INPUT
    err = lambda m: print(f"nb-mosflm-matrix: error: {m}", file=sys.stderr)
    a, b, c, al, be, ga = opts.cell
    if not all(math.isfinite(x) and x > 0 for x in (a, b, c)):
        err("--cell: lengths must be positive")
        return EXIT_INPUT
    if not all(0 < x < 180 for x in (al, be, ga)):
        err("--cell: angles must lie between 0 and 180 degrees")
        return EXIT_INPUT
    ca, cb, cg = (math.cos(math.radians(x)) for x in (al, be, ga))
    if 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg <= 1e-12:
        err("--cell: these angles do not form a cell (zero volume)")
        return EXIT_INPUT
    if not (math.isfinite(opts.wavelength) and opts.wavelength > 0):
        err("--lambda: wavelength must be positive")
        return EXIT_INPUT
    if opts.seed is not None and not opts.random:
        err("--seed: needs --random")
        return EXIT_INPUT
    misset = opts.misset or (0.0, 0.0, 0.0)
    if not all(math.isfinite(x) for x in misset):
        err("--misset: angles must be finite")
        return EXIT_INPUT
    recip0 = reciprocal_vectors(opts.cell)
    if opts.random:
        U = random_rotation(opts.seed)
        recip = (U @ recip0.T).T
    else:
        recip = reciprocal_vectors(opts.cell, misset)
        U = np.linalg.solve(recip0, recip).T      # recip = (U recip0^T)^T
    from ..io.atomic import atomic_write_bytes
    try:
        atomic_write_bytes(opts.output, matrix_text(recip, opts.wavelength, opts.cell, U).encode())
    except OSError as e:
        err(f"cannot write {opts.output} ({e.strerror or e})")
        return EXIT_IO
    print(f"wrote {opts.output}")
    return EXIT_OK


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())
