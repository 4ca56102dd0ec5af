#!/usr/bin/env python3
"""Render rotation sweeps with nanoBragg and process them with DIALS: import, find spots, index, refine.

For each geometry (beam centred, beam off-centre, tilted detector) the script
renders FRAMES frames of 1 degree of an orthorhombic 57 x 68 x 79 A cell on a
487 x 619 pixel detector of 172 um pixels (one Pilatus 300K-sized module
block) at 100 mm, so that the corners reach ~1.7 A at 1 A wavelength.
The frames are meant to look like a real sweep to DIALS's default processing:

* structure factors with a Wilson (acentric) distribution, mean F 100, seeded,
  to 1.2 A, without F000 (no zero-order spot on the beam: a real beam stop);
* Gaussian spots of a 10-cell crystal with a 0.2 deg mosaic spread (10
  domains), the 1 deg frame integrated over 10 spindle steps, so each
  reflection spreads over a few 0.1 deg steps and its partials on adjacent
  frames add up smoothly;
* 0.1 um of water (``-water 0.1``): a smooth ~5 photon/pixel background;
* the Poisson noise image at the default fluence (spots of hundreds to tens
  of thousands of photons), written as CBF and as NeXus: the same pixels in
  both, so the two formats differ only in how they describe the geometry.

Per frame: the command line writes the noise image as NeXus; this script writes
the same pixels as CBF through ``nanobragg_torch.io.write_image`` with the
run's metadata (mini-CBF for an untilted detector, full imgCIF for the tilted
one).  The NeXus frames are joined into one sweep file with
``nanobragg_torch.io.nexus.stack_nexus``.  Then ``dials.import``,
``dials.find_spots``, ``dials.index`` and ``dials.refine`` run with their
defaults (nothing fixed), and the script prints per sweep: the beam centre
dxtbx reads against where the direct beam meets the detector (from the
engine's vectors stored in the NeXus file), the cell of dials.index and of
dials.refine against the simulated one, and the seconds spent.

Usage:  python scripts/dials_sweeps.py [--frames 20] [--out DIR] [--cases centred,offcentre,tilted]
Needs DIALS (``apt-get install dials``) and this package installed.  Exit 1
when a sweep misses the acceptance limits (0.5 px; dials.index's cell 0.3 %, 0.3 deg).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np

CELL = (57.0, 68.0, 79.0, 90.0, 90.0, 90.0)
HKL = "wilson.hkl"
COMMON = ["-cell", *map(str, CELL), "-misset", "10", "20", "30", "-hkl", HKL, "-N", "10",
          "-gauss_xtal", "-mosaic", "0.2", "-mosaic_domains", "10", "-lambda", "1", "-osc", "1",
          "-phisteps", "10", "-oversample", "1", "-water", "0.1", "-pixel", "0.172",
          "-detpixels_f", "487", "-detpixels_s", "619", "-distance", "100", "-noprogress", "-nopgm"]
CASES = {
    "centred": [],
    "offcentre": ["-Xbeam", "30", "-Ybeam", "40"],
    "tilted": ["-Xbeam", "50", "-Ybeam", "40", "-detector_rotx", "5", "-twotheta", "15"],
}

#: prints the beam centre (px) and, for an indexed file, the cell, from dxtbx's models
_DXTBX = r"""
import json, sys
from dxtbx.model.experiment_list import ExperimentListFactory
el = ExperimentListFactory.from_json_file(sys.argv[1], check_format=False)
e = el[0]
out = {"beam_centre_px": list(e.detector[0].get_beam_centre_px(e.beam.get_s0())),
       "distance_mm": e.detector[0].get_distance(), "n_experiments": len(el)}
if e.crystal is not None:
    out["cell"] = list(e.crystal.get_unit_cell().parameters())
print(json.dumps(out))
"""


def write_wilson_hkl(path: str, d_min: float = 1.2, seed: int = 16) -> int:
    """P1 ``h k l F`` to d_min: acentric Wilson amplitudes (mean 100*sqrt(pi)/2), F000 left out."""
    a, b, c = CELL[:3]
    h, k, l = np.meshgrid(*(np.arange(-int(x / d_min) - 1, int(x / d_min) + 2) for x in (a, b, c)),
                          indexing="ij")
    s2 = (h / a) ** 2 + (k / b) ** 2 + (l / c) ** 2
    keep = (s2 > 0) & (s2 <= 1 / d_min ** 2)
    h, k, l = h[keep], k[keep], l[keep]
    rng = np.random.default_rng(seed)
    F = 100 * np.abs(rng.normal(size=h.size) + 1j * rng.normal(size=h.size)) / math.sqrt(2)
    np.savetxt(path, np.column_stack([h, k, l, F]), fmt="%d %d %d %.2f")
    return h.size


def dials_python() -> str:
    """The python interpreter the DIALS tools run on (from dials.import's first line)."""
    exe = shutil.which("dials.import")
    if exe is None:
        raise SystemExit("dials.import not found: install DIALS (apt-get install dials)")
    with open(exe) as fh:
        first = fh.readline().strip()
    return first[2:].split()[0] if first.startswith("#!") else "python3"


def run(cmd, cwd, log):
    with open(os.path.join(cwd, log), "w") as fh:
        r = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed in {cwd} (see {log})")


def render(case: str, frames: int, out: str):
    """The sweep's frames: NeXus from the command line, the same pixels as CBF; (folder, seconds/frame)."""
    from nanobragg_torch.cli.flags import parse_flags
    from nanobragg_torch.cli.resolve import build_setup
    from nanobragg_torch.io import read_nexus, write_image
    from nanobragg_torch.io.formats import frame_metadata
    from nanobragg_torch.io.nexus import stack_nexus
    from nanobragg_torch.simulator import prepare
    work = os.path.abspath(os.path.join(out, case))
    os.makedirs(os.path.join(work, "cbf"), exist_ok=True)
    os.makedirs(os.path.join(work, "nxs"), exist_ok=True)
    if not os.path.exists(os.path.join(work, HKL)):
        write_wilson_hkl(os.path.join(work, HKL))
    singles, seconds = [], []
    for i in range(frames):
        cbf = os.path.join(work, "cbf", f"{case}_{i + 1:03d}.cbf")
        nxs = os.path.join(work, f"frame_{i + 1:03d}.nxs")
        if not (os.path.exists(cbf) and os.path.exists(nxs)):
            args = [*COMMON, *CASES[case], "-phi", str(i), "-seed", str(i + 1)]
            cmd = [sys.executable, "-m", "nanobragg_torch", *args, "-noisefile", nxs,
                   "-intfile", os.path.join(work, "int.img"), "-floatfile", os.path.join(work, "float.bin")]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
            seconds.append(time.perf_counter() - t0)
            if r.returncode != 0:
                raise RuntimeError(f"nanoBragg failed: {r.stderr.strip()}")
            old = os.getcwd()
            os.chdir(work)
            try:
                st = build_setup(parse_flags(args))
                meta = frame_metadata(st, prepare(st.crystal, st.detector, st.beam))
            finally:
                os.chdir(old)
            _, image, _ = read_nexus(nxs)
            write_image(cbf, image, meta)
        singles.append(nxs)
    sweep = os.path.join(work, "nxs", f"{case}_sweep.nxs")
    stack_nexus(singles, sweep)
    return work, (float(np.median(seconds)) if seconds else float("nan"))


def expected_beam(nxs: str):
    from nanobragg_torch.io.geometry import beam_on_detector
    from nanobragg_torch.io.nexus import nexus_geometry
    g = nexus_geometry(nxs)
    spot = beam_on_detector(g["nanobragg_pix0_m"], g["nanobragg_fdet"], g["nanobragg_sdet"],
                            g["nanobragg_beam_vector"])
    return spot.in_pixels(g["pixel_size_m"]), spot.distance_m


def process(folder: str, files, py: str) -> dict:
    t0 = time.perf_counter()
    run(["dials.import", *files], folder, "import.log")
    run(["dials.find_spots", "imported.expt", "nproc=2"], folder, "find_spots.log")
    res = {}
    out = subprocess.run([py, "-c", _DXTBX, "imported.expt"], cwd=folder, capture_output=True, text=True)
    res.update(json.loads(out.stdout))
    with open(os.path.join(folder, "find_spots.log")) as fh:
        res["spots"] = next((line.split()[1] for line in fh if line.startswith("Saved ")), "?")
    try:
        run(["dials.index", "imported.expt", "strong.refl"], folder, "index.log")
        out = subprocess.run([py, "-c", _DXTBX, "indexed.expt"], cwd=folder, capture_output=True, text=True)
        res["cell"] = json.loads(out.stdout).get("cell")
        run(["dials.refine", "indexed.expt", "indexed.refl"], folder, "refine.log")
        out = subprocess.run([py, "-c", _DXTBX, "refined.expt"], cwd=folder, capture_output=True, text=True)
        res["cell_refined"] = json.loads(out.stdout).get("cell")
        res["refined_distance_mm"] = json.loads(out.stdout).get("distance_mm")
    except RuntimeError as e:
        res["error"] = str(e)
    res["seconds"] = time.perf_counter() - t0
    return res


def cell_error(cell):
    """(largest length error %, largest angle error deg) against CELL, or None."""
    if not cell:
        return None
    return (max(abs(c - r) / r * 100 for c, r in zip(cell[:3], CELL[:3])),
            max(abs(c - r) for c, r in zip(cell[3:], CELL[3:])))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--out", default="dials_sweeps")
    ap.add_argument("--cases", default=",".join(CASES))
    opts = ap.parse_args(argv)
    py = dials_python()
    ok = True
    print("%-10s %-4s %-20s %-20s %-7s %-7s %-6s %-40s %-17s %-17s %-8s %s" % (
        "case", "fmt", "dxtbx beam px", "beam hits px", "d px", "dist mm", "spots",
        "dials.index cell", "index err %,deg", "refine err %,deg", "refined", "s render/frame, DIALS"))
    for case in opts.cases.split(","):
        work, per_frame = render(case, opts.frames, opts.out)
        (bx, by), dist = expected_beam(os.path.join(work, "frame_001.nxs"))
        for fmt in ("cbf", "nxs"):
            folder = os.path.join(work, fmt)
            files = sorted(glob.glob(os.path.join(folder, f"{case}_*.{fmt}")))
            try:
                res = process(folder, [os.path.basename(f) for f in files], py)
            except RuntimeError as e:
                print(f"{case:10s} {fmt:4s} FAILED: {e}")
                ok = False
                continue
            cx, cy = res["beam_centre_px"]
            dpx = math.hypot(cx - bx, cy - by)
            e1, e2 = cell_error(res.get("cell")), cell_error(res.get("cell_refined"))
            ok &= dpx <= 0.5 and e1 is not None and e1[0] <= 0.3 and e1[1] <= 0.3
            cell = "%.3f %.3f %.3f %.3f %.3f %.3f" % tuple(res["cell"]) if res.get("cell") else res.get("error")
            print("%-10s %-4s (%7.3f, %7.3f) (%7.3f, %7.3f) %-7.4f %-7.3f %-6s %-40s %-17s %-17s %-8s %.1f, %.0f"
                  % (case, fmt, cx, cy, bx, by, dpx, res["distance_mm"], res["spots"], cell,
                     "%.3f, %.3f" % e1 if e1 else "-", "%.3f, %.3f" % e2 if e2 else "-",
                     "%.3f" % res["refined_distance_mm"] if res.get("refined_distance_mm") else "-",
                     per_frame, res["seconds"]), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
