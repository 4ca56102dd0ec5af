"""Detector response: what ``noisify`` does to an image in photons/pixel.

Two layers:

* :func:`noisify_c` reproduces the reference ``noisify`` program pixel for
  pixel (numpy, and numba kernels when numba is importable): the C random
  generator (:mod:`nanobragg_torch.rng`) with its ``-seed`` and
  ``-calib_seed`` streams, float32 rounding where the C rounds, the PSF with a
  radius chosen per pixel, and the C's integer conversions.  The command line
  (``noisify``) and the golden comparison use it.
* :func:`noisify` / :class:`Noisify` are the differentiable Python API
  (torch; any device and dtype): scale, flicker and calibration factors,
  Poisson noise (the C generator, or a reparameterised normal approximation
  that is differentiable), the PSF as a convolution (FFT-based for wide
  kernels; differentiable in its width), gain, ADC offset and read-out noise.

Order of the operations (both layers, as the C program):
photons = scale * fluence * r_e^2 * image; noise-free ADU = gain * photons
(+ PSF when there is no noise) + adc; noisy: photons * (1 + flicker z1) *
(1 + calibration z2) -> Poisson -> PSF -> gain * . + adc + readout z3.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from . import rng as _rng
from .physics import psf as _psf

R_E_SQR = 7.94079248018965e-30
#: the C's default fluence: one electron scatters 1 photon/sr, so the input is in photons/pixel
DEFAULT_FLUENCE = 125932015286227086360700780544.0

__all__ = ["NoisifyParams", "NoisifyResult", "noisify_c", "noisify", "Noisify", "to_adu_ints"]


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


def _psf_c(photons: np.ndarray, p: NoisifyParams, say) -> np.ndarray:
    """The C's apply_psf on a flat float32 image; returns a new flat float32 image."""
    nx, ny = p.xpixels, p.ypixels
    pixels = nx * ny
    fwhm = p.psf_fwhm / p.pixel_size
    g = fwhm * _psf.FIBER_G_PER_FWHM
    gauss = p.psf == "gauss"
    if pixels == 0 or fwhm <= 0.0:
        return photons
    radius = int(p.psf_radius)
    if radius <= 0:
        max_I = float(np.max(photons.astype(np.float64), initial=0.0))
        say("  maximum input photon/pixel: %s" % _g(max_I))
        if max_I <= 0.0:
            say("WARNING: no photons, PSF skipped")
            return np.zeros_like(photons)
        radius = _psf.auto_radius(p.psf, fwhm, max_I)
        say("  auto-selected psf_radius = %d pixels" % radius)
    maxwidth = max(nx, ny)
    radius = min(radius, maxwidth)
    kern = _psf.psf_kernel(p.psf, torch.tensor(fwhm, dtype=torch.float64), radius).numpy()
    kern = np.ascontiguousarray(kern.reshape(-1))
    jit = _enable_jit()
    rad = np.empty(pixels, dtype=np.int64)
    lost = np.empty(pixels, dtype=np.float64)
    _psf_radius_k(photons, gauss, fwhm, g, int(p.psf_radius), maxwidth, rad, lost)
    total_lost = float(np.sum(lost))   # (sums in a different order than the C: last-digit differences only)
    out = np.empty(pixels, dtype=np.float32)
    gather = _psf_gather_par if jit else _psf_gather_k
    gather(photons, nx, ny, rad, kern, radius, p.psf_edges == "c", out)
    say("adding back %s lost photons" % _g(total_lost))
    add = total_lost / pixels
    return (out.astype(np.float64) + add).astype(np.float32)


def noisify_c(image: np.ndarray, p: NoisifyParams) -> NoisifyResult:
    """Run the ``noisify`` program's pipeline on a float image (S, F) in photons/pixel.

    Bit-for-bit the C program's images for the same parameters and seeds
    (see :class:`NoisifyParams`); ``report`` holds what it prints.
    """
    report: List[str] = []
    say = report.append
    flat = np.ascontiguousarray(np.asarray(image, dtype=np.float32).reshape(-1))
    inp = flat.astype(np.float64)
    max_I = float(inp.max(initial=0.0))
    if np.any(inp < 0.0):
        say("WARNING: negative intensities in the input (%d pixels)" % int((inp < 0).sum()))
    photons = ((p.fluence * R_E_SQR) * p.scale * inp).astype(np.float32)
    say("maximum value in input file: %s ( %s on photon scale)"
        % (_g(max_I), _g(max_I * p.scale * p.fluence * R_E_SQR)))
    if not p.noise and p.psf and p.psf_fwhm > 0.0:
        say("  applying PSF to noiseless image width = %s pixels" % _g(p.psf_fwhm / p.pixel_size))
        photons = _psf_c(photons, p, say)
    _enable_jit()
    u16, u32, _ = _adu_ints(photons, p.gain, p.adc, True, p.bits)
    shape = (p.ypixels, p.xpixels)
    int_adu = (u16 if p.bits == 16 else u32).reshape(shape)
    pgm = np.minimum(u16, np.uint16(255)).astype(np.uint8).reshape(shape)
    if not p.noise:
        return NoisifyResult(photons.reshape(shape), int_adu, pgm, None, report)

    jit = _enable_jit()
    state = _rng.CRandom()
    ist, fst = state._ist, state._fst
    seed = np.array([p.seed], dtype=np.int64)
    cseed = np.array([p.calib_seed], dtype=np.int64)
    drawn = np.empty(flat.shape[0], dtype=np.float64)
    total = _photon_noise_k(photons, float(p.flicker), float(p.calibration), ist, fst, seed, cseed, drawn)
    counts = drawn.astype(np.float32)
    if p.psf and p.psf_fwhm > 0.0:
        say("%.0f photons on noise image before PSF" % total)
        say("  applying PSF width = %s um" % _g(p.psf_fwhm * 1e6))
        counts = _psf_c(counts, p, say)
    adu = np.empty(flat.shape[0], dtype=np.float64)
    total = _readout_k(counts, float(p.gain), float(p.adc), float(p.readout), ist, fst, seed, adu)
    u16, u32, overloads = _adu_ints(adu, 1.0, 0.0, False, p.bits)
    say("%.0f photons on noise image (%d overloads)" % (total, overloads))
    noise_adu = (u16 if p.bits == 16 else u32).reshape(shape)
    del jit
    return NoisifyResult(photons.reshape(shape), int_adu, pgm, noise_adu, report)


# --------------------------------------------------------------------------
# differentiable API
# --------------------------------------------------------------------------
def _t(x, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def noisify(image: torch.Tensor, *, pixel_size=1e-4, scale=1.0, fluence=DEFAULT_FLUENCE,
            gain=1.0, adc=40.0, psf: Optional[str] = None, psf_fwhm=46e-6, psf_radius: int = 0,
            psf_method: str = "auto", readout=0.0, flicker=0.0, calibration=0.0,
            noise: Optional[str] = "c", seed: int = 1, calib_seed: Optional[int] = None,
            generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """Detector response of ``image`` (S, F) in photons/pixel (before ``scale``).

    Args (every float may be a tensor that requires grad, on the image's device):
        pixel_size: m (scalar, default 1e-4), converts ``psf_fwhm`` to pixels.
        scale: multiplies the image (default 1); ``fluence`` (photons/m^2)
            multiplies it by fluence * r_e^2 (the default makes that 1).
        gain: ADU per photon (default 1); adc: ADU offset (default 40).
        psf: None, "gauss" or "fiber"; psf_fwhm: m (default 46e-6);
            psf_radius: pixels (0 = the C's automatic choice from the brightest
            pixel, as an int, not differentiated); psf_method: "auto" | "direct" | "fft".
        readout: ADU rms of the read-out noise; flicker, calibration: fractional
            rms of the source flicker and of the static per-pixel calibration error.
        noise: "c" (the C generator seeded with ``seed`` and ``calib_seed``, as
            ``noisify -seed S -calib_seed C``, ``calib_seed=None`` as without
            ``-calib_seed``; the draws are constants for autograd),
            "normal" (x + sqrt(x) z with torch's generator ``generator``:
            differentiable in everything, including ``scale``), or None.

    Returns a dict of tensors (S, F), in ADU as floats (no integer rounding or
    clipping; see :func:`to_adu_ints`): ``"photons"`` (scaled photons/pixel),
    ``"ideal"`` (gain * PSF(photons) + adc, noise-free) and, with noise,
    ``"noisy"`` (gain * PSF(noisy photons) + adc + read-out noise) and
    ``"counts"`` (the noisy photons before the PSF).
    """
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (slow, fast), got shape {tuple(image.shape)}")
    img = image
    photons = img * _t(scale, img) * (_t(fluence, img) * R_E_SQR)
    px = _t(pixel_size, img)
    fwhm_pix = _t(psf_fwhm, img) / px

    def blur(x):
        if not psf:
            return x
        r = int(psf_radius)
        if r <= 0:
            r = _psf.auto_radius(psf, float(fwhm_pix.detach()), float(x.detach().max()))
        r = min(r, max(x.shape))
        return _psf.apply_psf(x, psf, fwhm_pix, r, method=psf_method)

    g, a = _t(gain, img), _t(adc, img)
    out = {"photons": photons, "ideal": blur(photons) * g + a}
    if noise is None:
        return out
    mean = photons
    if noise == "c":
        flat = np.ascontiguousarray(mean.detach().to("cpu", torch.float32).numpy().reshape(-1))
        state = _rng.CRandom()
        _enable_jit()
        s = np.array([-int(seed)], dtype=np.int64)
        # the C stores -calib_seed N as -N; without the flag its seed variable holds +123456789
        cs = np.array([123456789 if calib_seed is None else -int(calib_seed)], dtype=np.int64)
        drawn = np.empty(flat.shape[0], dtype=np.float64)
        _photon_noise_k(flat, float(flicker), float(calibration), state._ist, state._fst, s, cs, drawn)
        counts = torch.from_numpy(drawn.reshape(mean.shape)).to(img.device, img.dtype)
        z = torch.zeros_like(counts)
        if float(readout) > 0.0:
            zz = np.empty(flat.shape[0], dtype=np.float64)
            _readout_k(np.zeros(flat.shape[0], np.float32), 0.0, 0.0, 1.0, state._ist, state._fst, s, zz)
            z = torch.from_numpy(zz.reshape(mean.shape)).to(img.device, img.dtype)
    elif noise == "normal":
        gen_kw = {"generator": generator} if generator is not None else {}
        z1 = torch.randn(mean.shape, dtype=img.dtype, device=img.device, **gen_kw)
        z2 = torch.randn(mean.shape, dtype=img.dtype, device=img.device, **gen_kw)
        z3 = torch.randn(mean.shape, dtype=img.dtype, device=img.device, **gen_kw)
        z4 = torch.randn(mean.shape, dtype=img.dtype, device=img.device, **gen_kw)
        m = mean * (1 + _t(flicker, img) * z1) * (1 + _t(calibration, img) * z2)
        counts = m + torch.sqrt(m.clamp_min(0)) * z3
        z = z4
    else:
        raise ValueError(f"noise must be 'c', 'normal' or None, got {noise!r}")
    out["counts"] = counts
    out["noisy"] = blur(counts) * g + a + _t(readout, img) * z
    return out


class Noisify(torch.nn.Module):
    """Thin module around :func:`noisify`: stores the detector-response parameters.

    Float parameters given as tensors (e.g. ``torch.nn.Parameter``) are
    registered as parameters; ``forward(image)`` returns :func:`noisify`'s dict.
    """

    _FLOATS = ("pixel_size", "scale", "fluence", "gain", "adc", "psf_fwhm", "readout", "flicker",
               "calibration")

    def __init__(self, **kwargs):
        super().__init__()
        self._fixed = {}
        for k, v in kwargs.items():
            if k in self._FLOATS and isinstance(v, torch.Tensor):
                if isinstance(v, torch.nn.Parameter):
                    self.register_parameter(k, v)
                else:
                    self.register_buffer(k, v)
            else:
                self._fixed[k] = v

    def forward(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        kw = dict(self._fixed)
        for k in self._FLOATS:
            if k in self._parameters or k in self._buffers:
                kw[k] = getattr(self, k)
        return noisify(image, **kw)
