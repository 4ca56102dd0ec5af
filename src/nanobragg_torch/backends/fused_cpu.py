"""The fused forward CPU kernel: one C function over pixels x subpaths, loaded with ctypes.

``fused_cpu.c`` (with ``fused_kernel.h``) evaluates every subpath of a block of pixels in
one pass: SIMD lanes over pixels, the per-(phi, mosaic) lattices and per-source vectors
computed once per render (here, in Python), the lattice factor from a polynomial
sin(pi x) of reduced arguments (one division for the three axes), threads over blocks of
pixels.  Nothing of size (pixels x subpaths) is stored: memory is the image and the
problem's inputs.

Building: on first use on a machine the sources are compiled with the system C compiler
(``$CC`` or ``cc``; ``-O3 -march=native``) into a per-user cache,
``$NANOBRAGG_TORCH_CACHE`` or ``$XDG_CACHE_HOME/nanobragg_torch`` (default
``~/.cache/nanobragg_torch``), under a name that hashes the sources, the flags, the
compiler and the CPU's feature flags.  Later processes only load the cached library
(milliseconds).  ``python -m nanobragg_torch.backends.fused_cpu`` builds it ahead of
time and prints where it is.  Without a working compiler :func:`available` is False with
the reason, and ``auto`` renders through the torch backend.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch

_HERE = Path(__file__).resolve().parent
_SOURCES = ("fused_cpu.c", "fused_kernel.h")
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fopenmp-simd", "-fno-math-errno",
         "-fno-trapping-math", "-ffp-contract=fast", "-pthread")
ABI_VERSION = 2

SHAPES = {"square": 0, "round": 1, "gauss": 2, "tophat": 3}

_lock = threading.Lock()
_lib = None
_error: Optional[str] = None
build_seconds: Optional[float] = None     # compile time of this process's build (None: loaded from cache)


class _Params(ctypes.Structure):
    """Mirror of ``nb_params`` in fused_cpu.c (same order, same C types)."""
    _fields_ = [
        ("pixels", ctypes.c_void_p), ("fpixels", ctypes.c_int64),
        ("thicksteps", ctypes.c_int32), ("oversample", ctypes.c_int32), ("n_src", ctypes.c_int32),
        ("n_lat", ctypes.c_int32),
        ("curved", ctypes.c_int32), ("point_pixel", ctypes.c_int32), ("thickness_on", ctypes.c_int32),
        ("nopolar", ctypes.c_int32),
        ("shape", ctypes.c_int32),
        ("over_thick", ctypes.c_int32), ("over_polar", ctypes.c_int32), ("over_omega", ctypes.c_int32),
        ("compound", ctypes.c_int32),
        ("water", ctypes.c_int32), ("have_grid", ctypes.c_int32),
        ("N_integer", ctypes.c_int32 * 3),
        ("hkl_min", ctypes.c_int32 * 3), ("hkl_max", ctypes.c_int32 * 3), ("F_shape", ctypes.c_int32 * 3),
        ("fdet", ctypes.c_double * 3), ("sdet", ctypes.c_double * 3), ("odet", ctypes.c_double * 3),
        ("pix0", ctypes.c_double * 3), ("beam", ctypes.c_double * 3),
        ("pixel_size", ctypes.c_double), ("thickstep", ctypes.c_double), ("mu", ctypes.c_double),
        ("distance", ctypes.c_double), ("close_distance", ctypes.c_double), ("kahn", ctypes.c_double),
        ("N", ctypes.c_double * 3), ("fudge", ctypes.c_double), ("recip", ctypes.c_double * 9),
        ("default_F", ctypes.c_double), ("I_bg", ctypes.c_double), ("dmin", ctypes.c_double),
        ("scale", ctypes.c_double),
        ("incident", ctypes.c_void_p), ("wavelength", ctypes.c_void_p), ("e_in", ctypes.c_void_p),
        ("b_in", ctypes.c_void_p), ("lattices", ctypes.c_void_p), ("F_grid", ctypes.c_void_p),
        ("image", ctypes.c_void_p), ("omega", ctypes.c_void_p),
    ]


def cache_dir() -> Path:
    """Where built kernels are kept (created on demand)."""
    env = os.environ.get("NANOBRAGG_TORCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nanobragg_torch"


def compiler() -> Optional[str]:
    """Path of the C compiler that builds the kernel, or None."""
    cc = os.environ.get("CC", "cc")
    return shutil.which(cc)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return line.strip()
    except OSError:
        pass
    import platform
    return platform.processor() + platform.machine()


def library_path(cc: str) -> Path:
    """The cache file for these sources, flags, compiler and CPU."""
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update((_HERE / name).read_bytes())
    st = os.stat(cc)
    h.update(repr((FLAGS, os.path.realpath(cc), st.st_size, int(st.st_mtime), _cpu_flags(), ABI_VERSION)).encode())
    return cache_dir() / f"fused_cpu-{h.hexdigest()[:20]}.so"


def build(verbose: bool = False) -> Path:
    """Compile the kernel into the cache (if not there yet) and return its path."""
    global build_seconds
    cc = compiler()
    if cc is None:
        raise RuntimeError(f"no C compiler ({os.environ.get('CC', 'cc')!r} not found on PATH)")
    path = library_path(cc)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.so", dir=str(path.parent))
    os.close(fd)
    cmd = [cc, *FLAGS, str(_HERE / "fused_cpu.c"), "-o", tmp, "-lm"]
    print(f"nanoBragg: note: building the fused CPU kernel, once for this machine (cached in {path.parent})",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            msg = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise RuntimeError(f"compiling the kernel failed: {msg}")
        os.replace(tmp, path)          # atomic: a concurrent process sees the whole file or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    build_seconds = time.perf_counter() - t0
    if verbose:
        print(f"built {path} in {build_seconds:.2f} s")
    return path


def _load():
    global _lib, _error
    with _lock:
        if _lib is not None or _error is not None:
            return _lib
        if os.environ.get("NANOBRAGG_TORCH_NO_FUSED"):
            _error = "disabled by NANOBRAGG_TORCH_NO_FUSED"
            return None
        try:
            lib = ctypes.CDLL(str(build()))
            if lib.nb_abi_version() != ABI_VERSION:
                raise RuntimeError("cached kernel has another ABI version")
            lib.nb_render.argtypes = [ctypes.POINTER(_Params), ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                                      ctypes.c_int]
            lib.nb_render.restype = ctypes.c_int
            lib.nb_lanes.restype = ctypes.c_int
            _lib = lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _lib


def available() -> Tuple[bool, str]:
    """(True, "") when the kernel is built and loaded; else (False, reason).  Builds on first call."""
    lib = _load()
    return (lib is not None, "" if lib is not None else (_error or "unavailable"))


def _reset_for_tests():
    """Forget the loaded library and any error (tests that simulate a missing compiler)."""
    global _lib, _error
    with _lock:
        _lib = None
        _error = None


def _f(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def _vec(x):
    return [float(v) for v in x.detach().reshape(-1).tolist()]


def _polarization_frame(pb, dtype):
    """Per-source unit vectors E_in, B_in (S, 3) of the polarization frame (as physics.polarization)."""
    inc = pb.incident.detach().to(torch.float64)
    axis = pb.polar_vector.detach().to(torch.float64).expand_as(inc)
    tiny = torch.finfo(torch.float64).tiny
    B = torch.linalg.cross(axis, inc, dim=-1)
    B = B / torch.linalg.vector_norm(B, dim=-1, keepdim=True).clamp_min(tiny)
    E = torch.linalg.cross(inc, B, dim=-1)
    E = E / torch.linalg.vector_norm(E, dim=-1, keepdim=True).clamp_min(tiny)
    return E.to(dtype).contiguous(), B.to(dtype).contiguous()


def compound_rule(pb) -> bool:
    """True: the C's compounding -oversample_* rule (the running sum, I_bg included, times the
    factor after every term; the ``-c_legacy`` switch).  False (default): the corrected rule,
    each enabled factor multiplies its own term only."""
    return bool(pb.legacy_oversample)


def render(pb, progress: Optional[Callable[[int, int], None]] = None, nthreads: Optional[int] = None):
    """(image (spixels, fpixels), omega_sum) of the problem through the fused kernel."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the fused CPU kernel is not available: {_error}")
    dtype = pb.fdet.dtype
    is_double = dtype == torch.float64
    c = lambda t: t.detach().to(dtype=dtype).contiguous()        # noqa: E731
    pixels = pb.pixels.detach().to(torch.int64).contiguous()
    P = pixels.shape[0]
    npix = pb.spixels * pb.fpixels
    # every pixel is written when all are rendered; otherwise the rest must be zero
    image = torch.empty(npix, dtype=dtype) if P == npix else torch.zeros(npix, dtype=dtype)
    lanes = lib.nb_lanes()
    omega = torch.zeros(-(-P // lanes) + 1, dtype=dtype)      # one partial sum per block of lanes
    incident, wavelength = c(pb.incident), c(pb.wavelength)
    e_in, b_in = _polarization_frame(pb, dtype)
    lattices = c(pb.lattices)
    have_grid = pb.hkls > 0 and pb.F_grid is not None
    grid = c(pb.F_grid) if have_grid else None
    N = [_f(pb.Na), _f(pb.Nb), _f(pb.Nc)]
    prm = _Params()
    prm.pixels = pixels.data_ptr()
    prm.fpixels = pb.fpixels
    prm.thicksteps, prm.oversample = int(pb.thicksteps), int(pb.oversample)
    prm.n_src, prm.n_lat = int(incident.shape[0]), int(lattices.shape[0])
    prm.curved, prm.point_pixel = int(bool(pb.curved)), int(bool(pb.point_pixel))
    prm.thickness_on, prm.nopolar = int(bool(pb.thickness_on)), int(bool(pb.nopolar))
    prm.shape = SHAPES[pb.shape]
    prm.over_thick, prm.over_polar = int(bool(pb.oversample_thick)), int(bool(pb.oversample_polar))
    prm.over_omega, prm.compound = int(bool(pb.oversample_omega)), int(compound_rule(pb))
    prm.water, prm.have_grid = int(bool(pb.water)), int(have_grid)
    prm.N_integer[:] = [int(n == math.floor(n)) for n in N]
    prm.hkl_min[:] = [int(v) for v in pb.hkl_min]
    prm.hkl_max[:] = [int(v) for v in pb.hkl_max]
    prm.F_shape[:] = [int(v) for v in pb.F_shape] if have_grid else [0, 0, 0]
    for name in ("fdet", "sdet", "odet", "pix0"):
        getattr(prm, name)[:] = _vec(getattr(pb, name))
    prm.beam[:] = _vec(pb.beam_vector)
    prm.pixel_size, prm.thickstep, prm.mu = _f(pb.pixel_size), _f(pb.thickstep), _f(pb.mu)
    prm.distance, prm.close_distance, prm.kahn = _f(pb.distance), _f(pb.close_distance), _f(pb.kahn)
    prm.N[:] = N
    prm.fudge = _f(pb.fudge)
    prm.recip[:] = _vec(pb.recip)
    prm.default_F, prm.I_bg, prm.dmin = _f(pb.default_F), _f(pb.I_bg), float(pb.dmin)
    prm.scale = float(pb.r_e_sqr) * _f(pb.fluence) / float(pb.steps)
    prm.incident, prm.wavelength = incident.data_ptr(), wavelength.data_ptr()
    prm.e_in, prm.b_in = e_in.data_ptr(), b_in.data_ptr()
    prm.lattices = lattices.data_ptr()
    prm.F_grid = grid.data_ptr() if grid is not None else None
    prm.image, prm.omega = image.data_ptr(), omega.data_ptr()
    threads = nthreads or torch.get_num_threads()
    # one call for the whole image; with a progress callback, a few slices reported one by one
    slices = 1 if progress is None else max(1, min(20, P // 4096))
    grain = 64                                          # fused_cpu.c's NB_GRAIN: slices start on it
    step = -(-(-(-P // slices)) // grain) * grain if P else grain
    for lo in range(0, P, step):
        hi = min(P, lo + step)
        lib.nb_render(ctypes.byref(prm), lo, hi, threads, int(is_double))
        if progress is not None:
            progress(hi, P)
    return image.reshape(pb.spixels, pb.fpixels), omega.sum()


def main(argv=None) -> int:
    """Build the kernel ahead of time: ``python -m nanobragg_torch.backends.fused_cpu``."""
    try:
        path = build(verbose=True)
    except RuntimeError as exc:
        print(f"fused CPU kernel: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
