"""Keep freed memory in the process instead of returning it to the kernel (glibc only).

The engine allocates and frees the same few chunk-sized temporaries thousands of
times per image.  glibc serves large blocks with mmap and gives them back on
free (and trims the heap top), so every chunk pays page faults on fresh, zeroed
pages; on the 2-core benchmark machine that made the float32 B2 render 10-15x
slower than the arithmetic itself (benchmarks/README.md).  Raising glibc's
mmap and trim thresholds makes freed chunks reusable.  Peak memory is
unchanged (it is still set by the largest live chunk); the process simply keeps
what it has already touched.

Applied once, on the first render.  Set ``NB_KEEP_FREED_MEMORY=0`` to leave the
allocator alone (for example inside a larger application that tunes it itself).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 256 << 20      # blocks above 256 MiB still come from (and go back to) mmap
_TRIM_THRESHOLD = 1 << 30

_done = False


def keep_freed_memory() -> bool:
    """Tune glibc malloc as described above; True when it was applied (now or before)."""
    global _done
    if _done:
        return True
    if os.environ.get("NB_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):      # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    _done = ok
    return ok
