"""The torch-free pieces of the point-spread functions: constants and the C's automatic radius.

Shared by :mod:`nanobragg_torch.physics.psf` (the differentiable torch API) and the
``noisify`` program's C-exact path (:mod:`nanobragg_torch.noisify_program`), which
imports no torch.
"""
from __future__ import annotations

import math

#: fwhm -> g of the fibre PSF: fwhm = sqrt(2^(2/3) - 1) * ... (the C's constant)
FIBER_G_PER_FWHM = 0.652383013252053


def auto_radius(psf: str, fwhm_pixels: float, max_photons: float, photonloss_factor: float = 10.0) -> int:
    """The C's automatic kernel radius for a brightest pixel of ``max_photons``.

    The radius beyond which the photons lost from that pixel drop below its
    shot noise / ``photonloss_factor``.  Floats in, an int out (not differentiable).
    """
    if max_photons <= 0:
        return 1
    lost = math.sqrt(max_photons) / photonloss_factor
    if psf == "gauss":
        arg = -math.log(lost / max_photons) / math.log(4.0) / 2.0
        r = 1 + math.ceil(math.sqrt(arg) * fwhm_pixels) if arg >= 0 else 1
    else:
        r = 1 + math.ceil(fwhm_pixels * FIBER_G_PER_FWHM * (max_photons / lost))
    return max(int(r), 1)
