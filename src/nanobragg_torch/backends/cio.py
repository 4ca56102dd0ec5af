"""Fast paths of the text readers and the image writers: a small C library (``cio.c``).

Loaded with ctypes (built once per machine into the cache of :mod:`.cbuild`, like the
noise kernel); every function has a numpy twin that stays the reference and takes over
when the library cannot be built (no compiler; ``NANOBRAGG_TORCH_NO_CIO`` set) or an
input leaves the simple case (see ``cio.c``).  ctypes releases the GIL during a call.
"""
from __future__ import annotations

import ctypes
import os
import threading
from typing import Optional, Tuple

import numpy as np

from . import cbuild

_SOURCES = ("cio.c",)
FLAGS = ("-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math")
ABI_VERSION = 1

_lock = threading.Lock()
_lib = None
_error: Optional[str] = None


def load():
    """The loaded library, or None (no compiler, a failed build, or NANOBRAGG_TORCH_NO_CIO set)."""
    global _lib, _error
    with _lock:
        if _lib is not None or _error is not None:
            return _lib
        if os.environ.get("NANOBRAGG_TORCH_NO_CIO"):
            _error = "disabled by NANOBRAGG_TORCH_NO_CIO"
            return None
        try:
            path, _ = cbuild.build_library("cio", _SOURCES, FLAGS, ABI_VERSION, "reader/writer fast paths")
            lib = ctypes.CDLL(str(path))
            if lib.nb_cio_abi() != ABI_VERSION:
                raise RuntimeError("cached reader/writer library has another ABI version")
            p, i64, i32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_double
            lib.nb_parse_table.argtypes = [p, i64, p, i32, i32, i32, p, p, p, i64]
            lib.nb_parse_table.restype = i64
            lib.nb_image_stats.argtypes = [p, i64, p]
            lib.nb_image_stats.restype = i64
            lib.nb_int_image.argtypes = [p, i64, i64, i64, i64, i64, i64, f64, f64, p]
            lib.nb_int_image.restype = None
            lib.nb_pgm_image.argtypes = [p, i64, i64, i64, i64, i64, i64, f64, p]
            lib.nb_pgm_image.restype = None
            _lib = lib
        except (OSError, RuntimeError) as exc:
            _error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _lib


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.c_void_p)


def parse_table(raw: bytes, sep: np.ndarray, ncols: int, min_fields: int, max_fields: Optional[int]):
    """(values, lines, nfields) of a text table (``raw`` ends with a newline), or None when
    the library is missing or the file needs the exact reader (a token that is not a plain
    number, a field count out of range: the caller's path words the error)."""
    lib = load()
    if lib is None:
        return None
    buf = np.frombuffer(raw, dtype=np.uint8)
    maxrows = raw.count(b"\n") + 1
    values = np.empty((maxrows, ncols))
    lines = np.empty(maxrows, dtype=np.int64)
    nfields = np.empty(maxrows, dtype=np.int32)
    mask = np.ascontiguousarray(sep, dtype=np.uint8)
    rows = lib.nb_parse_table(_ptr(buf), buf.size, _ptr(mask), ncols, min_fields,
                              -1 if max_fields is None else max_fields,
                              _ptr(values), _ptr(lines), _ptr(nfields), maxrows)
    if rows < 0:
        return None
    return values[:rows], lines[:rows], nfields[:rows].astype(np.int64)


def image_stats(img: np.ndarray) -> Optional[Tuple[float, Optional[int], float, float, float]]:
    """(max_I, flat index or None, mean, rms, rmsd) of a whole float32 image, summed in
    raster order; None without the library or when a pixel is not finite."""
    lib = load()
    if lib is None or img.dtype != np.float32 or not img.flags.c_contiguous:
        return None
    out = np.zeros(5)
    if lib.nb_image_stats(_ptr(img), img.size, _ptr(out)) < 0:
        return None
    imax = int(out[1])
    return float(out[0]), (None if imax < 0 else imax), float(out[2]), float(out[3]), float(out[4])


def int_image(img: np.ndarray, rows: slice, cols: slice, scale: float, adc: float) -> Optional[np.ndarray]:
    """io.smv.int_image's pixels for a float32 image and a computed scale, or None."""
    lib = load()
    if lib is None or img.dtype != np.float32 or not img.flags.c_contiguous or img.ndim != 2:
        return None
    out = np.zeros(img.shape, dtype=np.uint16)
    S, F = img.shape
    lib.nb_int_image(_ptr(img), S, F, rows.start, rows.stop, cols.start, cols.stop, float(scale), float(adc),
                     _ptr(out))
    return out


def pgm_image(img: np.ndarray, rows: slice, cols: slice, scale: float) -> Optional[np.ndarray]:
    """io.pgm.pgm_image's pixels for a float32 image and a computed scale, or None."""
    lib = load()
    if lib is None or img.dtype != np.float32 or not img.flags.c_contiguous or img.ndim != 2:
        return None
    out = np.zeros(img.shape, dtype=np.uint8)
    S, F = img.shape
    lib.nb_pgm_image(_ptr(img), S, F, rows.start, rows.stop, cols.start, cols.stop, float(scale), _ptr(out))
    return out
