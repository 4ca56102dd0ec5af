"""Writes the small example inputs shipped in examples/ (run from the repository root):

* ``P1.hkl``: a synthetic P1 reflection list, h k l F for |h|, |k|, |l| <= 6 (2197 lines),
  amplitudes from a fixed generator with a Wilson-like fall-off (not a real structure);
* ``A.mat``: the MOSFLM orientation matrix (reciprocal vectors x wavelength, 1 Angstrom) of
  the triclinic cell 70 80 90 75 85 95 with the misset 10 5 3 degrees, as nanoBragg computes it.

    python examples/make_inputs.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def write_hkl(path: Path) -> None:
    rng = np.random.default_rng(17)
    lines = []
    for h in range(-6, 7):
        for k in range(-6, 7):
            for l in range(-6, 7):
                s2 = (h / 70.0) ** 2 + (k / 80.0) ** 2 + (l / 90.0) ** 2      # ~ (1/d)^2
                F = 100.0 * np.exp(-20.0 * s2) * np.sqrt(rng.exponential())
                lines.append("%d %d %d %.2f" % (h, k, l, F))
    path.write_text("\n".join(lines) + "\n")


def write_matrix(path: Path) -> None:
    from nanobragg_torch import from_args
    from nanobragg_torch.simulator import prepare
    s = from_args("-cell 70 80 90 75 85 95 -misset 10 5 3 -lambda 1 -default_F 1 -detpixels 8")
    lat = prepare(s.crystal, s.detector, s.beam, dtype=torch.float64).lattice
    rows = torch.stack([lat.a_star, lat.b_star, lat.c_star], 1) * 1.0      # [xyz][a* b* c*], 1/A x 1 A
    path.write_text("".join(" %14.10f %14.10f %14.10f\n" % tuple(float(v) for v in r) for r in rows))


if __name__ == "__main__":
    write_hkl(HERE / "P1.hkl")
    write_matrix(HERE / "A.mat")
