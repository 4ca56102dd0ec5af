"""Small helpers that reproduce the C library's number parsing (``atof``/``atoi``).

The reference program reads every flag value with ``atof`` or ``atoi``: the
longest numeric prefix is used and anything else reads as zero.  The drop-in
command line has to read values the same way (an argument such as
``-misset_seed 12345 -floatfile out.bin`` makes the C program read
``atof("-floatfile") == 0``), so these helpers are used wherever a value is
taken "the C way".  Strict validation of user input lives in the CLI.
"""
from __future__ import annotations

import math
import re

_FLOAT_RE = re.compile(
    r"""^[ \t\n\v\f\r]*(
        [+-]?(?:
            0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?
          | (?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?
          | inf(?:inity)?
          | nan(?:\([0-9A-Za-z_]*\))?
        )
    )""",
    re.VERBOSE | re.IGNORECASE,
)
_INT_RE = re.compile(r"^[ \t\n\v\f\r]*([+-]?[0-9]+)")


def c_atof(text: str) -> float:
    """Value of ``atof(text)``: the longest floating-point prefix, else 0.0."""
    m = _FLOAT_RE.match(text)
    if not m:
        return 0.0
    s = m.group(1)
    low = s.lower().lstrip("+-")
    if low.startswith("0x"):
        sign = -1.0 if s.startswith("-") else 1.0
        return sign * float.fromhex(low)
    if low.startswith("nan"):
        return math.nan
    if low.startswith("inf"):
        return -math.inf if s.startswith("-") else math.inf
    try:
        return float(s)
    except ValueError:  # pragma: no cover - regex guarantees a float literal
        return 0.0


def c_atoi(text: str) -> int:
    """Value of ``atoi(text)`` (the longest integer prefix, else 0), wrapped to a C int."""
    m = _INT_RE.match(text)
    if not m:
        return 0
    v = int(m.group(1))
    # atoi is undefined on overflow; glibc returns the low 32 bits of strtol
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def is_number(text: str) -> bool:
    """True when the whole of ``text`` is a number (what a careful user meant to give)."""
    m = _FLOAT_RE.match(text)
    return bool(m) and m.end() == len(text) and text.strip() != ""


def is_integer(text: str) -> bool:
    return bool(re.fullmatch(r"[ \t]*[+-]?[0-9]+[ \t]*", text))


def cfmt(fmt: str, *values) -> str:
    """printf-style formatting; Python's ``%`` operator follows C for %g/%f/%d."""
    return fmt.replace("%lg", "%g").replace("%lu", "%d").replace("%ld", "%d") % values
