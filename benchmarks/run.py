#!/usr/bin/env python
"""Benchmark suite: this project against the C nanoBragg on the same machine, in one run.

    python benchmarks/run.py [--c-bin PATH | NB_C_BIN=PATH] [--cases B1,B2,B3,B4,B5] [--dtype float32]
                             [--repeat 3] [--json benchmarks/results.json] [--b3-size 2048]
                             [--device cpu|cuda] [--compile]

For every case it reports: evaluations (pixels x subpaths); whole-process wall
times of the C program, of ours (``python -m nanobragg_torch``, default flags
plus ``-dtype``) and of ``python -c "import torch"``, run in turn (C, ours,
import, C, ours, import, ...) so that a drift of the machine's speed hits all
three alike; the ratios C / ours and ours - import; in a fresh process per case
(``--steady-worker``), the first in-process render (the pipeline's
``render_problem``, set-up excluded) and the median of the renders after it
("steady state"), with the backend that rendered; the peak resident memory of
each whole process, and CPU seconds (user + system) of the C process and of our
steady renders.  Whole-process figures are medians over ``--repeat`` runs; the C
program runs with its default OpenMP threads.  ``--compile`` runs our side with
``-compile``.  Not part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "B1": "-cell 100 100 100 90 90 90 -default_F 100 -lambda 6.2 -N 5 -distance 100 -detpixels 1024",
    "B2": ("-cell 70 80 90 75 85 95 -default_F 100 -N 5 -mosaic 0.5 -mosaic_dom 5 -phi 0 -osc 90 -phisteps 9 "
           "-detector_rotx 5 -detector_roty 3 -detector_rotz 2 -twotheta 10 -detector_abs 500 -detector_thick 450 "
           "-thicksteps 5 -polar 0.95 -detpixels 512 -pixel 0.1 -distance 100 -lambda 1.0 -seed 1 -mosaic_seed 2"),
    "B3": ("-cell 70 80 90 75 85 95 -default_F 100 -lambda 1.0 -N 5 -distance 100 -detpixels {b3} -pixel 0.05 "
           "-oversample 2 -misset 10 5 3"),
    "B4": "-cell 70 80 90 75 85 95 -hkl dense_p1.hkl -lambda 1.0 -N 2 -distance 200 -detpixels 512 -pixel 0.025",
    # a Pilatus 6M frame: custom (slightly tilted) detector axes and beam, a 0.1 degree
    # sweep in 10 steps about -x, a real-sized crystal, a MOSFLM matrix in a general
    # orientation and a P1 reflection list to 1.9 A (both written by write_b5_inputs)
    "B5": ("-mat b5.mat -hkl b5_p1.hkl -lambda {b5_lambda} -distance 200 -pixel 0.172 "
           "-detpixels_f 2463 -detpixels_s 2527 -Xbeam 213.6 -Ybeam 216.1 "
           "-fdet_vector {b5_f} -sdet_vector {b5_s} -odet_vector {b5_o} -beam_vector {b5_beam} "
           "-spindle_axis -1 0 0 -phi 0 -osc 0.1 -phisteps 10 -Na 36 -Nb 47 -Nc 29 "
           "-flux 1e18 -exposure 1 -beamsize 1.0 -nonoise -nointerpolate -oversample 1"),
}

#: B5's crystal: cell (A, degrees), orientation (rotations about x, y, z, degrees), wavelength (A),
#: resolution of the reflection list (A)
B5_CELL = (68.2, 75.4, 88.9, 88.1, 95.3, 91.7)
B5_ORIENTATION = (23.0, -41.0, 67.0)
B5_LAMBDA = 0.9795
B5_DMIN = 1.9
#: B5's detector: the XDS-like axes (fast +x, slow +y, normal +z) turned by these angles (degrees)
B5_DETECTOR_TILT = (1.2, -0.8, 0.5)
B5_BEAM = (0.0012, -0.0021, 1.0)

# wraps a command so that its own peak RSS (ru_maxrss of its only child) is reported
_WRAP = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
         "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE); "
         "w = time.perf_counter() - t; r = resource.getrusage(resource.RUSAGE_CHILDREN); "
         "print(p.returncode, w, r.ru_maxrss, r.ru_utime + r.ru_stime); "
         "sys.stderr.write(p.stderr.decode(errors='replace')[-2000:])")


def write_dense_hkl(path: Path, hmax: int = 15, seed: int = 1) -> None:
    """A dense P1 grid -hmax..hmax in h, k and l with reproducible amplitudes."""
    rnd = random.Random(seed)
    with open(path, "w") as fh:
        for h in range(-hmax, hmax + 1):
            for k in range(-hmax, hmax + 1):
                for l in range(-hmax, hmax + 1):
                    fh.write(f"{h} {k} {l} {rnd.uniform(10.0, 200.0):.3f}\n")


def _rotation(ax_deg, ay_deg, az_deg):
    """R = Rz Ry Rx (the angles in degrees), as nested lists."""
    import math
    ax, ay, az = (math.radians(v) for v in (ax_deg, ay_deg, az_deg))
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = [[1, 0, 0], [0, cx, -sx], [0, sx, cx]]
    ry = [[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]
    rz = [[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]
    mul = lambda a, b: [[sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)] for i in range(3)]
    return mul(rz, mul(ry, rx))


def b5_vectors():
    """B5's -fdet/-sdet/-odet/-beam_vector values, as flag text (8 decimals)."""
    import math
    r = _rotation(*B5_DETECTOR_TILT)
    cols = [[r[i][j] for i in range(3)] for j in range(3)]       # the turned x, y, z axes
    n = math.sqrt(sum(v * v for v in B5_BEAM))
    fmt = lambda v: " ".join("%.8f" % x for x in v)
    return {"b5_f": fmt(cols[0]), "b5_s": fmt(cols[1]), "b5_o": fmt(cols[2]),
            "b5_beam": fmt([v / n for v in B5_BEAM]), "b5_lambda": "%g" % B5_LAMBDA}


def b5_reciprocal():
    """B5's reciprocal vectors a*, b*, c* (1/A, rows) in the lab frame: U B of the cell."""
    import math
    a, b, c = B5_CELL[:3]
    al, be, ga = (math.radians(v) for v in B5_CELL[3:])
    # real-space vectors, a along x, b in the xy plane
    ax = [a, 0.0, 0.0]
    bx = [b * math.cos(ga), b * math.sin(ga), 0.0]
    cx_ = c * math.cos(be)
    cy_ = c * (math.cos(al) - math.cos(be) * math.cos(ga)) / math.sin(ga)
    cz_ = math.sqrt(c * c - cx_ * cx_ - cy_ * cy_)
    cv = [cx_, cy_, cz_]
    cross = lambda u, v: [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]
    vol = sum(x * y for x, y in zip(ax, cross(bx, cv)))
    star = [[x / vol for x in cross(bx, cv)], [x / vol for x in cross(cv, ax)], [x / vol for x in cross(ax, bx)]]
    u = _rotation(*B5_ORIENTATION)
    return [[sum(u[i][k] * s[k] for k in range(3)) for i in range(3)] for s in star]


def write_b5_inputs(folder: Path, seed: int = 5) -> int:
    """B5's MOSFLM matrix ``b5.mat`` and P1 list ``b5_p1.hkl`` (every h k l to B5_DMIN); returns the count.

    Deterministic: the same files on every run and machine.  The matrix file holds
    a*, b*, c* times the wavelength, one Cartesian component a line, then the
    lines a MOSFLM file carries after it (missets, U, cell), which readers skip.
    """
    import math
    rstar = b5_reciprocal()
    lines = ["%12.8f %12.8f %12.8f" % tuple(rstar[j][i] * B5_LAMBDA for j in range(3)) for i in range(3)]
    lines += ["%12.3f %12.3f %12.3f" % (0, 0, 0)]
    u = _rotation(*B5_ORIENTATION)
    lines += ["%12.8f %12.8f %12.8f" % tuple(row) for row in u]
    lines += ["%12.4f %12.4f %12.4f %12.4f %12.4f %12.4f" % B5_CELL, "%12.3f %12.3f %12.3f" % (0, 0, 0)]
    (folder / "b5.mat").write_text("\n".join(lines) + "\n")
    smax2 = (1.0 / B5_DMIN) ** 2
    hm = [int(math.ceil(B5_CELL[i] / B5_DMIN)) + 1 for i in range(3)]   # |h| <= a / d_min (+1 for the angles)
    rnd = random.Random(seed)
    out = []
    (asx, asy, asz), (bsx, bsy, bsz), (csx, csy, csz) = rstar
    for h in range(-hm[0], hm[0] + 1):
        for k in range(-hm[1], hm[1] + 1):
            x0, y0, z0 = h * asx + k * bsx, h * asy + k * bsy, h * asz + k * bsz
            for l in range(-hm[2], hm[2] + 1):
                x, y, z = x0 + l * csx, y0 + l * csy, z0 + l * csz
                if x * x + y * y + z * z <= smax2:
                    out.append("%d %d %d %.2f\n" % (h, k, l, rnd.uniform(5.0, 500.0)))
    with open(folder / "b5_p1.hkl", "w") as fh:
        fh.writelines(out)
    return len(out)


def timed_process(cmd, cwd):
    """(wall s, peak RSS MiB, cpu s) of one whole process."""
    p = subprocess.run([sys.executable, "-c", _WRAP] + cmd, cwd=cwd, capture_output=True, text=True)
    rc, wall, rss_kb, cpu = p.stdout.split()
    if int(rc) != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit {rc}): {p.stderr.strip()[-500:]}")
    return float(wall), int(rss_kb) / 1024.0, float(cpu)


def case_args(name, b3_size=2048):
    """The flags of case ``name`` (B5's vectors filled in), with -noprogress."""
    return shlex.split(CASES[name].format(b3=b3_size, **b5_vectors())) + ["-noprogress"]


def write_inputs(work: Path) -> None:
    """Every input file the cases read, into ``work``."""
    write_dense_hkl(work / "dense_p1.hkl")
    write_b5_inputs(work)


def steady_state(args, cwd, repeat, dtype, device="cpu", compiled=False):
    """In this process: the pipeline's set-up, then the first render and ``repeat`` more (set-up excluded).

    Returns a dict: steady (median s of the renders after the first), first (s),
    evaluations, steady_cpu (median CPU s), fused (any chunk compiled), backend,
    setup_s (flags -> problem, s).
    """
    import torch
    from nanobragg_torch import pipeline
    t0 = time.perf_counter()
    st = pipeline.setup_from_args(args + ["-dtype", dtype, "-device", device] + (["-compile"] if compiled else []),
                                  cwd=str(cwd))
    prep = pipeline.prepare_setup(st)
    pb = pipeline.make_problem(st, prep)
    setup_s = time.perf_counter() - t0
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    evals = pb.pixels.numel() * pipeline.count_evaluations(st, prep)
    times, cpus = [], []
    t = time.perf_counter()
    res = pipeline.render_problem(st, pb)
    sync()
    first = time.perf_counter() - t
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        res = pipeline.render_problem(st, pb)
        sync()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return {"steady": statistics.median(times), "first": first, "evaluations": evals,
            "steady_cpu": statistics.median(cpus), "fused": getattr(res, "compiled_chunks", 0) > 0,
            "backend": str(getattr(res, "backend", "torch")), "setup_s": setup_s}


def _steady_in_new_process(name, work, a):
    """:func:`steady_state` of case ``name`` in a fresh Python process (so its first render is a new process's)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--steady-worker", name, "--work", str(work),
           "--repeat", str(a.repeat), "--dtype", a.dtype, "--device", a.device, "--b3-size", str(a.b3_size)]
    if a.compile:
        cmd.append("--compile")
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"steady-state worker for {name} failed: {p.stderr.strip()[-800:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def byte_compile() -> None:
    """Write the package's .pyc files, as a regular (non-editable) pip install does, so that no
    timed process compiles the package's sources (an editable install with PYTHONDONTWRITEBYTECODE
    set would recompile them, about 0.1 s, in every process)."""
    import compileall
    import nanobragg_torch
    compileall.compile_dir(os.path.dirname(nanobragg_torch.__file__), quiet=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--c-bin", default=os.environ.get("NB_C_BIN"), help="reference nanoBragg binary (or NB_C_BIN)")
    ap.add_argument("--cases", default="B1,B2,B3,B4,B5")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--b3-size", type=int, default=2048, help="detector pixels of B3 (4096 for the memory check)")
    ap.add_argument("--device", default="cpu", help="our -device (cpu, cuda, cuda:N); the C always runs on the CPU")
    ap.add_argument("--compile", action="store_true", help="our side with -compile (fused kernels)")
    ap.add_argument("--no-cli", action="store_true", help="skip our whole-process runs")
    ap.add_argument("--no-steady", action="store_true", help="skip the in-process steady-state runs")
    ap.add_argument("--no-import", action="store_true", help="skip timing python -c 'import torch'")
    ap.add_argument("--json", default="benchmarks/results.json")
    ap.add_argument("--steady-worker", metavar="CASE", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.steady_worker:
        out = steady_state(case_args(a.steady_worker, a.b3_size), Path(a.work), a.repeat, a.dtype, a.device,
                           a.compile)
        print(json.dumps(out))
        return 0

    byte_compile()
    work = Path(tempfile.mkdtemp(prefix="nbbench_"))
    write_inputs(work)
    rows = []
    for name in a.cases.split(","):
        args = case_args(name, a.b3_size)
        row = {"case": name, "args": " ".join(args), "dtype": a.dtype, "device": a.device, "compile": a.compile}
        ours = ([sys.executable, "-m", "nanobragg_torch"] + args + ["-dtype", a.dtype, "-device", a.device]
                + (["-compile"] if a.compile else []))
        runs = {"c": [], "ours": [], "import": []}
        for _ in range(a.repeat):     # in turn, so that a drift of the machine's speed hits all alike
            if a.c_bin:
                runs["c"].append(timed_process([a.c_bin] + args, work))
            if not a.no_cli:
                runs["ours"].append(timed_process(ours, work))
            if not a.no_import:
                runs["import"].append(timed_process([sys.executable, "-c", "import torch"], work))
        for key, prefix in (("c", "c"), ("ours", "ours"), ("import", "import_torch")):
            if runs[key]:
                row[f"{prefix}_wall_s"] = statistics.median(r[0] for r in runs[key])
                row[f"{prefix}_rss_mib"] = max(r[1] for r in runs[key])
                row[f"{prefix}_cpu_s"] = statistics.median(r[2] for r in runs[key])
        if not a.no_steady:
            s = _steady_in_new_process(name, work, a)
            row.update(ours_steady_s=s["steady"], ours_first_render_s=s["first"], evaluations=s["evaluations"],
                       ours_steady_cpu_s=s["steady_cpu"], fused_kernels=s["fused"], backend=s["backend"],
                       ours_setup_s=s["setup_s"])
            row["first_minus_steady_s"] = s["first"] - s["steady"]
        if "c_wall_s" in row and "ours_steady_s" in row:
            row["ratio_c_over_steady"] = row["c_wall_s"] / row["ours_steady_s"]
        if "c_wall_s" in row and "ours_wall_s" in row:
            row["ratio_c_over_wall"] = row["c_wall_s"] / row["ours_wall_s"]
        if "import_torch_wall_s" in row and "ours_wall_s" in row:
            row["ours_minus_import_s"] = row["ours_wall_s"] - row["import_torch_wall_s"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    cols = [("case", "case", "%s"), ("evaluations", "evaluations", "%d"), ("C wall s", "c_wall_s", "%.2f"),
            ("ours wall s", "ours_wall_s", "%.2f"), ("C/wall", "ratio_c_over_wall", "%.2f"),
            ("import s", "import_torch_wall_s", "%.2f"), ("wall-import", "ours_minus_import_s", "%.2f"),
            ("steady s", "ours_steady_s", "%.3f"), ("C/steady", "ratio_c_over_steady", "%.2f"),
            ("first s", "ours_first_render_s", "%.3f"), ("first-steady", "first_minus_steady_s", "%.3f"),
            ("set-up s", "ours_setup_s", "%.3f"), ("C RSS MiB", "c_rss_mib", "%.0f"),
            ("ours RSS MiB", "ours_rss_mib", "%.0f"), ("C cpu s", "c_cpu_s", "%.2f"),
            ("steady cpu s", "ours_steady_cpu_s", "%.3f"), ("backend", "backend", "%s")]
    print(f"# {platform.node()} {os.cpu_count()} cores, ours on {a.device}, dtype {a.dtype}, median of {a.repeat}"
          + (", -compile" if a.compile else ""))
    print(" | ".join(c[0] for c in cols))
    for r in rows:
        print(" | ".join((fmt % r[k]) if k in r else "-" for _, k, fmt in cols))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump({"machine": platform.platform(), "cores": os.cpu_count(), "dtype": a.dtype, "device": a.device,
                       "compile": a.compile,
                       "repeat": a.repeat, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
