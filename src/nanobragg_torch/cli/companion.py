"""What the companion programs (``noisify``, ``nonBragg``) share with ``nanoBragg``'s command line.

The flag grammar is :mod:`nanobragg_torch.cli.flags`' (``Rule`` objects: the
C's ``strstr`` matching, value counts, strict checks of the documented
spellings); each program has its own rule list, built from the same pieces,
and this module applies a list to an argument vector.  ``run_main`` is the
programs' error policy: one line on stderr naming the flag or file, exit 2 for
bad input, 1 when an output cannot be written, 3 for an internal error.
"""
from __future__ import annotations

import math
import os
import sys
import traceback
import warnings
from typing import Callable, List, Optional, Sequence

import numpy as np

from .._thread import Background
from ..io.hkl import InputFileError
from .flags import FlagError, Rule, check_rules
from .resolve import SetupError

EXIT_USAGE, EXIT_IO, EXIT_INTERNAL = 2, 1, 3
USAGE_ERRORS = (FlagError, SetupError, InputFileError)


def check_argv(rules: Sequence[Rule], argv: List[str], positional: Callable[[str], bool] = lambda a: False):
    """Strict pass over ``argv``: unknown flags and malformed values of documented names."""
    check_rules(rules, {n: r for r in rules for n in r.names}, argv, positional)


def apply_rules(rules: Sequence[Rule], argv: List[str], flags) -> None:
    """The C's parse: every rule on every argument that starts with '-', in order."""
    argc = len(argv)
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            continue
        for rule in rules:
            if rule.match(arg) and argc > i + rule.need:
                if rule.action(flags, argv[i + 1:]):
                    break


def check_range(name: str, value: float, low: float, strict: bool = False, high: Optional[float] = None):
    """One-line error when a value given with ``name`` is out of range."""
    if not math.isfinite(value) or (value <= low if strict else value < low) or (high is not None and value > high):
        what = "positive" if strict else f"at least {low:g}"
        if high is not None:
            what += f" and at most {high:g}"
        raise FlagError(f"{name}: value must be {what}, got {value:g}")


def usage_lines(rules: Sequence[Rule]) -> List[str]:
    """One line per documented rule: its spellings, the kinds of values, the help text."""
    kind = {"f": "NUM", "i": "INT", "s": "FILE", "S": "WORD", "": ""}
    out = []
    for r in rules:
        if not r.names:
            continue
        vals = " ".join(kind.get(k, "VAL") for k in r.kinds) if r.kinds not in ("S",) else "WORD"
        out.append(f"  {' | '.join(r.names):34s} {vals:14s} {r.help}")
    return out


def run_main(prog: str, body: Callable[[List[str]], int], argv: Optional[List[str]] = None, *,
             usage_errors: tuple = USAGE_ERRORS, output_errors: tuple = (), interrupted: str = "interrupted",
             out_of_memory: Optional[Callable[[BaseException], Optional[str]]] = None) -> int:
    """Run ``body(argv)`` under the programs' error policy (nanoBragg's ``main`` too): one line on
    stderr and exit 2 for ``usage_errors``, 1 for ``output_errors`` (their message), other OSErrors
    (file: reason) and, where ``out_of_memory(e)`` gives a message, running out of memory; 130 when
    interrupted (``prog: interrupted``); a broken pipe re-raised (the console entry point exits
    quietly, 141); anything else 3, an internal error in one line (``NB_DEBUG=1``: the traceback)."""
    from .._console import is_broken_pipe
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("NB_DEBUG", "").strip() not in ("", "0")

    def error(msg):
        print(f"{prog}: error: {' '.join(str(msg).split())}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.simplefilter("ignore", RuntimeWarning)
            with np.errstate(all="ignore"):
                return body(argv)
    except usage_errors as e:
        error(e)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
    except output_errors as e:
        error(e)
        return EXIT_IO
    except OSError as e:
        if is_broken_pipe(e):       # the reader of stdout went away (| head): quiet, as in C
            raise
        name = f"{e.filename}: " if getattr(e, "filename", None) else ""
        error(f"{name}{e.strerror or e}")
        return EXIT_IO
    except Exception as e:  # noqa: BLE001 - the last resort: one line, never a traceback
        message = out_of_memory(e) if out_of_memory is not None else None
        if message:
            error(message)
            return EXIT_IO
        if debug:
            traceback.print_exc()
        first = " ".join((str(e).splitlines() or [""])[0].split())
        print(f"{prog}: internal error: {type(e).__name__}: {first} (set NB_DEBUG=1 to see the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


def write_all(writes) -> None:
    """Each (path, parts) written atomically; parts are bytes or C-contiguous arrays (native byte order)."""
    from ..io.atomic import atomic_open
    for path, parts in writes:
        with atomic_open(path, "wb") as fh:
            for part in parts:
                if isinstance(part, np.ndarray):
                    part = memoryview(np.ascontiguousarray(part, dtype=part.dtype.newbyteorder("="))).cast("B")
                fh.write(part)


class Writer(Background):
    """:func:`write_all` of ``job`` (a list of writes), or ``job()`` (a callable), on a thread:
    the images that are final, while the noise is drawn.  ``join()`` returns what ``job()``
    returned and re-raises what it raised."""

    def __init__(self, job):
        super().__init__(job if callable(job) else (lambda: write_all(job)), idle=True)
