"""Structure factors computed from an atomic model (PDB or mmCIF) through gemmi.

F is on the absolute scale the C program expects: electrons per unit cell
(X-ray form factors of the International Tables with each atom's occupancy
and B factor, every symmetry copy in the cell), F000 is the number of
electrons in the cell (:func:`cell_electrons`).  The asymmetric unit of reflections out to ``d_min``
is computed and expanded to P1 with Friedel mates (:func:`.p1.expand_to_p1`).
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from .hkl import InputFileError

__all__ = ["model_amplitudes", "read_model"]


def read_model(path: str):
    """The gemmi Structure of a PDB/mmCIF model, checked: atoms, a cell and a known space group."""
    import gemmi
    from .p1 import space_group
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as e:
        raise InputFileError(f"{path}: not a readable model file ({str(e).splitlines()[0]})") from None
    if len(st) == 0 or not any(True for _ in st[0].all()):
        raise InputFileError(f"{path}: the model has no atoms")
    cell = st.cell
    if not (cell.a > 1 and cell.b > 1 and cell.c > 1 and cell.volume > 0):
        raise InputFileError(f"{path}: the model has no unit cell (CRYST1 / _cell)")
    sg = space_group(st.spacegroup_hm, path)
    st.spacegroup_hm = sg.xhm()
    st.setup_cell_images()
    return st, sg


def model_amplitudes(path: str, d_min: float) -> Tuple[np.ndarray, np.ndarray, object, float]:
    """``(hkl (n, 3), |F| (n,), SpaceGroup, F000)``: the asymmetric unit out to ``d_min`` Angstrom.

    Includes (0, 0, 0) with F000.  Raises InputFileError naming the file
    (unreadable, no atoms, no cell, unknown space group) or for a
    non-positive ``d_min``.
    """
    import gemmi
    if not (d_min > 0 and math.isfinite(d_min)):
        raise InputFileError(f"{path}: resolution limit {d_min!r} A must be positive")
    st, sg = read_model(path)
    hkl = np.asarray(gemmi.make_miller_array(st.cell, sg, d_min, 0, True), dtype=np.int64).reshape(-1, 3)
    hkl = np.concatenate([np.zeros((1, 3), dtype=np.int64), hkl])
    calc = gemmi.StructureFactorCalculatorX(st.cell)
    model = st[0]
    F = np.abs(np.array([calc.calculate_sf_from_model(model, [int(h), int(k), int(l)])
                         for h, k, l in hkl], dtype=np.complex128))
    F[0] = cell_electrons(st, sg)
    return hkl, F, sg, float(F[0])


def cell_electrons(st, sg) -> float:
    """F000: the electrons in the unit cell, sum of occupancy * (Z - charge) over every symmetry copy.

    (The form factors' value at zero angle, which gemmi's calculation gives for
    (0, 0, 0), differs from Z by the fit's residual: 195.93 instead of 196 for
    four glycines and an iron.)
    """
    per_asu = sum(c.atom.occ * (c.atom.element.atomic_number - c.atom.charge) for c in st[0].all())
    return float(per_asu * len(sg.operations()))
