#!/usr/bin/env python3
"""Render rotation sweeps with nanoBragg and process them with DIALS: import, find spots, index.

For each geometry (beam centred, beam off-centre, tilted detector) the script
renders FRAMES frames of 1 degree of an orthorhombic 57 x 68 x 79 A cell
(Gaussian spots, ten cells across, on a 256 x 240 pixel detector of 172 um pixels),
written as CBF (the integer image) and as NeXus (the noise image; the frames
joined into one sweep file with ``nanobragg_torch.io.nexus.stack_nexus``),
then runs ``dials.import``, ``dials.find_spots`` and ``dials.index`` on each
and prints, per sweep: the beam centre dxtbx reads against where the direct
beam meets the detector (computed from the engine's vectors stored in the
NeXus file), and the indexed cell against the simulated one.

Usage:  python scripts/dials_sweeps.py [--frames 20] [--out DIR] [--cases centred,offcentre,tilted]
Needs DIALS (``apt-get install dials``) and this package installed.  Exit 1
when a sweep misses the acceptance limits (0.5 px, 0.3 %, 0.3 deg).
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

import numpy as np

CELL = (57.0, 68.0, 79.0, 90.0, 90.0, 90.0)
COMMON = ["-cell", *map(str, CELL), "-misset", "10", "20", "30", "-default_F", "100", "-N", "10",
          "-gauss_xtal", "-lambda", "1", "-osc", "1",
          "-phisteps", "3", "-oversample", "1", "-pixel", "0.172", "-detpixels_f", "256",
          "-detpixels_s", "240"]
CASES = {
    "centred": ["-distance", "120"],
    "offcentre": ["-distance", "120", "-Xbeam", "14", "-Ybeam", "27"],
    "tilted": ["-distance", "120", "-Xbeam", "30", "-Ybeam", "25", "-detector_rotx", "5", "-twotheta", "15"],
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


def render(case: str, frames: int, out: str) -> str:
    from nanobragg_torch.io.nexus import stack_nexus
    work = os.path.join(out, case)
    os.makedirs(os.path.join(work, "cbf"), exist_ok=True)
    os.makedirs(os.path.join(work, "nxs"), exist_ok=True)
    singles = []
    for i in range(frames):
        cbf = os.path.join(work, "cbf", f"{case}_{i + 1:03d}.cbf")
        nxs = os.path.join(work, f"frame_{i + 1:03d}.nxs")
        if not (os.path.exists(cbf) and os.path.exists(nxs)):
            cmd = [sys.executable, "-m", "nanobragg_torch", *COMMON, *CASES[case], "-phi", str(i),
                   "-seed", str(i + 1), "-intfile", cbf, "-noisefile", nxs,
                   "-floatfile", os.path.join(work, "float.bin"), "-pgmfile", os.path.join(work, "p.pgm")]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"nanoBragg failed: {r.stderr.strip()}")
        singles.append(nxs)
    sweep = os.path.join(work, "nxs", f"{case}_sweep.nxs")
    stack_nexus(singles, sweep)
    return work


def expected_beam(nxs: str):
    from nanobragg_torch.io.geometry import beam_on_detector
    from nanobragg_torch.io.nexus import nexus_geometry
    g = nexus_geometry(nxs)
    spot = beam_on_detector(g["nanobragg_pix0_m"], g["nanobragg_fdet"], g["nanobragg_sdet"],
                            g["nanobragg_beam_vector"])
    return spot.in_pixels(g["pixel_size_m"]), spot.distance_m


def process(folder: str, files, py: str) -> dict:
    run(["dials.import", *files], folder, "import.log")
    run(["dials.find_spots", "imported.expt", "nproc=2"], folder, "find_spots.log")
    res = {}
    out = subprocess.run([py, "-c", _DXTBX, "imported.expt"], cwd=folder, capture_output=True, text=True)
    res.update(json.loads(out.stdout))
    # dials.index as it comes (it refines the detector and beam with the crystal), and with the
    # file's detector and beam kept fixed (the cell then rests on the header geometry alone)
    for key, extra, name in (("cell", [], "indexed"),
                             ("cell_fixed", ["detector.fix=all", "beam.fix=all"], "indexed_fixed")):
        try:
            run(["dials.index", "imported.expt", "strong.refl", *extra, f"output.experiments={name}.expt",
                 f"output.reflections={name}.refl"], folder, f"{name}.log")
            out = subprocess.run([py, "-c", _DXTBX, f"{name}.expt"], cwd=folder, capture_output=True, text=True)
            res[key] = json.loads(out.stdout).get("cell")
            if key == "cell":
                res["refined_distance_mm"] = json.loads(out.stdout).get("distance_mm")
        except RuntimeError as e:
            res[key + "_error"] = str(e)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--out", default="dials_sweeps")
    ap.add_argument("--cases", default=",".join(CASES))
    opts = ap.parse_args(argv)
    py = dials_python()
    ok = True
    print("%-10s %-4s %-22s %-22s %-7s %-8s %-8s %-40s %-22s %-40s %s" % (
        "case", "fmt", "dxtbx beam centre px", "beam hits px", "d px", "dist mm", "refined",
        "indexed cell", "max err %, deg", "indexed cell, file geometry fixed", "max err %, deg"))

    def cell_text(cell):
        if not cell:
            return "not indexed", "", False
        lerr = max(abs(c - r) / r * 100 for c, r in zip(cell[:3], CELL[:3]))
        aerr = max(abs(c - r) for c, r in zip(cell[3:], CELL[3:]))
        return ("%.3f %.3f %.3f %.2f %.2f %.2f" % tuple(cell), "%.3f %%, %.3f deg" % (lerr, aerr),
                lerr <= 0.3 and aerr <= 0.3)
    for case in opts.cases.split(","):
        work = render(case, opts.frames, opts.out)
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
            c1, e1, ok1 = cell_text(res.get("cell"))
            c2, e2, ok2 = cell_text(res.get("cell_fixed"))
            ok &= dpx <= 0.5 and ok1
            print("%-10s %-4s (%8.3f, %8.3f)   (%8.3f, %8.3f)   %-7.4f %-8.3f %-8s %-40s %-22s %-40s %s"
                  % (case, fmt, cx, cy, bx, by, dpx, res["distance_mm"],
                     "%.3f" % res["refined_distance_mm"] if res.get("refined_distance_mm") else "-",
                     c1, e1, c2, e2), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
