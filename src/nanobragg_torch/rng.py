"""Bit-exact emulation of the reference program's random-number machinery.

The reference nanoBragg draws every random number from the Numerical Recipes
``ran1`` generator (Park-Miller "minimal standard" LCG evaluated with Schrage's
trick, followed by a 32-entry Bays-Durham shuffle).  On top of it sit

* ``gaussdev`` - polar Box-Muller normal deviates (caches the second deviate),
* ``poidev``   - Poisson deviates (product-of-uniforms below a mean of 12,
  Lorentzian rejection above, a Gaussian approximation above 1e6),
* ``mosaic_rotation_umat`` - a random rotation on a spherical cap.

Faithful reproduction needs three things the textbook description hides:

1. **Shared static state.**  The shuffle table ``iv`` and the last output ``iy``
   are ``static`` inside ``ran1``: there is ONE table per process, shared by all
   seed variables ("streams": misset, mosaic, noise).  A stream's seed variable
   is modified in place.  The table is reloaded whenever ``ran1`` is called with
   a seed ``<= 0`` or while ``iy == 0`` (i.e. before the very first call; a
   positive seed on that first call is replaced by 1).  ``gaussdev`` and
   ``poidev`` likewise keep static caches.  :class:`CRandom` holds all of this
   state; :class:`SeedStream` holds one seed variable.
2. **Single-precision rounding.**  ``ran1``, ``gaussdev``, ``poidev`` and
   ``gammln`` return C ``float`` and keep most intermediates in ``float``
   while constants such as ``2.0``, ``0.9`` or ``M_PI`` promote expressions to
   ``double``.  Every place the C code rounds to ``float`` is reproduced
   here with :func:`_f32`; everything else is evaluated in double precision.
   (A float*float product evaluated in double and rounded once to float is
   identical to the float product, so this is exact.)
3. **The same libm.**  Transcendentals go through :mod:`math` (and, inside
   numba kernels, through LLVM intrinsics that call the same C library), so
   ``exp``/``log``/``tan``/``sin``/``cos`` are the platform libm's.  ``powf``
   is called directly from libm through :mod:`ctypes` in pure-Python mode.

The per-pixel Poisson loop (:meth:`CRandom.noise_image`) is compiled with
numba when it is importable (on first use, :func:`enable_jit`: importing numba
costs seconds that a run without a noise image should not pay); otherwise the
very same function bodies run as plain Python (slow, but identical).  Setting
``NUMBA_DISABLE_JIT=1`` also runs the plain-Python bodies, which is how the
tests check the two agree.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
from typing import Optional, Tuple

import numpy as np

import importlib.util
import os
import threading

# numba is imported only when the per-pixel noise kernel is needed (enable_jit):
# importing it and loading its cached machine code costs seconds, which a
# render without a noise image should not pay.  A handful of scalar draws
# (misset, mosaic domains) run the same bodies as plain Python meanwhile.
HAVE_NUMBA = importlib.util.find_spec("numba") is not None
_JIT_ACTIVE = False        # True once the kernels below are numba-compiled
_JIT_LOCK = threading.Lock()
_JIT_TRIED = False


__all__ = [
    "HAVE_NUMBA",
    "enable_jit",
    "preload_jit",
    "SeedStream",
    "CRandom",
    "umat2misset",
]

# --------------------------------------------------------------------------
# ran1 constants (Numerical Recipes, 2nd edition)
# --------------------------------------------------------------------------
_IA = 16807
_IM = 2147483647
_AM = 1.0 / _IM
_IQ = 127773
_IR = 2836
_NTAB = 32
_NDIV = 1 + (_IM - 1) // _NTAB
_RNMX = 1.0 - 1.2e-7  # a double in C; converted to float only when returned

# layout of the integer state vector shared with the kernels
_I_IY = 0  # ran1: last shuffled output (0 = "never initialised")
_I_ISET = 1  # gaussdev: 1 when a spare deviate is cached
_I_IV = 2  # ran1: shuffle table occupies [_I_IV, _I_IV + _NTAB)
_ISTATE_LEN = _I_IV + _NTAB

# layout of the floating-point state vector (all hold float32 values)
_F_GSET = 0  # gaussdev: cached spare deviate
_F_OLDM = 1  # poidev: mean of the previous call (-1 initially)
_F_SQ = 2  # poidev: sqrt(2*mean)
_F_ALXM = 3  # poidev: log(mean)
_F_G = 4  # poidev: exp(-mean) or mean*log(mean) - lngamma(mean+1)
_FSTATE_LEN = 5

# gammln series coefficients (Lanczos, as in Numerical Recipes)
_G0 = 76.18009172947146
_G1 = -86.50532032941677
_G2 = 24.01409824083091
_G3 = -1.231739572450155
_G4 = 0.1208650973866179e-2
_G5 = -0.5395239384953e-5


# --------------------------------------------------------------------------
# scalar helpers
# --------------------------------------------------------------------------
def _load_powf():
    """Return libm's single-precision ``powf`` through ctypes, or None."""
    for name in (ctypes.util.find_library("m"), "libm.so.6", None):
        try:
            lib = ctypes.CDLL(name)
            fn = lib.powf
        except (OSError, AttributeError, TypeError):
            continue
        fn.restype = ctypes.c_float
        fn.argtypes = (ctypes.c_float, ctypes.c_float)
        return fn
    return None  # pragma: no cover - no C library found


_LIBM_POWF = _load_powf()


def _f32(x):
    """Round a double to the nearest C float, returned as a double."""
    return np.float64(np.float32(x))


def _powf_numba(base, exponent):
    """C ``powf`` on two floats; the float result returned as a double (numba body)."""
    # float32 operands make numba call the C library's powf
    return np.float64(math.pow(np.float32(base), np.float32(exponent)))


def _exp_numba(x):
    """C ``exp`` (overflows to inf; numba body)."""
    return math.exp(x)


def _powf(base, exponent):
    """C ``powf`` on two floats; the float result returned as a double."""
    if _LIBM_POWF is not None:
        return float(_LIBM_POWF(float(np.float32(base)), float(np.float32(exponent))))
    return float(np.power(np.float32(base), np.float32(exponent)))  # pragma: no cover


def _exp(x):
    """C ``exp``: Python's math.exp raises where C returns inf."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _c_to_unsigned(value, mask):
    """C conversion of a double to ``unsigned short``/``unsigned char`` on x86-64.

    gcc truncates toward zero into a 32-bit int (``cvttsd2si``) and keeps the
    low bits; NaN and values outside the int32 range give INT_MIN, whose low
    bits are 0.
    """
    if not (value > -2147483649.0 and value < 2147483648.0):
        return 0
    return int(value) & mask


# --------------------------------------------------------------------------
# kernels: plain functions over state arrays, numba-compiled when available
#   ist  : int64[_ISTATE_LEN]   (iy, iset, iv[32])
#   fst  : float64[_FSTATE_LEN] (gset, oldm, sq, alxm, g)
#   seed : int64[1]             the stream's seed variable, updated in place
# --------------------------------------------------------------------------
def _ran1_k(ist, seed):
    """One uniform deviate in (0, 1) as a float (returned as a double)."""
    idum = int(seed[0])
    if idum <= 0 or ist[_I_IY] == 0:
        # (re)load the shuffle table; a seed of 0 is promoted to 1 and any
        # positive seed seen before the first initialisation becomes 1 too
        if -idum < 1:
            idum = 1
        else:
            idum = -idum
        for j in range(_NTAB + 7, -1, -1):
            k = idum // _IQ
            idum = _IA * (idum - k * _IQ) - _IR * k
            if idum < 0:
                idum += _IM
            if j < _NTAB:
                ist[_I_IV + j] = idum
        ist[_I_IY] = ist[_I_IV]
    # advance the Park-Miller generator (Schrage: no overflow)
    k = idum // _IQ
    idum = _IA * (idum - k * _IQ) - _IR * k
    if idum < 0:
        idum += _IM
    seed[0] = idum
    # Bays-Durham shuffle: output the entry picked by the previous output
    j = ist[_I_IY] // _NDIV
    ist[_I_IY] = ist[_I_IV + j]
    ist[_I_IV + j] = idum
    temp = _f32(_AM * ist[_I_IY])
    if temp > _RNMX:
        return _f32(_RNMX)
    return temp


def _gammln_k(xx):
    """ln(Gamma(xx)) for a float argument, evaluated in double, returned as float."""
    x = xx
    y = xx
    tmp = x + 5.5
    tmp -= (x + 0.5) * math.log(tmp)
    ser = 1.000000000190015
    y += 1.0
    ser += _G0 / y
    y += 1.0
    ser += _G1 / y
    y += 1.0
    ser += _G2 / y
    y += 1.0
    ser += _G3 / y
    y += 1.0
    ser += _G4 / y
    y += 1.0
    ser += _G5 / y
    return _f32(-tmp + math.log(2.5066282746310005 * ser / x))


def _gaussdev_k(ist, fst, seed):
    """Normal deviate (mean 0, rms 1) as a float; caches the pair's second value."""
    if ist[_I_ISET] == 0:
        while True:
            v1 = _f32(2.0 * _ran1_k(ist, seed) - 1.0)
            v2 = _f32(2.0 * _ran1_k(ist, seed) - 1.0)
            rsq = _f32(_f32(v1 * v1) + _f32(v2 * v2))
            if not (rsq >= 1.0 or rsq == 0.0):
                break
        fac = _f32(math.sqrt(-2.0 * math.log(rsq) / rsq))
        fst[_F_GSET] = _f32(v1 * fac)
        ist[_I_ISET] = 1
        return _f32(v2 * fac)
    ist[_I_ISET] = 0
    return fst[_F_GSET]


def _poidev_k(xm_in, ist, fst, seed):
    """Poisson deviate with float mean ``xm_in``, as a float (returned as a double)."""
    xm = _f32(xm_in)
    if xm > 1.0e6:
        # Gaussian approximation (the exact method is too slow up there)
        return _f32(xm + math.sqrt(xm) * _gaussdev_k(ist, fst, seed))

    if xm < 12.0:
        # direct method: multiply uniforms until below exp(-mean)
        if xm != fst[_F_OLDM]:
            fst[_F_OLDM] = xm
            fst[_F_G] = _f32(_exp(-xm))
        g = fst[_F_G]
        em = -1.0
        t = 1.0
        while True:
            em += 1.0
            t = _f32(t * _ran1_k(ist, seed))
            if not (t > g):
                break
        return em

    # rejection method with a Lorentzian comparison function
    if xm != fst[_F_OLDM]:
        fst[_F_OLDM] = xm
        fst[_F_SQ] = _f32(math.sqrt(2.0 * xm))
        fst[_F_ALXM] = _f32(math.log(xm))
        fst[_F_G] = _f32(_f32(xm * fst[_F_ALXM]) - _gammln_k(_f32(xm + 1.0)))
    sq = fst[_F_SQ]
    alxm = fst[_F_ALXM]
    g = fst[_F_G]
    while True:
        while True:
            y = _f32(math.tan(math.pi * _ran1_k(ist, seed)))
            em = _f32(_f32(sq * y) + xm)
            if not (em < 0.0):
                break
        em = np.floor(em)
        lnratio = _f32(_f32(_f32(em * alxm) - _gammln_k(_f32(em + 1.0))) - g)
        t = _f32(0.9 * (1.0 + _f32(y * y)) * _exp(lnratio))
        if not (_ran1_k(ist, seed) > t):
            break
    return em


def _mosaic_umat_k(mosaicity, ist, seed, out):
    """Random rotation on a spherical cap of angular diameter ``mosaicity`` (rad).

    Writes the 9 row-major matrix elements to ``out`` (float64[9]).
    """
    # three uniform deviates on [-1, 1] (double precision from here on)
    r1 = 2.0 * _ran1_k(ist, seed) - 1.0
    r2 = 2.0 * _ran1_k(ist, seed) - 1.0
    r3 = 2.0 * _ran1_k(ist, seed) - 1.0

    # rotation axis uniformly on the unit sphere
    xyrad = math.sqrt(1.0 - r2 * r2)
    ax = xyrad * math.sin(math.pi * r1)
    ay = xyrad * math.cos(math.pi * r1)
    az = r2
    # rotation angle: float mosaicity times float powf(), used as double
    angle = _f32(_f32(mosaicity) * _powf(1.0 - r3 * r3, 1.0 / 3.0))

    # axis-angle (Rodrigues) rotation matrix
    c = math.cos(angle)
    omc = 1.0 - c
    s = math.sin(angle)
    omc_x = omc * ax
    omc_xy = omc_x * ay
    omc_xz = omc_x * az
    omc_yz = omc * ay * az
    out[0] = c + omc * (ax * ax)
    out[1] = omc_xy - s * az
    out[2] = omc_xz + s * ay
    out[3] = omc_xy + s * az
    out[4] = c + omc * (ay * ay)
    out[5] = omc_yz - s * ax
    out[6] = omc_xz - s * ay
    out[7] = omc_yz + s * ax
    out[8] = c + omc * (az * az)


def _noise_k(img, xmin, xmax, ymin, ymax, adc, ist, fst, seed, out):
    """Poisson noise image in raster order; returns (photon sum, overload count)."""
    nslow = img.shape[0]
    nfast = img.shape[1]
    photons = 0.0
    overloads = 0
    for s in range(nslow):
        if s < ymin or s > ymax:
            continue
        for f in range(nfast):
            if f < xmin or f > xmax:
                continue
            value = _poidev_k(np.float64(img[s, f]), ist, fst, seed)
            photons += value
            value += adc
            if value > 65535.0:
                value = 65535.0
                overloads += 1
            out[s, f] = _c_to_unsigned(value, 0xFFFF)
    return photons, overloads


# the plain-Python bodies above, replaced in this module by numba dispatchers
# (in dependency order: a kernel's callees are resolved when it is compiled)
_KERNELS = ("_f32", "_c_to_unsigned", "_ran1_k", "_gammln_k", "_gaussdev_k", "_poidev_k",
            "_mosaic_umat_k", "_noise_k")


def enable_jit() -> bool:
    """Compile the kernels with numba (once; thread-safe).  False: plain Python stays.

    ``NUMBA_DISABLE_JIT=1`` (or numba missing) keeps the plain-Python bodies,
    which give identical results, slowly.
    """
    global _JIT_ACTIVE, _JIT_TRIED
    with _JIT_LOCK:
        if _JIT_TRIED:
            return _JIT_ACTIVE
        _JIT_TRIED = True
        if not HAVE_NUMBA or os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"):
            return False
        try:
            import numba
        except Exception:  # pragma: no cover - a broken numba installation
            return False
        if numba.config.DISABLE_JIT:
            return False
        jit = numba.njit(cache=True, error_model="numpy")
        g = globals()
        g["_powf"] = jit(_powf_numba)
        g["_exp"] = jit(_exp_numba)
        for name in _KERNELS:
            g[name] = jit(g[name])
        _JIT_ACTIVE = True
        return True


def _c_noise():
    """The C twin of _noise_k (backends/cnoise.c) when it can be built and loaded, else None."""
    from .backends import cbuild, cnoise
    lib = cnoise.load()
    if lib is None:
        cbuild.note_fallback("C noise kernel", cnoise.error(), "numba" if HAVE_NUMBA else "plain Python")
    return lib


def preload_jit() -> bool:
    """enable_jit() and load (or compile) the noise kernel's machine code now.

    The CLI calls this on a background thread while the image renders, so the
    seconds numba needs overlap with torch's work.  Touches no generator state
    (a 1x1 image on scratch state arrays).
    """
    if _c_noise() is not None:
        return True
    if not enable_jit():
        return False
    _noise_k(np.zeros((1, 1), dtype=np.float32), 0, 0, 0, 0, 40.0,
             np.zeros(_ISTATE_LEN, dtype=np.int64), np.zeros(_FSTATE_LEN, dtype=np.float64),
             np.array([-1], dtype=np.int64), np.zeros((1, 1), dtype=np.uint16))
    return True


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
class SeedStream:
    """One C seed variable (``long``), modified in place by every draw.

    Construct it from the value the C program stores, which is the negated
    command-line seed: ``-seed 7`` stores ``-7`` -> ``SeedStream(-7)``.
    A value ``<= 0`` makes the next draw reload the shared shuffle table.
    """

    __slots__ = ("idum",)

    def __init__(self, idum: int):
        self.idum = int(idum)

    def __repr__(self) -> str:
        return f"SeedStream({self.idum})"


class CRandom:
    """The process-wide static state of the C random-number functions.

    One instance corresponds to one run of the C program: the ``ran1``
    shuffle table (``iy``, ``iv``) is shared by every :class:`SeedStream`
    used with it, exactly as the C statics are shared by all seed variables.
    """

    def __init__(self) -> None:
        self._ist = np.zeros(_ISTATE_LEN, dtype=np.int64)
        self._fst = np.zeros(_FSTATE_LEN, dtype=np.float64)
        self._fst[_F_OLDM] = -1.0

    # -- state inspection ------------------------------------------------
    @property
    def iy(self) -> int:
        """``ran1``'s static ``iy`` (0 before the first draw)."""
        return int(self._ist[_I_IY])

    @property
    def iv(self) -> np.ndarray:
        """A copy of ``ran1``'s 32-entry shuffle table."""
        return self._ist[_I_IV:_I_IV + _NTAB].copy()

    # -- helpers -----------------------------------------------------------
    @staticmethod
    def _seed_array(stream: SeedStream) -> np.ndarray:
        if not isinstance(stream, SeedStream):
            raise TypeError(f"expected a SeedStream, got {type(stream).__name__}")
        return np.array([stream.idum], dtype=np.int64)

    # -- scalar draws --------------------------------------------------------
    def ran1(self, stream: SeedStream) -> float:
        """Uniform deviate in (0, 1), a C float value (dimensionless)."""
        seed = self._seed_array(stream)
        value = _ran1_k(self._ist, seed)
        stream.idum = int(seed[0])
        return float(value)

    def gaussdev(self, stream: SeedStream) -> float:
        """Normal deviate (mean 0, rms 1), a C float value."""
        seed = self._seed_array(stream)
        value = _gaussdev_k(self._ist, self._fst, seed)
        stream.idum = int(seed[0])
        return float(value)

    def poidev(self, xm: float, stream: SeedStream) -> float:
        """Poisson deviate with mean ``xm`` (photons; rounded to float first)."""
        seed = self._seed_array(stream)
        value = _poidev_k(float(xm), self._ist, self._fst, seed)
        stream.idum = int(seed[0])
        return float(value)

    def mosaic_rotation_umat(self, mosaicity: float, stream: SeedStream) -> np.ndarray:
        """Random rotation matrix on a spherical cap.

        ``mosaicity`` is the cap's angular diameter in radians (passed to C as
        a float; pi/2 covers the whole sphere).  Three ``ran1`` draws.
        Returns a float64 (3, 3) matrix; ``umat[0..8]`` of the C code maps
        row-major onto ``[[0,1,2],[3,4,5],[6,7,8]]``.
        """
        seed = self._seed_array(stream)
        out = np.empty(9, dtype=np.float64)
        _mosaic_umat_k(float(mosaicity), self._ist, seed, out)
        stream.idum = int(seed[0])
        return out.reshape(3, 3)

    # -- images --------------------------------------------------------------
    def noise_image(
        self,
        float_image: np.ndarray,
        stream: SeedStream,
        roi: Optional[Tuple[int, int, int, int]] = None,
        adc: float = 40.0,
    ) -> Tuple[np.ndarray, float, int]:
        """Poisson-noise image of ``float_image`` (photons per pixel).

        For every pixel inside ``roi = (xmin, xmax, ymin, ymax)`` (inclusive
        fast/slow pixel bounds; ``None`` = whole image), in raster order
        (slow outer, fast inner): draw ``poidev(pixel)``, add the ADC offset
        ``adc`` (counts), clip above 65535 (counting overloads) and truncate
        to ``uint16``.  Pixels outside the ROI are 0.

        Returns ``(image uint16 (S, F), photon_sum, overloads)`` where
        ``photon_sum`` is the sum of the Poisson deviates before the offset.
        """
        img = np.ascontiguousarray(float_image, dtype=np.float32)
        if img.ndim != 2:
            raise ValueError(f"float_image must be 2-D (slow, fast), got shape {img.shape}")
        nslow, nfast = img.shape
        if roi is None:
            xmin, xmax, ymin, ymax = 0, nfast - 1, 0, nslow - 1
        else:
            xmin, xmax, ymin, ymax = (int(v) for v in roi)
        seed = self._seed_array(stream)
        out = np.zeros((nslow, nfast), dtype=np.uint16)
        lib = _c_noise()
        if lib is not None:
            from .backends import cnoise
            photons, overloads = cnoise.noise(lib, img, xmin, xmax, ymin, ymax, float(adc),
                                              self._ist, self._fst, seed, out)
        else:
            enable_jit()
            photons, overloads = _noise_k(
                img, xmin, xmax, ymin, ymax, float(adc), self._ist, self._fst, seed, out
            )
        stream.idum = int(seed[0])
        return out, float(photons), int(overloads)


def umat2misset(umat) -> Tuple[float, float, float]:
    """Missetting angles (rotx, roty, rotz) in radians of a rotation matrix.

    ``umat`` is 9 numbers row-major (or a (3, 3) array).  Like the C code
    the rows are normalised, a row of zero length is replaced by the cross
    product of the other two, and the X-Y-Z Euler angles are then read off
    in double precision.
    """
    u = [float(v) for v in np.asarray(umat, dtype=np.float64).reshape(9)]
    rows = [u[0:3], u[3:6], u[6:9]]

    def norm(v):
        return math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])

    def unit(v, m):
        return [v[0] / m, v[1] / m, v[2] / m] if m > 0 else v

    def cross_unit(a, b):
        c = [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
        return unit(c, norm(c))

    lengths = [norm(r) for r in rows]
    rows = [unit(r, m) for r, m in zip(rows, lengths)]

    # a single non-zero row: the other two become the identity's rows
    mx, my, mz = lengths
    if mx >= 0 and my <= 0 and mz <= 0:
        rows[1] = [0.0, 1.0, 0.0]
        rows[2] = [0.0, 0.0, 1.0]
    if mx <= 0 and my >= 0 and mz <= 0:
        rows[0] = [1.0, 0.0, 0.0]
        rows[2] = [0.0, 0.0, 1.0]
    if mx <= 0 and my <= 0 and mz >= 0:
        rows[0] = [1.0, 0.0, 0.0]
        rows[1] = [0.0, 1.0, 0.0]

    # fill a missing row from the other two (done twice, as the C does)
    for _ in range(2):
        x_cross_y = cross_unit(rows[0], rows[1])
        y_cross_z = cross_unit(rows[1], rows[2])
        z_cross_x = cross_unit(rows[2], rows[0])
        if mx <= 0:
            rows[0] = y_cross_z
        if my <= 0:
            rows[1] = z_cross_x
        if mz <= 0:
            rows[2] = x_cross_y

    rows = [unit(r, norm(r)) for r in rows]
    (uxx, uxy, _uxz), (uyx, uyy, _uyz), (uzx, uzy, uzz) = rows

    if uzx * uzx < 1.0:
        rotx = math.atan2(uzy, uzz)
        roty = math.atan2(-uzx, math.sqrt(uzy * uzy + uzz * uzz))
        rotz = math.atan2(uyx, uxx)
    else:
        rotx = math.atan2(1, 1) * 4
        roty = math.atan2(1, 1) * 2
        rotz = math.atan2(uxy, -uyy)
    return rotx, roty, rotz
