"""Structure factors from any file users have: one entry point, dispatching by extension.

=====================  =========================================================
file                   read by
=====================  =========================================================
``*.mtz``              :func:`.mtz.read_mtz_amplitudes` (gemmi), expanded to P1
``*.cif``/``*.mmcif``  ``_refln`` loop: :func:`.mmcif.read_mmcif_amplitudes`;
(``*.ent``, ``*.pdb``) with ``model=True`` an atomic model: :func:`.model.model_amplitudes`
anything else          the ``h k l F`` text reader (:func:`.hkl.read_hkl`)
=====================  =========================================================

Every reader returns :class:`.hkl.HKLData`, the grid the engine reads;
:func:`read_reflections` returns the P1 list itself (what :func:`write_hkl`
writes).  gemmi is imported only when a gemmi format is read.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from .hkl import HKLData, InputFileError, read_hkl

__all__ = ["read_structure_factors", "read_reflections", "write_hkl", "structure_factor_kind",
           "GEMMI_EXTENSIONS"]

GEMMI_EXTENSIONS = (".mtz", ".cif", ".mmcif", ".ent", ".pdb")


def structure_factor_kind(path: str, model: bool = False) -> str:
    """``mtz``, ``mmcif`` (structure factors), ``model`` or ``text``, from the extension."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if model:
        return "model"
    if ext == ".mtz":
        return "mtz"
    if ext in (".cif", ".mmcif"):
        return "mmcif"
    return "text"


def _need_gemmi(path: str) -> None:
    import importlib.util
    if importlib.util.find_spec("gemmi") is None:
        raise InputFileError(f"{path}: reading MTZ, mmCIF and model files needs the 'gemmi' package "
                             f"(pip install 'nanobragg-torch[formats]')")


def read_reflections(path: str, column: Optional[str] = None, model: bool = False,
                     d_min: float = 2.0) -> Tuple[np.ndarray, np.ndarray]:
    """The P1 reflection list ``(hkl (n, 3) int64, F (n,) float64)`` a file gives.

    MTZ and mmCIF: the amplitude column ``column`` (None: a default, see
    :mod:`.mtz`/:mod:`.mmcif`), expanded with the file's space group and
    Friedel mates.  ``model=True``: F computed from the atomic model out to
    ``d_min`` Angstrom (F000 included), expanded likewise.  Text ``h k l F``
    files are returned as they are (no symmetry is applied: the C's rule).
    Raises InputFileError with a one-line message naming the file.
    """
    from .p1 import expand_to_p1
    path = os.fspath(path)
    kind = structure_factor_kind(path, model)
    if not os.path.exists(path):
        raise InputFileError(f"{path}: no such file")
    if kind == "text":
        read_hkl(path)                      # the C reader's checks, with its messages
        rows = np.loadtxt(path, dtype=np.float64, comments="#", ndmin=2)
        return np.rint(rows[:, :3]).astype(np.int64), rows[:, 3].copy()
    _need_gemmi(path)
    if kind == "mtz":
        from .mtz import read_mtz_amplitudes
        hkl, F, sg = read_mtz_amplitudes(path, column)
    elif kind == "mmcif":
        from .mmcif import is_structure_factor_cif, read_mmcif_amplitudes
        if not is_structure_factor_cif(path):
            raise InputFileError(f"{path}: no _refln loop (not a structure-factor file; "
                                 f"an atomic model goes to -pdb)")
        hkl, F, sg = read_mmcif_amplitudes(path, column)
    else:
        from .model import model_amplitudes
        hkl, F, sg, _ = model_amplitudes(path, d_min)
    return expand_to_p1(hkl, F, sg)


def read_structure_factors(path: str, default_F: float = 0.0, column: Optional[str] = None,
                           model: bool = False, d_min: float = 2.0) -> HKLData:
    """The structure-factor grid (:class:`.hkl.HKLData`) from a text, MTZ, mmCIF or model file.

    Cells no reflection fills hold ``default_F``.  A text file is read
    exactly as the C program reads it (:func:`.hkl.read_hkl`).
    """
    from .p1 import hkl_grid
    if structure_factor_kind(path, model) == "text":
        return read_hkl(os.fspath(path), default_F)
    hkl, F = read_reflections(path, column, model, d_min)
    return hkl_grid(hkl, F, default_F, source=os.fspath(path))


def write_hkl(path: str, hkl, F) -> None:
    """Write ``h k l F`` text (one reflection a line), atomically; F round-trips exactly."""
    from .atomic import atomic_write_bytes
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    F = np.asarray(F, dtype=np.float64).reshape(-1)
    if hkl.shape[0] != F.shape[0]:
        raise ValueError(f"{hkl.shape[0]} indices but {F.shape[0]} amplitudes")
    order = np.lexsort((hkl[:, 2], hkl[:, 1], hkl[:, 0]))
    lines = ["%d %d %d %r\n" % (h, k, l, float(f)) for (h, k, l), f in zip(hkl[order], F[order])]
    atomic_write_bytes(os.fspath(path), "".join(lines).encode("ascii"))
