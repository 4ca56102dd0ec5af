"""The C generator's random images and noisify's pixel loops as a small C library (no torch).

``cnoise.c`` holds line-for-line twins of the numba kernels in :mod:`nanobragg_torch.rng`
and :mod:`nanobragg_torch.noisify_program` (same roundings to float, built without
fast-math or FMA contraction): nonBragg's Poisson noise image, noisify's flicker /
calibration / Poisson draws, its read-out noise and integer images, and its PSF (the
C's kernel from libm's ``erf``/``atan``, the per-pixel radius, the sums in the C's order;
rows on several threads).  It is built on first use into the per-user cache of
:mod:`.cbuild` and loaded with ctypes in milliseconds, so the command-line programs need
neither numba nor (for noisify) torch.  Without a compiler :func:`load` returns None and
the callers use numba, or plain Python (the same results, slower).

Importing this module imports neither torch nor numba.
"""
from __future__ import annotations

import ctypes
import os
from typing import Optional, Tuple

import numpy as np

from . import cbuild

_SOURCES = ("cnoise.c",)
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-pthread")
ABI_VERSION = 3


def threads() -> int:
    """CPU threads the kernels may use (the process's CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):     # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _declare(lib) -> None:
    p = ctypes.c_void_p
    i64 = ctypes.c_int64
    d = ctypes.c_double
    c_int = ctypes.c_int
    lib.nb_noise.argtypes = [p, i64, i64, i64, i64, i64, i64, d, p, p, p, p, p, c_int]
    lib.nb_noise.restype = d
    lib.nb_photon_noise.argtypes = [p, i64, d, d, p, p, p, p, p, c_int]
    lib.nb_photon_noise.restype = d
    lib.nb_photon_noise_psf.argtypes = [p, i64, i64, d, d, p, p, p, p, p, c_int, c_int, d, d, i64, i64, c_int, p, d,
                                        p, p]
    lib.nb_photon_noise_psf.restype = d
    lib.nb_adu_ints.argtypes = [p, c_int, i64, d, d, c_int, c_int, p, p, p]
    lib.nb_adu_ints.restype = i64
    lib.nb_readout.argtypes = [p, i64, d, d, d, c_int, p, p, p, p, p, p]
    lib.nb_readout.restype = d
    lib.nb_psf_kernel.argtypes = [c_int, d, d, i64, p]
    lib.nb_psf_kernel.restype = None
    lib.nb_psf.argtypes = [p, i64, i64, c_int, d, d, i64, i64, c_int, p, p, c_int]
    lib.nb_psf.restype = d
    lib.nb_lanes_check.argtypes = [c_int, i64, i64, p]
    lib.nb_lanes_check.restype = i64
    lib.nb_acc_eps.argtypes = [d]
    lib.nb_acc_eps.restype = d


LIBRARY = cbuild.Library("cnoise", _SOURCES, FLAGS, ABI_VERSION, "noise kernel", "NANOBRAGG_TORCH_NO_CNOISE",
                         "nb_noise_abi", _declare)


def load():
    """The loaded library, or None (no compiler, a failed build, or NANOBRAGG_TORCH_NO_CNOISE set)."""
    return LIBRARY.load()


def error() -> Optional[str]:
    """Why :func:`load` returned None (None when it did not, or was not called)."""
    return LIBRARY.error


def _reset_for_tests():
    """Forget the loaded library and any error (tests that simulate a missing compiler)."""
    LIBRARY.reset()


def _ptr(a: Optional[np.ndarray]):
    return None if a is None else a.ctypes.data_as(ctypes.c_void_p)


def _state(ist: np.ndarray, fst: np.ndarray, *seeds: np.ndarray):
    assert ist.dtype == np.int64 and ist.flags.c_contiguous
    assert fst.dtype == np.float64 and fst.flags.c_contiguous
    for s in seeds:
        assert s.dtype == np.int64 and s.flags.c_contiguous


def noise(lib, img: np.ndarray, xmin: int, xmax: int, ymin: int, ymax: int, adc: float,
          ist: np.ndarray, fst: np.ndarray, seed: np.ndarray, out: np.ndarray,
          nthreads: Optional[int] = None) -> Tuple[float, int]:
    """rng._noise_k's contract: (photon sum, overloads); ``out`` and the state arrays updated."""
    assert img.dtype == np.float32 and img.flags.c_contiguous and out.dtype == np.uint16
    _state(ist, fst, seed)
    over = np.zeros(1, dtype=np.int64)
    photons = lib.nb_noise(_ptr(img), img.shape[0], img.shape[1], xmin, xmax, ymin, ymax, float(adc),
                           _ptr(ist), _ptr(fst), _ptr(seed), _ptr(out), _ptr(over), nthreads or threads())
    if photons < 0:
        raise MemoryError("noise image: out of memory")
    return float(photons), int(over[0])


def photon_noise(lib, photons: np.ndarray, flicker: float, calibration: float, ist, fst, seed, cseed,
                 nthreads: Optional[int] = None) -> Tuple[np.ndarray, float]:
    """noisify's flicker, calibration and Poisson draws: (float32 counts, photon sum)."""
    assert photons.dtype == np.float32 and photons.flags.c_contiguous and photons.ndim == 1
    _state(ist, fst, seed, cseed)
    counts = np.empty(photons.shape[0], dtype=np.float32)
    total = lib.nb_photon_noise(_ptr(photons), photons.shape[0], float(flicker), float(calibration), _ptr(ist),
                                _ptr(fst), _ptr(seed), _ptr(cseed), _ptr(counts), nthreads or threads())
    if total < 0:
        raise MemoryError("noisify: out of memory")
    return counts, float(total)


def photon_noise_psf(lib, photons: np.ndarray, nx: int, ny: int, flicker: float, calibration: float, ist, fst,
                     seed, cseed, gauss: bool, fwhm: float, g: float, user_radius: int, radius: int, wrap: bool,
                     kernel: np.ndarray, tab_max: float, nthreads: Optional[int] = None):
    """:func:`photon_noise` and then :func:`psf` of the counts, the PSF made row by row on the
    producer thread while the counts are drawn: (counts, photon sum, blurred image, lost photons),
    the same as the two calls.  ``radius`` must be at least every count's radius (the kernel's
    size; a larger one gives the same image); ``tab_max`` a bound of the counts for the table of
    radii (-1: none)."""
    assert photons.dtype == np.float32 and photons.flags.c_contiguous and photons.shape == (nx * ny,)
    assert kernel.dtype == np.float64 and kernel.shape == ((2 * radius + 1) ** 2,)
    _state(ist, fst, seed, cseed)
    counts = np.empty(nx * ny, dtype=np.float32)
    out = np.empty(nx * ny, dtype=np.float32)
    lost = np.zeros(1, dtype=np.float64)
    total = lib.nb_photon_noise_psf(_ptr(photons), nx, ny, float(flicker), float(calibration), _ptr(ist), _ptr(fst),
                                    _ptr(seed), _ptr(cseed), _ptr(counts), nthreads or threads(), int(bool(gauss)),
                                    float(fwhm), float(g), int(user_radius), int(radius), int(bool(wrap)),
                                    _ptr(kernel), float(tab_max), _ptr(out), _ptr(lost))
    if total < 0:
        raise MemoryError("noisify: out of memory")
    return counts, float(total), out, float(lost[0])


def adu_ints(lib, values: np.ndarray, gain: float, adc: float, clip16: bool, bits: int, pgm: bool):
    """The C's integer images of gain * values + adc: (uint16 or None, uint32 or None, PGM or None, overloads).

    Only the image of ``bits`` is made (and the PGM when ``pgm``)."""
    assert values.dtype in (np.float32, np.float64) and values.flags.c_contiguous and values.ndim == 1
    n = values.shape[0]
    u16 = np.empty(n, np.uint16) if bits == 16 else None
    u32 = np.empty(n, np.uint32) if bits == 32 else None
    p8 = np.empty(n, np.uint8) if pgm else None
    over = lib.nb_adu_ints(_ptr(values), int(values.dtype == np.float64), n, float(gain), float(adc),
                           int(bool(clip16)), int(bits), _ptr(u16), _ptr(u32), _ptr(p8))
    return u16, u32, p8, int(over)


def readout(lib, counts: np.ndarray, gain: float, adc: float, readout_noise: float, bits: int,
            ist, fst, seed):
    """noisify's read-out loop and noisy integer image: (uint16 or uint32 image, photon sum, overloads)."""
    assert counts.dtype == np.float32 and counts.flags.c_contiguous and counts.ndim == 1
    _state(ist, fst, seed)
    n = counts.shape[0]
    u16 = np.empty(n, np.uint16) if bits == 16 else None
    u32 = np.empty(n, np.uint32) if bits == 32 else None
    over = np.zeros(1, dtype=np.int64)
    total = lib.nb_readout(_ptr(counts), n, float(gain), float(adc), float(readout_noise), int(bits), _ptr(ist),
                           _ptr(fst), _ptr(seed), _ptr(u16), _ptr(u32), _ptr(over))
    if total < 0:
        raise MemoryError("noisify: out of memory")
    return (u16 if bits == 16 else u32), float(total), int(over[0])


def lanes_check(lib, which: str, start: int, count: int) -> Tuple[int, dict]:
    """The kernel's fast functions against libm over a range (see nb_lanes_check in cnoise.c).

    ``which="tan"``: ran1's outputs of the LCG values [start, start + count); returns the number
    of draws whose tan(PI u) as float (or u) differs from libm's, and the largest errors.
    ``which="setup"``: poidev's set-up of the floats with bit patterns [start, start + count);
    returns the number that differ from the scalar set-up.  ``which="gammln"``: the float
    gammln of f32(x + 1) for those floats x in [12, 1e6] by Stirling's series (the set-up of
    means not known ahead) against gammln's.
    """
    stat = np.zeros(4, dtype=np.float64)
    code = {"tan": 0, "setup": 1, "gammln": 2}[which]
    bad = lib.nb_lanes_check(code, int(start), int(count), _ptr(stat))
    if bad < 0:
        raise ValueError(f"lanes_check: range [{start}, {start + count}) is out of bounds for {which!r}")
    keys = {0: ("tan_ulps", "libm_lanes", "c_error", "L_error"), 1: ("", "scalar_lanes", "", ""),
            2: ("series_error", "gammln_calls", "", "")}[code]
    return int(bad), {k: float(v) for k, v in zip(keys, stat) if k}


def acc_eps(lib, value: float = -1.0) -> float:
    """poidev's margin for deciding its acceptance test in logs; sets it when ``value >= 0``
    (``inf``: always the exact test) and returns the previous one.  For tests."""
    return float(lib.nb_acc_eps(float(value)))


def psf_kernel(lib, gauss: bool, fwhm: float, g: float, radius: int) -> np.ndarray:
    """The C's PSF kernel, (2r+1)^2 doubles (rows = slow), zero outside the disc."""
    K = 2 * int(radius) + 1
    k = np.empty(K * K, dtype=np.float64)
    lib.nb_psf_kernel(int(bool(gauss)), float(fwhm), float(g), int(radius), _ptr(k))
    return k


def psf(lib, img: np.ndarray, nx: int, ny: int, gauss: bool, fwhm: float, g: float, user_radius: int,
        radius: int, wrap: bool, kernel: np.ndarray, nthreads: Optional[int] = None) -> Tuple[np.ndarray, float]:
    """noisify's apply_psf (after the radius choice): (blurred float32 image + lost photons, lost total)."""
    assert img.dtype == np.float32 and img.flags.c_contiguous and img.shape == (nx * ny,)
    assert kernel.dtype == np.float64 and kernel.shape == ((2 * radius + 1) ** 2,)
    out = np.empty(nx * ny, dtype=np.float32)
    total = lib.nb_psf(_ptr(img), nx, ny, int(bool(gauss)), float(fwhm), float(g), int(user_radius), int(radius),
                       int(bool(wrap)), _ptr(kernel), _ptr(out), nthreads or threads())
    if total < 0:
        raise MemoryError("noisify PSF: out of memory")
    return out, float(total)
