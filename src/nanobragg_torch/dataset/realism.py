"""``[background]`` and ``[detector]`` sections of an experiment file: what makes a frame realistic.

``[background]`` adds the scattering of an amorphous sample (nonBragg's physics,
:mod:`nanobragg_torch.models.amorphous`) to every frame's photons, on the frame's
own detector and beam::

    [background]
    stol = "water.stol"        # table of F vs sin(theta)/lambda (relative to the experiment file)
    units = "stol"             # stol | 4stol | Q (as nonBragg's -stol / -4stol / -Q)
    thickness = 0.1            # mm along the beam (nonBragg -thickness)
    width = 0.1                # mm (optional; default 0.1), height likewise
    density = 1.0              # g/cm^3
    MW = 18                    # g/mol
    oversample = 1

``[detector]`` replaces the plain Poisson noise of noise frames by noisify's
detector response (:func:`nanobragg_torch.noisify.noisify_c`, with the frame's
noise seed)::

    [detector]
    psf = "gauss"              # gauss | fiber | none
    psf_fwhm = 100             # um
    psf_radius = 0             # pixels, 0 = automatic
    gain = 1.0                 # ADU/photon
    adc = 40                   # ADU
    readout = 3.0              # ADU rms
    flicker = 0.0              # fraction rms
    calibration = 0.03         # fraction rms, a static per-pixel error ...
    calib_seed = 123456789     # ... the same for every frame
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional

import numpy as np

BACKGROUND_KEYS = {"stol", "units", "thickness", "width", "height", "density", "MW", "oversample"}
DETECTOR_KEYS = {"psf", "psf_fwhm", "psf_radius", "gain", "adc", "readout", "flicker", "calibration", "calib_seed"}


def _num(where, v, low=None, strict=False):
    from .spec import SpecError
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(f"{where}: expected a number, got {v!r}")
    if low is not None and (v <= low if strict else v < low):
        raise SpecError(f"{where}: must be {'positive' if strict else 'zero or positive'}, got {v!r}")
    return float(v)


def parse_background(table: Dict[str, Any], input_dir: str) -> Dict[str, Any]:
    """Checked ``[background]`` values (lengths in m); the table file is read and checked now."""
    from ..models.amorphous import StolTable, StolTableError
    from .spec import SpecError
    extra = set(table) - BACKGROUND_KEYS
    if extra:
        raise SpecError(f"[background]: unknown keys {sorted(extra)}; expected {sorted(BACKGROUND_KEYS)}")
    if "stol" not in table or not isinstance(table["stol"], str):
        raise SpecError("[background] stol: the structure-factor table file is required")
    units = table.get("units", "stol")
    if units not in ("stol", "4stol", "Q"):
        raise SpecError(f"[background] units: expected stol, 4stol or Q, got {units!r}")
    path = table["stol"] if os.path.isabs(table["stol"]) else os.path.join(input_dir, table["stol"])
    try:
        StolTable.read(path, units)
    except StolTableError as e:
        raise SpecError(f"[background] stol: {e}") from None
    out = {"stol": path, "units": units}
    for key, default in (("thickness", 0.1), ("width", 0.1), ("height", 0.1)):
        out[key] = _num(f"[background] {key}", table.get(key, default), 0.0, strict=True) * 1e-3
    out["density"] = _num("[background] density", table.get("density", 1.0), 0.0, strict=True)
    out["MW"] = _num("[background] MW", table.get("MW", 18.0), 0.0, strict=True)
    ov = table.get("oversample", 1)
    if isinstance(ov, bool) or not isinstance(ov, int) or ov < 1:
        raise SpecError(f"[background] oversample: expected an integer >= 1, got {ov!r}")
    out["oversample"] = ov
    return out


def parse_detector(table: Dict[str, Any]) -> Dict[str, Any]:
    """Checked ``[detector]`` values (psf_fwhm in m)."""
    from .spec import SpecError
    extra = set(table) - DETECTOR_KEYS
    if extra:
        raise SpecError(f"[detector]: unknown keys {sorted(extra)}; expected {sorted(DETECTOR_KEYS)}")
    psf = table.get("psf", "none")
    if psf not in ("gauss", "fiber", "none"):
        raise SpecError(f"[detector] psf: expected gauss, fiber or none, got {psf!r}")
    out: Dict[str, Any] = {"psf": None if psf == "none" else psf}
    out["psf_fwhm"] = _num("[detector] psf_fwhm", table.get("psf_fwhm", 46.0), 0.0, strict=True) * 1e-6
    r = table.get("psf_radius", 0)
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise SpecError(f"[detector] psf_radius: expected an integer >= 0, got {r!r}")
    out["psf_radius"] = r
    out["gain"] = _num("[detector] gain", table.get("gain", 1.0), 0.0, strict=True)
    out["adc"] = _num("[detector] adc", table.get("adc", 40.0))
    for key, default in (("readout", 0.0), ("flicker", 0.0), ("calibration", 0.03)):
        out[key] = _num(f"[detector] {key}", table.get(key, default), 0.0)
    cs = table.get("calib_seed", 123456789)
    if isinstance(cs, bool) or not isinstance(cs, int):
        raise SpecError(f"[detector] calib_seed: expected an integer, got {cs!r}")
    out["calib_seed"] = cs
    return out


def add_background(img32: np.ndarray, st, bg: Dict[str, Any]) -> np.ndarray:
    """The frame's float image plus the amorphous scattering on its own detector and beam."""
    import torch
    from ..models import Beam, Detector
    from ..models.amorphous import AmorphousSample, StolTable, amorphous_image
    table = StolTable.read(bg["stol"], bg["units"])
    sample = AmorphousSample(table, thickness=bg["thickness"], width=bg["width"], height=bg["height"],
                             density=bg["density"], molecular_weight=bg["MW"])
    det, beam = Detector(st.detector), Beam(st.beam)
    roi = st.detector.roi
    with torch.no_grad():
        extra = amorphous_image(sample, det, beam, oversample=bg["oversample"], dtype=torch.float64,
                                roi=roi, backend="auto").numpy()
    return (img32.astype(np.float64) + extra.astype(np.float64)).astype(np.float32)


def detector_noise(img32: np.ndarray, seed: int, d: Dict[str, Any], pixel_size: float) -> np.ndarray:
    """noisify's noise image (uint16) of the frame's photons, with the frame's (stored, negated) seed."""
    from ..noisify import NoisifyParams, noisify_c
    S, F = img32.shape
    p = NoisifyParams(xpixels=F, ypixels=S, pixel_size=pixel_size, psf=d["psf"], psf_fwhm=d["psf_fwhm"],
                      psf_radius=d["psf_radius"], gain=d["gain"], adc=d["adc"], readout=d["readout"],
                      flicker=d["flicker"], calibration=d["calibration"], seed=int(seed),
                      calib_seed=-int(d["calib_seed"]), noise=True, bits=16, psf_edges="clip")
    return noisify_c(img32, p).noise_adu
