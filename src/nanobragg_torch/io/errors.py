"""The error every reader raises for a file it cannot use."""
from __future__ import annotations


class InputFileError(ValueError):
    """A malformed or unreadable input file; the message names the file (and line)."""
