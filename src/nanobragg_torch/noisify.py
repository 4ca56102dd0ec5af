"""Detector response: what ``noisify`` does to an image in photons/pixel.

Two layers:

* :func:`noisify_c` (defined in :mod:`nanobragg_torch.noisify_program`, which
  imports no torch) reproduces the reference ``noisify`` program pixel for
  pixel (numpy, and C or numba kernels): the C random generator
  (:mod:`nanobragg_torch.rng`) with its ``-seed`` and ``-calib_seed`` streams,
  float32 rounding where the C rounds, the PSF with a radius chosen per pixel,
  and the C's integer conversions.  The command line (``noisify``) and the
  golden comparison use it.
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

from typing import Dict, Optional

import numpy as np
import torch

from . import noisify_program as _prog
from . import rng as _rng
from .noisify_program import (DEFAULT_FLUENCE, R_E_SQR, NoisifyParams, NoisifyResult,  # noqa: F401 (API)
                              noisify_c, to_adu_ints)
from .physics import psf as _psf

__all__ = ["NoisifyParams", "NoisifyResult", "noisify_c", "noisify", "Noisify", "to_adu_ints"]


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
        s = np.array([-int(seed)], dtype=np.int64)
        # the C stores -calib_seed N as -N; without the flag its seed variable holds +123456789
        cs = np.array([123456789 if calib_seed is None else -int(calib_seed)], dtype=np.int64)
        lib = _prog._cnoise()
        if lib is not None:
            from .backends import cnoise
            drawn, _ = cnoise.photon_noise(lib, flat, float(flicker), float(calibration), state._ist, state._fst,
                                           s, cs)
        else:
            _prog._enable_jit()
            drawn = np.empty(flat.shape[0], dtype=np.float64)
            _prog._photon_noise_k(flat, float(flicker), float(calibration), state._ist, state._fst, s, cs, drawn)
        counts = torch.from_numpy(drawn.reshape(mean.shape)).to(img.device, img.dtype)
        z = torch.zeros_like(counts)
        if float(readout) > 0.0:
            # the read-out draws (gaussdev on the noise stream, after the Poisson draws)
            _prog._enable_jit()
            zz = np.empty(flat.shape[0], dtype=np.float64)
            _prog._readout_k(np.zeros(flat.shape[0], np.float32), 0.0, 0.0, 1.0, state._ist, state._fst, s, zz)
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
