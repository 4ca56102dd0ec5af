#!/usr/bin/env python
"""Bragg spots + water background + detector response, in one call, on one set of models.

    python examples/bragg_water_detector.py [--stol water.stol] [--out image.npy]

The crystal, detector and beam come from nanoBragg flags (:func:`nanobragg_torch.from_args`);
the water ring is nonBragg's amorphous model rendered on the *same* Detector and Beam
models; noisify's response (Poisson noise from the C generator, a Gaussian PSF, gain,
ADC offset, read-out noise) turns the sum into detector counts.  Without ``--stol`` a
small built-in water-like table is used.  The function is differentiable in the PSF
width, the gain, the water thickness and every geometry tensor (with ``noise="normal"``).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from nanobragg_torch import from_args, simulate
from nanobragg_torch.models.amorphous import AmorphousSample, StolTable, amorphous_image
from nanobragg_torch.noisify import noisify

FLAGS = ("-cell 70 80 90 75 85 95 -default_F 100 -N 5 -lambda 1.0 -distance 100 -detpixels 128 "
         "-pixel 0.2 -misset 10 20 30 -fluence 1e20")
# F(sin(theta)/lambda) of water, coarsely (the reference repository ships a fine table: water.stol)
WATER = StolTable([0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 1.0],
                  [2.57, 2.2, 2.4, 3.1, 2.9, 2.3, 1.9, 1.7, 1.4, 1.1], name="built-in water")


def realistic_image(setup, water: AmorphousSample, *, psf_fwhm=100e-6, gain=1.0, readout=3.0, seed=1,
                    noise="c"):
    """One call: Bragg + water photons/pixel on the set-up's detector, then the detector response."""
    bragg = simulate(setup.crystal, setup.detector, setup.beam, setup.structure_factors, setup.options).image
    background = amorphous_image(water, setup.detector, setup.beam, dtype=bragg.dtype)
    pixel = float(setup.detector.pixel_size)
    return noisify(bragg + background, pixel_size=pixel, psf="gauss", psf_fwhm=psf_fwhm, psf_radius=3,
                   gain=gain, readout=readout, noise=noise, seed=seed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stol", help="a stol table (e.g. water.stol of bl831/nanoBragg)")
    ap.add_argument("--out", default="realistic.npy")
    a = ap.parse_args()
    setup = from_args(FLAGS)
    table = StolTable.read(a.stol) if a.stol else WATER
    water = AmorphousSample(table, thickness=0.1e-3)         # a 100 um water layer
    out = realistic_image(setup, water)
    img = out["noisy"].detach().numpy()
    np.save(a.out, img)
    print(f"Bragg + water + detector: {img.shape}, mean {img.mean():.1f} ADU, max {img.max():.0f} ADU; "
          f"noise-free mean {out['ideal'].mean():.1f} ADU; written {a.out}")
    # the gradient of the mean noise-free signal with respect to the PSF width and the water thickness
    fwhm = torch.tensor(100e-6, dtype=torch.float64, requires_grad=True)
    water.thickness = torch.tensor(0.1e-3, dtype=torch.float64, requires_grad=True)
    ideal = realistic_image(setup, water, psf_fwhm=fwhm, noise=None)["ideal"]
    ideal.pow(2).mean().backward()
    print(f"d<ideal^2>/d fwhm = {float(fwhm.grad):.4g} per m, d<ideal^2>/d thickness = "
          f"{float(water.thickness.grad):.4g} per m")


if __name__ == "__main__":
    main()
