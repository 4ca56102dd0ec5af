"""The ``noisify`` program's pipeline, C-exact and torch-free (numpy, and C or numba kernels).

:func:`noisify_c` reproduces the reference ``noisify`` program pixel for pixel:
the C random generator (:mod:`nanobragg_torch.rng`) with its ``-seed`` and
``-calib_seed`` streams, float32 rounding where the C rounds, the PSF with a
radius chosen per pixel, and the C's integer conversions.  The command line
(``noisify``), the golden comparison and the dataset's detector section use it.

Its pixel loops run in C (:mod:`nanobragg_torch.backends.cnoise`: the draws as one
serial stream, the PSF's rows on threads), built once per machine into the kernel
cache; without a compiler the same loops below run under numba, or as plain Python
(identical results).  Nothing here imports torch unless the C kernel is missing (the
PSF kernel then comes from :func:`nanobragg_torch.physics.psf.psf_kernel`), so a
``noisify`` run does not pay for importing it.  The differentiable API is
:mod:`nanobragg_torch.noisify`.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from . import rng as _rng
from ._thread import Background
from .physics import psf_common as _psfc

R_E_SQR = 7.94079248018965e-30
#: the C's default fluence: one electron scatters 1 photon/sr, so the input is in photons/pixel
DEFAULT_FLUENCE = 125932015286227086360700780544.0

__all__ = ["NoisifyParams", "NoisifyResult", "noisify_c", "to_adu_ints", "R_E_SQR", "DEFAULT_FLUENCE"]


# --------------------------------------------------------------------------
# C-exact kernels (plain Python bodies; numba-compiled by _enable_jit)
# --------------------------------------------------------------------------
_gaussdev_k = _rng._gaussdev_k
_poidev_k = _rng._poidev_k


def _photon_noise_k(photons, flicker, calib, ist, fst, seed, cseed, out):
    """Flicker, calibration and Poisson draws per pixel in raster order; returns the photon sum."""
    total = 0.0
    for i in range(photons.shape[0]):
        p0 = np.float64(photons[i])
        if flicker > 0.0:
            p0 *= 1.0 + flicker * _gaussdev_k(ist, fst, seed)
        if calib > 0.0:
            p0 *= 1.0 + calib * _gaussdev_k(ist, fst, cseed)
        v = _poidev_k(p0, ist, fst, seed)
        out[i] = v
        total += np.float64(np.float32(v))
    return total


def _readout_k(photons, gain, adc, readout, ist, fst, seed, out):
    """ADU per pixel (gain, offset, read-out noise) in raster order, as doubles."""
    total = 0.0
    for i in range(photons.shape[0]):
        p = np.float64(photons[i])
        total += p
        adu = p * gain + adc
        if readout > 0.0:
            adu += readout * _gaussdev_k(ist, fst, seed)
        out[i] = adu
    return total


def _psf_radius_k(img, gauss, fwhm, g, user_radius, maxwidth, radius, lost):
    """Per-pixel PSF radius and lost photons (the C's formulas); radius -1 = pixel skipped."""
    log16 = math.log(16.0)
    for i in range(img.shape[0]):
        v = np.float64(img[i])
        if not (v > 0.0):
            radius[i] = -1
            lost[i] = 0.0
            continue
        if user_radius != 0:
            r = user_radius
        else:
            lp = math.sqrt(v) / 10.0
            if gauss:
                a = -math.log(lp / v) / log16
                # a < 0 (fewer than 0.01 photons): the C reads outside its kernel there; use radius 1
                r = 1 + int(math.ceil(math.sqrt(a) * fwhm)) if a >= 0.0 else 1
            else:
                r = 1 + int(math.ceil(g * (v / lp)))
        if r == 0:
            r = 1
        if r > maxwidth:
            r = maxwidth
        radius[i] = r
        if gauss:
            q = np.float64(r) / fwhm
            lost[i] = v * math.exp(-log16 * q * q)
        else:
            lost[i] = v * g / math.sqrt(g * g + np.float64(r) * np.float64(r))


def _psf_target(img, nx, ny, radius, kernel, R, wrap, yt, xt):
    """Sum for one target pixel, sources in the C's order (see _psf_gather_k)."""
    K = 2 * R + 1
    acc = np.float32(0.0)
    ylo = yt - R - 1 if (wrap and xt == 0) else yt - R
    if ylo < 0:
        ylo = 0
    yhi = yt + R
    if yhi > ny - 1:
        yhi = ny - 1
    for ys in range(ylo, yhi + 1):
        dy = yt - ys
        normal = dy >= -R and dy <= R
        dyw = yt - 1 - ys
        wrapped = wrap and xt == 0 and yt >= 1 and dyw >= -R and dyw <= R
        if normal:
            xlo = xt - R
            if xlo < 0:
                xlo = 0
            xhi = xt + R
        else:
            xlo = nx
            xhi = -1
        if xhi > nx - 1:
            xhi = nx - 1
        wlo = nx - R if wrapped else nx
        if wlo < 0:
            wlo = 0
        # sources in increasing index: [xlo, xhi] (normal), then [wlo, nx) (wrapped)
        if wlo <= xhi + 1:
            a0 = xlo if xlo < wlo else wlo
            a1 = nx - 1 if wlo < nx else xhi
            b0, b1 = 1, 0
        else:
            a0, a1, b0, b1 = xlo, xhi, wlo, nx - 1
        na = a1 - a0 + 1 if a1 >= a0 else 0
        nb = b1 - b0 + 1 if b1 >= b0 else 0
        for q in range(na + nb):
            xs = a0 + q if q < na else b0 + (q - na)
            i = ys * nx + xs
            r = radius[i]
            if r < 0:
                continue
            v = np.float64(img[i])
            if normal and xs >= xlo and xs <= xhi:
                dx = xt - xs
                if dx * dx + dy * dy <= r * r:
                    acc = np.float32(np.float64(acc) + v * kernel[(R + dy) * K + R + dx])
            if wrapped and xs >= wlo:
                dx = nx - xs
                if dx <= R and dx * dx + dyw * dyw <= r * r:
                    acc = np.float32(np.float64(acc) + v * kernel[(R + dyw) * K + R + dx])
    return acc


def _psf_row(img, nx, ny, radius, kernel, R, wrap, yt, out):
    """One target row: four interior pixels at a time (four independent float32 sums), the rest singly."""
    K = 2 * R + 1
    ylo = yt - R
    if ylo < 0:
        ylo = 0
    yhi = yt + R
    if yhi > ny - 1:
        yhi = ny - 1
    xt = 0
    while xt < nx:
        if xt >= R and xt >= 1 and xt + 3 + R <= nx - 1:
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            for ys in range(ylo, yhi + 1):
                dy = yt - ys
                base = ys * nx
                for u in range(2 * R + 1):
                    dx = R - u                      # source xs = xt + j - R + u, ascending
                    kk = kernel[(R + dy) * K + R + dx]
                    d2 = dx * dx + dy * dy
                    i = base + xt - R + u
                    r = radius[i]
                    if r >= 0 and d2 <= r * r:
                        a0 = np.float32(np.float64(a0) + np.float64(img[i]) * kk)
                    r = radius[i + 1]
                    if r >= 0 and d2 <= r * r:
                        a1 = np.float32(np.float64(a1) + np.float64(img[i + 1]) * kk)
                    r = radius[i + 2]
                    if r >= 0 and d2 <= r * r:
                        a2 = np.float32(np.float64(a2) + np.float64(img[i + 2]) * kk)
                    r = radius[i + 3]
                    if r >= 0 and d2 <= r * r:
                        a3 = np.float32(np.float64(a3) + np.float64(img[i + 3]) * kk)
            o = yt * nx + xt
            out[o] = a0
            out[o + 1] = a1
            out[o + 2] = a2
            out[o + 3] = a3
            xt += 4
        else:
            out[yt * nx + xt] = _psf_target(img, nx, ny, radius, kernel, R, wrap, yt, xt)
            xt += 1


def _psf_gather_k(img, nx, ny, radius, kernel, R, wrap, out):
    """out[j] = sum over sources i (in the C's order) of img[i] * kernel[j - i], float32 adds.

    Gather form of the C's scatter loop, so each target pixel adds its sources
    in increasing source index exactly as the C does (bit-identical sums).
    ``wrap``: reproduce the C's off-by-one edge test (a source whose kernel
    reaches one column past the right edge adds into column 0 of the next row).
    """
    for yt in range(ny):
        _psf_row(img, nx, ny, radius, kernel, R, wrap, yt, out)


def _psf_gather_par(img, nx, ny, radius, kernel, R, wrap, out):
    # rows in parallel (each target pixel independent); as _psf_gather_k
    for yt in _prange(ny):
        _psf_row(img, nx, ny, radius, kernel, R, wrap, yt, out)


def _adu_ints_k(values, gain, adc, clip16, bits, out16, out32):
    """The C's conversion of gain * value + adc to its integer images; returns the overload count."""
    overloads = 0
    for i in range(values.shape[0]):
        a = np.float64(values[i]) * gain + adc
        if a > 2147483647.0:
            a = 2147483647.0
            if bits == 32:
                overloads += 1
        if clip16 and a > 65535.0:
            a = 65535.0
        if a > -9.2e18 and a < 9.2e18:
            out32[i] = np.uint32(np.int64(a) & 0xFFFFFFFF)
        else:
            out32[i] = 0
        if a > 65535.0:
            a = 65535.0
            if bits == 16:
                overloads += 1
        if a > -2147483649.0 and a < 2147483648.0:
            out16[i] = np.uint16(np.int64(a) & 0xFFFF)
        else:
            out16[i] = 0
    return overloads


def _adu_ints(values, gain, adc, clip16, bits):
    n = values.shape[0]
    u16, u32 = np.empty(n, np.uint16), np.empty(n, np.uint32)
    over = _adu_ints_k(values, float(gain), float(adc), bool(clip16), int(bits), u16, u32)
    return u16, u32, int(over)


_prange = range
_KERNELS = ("_photon_noise_k", "_readout_k", "_psf_radius_k", "_psf_target", "_psf_row", "_psf_gather_k",
            "_adu_ints_k")
_JIT_LOCK = threading.Lock()
_JIT_DONE = False
_JIT_ON = False


def _enable_jit() -> bool:
    """numba-compile the kernels above (after the generator's own kernels); False: plain Python."""
    global _JIT_DONE, _JIT_ON, _gaussdev_k, _poidev_k
    with _JIT_LOCK:
        if _JIT_DONE:
            return _JIT_ON
        _JIT_DONE = True
        if not _rng.enable_jit():
            return False
        import numba
        g = globals()
        _gaussdev_k = _rng._gaussdev_k
        _poidev_k = _rng._poidev_k
        jit = numba.njit(cache=True, error_model="numpy")
        for name in _KERNELS:
            g[name] = jit(g[name])
        g["_prange"] = numba.prange
        g["_psf_gather_par"] = numba.njit(cache=True, parallel=True, error_model="numpy")(_psf_gather_par)
        _JIT_ON = True
        return True


# --------------------------------------------------------------------------
# C-exact pipeline
# --------------------------------------------------------------------------
@dataclass
class NoisifyParams:
    """What ``noisify`` is told (the C's units: fractions, ADU, pixels; lengths in m)."""
    xpixels: int
    ypixels: int
    pixel_size: float = 0.1e-3
    psf: Optional[str] = None            # None, "gauss", "fiber"
    psf_fwhm: float = 46e-6              # m
    psf_radius: int = 0                  # pixels; 0 = automatic
    scale: float = 1.0
    fluence: float = DEFAULT_FLUENCE
    gain: float = 1.0
    adc: float = 40.0
    readout: float = 0.0
    flicker: float = 0.0
    calibration: float = 0.03
    seed: int = -1                       # stored negated, as the C does
    calib_seed: int = 123456789
    noise: bool = True
    bits: int = 16
    psf_edges: str = "c"                 # "c": the C's edge test (wraps into the next row); "clip"


@dataclass
class NoisifyResult:
    photons: np.ndarray                  # (S, F) float32, photons/pixel (after PSF if no noise)
    int_adu: np.ndarray                  # (S, F) noise-free ADU (uint16 or uint32)
    pgm: np.ndarray                      # (S, F) uint8
    noise_adu: Optional[np.ndarray]      # (S, F) noisy ADU (uint16 or uint32), None without noise
    report: List[str] = field(default_factory=list)
    ideal_lines: int = -1                # report lines printed before the noise-free images are written


def _g(x) -> str:
    from .io.smv import c_format_g
    return c_format_g(x)


def to_adu_ints(adu: np.ndarray, bits: int, clip16: bool):
    """The C's conversion of ADU doubles to its integer images; returns (uint16, uint32, overloads)."""
    a = np.asarray(adu, dtype=np.float64)
    over32 = a > 2147483647.0
    a = np.where(over32, 2147483647.0, a)
    if clip16:
        a = np.where(a > 65535.0, 65535.0, a)
    ok = np.isfinite(a) & (a > -9.2e18) & (a < 9.2e18)
    i64 = np.trunc(np.where(ok, a, 0.0)).astype(np.int64)
    i64 = np.where(ok, i64, np.int64(-(2 ** 63)))
    u32 = (i64 & 0xFFFFFFFF).astype(np.uint32)          # cvttsd2si 64-bit, low 32 bits
    over16 = a > 65535.0
    a16 = np.where(over16, 65535.0, a)
    from .io.smv import c_cast_unsigned
    u16 = c_cast_unsigned(a16, 16)
    overloads = int(over32.sum()) if bits == 32 else int(over16.sum())
    return u16, u32, overloads


def _cnoise():
    from .backends import cbuild, cnoise
    lib = cnoise.load()
    if lib is None:
        cbuild.note_fallback("C noise kernel", cnoise.error(), "numba" if _rng.HAVE_NUMBA else "plain Python")
    return lib


def _psf_radius(p: NoisifyParams, fwhm: float, max_I: float, say) -> int:
    """The C's kernel radius (its lines printed), 0 when there are no photons (PSF skipped)."""
    radius = int(p.psf_radius)
    if radius <= 0:
        say("  maximum input photon/pixel: %s" % _g(max_I))
        if max_I <= 0.0:
            say("WARNING: no photons, PSF skipped")
            return 0
        radius = _psfc.auto_radius(p.psf, fwhm, max_I)
        say("  auto-selected psf_radius = %d pixels" % radius)
    return min(radius, max(p.xpixels, p.ypixels))


def _count_bound(photons: np.ndarray, p: NoisifyParams) -> float:
    """A bound of the noise image's counts in practice: 10 standard deviations above the largest
    mean with flicker and calibration at 7 rms (a count above it costs a second PSF pass)."""
    top = float(np.max(photons, initial=0.0)) * (1.0 + 7.0 * (max(p.flicker, 0.0) + max(p.calibration, 0.0)))
    return top + 10.0 * math.sqrt(top) + 64.0


def _psf_shape(p: NoisifyParams):
    """(FWHM in pixels, the fibre PSF's g, Gaussian?, the C's edge rule?) of p's PSF."""
    fwhm = p.psf_fwhm / p.pixel_size
    return fwhm, fwhm * _psfc.FIBER_G_PER_FWHM, p.psf == "gauss", p.psf_edges == "c"


def _noise_psf_c(photons: np.ndarray, p: NoisifyParams, ist, fst, seed, cseed, lib, say):
    """The C kernel's draws with the PSF of the counts made behind them (one pass): (photon sum,
    blurred image).  The kernel's radius is chosen for _count_bound (a larger radius than the
    counts need gives the same image); should the counts need a larger one, the PSF is made again
    with it.  The same images and lines as photon_noise then _psf_c."""
    from .backends import cnoise
    nx, ny = p.xpixels, p.ypixels
    fwhm, g, gauss, wrap = _psf_shape(p)
    bound = _count_bound(photons, p)
    maxwidth = max(nx, ny)
    rb = int(p.psf_radius) if p.psf_radius > 0 else _psfc.auto_radius(p.psf, fwhm, bound)
    rb = min(rb, maxwidth)
    kern = cnoise.psf_kernel(lib, gauss, fwhm, g, rb)
    tab = bound if bound < 0.5 * nx * ny else -1.0
    counts, total, out, lost = cnoise.photon_noise_psf(lib, photons, nx, ny, p.flicker, p.calibration, ist, fst,
                                                      seed, cseed, gauss, fwhm, g, int(p.psf_radius), rb, wrap,
                                                      kern, tab)
    say("%.0f photons on noise image before PSF" % total)
    say("  applying PSF width = %s um" % _g(p.psf_fwhm * 1e6))
    radius = _psf_radius(p, fwhm, float(np.max(counts, initial=0.0)), say)
    if radius == 0:
        return total, np.zeros_like(counts)
    if radius > rb:                       # a count above the bound: the PSF for its radius
        kern = cnoise.psf_kernel(lib, gauss, fwhm, g, radius)
        out, lost = cnoise.psf(lib, counts, nx, ny, gauss, fwhm, g, int(p.psf_radius), radius, wrap, kern)
    say("adding back %s lost photons" % _g(lost))
    return total, out


def _psf_c(photons: np.ndarray, p: NoisifyParams, say, lib=None) -> np.ndarray:
    """The C's apply_psf on a flat float32 image; returns a new flat float32 image."""
    nx, ny = p.xpixels, p.ypixels
    pixels = nx * ny
    fwhm, g, gauss, wrap = _psf_shape(p)
    if pixels == 0 or fwhm <= 0.0:
        return photons
    radius = _psf_radius(p, fwhm, float(np.max(photons, initial=0.0)) if p.psf_radius <= 0 else 0.0, say)
    if radius == 0:
        return np.zeros_like(photons)
    maxwidth = max(nx, ny)
    if lib is not None:
        from .backends import cnoise
        kern = cnoise.psf_kernel(lib, gauss, fwhm, g, radius)
        out, total_lost = cnoise.psf(lib, photons, nx, ny, gauss, fwhm, g, int(p.psf_radius), radius, wrap, kern)
        say("adding back %s lost photons" % _g(total_lost))
        return out
    import torch
    from .physics import psf as _psf
    kern = _psf.psf_kernel(p.psf, torch.tensor(fwhm, dtype=torch.float64), radius).numpy()
    kern = np.ascontiguousarray(kern.reshape(-1))
    jit = _enable_jit()
    rad = np.empty(pixels, dtype=np.int64)
    lost = np.empty(pixels, dtype=np.float64)
    _psf_radius_k(photons, gauss, fwhm, g, int(p.psf_radius), maxwidth, rad, lost)
    total_lost = float(np.sum(lost))   # (sums in a different order than the C: last-digit differences only)
    out = np.empty(pixels, dtype=np.float32)
    gather = _psf_gather_par if jit else _psf_gather_k
    gather(photons, nx, ny, rad, kern, radius, wrap, out)
    say("adding back %s lost photons" % _g(total_lost))
    add = total_lost / pixels
    return (out.astype(np.float64) + add).astype(np.float32)


def noisify_c(image: np.ndarray, p: NoisifyParams, impl: str = "auto", on_ideal=None) -> NoisifyResult:
    """Run the ``noisify`` program's pipeline on a float image (S, F) in photons/pixel.

    Bit-for-bit the C program's images for the same parameters and seeds
    (see :class:`NoisifyParams`); ``report`` holds what it prints.  ``impl``:
    "c" (backends/cnoise.c), "numba" (this module's kernels; plain Python
    without numba) or "auto" (C when it can be built).  ``on_ideal(int_adu, pgm)``,
    when given, is called with the noise-free images as soon as they are made
    (before the noise is drawn: the command line writes them meanwhile);
    ``report[:result.ideal_lines]`` is what the C prints before it writes them.
    """
    if impl not in ("auto", "c", "numba"):
        raise ValueError(f"impl must be 'auto', 'c' or 'numba', got {impl!r}")
    lib = None if impl == "numba" else _cnoise()
    from .backends import cnoise
    if lib is None and impl == "c":
        raise RuntimeError(f"the C noise kernel is not available: {cnoise.error()}")
    report: List[str] = []
    say = report.append
    flat = np.ascontiguousarray(np.asarray(image, dtype=np.float32).reshape(-1))
    max_I = float(flat.max(initial=0.0))
    if flat.size and float(flat.min()) < 0.0:
        say("WARNING: negative intensities in the input (%d pixels)" % int((flat < 0).sum()))
    factor = (p.fluence * R_E_SQR) * p.scale
    if factor == 1.0:                 # (the default fluence and scale): factor * x is x
        photons = flat.copy()
    else:
        photons = (factor * flat.astype(np.float64)).astype(np.float32)
    say("maximum value in input file: %s ( %s on photon scale)"
        % (_g(max_I), _g(max_I * p.scale * p.fluence * R_E_SQR)))
    if not p.noise and p.psf and p.psf_fwhm > 0.0:
        say("  applying PSF to noiseless image width = %s pixels" % _g(p.psf_fwhm / p.pixel_size))
        photons = _psf_c(photons, p, say, lib)
    shape = (p.ypixels, p.xpixels)
    ideal_lines = len(report)
    ideal = {}

    def make_ideal():
        if lib is not None:
            u16, u32, pgm8, _ = cnoise.adu_ints(lib, photons, p.gain, p.adc, True, p.bits, pgm=True)
            ideal["pgm"] = pgm8.reshape(shape)
        else:
            _enable_jit()
            u16, u32, _ = _adu_ints(photons, p.gain, p.adc, True, p.bits)
            ideal["pgm"] = np.minimum(u16, np.uint16(255)).astype(np.uint8).reshape(shape)
        ideal["int_adu"] = (u16 if p.bits == 16 else u32).reshape(shape)
        if on_ideal is not None:
            on_ideal(ideal["int_adu"], ideal["pgm"])

    if not p.noise or lib is None:
        make_ideal()
        if not p.noise:
            return NoisifyResult(photons.reshape(shape), ideal["int_adu"], ideal["pgm"], None, report, ideal_lines)
        ideal_thread = None
    else:
        # the noise-free images (and on_ideal) on a thread while the noise is drawn (the C kernels
        # run without the GIL), at idle priority: the draws' threads come first
        ideal_thread = Background(make_ideal, idle=True)

    try:
        state = _rng.CRandom()
        ist, fst = state._ist, state._fst
        seed = np.array([p.seed], dtype=np.int64)
        cseed = np.array([p.calib_seed], dtype=np.int64)
        fused = lib is not None and p.psf and p.psf_fwhm / p.pixel_size > 0.0 and flat.shape[0] > 0
        if fused:
            total, counts = _noise_psf_c(photons, p, ist, fst, seed, cseed, lib, say)
        elif lib is not None:
            counts, total = cnoise.photon_noise(lib, photons, p.flicker, p.calibration, ist, fst, seed, cseed)
        else:
            _enable_jit()
            drawn = np.empty(flat.shape[0], dtype=np.float64)
            total = _photon_noise_k(photons, float(p.flicker), float(p.calibration), ist, fst, seed, cseed, drawn)
            counts = drawn.astype(np.float32)
        if p.psf and p.psf_fwhm > 0.0 and not fused:
            say("%.0f photons on noise image before PSF" % total)
            say("  applying PSF width = %s um" % _g(p.psf_fwhm * 1e6))
            counts = _psf_c(counts, p, say, lib)
        if lib is not None:
            noise_adu, total, overloads = cnoise.readout(lib, counts, p.gain, p.adc, p.readout, p.bits, ist, fst, seed)
        else:
            adu = np.empty(flat.shape[0], dtype=np.float64)
            total = _readout_k(counts, float(p.gain), float(p.adc), float(p.readout), ist, fst, seed, adu)
            u16, u32, overloads = _adu_ints(adu, 1.0, 0.0, False, p.bits)
            noise_adu = u16 if p.bits == 16 else u32
        say("%.0f photons on noise image (%d overloads)" % (total, overloads))
    finally:
        if ideal_thread is not None:
            ideal_thread.thread.join()        # (its files are final before anything is raised)
    if ideal_thread is not None:
        ideal_thread.join()
    return NoisifyResult(photons.reshape(shape), ideal["int_adu"], ideal["pgm"], noise_adu.reshape(shape), report,
                         ideal_lines)
