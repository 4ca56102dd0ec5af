"""MTZ reflection files (CCP4) through gemmi: one amplitude column, expanded to P1."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .hkl import InputFileError

__all__ = ["read_mtz_amplitudes", "DEFAULT_COLUMNS"]

#: amplitude columns tried, in this order, when no column is named (calculated before observed:
#: a simulation usually wants the model's F)
DEFAULT_COLUMNS = ("FC", "FCALC", "F-model", "FMODEL", "FC_ALL", "FP", "F", "FOBS", "F-obs", "FMEAN")


def read_mtz_amplitudes(path: str, column: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, object]:
    """``(hkl (n, 3), F (n,), gemmi SpaceGroup)`` from the amplitude column of an MTZ file.

    ``column`` names the column (``-mtz_column``); None picks the first of
    :data:`DEFAULT_COLUMNS` present, else the only amplitude (type F) column.
    Rows where F is missing (NaN) are dropped.  Raises InputFileError naming
    the file for an unreadable file, a missing column, a column that holds no
    amplitudes, or an unknown space group.
    """
    import gemmi
    try:
        mtz = gemmi.read_mtz_file(str(path))
    except (RuntimeError, ValueError, OSError) as e:
        raise InputFileError(f"{path}: not a readable MTZ file ({e})") from None
    amplitudes = [c.label for c in mtz.columns if c.type == "F"]
    if column is None:
        column = next((c for c in DEFAULT_COLUMNS if c in amplitudes), None)
        if column is None:
            if len(amplitudes) == 1:
                column = amplitudes[0]
            elif not amplitudes:
                raise InputFileError(f"{path}: no amplitude (type F) column in the MTZ file "
                                     f"(columns: {', '.join(c.label for c in mtz.columns)})")
            else:
                raise InputFileError(f"{path}: several amplitude columns ({', '.join(amplitudes)}); "
                                     f"choose one with -mtz_column")
    col = mtz.column_with_label(column)
    if col is None:
        raise InputFileError(f"{path}: no column {column!r} (-mtz_column) in the MTZ file "
                             f"(amplitude columns: {', '.join(amplitudes) or 'none'})")
    if col.type != "F":
        raise InputFileError(f"{path}: column {column!r} holds type {col.type!r} data, not amplitudes "
                             f"(type F; amplitude columns: {', '.join(amplitudes) or 'none'})")
    if mtz.spacegroup is None:
        raise InputFileError(f"{path}: unknown space group {mtz.spacegroup_name!r}")
    data = np.asarray(mtz.array)
    hkl = data[:, :3]
    F = np.asarray(col.array, dtype=np.float64)
    keep = np.isfinite(F)
    if not keep.any():
        raise InputFileError(f"{path}: column {column!r} has no values")
    return np.rint(hkl[keep]).astype(np.int64), F[keep], mtz.spacegroup
