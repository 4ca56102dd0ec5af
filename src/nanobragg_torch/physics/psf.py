"""Detector point-spread functions: analytic pixel integrals and their convolution.

Two shapes, as the reference ``noisify`` program defines them (``x``, ``y`` and
widths in pixels):

* ``gauss``: a 2-D Gaussian of full width at half maximum ``fwhm``; its
  integral over a pixel is a product of error functions;
* ``fiber``: the fibre-optic taper PSF ``g / (2 pi (g^2 + r^2)^{3/2})`` with
  ``g = fwhm * 0.652383013252053`` (so that its FWHM is ``fwhm``); its integral
  over a pixel is a sum of arctangents.

Both integrate to one over the plane.  The kernel is cut at ``radius`` pixels
(a disc); the photons beyond it are "lost" and put back evenly over the image
as the C program does (:func:`lost_fraction`).  Everything here is torch and
differentiable in ``fwhm``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf

from .psf_common import FIBER_G_PER_FWHM, auto_radius  # noqa: F401  (torch-free; re-exported)

_LOG16 = math.log(16.0)
_LOG2 = math.log(2.0)


def _gauss_integ(x, y):
    # integral of the unit-volume, unit-FWHM Gaussian from the origin to (x, y), times 4
    return 0.125 * (torch.erf(2 * x * math.sqrt(_LOG2)) * torch.erf(y * math.sqrt(_LOG16))
                    * math.sqrt(_LOG16 / _LOG2))


def gauss_pixel(dx, dy, fwhm):
    """Fraction of a unit Gaussian (FWHM ``fwhm`` pixels) centred at 0 that falls on pixel (dx, dy)."""
    x, y, p = dx / fwhm, dy / fwhm, 1.0 / fwhm
    return (_gauss_integ(x + p / 2, y + p / 2) - _gauss_integ(x + p / 2, y - p / 2)
            - _gauss_integ(x - p / 2, y + p / 2) + _gauss_integ(x - p / 2, y - p / 2))


def _fiber_integ(x, y, g):
    return torch.atan((x * y) / (g * torch.sqrt(g * g + x * x + y * y))) / (2.0 * math.pi)


def fiber_pixel(dx, dy, g):
    """Fraction of the fibre PSF (parameter ``g`` pixels) that falls on pixel (dx, dy)."""
    return (_fiber_integ(dx + 0.5, dy + 0.5, g) - _fiber_integ(dx + 0.5, dy - 0.5, g)
            - _fiber_integ(dx - 0.5, dy + 0.5, g) + _fiber_integ(dx - 0.5, dy - 0.5, g))


def psf_kernel(psf: str, fwhm_pixels, radius: int, dtype=None, device=None) -> torch.Tensor:
    """The PSF cut to a disc of ``radius`` pixels: a ``(2r+1, 2r+1)`` tensor (rows = slow).

    ``fwhm_pixels`` (scalar, pixels) may be a tensor that requires grad.
    Entries with dx^2 + dy^2 > radius^2 are zero.
    """
    if psf not in ("gauss", "fiber"):
        raise ValueError(f"psf must be 'gauss' or 'fiber', got {psf!r}")
    if isinstance(fwhm_pixels, torch.Tensor):
        dtype = dtype or fwhm_pixels.dtype
        device = device or fwhm_pixels.device
    dtype = dtype or torch.float64
    w = torch.as_tensor(fwhm_pixels, dtype=dtype, device=device)
    r = int(radius)
    ar = torch.arange(-r, r + 1, dtype=dtype, device=device)
    dy, dx = torch.meshgrid(ar, ar, indexing="ij")
    if psf == "gauss":
        k = gauss_pixel(dx, dy, w)
    else:
        k = fiber_pixel(dx, dy, w * FIBER_G_PER_FWHM)
    return torch.where(dx * dx + dy * dy <= r * r, k, torch.zeros_like(k))


def lost_fraction(psf: str, fwhm_pixels, radius):
    """The C's estimate of the fraction of a pixel's photons falling beyond ``radius``.

    gauss: exp(-log(16) (r/fwhm)^2); fiber: g / sqrt(g^2 + r^2).
    """
    w = fwhm_pixels
    if psf == "gauss":
        return torch.exp(-_LOG16 * (radius / w) ** 2)
    g = w * FIBER_G_PER_FWHM
    return g / torch.sqrt(g * g + radius * radius)


def convolve(image: torch.Tensor, kernel: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """Zero-padded 2-D convolution of ``image`` (..., S, F) with an odd square ``kernel`` (K, K).

    ``method``: "direct" (``conv2d``), "fft" (``torch.fft.rfft2``) or "auto"
    (FFT once the kernel is wider than 15 pixels).  Photons that fall off the
    image are dropped.  Differentiable in both arguments.
    """
    K = kernel.shape[-1]
    r = K // 2
    if method == "auto":
        method = "fft" if K > 15 else "direct"
    shape = image.shape
    img = image.reshape(-1, 1, shape[-2], shape[-1])
    kern = kernel.to(img.dtype)
    if method == "direct":
        # conv2d is a correlation: flip the kernel (it is symmetric, but stay general)
        out = nnf.conv2d(img, kern.flip(-1, -2)[None, None], padding=r)
        return out.reshape(shape)
    if method != "fft":
        raise ValueError(f"method must be 'auto', 'direct' or 'fft', got {method!r}")
    S, F = shape[-2], shape[-1]
    fs, ff = S + K - 1, F + K - 1
    spec = torch.fft.rfft2(img, s=(fs, ff)) * torch.fft.rfft2(kern, s=(fs, ff))
    full = torch.fft.irfft2(spec, s=(fs, ff))
    return full[..., r:r + S, r:r + F].reshape(shape)


def apply_psf(photons: torch.Tensor, psf: str, fwhm_pixels, radius: int, method: str = "auto",
              restore_lost: bool = True) -> torch.Tensor:
    """Blur ``photons`` (..., S, F) with the PSF cut at ``radius`` pixels.

    With ``restore_lost`` the photons the cut loses (the C's estimate,
    :func:`lost_fraction`, for every pixel with photons) are spread evenly over
    the image, as ``noisify`` does.  Differentiable in ``photons`` and
    ``fwhm_pixels``.
    """
    kern = psf_kernel(psf, fwhm_pixels, radius, dtype=photons.dtype, device=photons.device)
    out = convolve(photons, kern, method)
    if restore_lost:
        w = torch.as_tensor(fwhm_pixels, dtype=photons.dtype, device=photons.device)
        lost = (photons.clamp_min(0) * lost_fraction(psf, w, float(radius))).sum((-2, -1), keepdim=True)
        out = out + lost / (photons.shape[-2] * photons.shape[-1])
    return out
