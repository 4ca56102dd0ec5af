"""nonBragg's render and image outputs as a small C library (``camorphous.c``), loaded with ctypes.

The twin of the numba kernels in :mod:`nanobragg_torch.physics.amorphous_kernel` (the same
double arithmetic per pixel, rows on several threads), built once per machine into the
per-user cache of :mod:`.cbuild` and loaded in milliseconds: the command line renders
without importing numba.  Without a compiler :func:`load` returns None (with the reason in
:func:`error`) and the numba kernel, or the torch reference, renders instead.  Forward
only; the torch path (:func:`nanobragg_torch.models.amorphous.amorphous_image`,
``backend="torch"``) stays the reference and the gradient path.
"""
from __future__ import annotations

import ctypes
from typing import Optional

import numpy as np

from . import cbuild
from .cnoise import threads

_SOURCES = ("camorphous.c",)
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno",
         "-pthread")
ABI_VERSION = 1

_D3 = ctypes.c_double * 3


class _Params(ctypes.Structure):
    """Mirror of ``nb_amorphous_params`` in camorphous.c (same order, same C types)."""
    _fields_ = [
        ("S", ctypes.c_int64), ("F", ctypes.c_int64), ("O", ctypes.c_int64), ("nsrc", ctypes.c_int64),
        ("nk", ctypes.c_int64),
        ("curved", ctypes.c_int32), ("point_pixel", ctypes.c_int32), ("nopolar", ctypes.c_int32),
        ("fmap", ctypes.c_int32),
        ("roi", ctypes.c_int64 * 4),
        ("pix0", _D3), ("fdet", _D3), ("sdet", _D3), ("beam", _D3),
        ("distance", ctypes.c_double), ("close", ctypes.c_double), ("px", ctypes.c_double),
        ("kahn", ctypes.c_double), ("scale", ctypes.c_double),
        ("pol_axis", _D3),
        ("inc", ctypes.c_void_p), ("lam", ctypes.c_void_p), ("w", ctypes.c_void_p), ("knots", ctypes.c_void_p),
        ("coef", ctypes.c_void_p), ("org", ctypes.c_void_p), ("out", ctypes.c_void_p),
    ]


def _declare(lib) -> None:
    lib.nb_amorphous_render.argtypes = [ctypes.POINTER(_Params), ctypes.c_int]
    lib.nb_amorphous_render.restype = ctypes.c_int
    i64, d, p = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
    lib.nb_amorphous_outputs.argtypes = [p, i64, i64, i64, i64, i64, i64, d, d, d, p, p, p]
    lib.nb_amorphous_outputs.restype = None


LIBRARY = cbuild.Library("camorphous", _SOURCES, FLAGS, ABI_VERSION, "amorphous-scattering kernel",
                         "NANOBRAGG_TORCH_NO_CAMORPHOUS", "nb_amorphous_abi", _declare)


def load():
    """The loaded library, or None (no compiler, a failed build, or NANOBRAGG_TORCH_NO_CAMORPHOUS set)."""
    return LIBRARY.load()


def error() -> Optional[str]:
    """Why :func:`load` returned None (None when it did not, or was not called)."""
    return LIBRARY.error


def _reset_for_tests():
    LIBRARY.reset()


def _f64(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64))


def render(lib, S, F, O, geo, px, curved, point_pixel, inc, lam_A, w, kahn, pol_axis, nopolar, table,
           scale, roi, fmap, nthreads: Optional[int] = None) -> np.ndarray:
    """amorphous_kernel.render's contract: float32 image (S, F); vector inputs as numpy float64."""
    out = np.empty((int(S), int(F)), dtype=np.float32)
    inc, lam, w = _f64(inc).reshape(-1, 3), _f64(lam_A).reshape(-1), _f64(w).reshape(-1)
    knots, coef, org = _f64(table.stol), _f64(table.coefficients), _f64(table.origins)
    assert coef.shape == (knots.shape[0] + 1, 4) and org.shape == (knots.shape[0] + 1,)
    assert lam.shape[0] == inc.shape[0] == w.shape[0]
    prm = _Params()
    prm.S, prm.F, prm.O, prm.nsrc, prm.nk = int(S), int(F), int(O), inc.shape[0], knots.shape[0]
    prm.curved, prm.point_pixel, prm.nopolar, prm.fmap = (int(bool(curved)), int(bool(point_pixel)),
                                                          int(bool(nopolar)), int(bool(fmap)))
    prm.roi[:] = [int(v) for v in roi]
    for name in ("pix0", "fdet", "sdet", "beam"):
        getattr(prm, name)[:] = [float(v) for v in _f64(geo[name]).reshape(3)]
    prm.distance, prm.close, prm.px = float(geo["distance"]), float(geo["close"]), float(px)
    prm.kahn, prm.scale = float(kahn), float(scale)
    prm.pol_axis[:] = [float(v) for v in _f64(pol_axis).reshape(3)]
    keep = (inc, lam, w, knots, coef, org)          # noqa: F841 - alive during the call
    prm.inc, prm.lam, prm.w = inc.ctypes.data, lam.ctypes.data, w.ctypes.data
    prm.knots, prm.coef, prm.org = knots.ctypes.data, coef.ctypes.data, org.ctypes.data
    prm.out = out.ctypes.data
    lib.nb_amorphous_render(ctypes.byref(prm), int(nthreads or threads()))
    return out


def outputs(lib, img: np.ndarray, x0: int, x1: int, y0: int, y1: int, intfile_scale: float, adc: float,
            pgm_scale: float):
    """amorphous_kernel.image_outputs' contract on a clipped ROI."""
    img = np.ascontiguousarray(img, dtype=np.float32)
    S, F = img.shape
    intimg = np.zeros((S, F), np.uint16)
    pgm = np.zeros((S, F), np.uint8)
    stats = np.zeros(6)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)      # noqa: E731
    lib.nb_amorphous_outputs(ptr(img), S, F, x0, x1, y0, y1, float(intfile_scale), float(adc), float(pgm_scale),
                             ptr(intimg), ptr(pgm), ptr(stats))
    return (*(float(v) for v in stats), intimg, pgm)
