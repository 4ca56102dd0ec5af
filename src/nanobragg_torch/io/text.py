"""Numeric text tables (HKL lists, source files, stol tables, matrices), read strictly and fast.

The rules every text input of the project follows:

* blank lines, and lines whose first non-blank character is ``#``, are skipped;
* every field must be a whole number as C's ``atof`` reads one (decimal, exponent,
  hexadecimal, ``inf``, ``nan``); a field that is not is an :class:`InputFileError`
  ``FILE:LINE: field N 'TEXT' is not a number``;
* a line with fewer fields than the format needs (or more, where the format says so)
  is an error naming the file, the line and the count.

A file of plain numbers (``[+-]digits[.digits][e[+-]digits]``, ``strtod``'s values, which
are ``atof``'s) is read by the C fast path of :mod:`nanobragg_torch.backends.cio` in one
pass.  Otherwise (or without a compiler) the common case -- plain decimal numbers of at
most 15 digits -- is parsed with whole-array numpy operations (a 279,000-line HKL file in a fraction of a second); the
value of such a token is its digits as an exact integer divided by an exact power of
ten, which is the correctly rounded value that ``atof`` returns.  Any other token
goes through :func:`~nanobragg_torch.cutil.c_atof` one at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..cutil import c_atof, is_number
from .errors import InputFileError

WHITESPACE = b" \t\n\v\f\r"
# the separators of the C program's read_text_file (sources, stol tables), besides white space
C_TABLE_DELIMITERS = b",;:!"

_POW10 = 10.0 ** np.arange(23)          # exact in float64 up to 10^22
_MAX_FAST_DIGITS = 15                    # digit strings below 2^53: exact integers in float64
_MAX_FAST_BYTES = 24


@dataclass
class Table:
    """The numeric lines of a text file."""
    values: np.ndarray       # (rows, ncols) float64; NaN where a line has fewer than ncols fields
    lines: np.ndarray        # (rows,) the 1-based line number of each row
    nfields: np.ndarray      # (rows,) how many fields each line has


def read_bytes(path: str, what: str) -> bytes:
    """The file's bytes; an unreadable or binary file is an :class:`InputFileError`."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise InputFileError(f"{path}: cannot read {what} ({e.strerror})") from None
    if b"\x00" in raw:
        raise InputFileError(f"{path}: not a text {what}")
    return raw


def data_lines(path: str, what: str):
    """(line number, fields) of every line that is neither blank nor a comment (small files)."""
    text = read_bytes(path, what).decode("latin-1")
    for no, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            yield no, fields


def number(path: str, no: int, col: int, token: str) -> float:
    """``atof`` of one field that must be a number (``col`` counts from 0)."""
    if not is_number(token):
        raise InputFileError(f"{path}:{no}: field {col + 1} {token!r} is not a number")
    return c_atof(token)


def read_table(path: str, ncols: int, *, min_fields: int, max_fields: Optional[int] = None,
               delimiters: bytes = b"", what: str = "file", layout: str = "") -> Table:
    """Read the numeric lines of ``path`` (see the module's rules).

    ``ncols``: columns kept (fields beyond them are checked but dropped, as the C drops
    them); ``min_fields``/``max_fields``: the field counts a line may have; ``delimiters``:
    separators besides white space; ``what``/``layout`` name the file kind and its fields
    in messages (``"HKL file"``, ``"h k l F"``).
    """
    raw = read_bytes(path, what)
    if not raw.endswith(b"\n"):
        raw += b"\n"
    sep = np.zeros(256, dtype=bool)
    sep[list(WHITESPACE + delimiters)] = True
    from ..backends import cio
    fast = cio.parse_table(raw, sep, ncols, min_fields, max_fields)
    if fast is not None:            # every token a plain number, every line's count in range
        values, lines, nfields = fast
        return Table(values=values, lines=lines, nfields=nfields)
    b = np.frombuffer(raw, dtype=np.uint8)
    nonsep = ~sep[b]                                               # (bytes,)
    newline = b == 10
    newlines = np.flatnonzero(newline)
    nlines = int(newlines.size)

    # comment lines: the first non-separator byte of the line is '#'
    if b"#" in raw:
        line_of = np.cumsum(newline) - newline                     # 0-based line of every byte
        pos = np.flatnonzero(nonsep)
        lines_at = line_of[pos]
        first = np.ones(pos.size, dtype=bool)
        first[1:] = lines_at[1:] != lines_at[:-1]
        comment = np.zeros(nlines, dtype=bool)
        comment[lines_at[first][b[pos[first]] == 35]] = True
        nonsep &= ~comment[line_of]

    # tokens
    start = nonsep.copy()
    start[1:] &= ~nonsep[:-1]
    end = nonsep.copy()
    end[:-1] &= ~nonsep[1:]
    starts = np.flatnonzero(start)
    ends = np.flatnonzero(end) + 1
    ntok = starts.size
    tok_line = np.searchsorted(newlines, starts)                   # newlines before a token: its line
    counts = np.bincount(tok_line, minlength=nlines)               # fields of every line
    first_tok = np.cumsum(counts) - counts
    rank = np.arange(ntok) - first_tok[tok_line]                    # field index within its line

    # field counts: the first line with too few (or too many) fields
    rows_at = np.flatnonzero(counts > 0)
    bad = (counts[rows_at] < min_fields)
    if max_fields is not None:
        bad |= counts[rows_at] > max_fields
    bad_line = int(rows_at[int(np.argmax(bad))]) if bad.any() else None

    # a field that is not a number on an earlier line is reported first
    values = _parse_tokens(raw, b, starts, ends, path, tok_line, rank, bad_line)
    if bad_line is not None:
        n = int(counts[bad_line])
        if max_fields == min_fields:
            need = f"{min_fields} fields"
        elif max_fields is None:
            need = f"at least {min_fields} field{'s' if min_fields != 1 else ''}"
        else:
            need = f"{min_fields} to {max_fields} fields"
        desc = f" ({layout})" if layout else ""
        raise InputFileError(f"{path}:{bad_line + 1}: expected {need}{desc}, found {n}")

    row_of_line = np.full(nlines, -1, dtype=np.int64)
    row_of_line[rows_at] = np.arange(rows_at.size)
    out = np.full((rows_at.size, ncols), np.nan)
    keep = rank < ncols
    out[row_of_line[tok_line[keep]], rank[keep]] = values[keep]
    return Table(values=out, lines=rows_at + 1, nfields=counts[rows_at])


def _parse_tokens(raw, b, starts, ends, path, tok_line, rank, stop_line=None) -> np.ndarray:
    """Values of every token: plain decimals vectorised, anything else through ``c_atof``
    (tokens on lines after ``stop_line`` are not looked at).

    A plain decimal is ``[+-]digits[.digits]`` with at most 15 digits: its digits are
    accumulated column by column (Horner's rule over the tokens' j-th bytes, exact integers
    in float64) and divided by the exact power of ten of its fraction digits.
    """
    ntok = starts.size
    if ntok == 0:
        return np.zeros(0)
    length = (ends - starts).astype(np.int32)
    width = int(min(length.max(), _MAX_FAST_BYTES))
    padded = np.concatenate([b, np.zeros(width, dtype=np.uint8)])
    at = starts.astype(np.int64)
    mant = np.zeros(ntok)
    frac = np.zeros(ntok, dtype=np.int32)
    ndig = np.zeros(ntok, dtype=np.int32)
    seen_dot = np.zeros(ntok, dtype=bool)
    odd = length > width
    neg = np.zeros(ntok, dtype=bool)
    for j in range(width):
        c = padded[at + j]
        inside = j < length
        d = c - np.uint8(48)                                       # wraps above 9 for non-digits
        digit = (d < 10) & inside
        mant = np.where(digit, mant * 10.0 + d, mant)
        frac += digit & seen_dot
        ndig += digit
        dot = (c == 46) & inside
        odd |= dot & seen_dot
        seen_dot |= dot
        if j == 0:
            neg = c == 45
            odd |= ~(digit | dot | neg | (c == 43))
        else:
            odd |= inside & ~(digit | dot)
    fast = ~odd & (ndig >= 1) & (ndig <= _MAX_FAST_DIGITS)
    values = mant / _POW10[frac]
    values[neg] = -values[neg]

    for k in np.flatnonzero(~fast):                                 # hex, exponents, inf, words, ...
        if stop_line is not None and tok_line[k] > stop_line:
            break
        token = raw[starts[k]:ends[k]].decode("latin-1")
        values[k] = number(path, int(tok_line[k]) + 1, int(rank[k]), token)
    return values
