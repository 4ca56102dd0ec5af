"""Multi-column numeric tables (source lists, structure factor vs. sin(theta)/lambda)."""
from __future__ import annotations

import numpy as np

from .text import C_TABLE_DELIMITERS, read_table


def read_columns(path: str, ncols: int, min_fields: int = 1, what: str = "table",
                 layout: str = "") -> np.ndarray:
    """Rows of up to ``ncols`` numbers; missing trailing values are NaN (the C program's
    read_text_file fills them with defaults).

    Values are separated by white space or any of ``,;:!`` as in the C program; blank and
    ``#`` lines are skipped; a field that is not a number, or a line with fewer than
    ``min_fields`` fields, is an :class:`~nanobragg_torch.io.errors.InputFileError` naming
    the file and line.  Fields beyond ``ncols`` are checked and dropped, as the C drops them.
    """
    return read_table(path, ncols, min_fields=min_fields, delimiters=C_TABLE_DELIMITERS,
                      what=what, layout=layout).values
