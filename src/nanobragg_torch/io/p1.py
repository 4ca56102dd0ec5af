"""Structure factors without symmetry, as the C program needs them: expand to P1, onto a grid.

The C program imposes no symmetry: every reflection it meets must be listed.
Files from processing and refinement programs hold an asymmetric unit with a
space group; :func:`expand_to_p1` applies the space group's rotations and adds
the Friedel mates (amplitudes only: |F(hR)| = |F(h)| = |F(-h)|), and
:func:`hkl_grid` builds the grid the engine reads (:class:`.hkl.HKLData`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .hkl import MAX_INDEX, HKLData, InputFileError

__all__ = ["expand_to_p1", "hkl_grid", "space_group"]


def space_group(name: str, source: str):
    """The gemmi space group named ``name`` (Hermann-Mauguin, Hall or number), else InputFileError."""
    import gemmi
    text = (name or "").strip()
    sg = None
    if text:
        try:
            sg = gemmi.find_spacegroup_by_number(int(text)) if text.isdigit() else \
                gemmi.find_spacegroup_by_name(text)
        except (ValueError, RuntimeError):
            sg = None
        if sg is None:
            try:
                sg = gemmi.find_spacegroup_by_ops(gemmi.symops_from_hall(text))
            except (ValueError, RuntimeError):
                sg = None
    if sg is None:
        raise InputFileError(f"{source}: unknown space group {text!r}" if text else
                             f"{source}: no space group given")
    return sg


def expand_to_p1(hkl: np.ndarray, F: np.ndarray, sg=None, friedel: bool = True):
    """All symmetry equivalents (and Friedel mates) of the reflections ``hkl`` (n, 3) with amplitudes F.

    ``sg`` is a gemmi SpaceGroup (None: P1).  Each reflection listed keeps its
    own value; an equivalent that the input does not list takes the value of
    the first listed reflection it comes from.  Returns ``(hkl (m, 3) int64,
    F (m,) float64)`` with unique indices.
    """
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    F = np.asarray(F, dtype=np.float64).reshape(-1)
    rots = [np.eye(3, dtype=np.int64)]
    if sg is not None:
        rots = []
        for op in sg.operations().sym_ops:
            r = np.array(op.rot, dtype=np.int64)
            if np.any(r % op.DEN):
                raise InputFileError(f"space group {sg.hm}: operator {op.triplet()} is not integral")
            rots.append(r // op.DEN)
    images = [hkl @ r for r in rots]
    if friedel:
        images += [-x for x in images]
    all_hkl = np.concatenate(images)
    all_F = np.tile(F, len(images))
    # the listed reflections first, so that they win; then np.unique keeps the first occurrence
    _, first = np.unique(all_hkl, axis=0, return_index=True)
    first.sort()
    return all_hkl[first], all_F[first]


def hkl_grid(hkl: np.ndarray, F: np.ndarray, default_F: float = 0.0, source: str = "structure factors",
             count: Optional[int] = None) -> HKLData:
    """The engine's grid for reflections ``hkl`` (n, 3) and amplitudes ``F`` (later rows win)."""
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    F = np.asarray(F, dtype=np.float64).reshape(-1)
    if hkl.shape[0] == 0:
        raise InputFileError(f"{source}: no reflections")
    if not np.all(np.isfinite(F)):
        raise InputFileError(f"{source}: structure factors must be finite")
    if np.abs(hkl).max() > MAX_INDEX:
        raise InputFileError(f"{source}: Miller index out of range (|index| <= {MAX_INDEX})")
    lo, hi = hkl.min(axis=0), hkl.max(axis=0)
    rng = hi - lo + 1
    if np.prod(rng.astype(np.float64)) > 2e9:
        raise InputFileError(f"{source}: index ranges {tuple(int(x) for x in rng)} are too large for a grid")
    grid = np.zeros(tuple(int(x) for x in rng + 1), dtype=np.float64)
    if default_F != 0.0:
        grid[:rng[0], :rng[1], :rng[2]] = default_F
    idx = hkl - lo
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = F
    return HKLData(grid=grid, hkl_min=tuple(int(x) for x in lo), hkl_max=tuple(int(x) for x in hi),
                   count=int(hkl.shape[0] if count is None else count))
