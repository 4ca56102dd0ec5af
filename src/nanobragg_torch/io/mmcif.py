"""mmCIF structure-factor files (``_refln`` loops, as the PDB distributes them) through gemmi."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .hkl import InputFileError

__all__ = ["read_mmcif_amplitudes", "DEFAULT_TAGS", "is_structure_factor_cif"]

#: ``_refln`` amplitude items tried, in this order, when none is named
DEFAULT_TAGS = ("F_calc", "F_calc_au", "F_meas_au", "F_meas", "pdbx_F_plus", "F_squared_meas")


def is_structure_factor_cif(path: str) -> bool:
    """True when the CIF file has a ``_refln`` loop (rather than an atomic model)."""
    import gemmi
    try:
        doc = gemmi.cif.read(str(path))
    except (RuntimeError, ValueError):
        return False
    return any(block.find_mmcif_category("_refln.") for block in doc)


def read_mmcif_amplitudes(path: str, tag: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, object]:
    """``(hkl (n, 3), F (n,), gemmi SpaceGroup)`` from the first ``_refln`` block of an mmCIF file.

    ``tag`` names the item without ``_refln.`` (``-mtz_column``); None picks
    the first of :data:`DEFAULT_TAGS` present (``F_squared_meas`` is
    converted to amplitudes, negative intensities to 0).  Raises
    InputFileError naming the file for an unreadable file, no ``_refln``
    loop, no amplitudes, or an unknown space group.
    """
    import gemmi
    from .p1 import space_group
    try:
        doc = gemmi.cif.read(str(path))
    except (RuntimeError, ValueError) as e:
        raise InputFileError(f"{path}: not a readable CIF file ({str(e).splitlines()[0]})") from None
    blocks = gemmi.as_refln_blocks(doc)
    blocks = [b for b in blocks if b.default_loop is not None]
    if not blocks:
        raise InputFileError(f"{path}: no _refln loop (not a structure-factor file)")
    rb = blocks[0]
    names = [t[len("_refln."):] for t in rb.default_loop.tags if t.startswith("_refln.")]
    for need in ("index_h", "index_k", "index_l"):
        if need not in names:
            raise InputFileError(f"{path}: the _refln loop has no {need}")
    amps = [t for t in DEFAULT_TAGS if t in names]
    if tag is None:
        if not amps:
            raise InputFileError(f"{path}: no amplitudes in the _refln loop (looked for "
                                 f"{', '.join('_refln.' + t for t in DEFAULT_TAGS)})")
        tag = amps[0]
    elif tag.startswith("_refln."):
        tag = tag[len("_refln."):]
    if tag not in names:
        raise InputFileError(f"{path}: no item _refln.{tag} (-mtz_column) in the _refln loop "
                             f"(amplitude items: {', '.join(amps) or 'none'})")
    hkl = np.asarray(rb.make_miller_array(), dtype=np.int64)
    F = np.asarray(rb.make_float_array(tag), dtype=np.float64)
    if tag == "F_squared_meas":
        F = np.sqrt(np.clip(F, 0.0, None))
    keep = np.isfinite(F)
    if not keep.any():
        raise InputFileError(f"{path}: _refln.{tag} has no values")
    name = rb.block.find_value("_symmetry.space_group_name_H-M") or \
        rb.block.find_value("_space_group.name_H-M_alt")
    if rb.spacegroup is not None:
        sg = rb.spacegroup
    else:
        sg = space_group(gemmi.cif.as_string(name) if name else "", path)
    return hkl[keep], F[keep], sg
