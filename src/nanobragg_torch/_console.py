"""Console-script entry points: quiet in pipes (``nanoBragg ... | head`` ends without a traceback).

When the reader of standard output goes away, a write raises BrokenPipeError
(Python ignores SIGPIPE).  The entry points below catch it wherever it happens,
point standard output at /dev/null so that the interpreter's final flush stays
silent, and exit with status 141 (128 + SIGPIPE), as a C program killed by
SIGPIPE does.  SIGPIPE itself is left ignored: the Dask scheduler's sockets
rely on that.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Callable

EXIT_BROKEN_PIPE = 141


def is_broken_pipe(e: BaseException) -> bool:
    return isinstance(e, BrokenPipeError) or (isinstance(e, OSError) and e.errno == errno.EPIPE)


def silence_stdout() -> int:
    """Send further output to /dev/null; returns the exit status for a broken pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    return EXIT_BROKEN_PIPE


def run_console(main: Callable[[], int], fast_exit: bool = False) -> None:
    """``sys.exit(main())``, quiet on a broken pipe.

    ``fast_exit``: leave with ``os._exit`` once the standard streams are flushed, skipping
    the interpreter's teardown (with torch loaded it takes 0.5-1 s on a 2-core machine:
    freeing every module); for programs whose outputs are closed files by then."""
    try:
        rc = main()
        sys.stdout.flush()
    except BrokenPipeError:
        rc = silence_stdout()
    except OSError as e:
        if not is_broken_pipe(e):
            raise
        rc = silence_stdout()
    if fast_exit:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(rc if isinstance(rc, int) else (0 if rc is None else 1))
    sys.exit(rc)


def nanoBragg() -> None:
    from .cli.main import main
    run_console(main, fast_exit=True)      # every file is written and closed when main returns


def nb_compare() -> None:
    from .tools.nb_compare import main
    run_console(main)


def compare_traces() -> None:
    from .tools.compare_traces import main
    run_console(main)


def nanobragg_dataset() -> None:
    from .dataset.cli import main
    run_console(main)


def noisify() -> None:
    from .cli.noisify_main import main
    run_console(main, fast_exit=True)


def nonBragg() -> None:
    from .cli.nonbragg_main import main
    run_console(main, fast_exit=True)


def nb_p1hkl() -> None:
    from .tools.p1hkl import main
    run_console(main)


def nb_mosflm_matrix() -> None:
    from .tools.mosflm_matrix import main
    run_console(main)
