"""Multi-column numeric text files (source lists, structure factor vs. sin(theta)/lambda)."""
from __future__ import annotations

import math
import re
from typing import List

import numpy as np

from ..cutil import c_atof
from .hkl import InputFileError

_DELIMS = re.compile(r"[ \t,;:!\r\n]+")


def read_columns(path: str, ncols: int) -> np.ndarray:
    """Rows of up to ``ncols`` numbers; missing trailing values are NaN.

    Values are separated by spaces, tabs or any of ``,;:!``; blank lines are
    skipped.  Tokens are read like C ``atof``.
    """
    try:
        with open(path, "r") as fh:
            lines = fh.readlines()
    except OSError as e:
        raise InputFileError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: not a text file") from None
    rows: List[List[float]] = []
    for line in lines:
        toks = [t for t in _DELIMS.split(line) if t]
        if not toks:
            continue
        vals = [c_atof(t) for t in toks[:ncols]]
        vals += [math.nan] * (ncols - len(vals))
        rows.append(vals)
    return np.array(rows, dtype=np.float64).reshape(-1, ncols)
