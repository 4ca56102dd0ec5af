"""The noise image's Poisson draws (the C program's generator) as a small C library.

``cnoise.c`` is a line-for-line twin of the numba kernels in :mod:`nanobragg_torch.rng`
(same roundings to float, built without fast-math or FMA contraction), loaded with ctypes
in milliseconds once it is built (on first use, into the per-user cache of
:mod:`.cbuild`).  It spares a render that writes a noise image the import of numba
(about a second of a short run).  Without a compiler :func:`load` returns None and
:mod:`nanobragg_torch.rng` uses numba, or plain Python.
"""
from __future__ import annotations

import ctypes
import os
import threading
from typing import Optional

import numpy as np

from . import cbuild

_SOURCES = ("cnoise.c",)
FLAGS = ("-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math")
ABI_VERSION = 1

_lock = threading.Lock()
_lib = None
_error: Optional[str] = None


def load():
    """The loaded library, or None (no compiler, a failed build, or NANOBRAGG_TORCH_NO_CNOISE set)."""
    global _lib, _error
    with _lock:
        if _lib is not None or _error is not None:
            return _lib
        if os.environ.get("NANOBRAGG_TORCH_NO_CNOISE"):
            _error = "disabled by NANOBRAGG_TORCH_NO_CNOISE"
            return None
        try:
            path, _ = cbuild.build_library("cnoise", _SOURCES, FLAGS, ABI_VERSION, "noise kernel")
            lib = ctypes.CDLL(str(path))
            if lib.nb_noise_abi() != ABI_VERSION:
                raise RuntimeError("cached noise kernel has another ABI version")
            p = ctypes.c_void_p
            i64 = ctypes.c_int64
            lib.nb_noise.argtypes = [p, i64, i64, i64, i64, i64, i64, ctypes.c_double, p, p, p, p, p]
            lib.nb_noise.restype = ctypes.c_double
            _lib = lib
        except (OSError, RuntimeError) as exc:
            _error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _lib


def noise(lib, img: np.ndarray, xmin: int, xmax: int, ymin: int, ymax: int, adc: float,
          ist: np.ndarray, fst: np.ndarray, seed: np.ndarray, out: np.ndarray):
    """rng._noise_k's contract: (photon sum, overloads); ``out`` and the state arrays updated."""
    assert img.dtype == np.float32 and img.flags.c_contiguous and out.dtype == np.uint16
    assert ist.dtype == np.int64 and fst.dtype == np.float64 and seed.dtype == np.int64
    over = np.zeros(1, dtype=np.int64)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)       # noqa: E731
    photons = lib.nb_noise(ptr(img), img.shape[0], img.shape[1], xmin, xmax, ymin, ymax, float(adc),
                           ptr(ist), ptr(fst), ptr(seed), ptr(out), ptr(over))
    return float(photons), int(over[0])
