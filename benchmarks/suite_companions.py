#!/usr/bin/env python
"""Benchmark of the companion programs against the C ``nonBragg`` and ``noisify``, in one run.

    python benchmarks/suite_companions.py --nonbragg-c PATH --noisify-c PATH --stol water.stol
                                          [--repeat 3] [--json benchmarks/companions.json]

Cases (the issue's):
  N1  nonBragg water on a 2463x2527 detector with -oversample 2 (the C's default outputs:
      float, int, PGM and noise images);
  N2  the same with -nonoise (float, int and PGM images);
  Z1  noisify with a 150 um Gaussian PSF on the 2463x2527 float image N1 wrote (default outputs).
For each: the C program's whole-process wall time, ours as a whole process (the console script),
ours in-process (the program's main() called again in a warm process: parsing, set-up, rendering,
noise and writing, without Python's start-up and imports), medians over --repeat runs, and CPU
seconds (user + system) of the processes.  C and ours alternate, in one run; the load average is
read before and after each case.  First, each program runs once with an empty kernel cache
(``NANOBRAGG_TORCH_CACHE`` pointed at a new folder): the one-off cost of compiling the C kernels
(``first use``), against the same run with the cache warm.  ``python -c "import torch"`` is timed
too, for scale.  Not part of the tests.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GEOM = "-detpixels_x 2463 -detpixels_y 2527 -pixel 0.172 -distance 200 -lambda 1"
CASES = {
    "N1": ("nonBragg", "-stol water.stol -thickness 0.1 -fluence 1e22 " + GEOM + " -oversample 2 -seed 1 -noprogress"),
    "N2": ("nonBragg", "-stol water.stol -thickness 0.1 -fluence 1e22 " + GEOM + " -oversample 2 -nonoise -noprogress"),
    "Z1": ("noisify", "-floatfile water.bin -detpixels_x 2463 -detpixels_y 2527 -pixel 0.172 -distance 200 "
                      "-psf gauss -psf_fwhm 150 -seed 1"),
}
TARGETS = {"N1": (1.5, 5.0), "N2": (None, None), "Z1": (0.5, 3.0)}     # N2: no target (for scale)


def _child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_process(cmd, cwd, env=None):
    c0, t0 = _child_cpu(), time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {p.stderr.strip()[-300:]}")
    return wall, _child_cpu() - c0


def run_inprocess(prog, argv, cwd):
    from nanobragg_torch.cli import noisify_main, nonbragg_main
    main = {"noisify": noisify_main.main, "nonBragg": nonbragg_main.main}[prog]
    old = os.getcwd()
    os.chdir(cwd)
    try:
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(list(argv))
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        os.chdir(old)
    if rc != 0:
        raise SystemExit(f"{prog} (in-process) failed with status {rc}")
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nonbragg-c", required=True)
    ap.add_argument("--noisify-c", required=True)
    ap.add_argument("--stol", required=True, help="water.stol (the reference repository's table)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", default="N1,N2,Z1")
    ap.add_argument("--json", default=str(Path(__file__).with_name("companions.json")))
    a = ap.parse_args()
    bindir = Path(sys.executable).parent
    ours = {"nonBragg": str(bindir / "nonBragg"), "noisify": str(bindir / "noisify")}
    cbin = {"nonBragg": os.path.abspath(a.nonbragg_c), "noisify": os.path.abspath(a.noisify_c)}
    work = Path(tempfile.mkdtemp(prefix="bench_comp_"))
    shutil.copy(a.stol, work / "water.stol")
    # the float image noisify reads: the C nonBragg's water image
    subprocess.run([cbin["nonBragg"]] + shlex.split(CASES["N2"][1]) + ["-floatfile", "water.bin"], cwd=work,
                   stdout=subprocess.DEVNULL, check=True)
    rows = []
    med = statistics.median
    # one-off: the C kernels compiled into an empty cache (first use), then the same run warm
    first = {}
    for name in a.cases.split(","):
        prog, args = CASES[name]
        if prog in first:
            continue
        cache = Path(tempfile.mkdtemp(prefix="bench_cache_"))
        env = dict(os.environ, NANOBRAGG_TORCH_CACHE=str(cache))
        cold = run_process([ours[prog]] + shlex.split(args), work, env)[0]
        warm = run_process([ours[prog]] + shlex.split(args), work, env)[0]
        first[prog] = (cold, warm)
        shutil.rmtree(cache, ignore_errors=True)
        print(f"first use {prog}: {cold:.2f} s with an empty kernel cache, {warm:.2f} s warm "
              f"(compiling: ~{cold - warm:.2f} s, once per machine)", flush=True)
    imp = [run_process([sys.executable, "-c", "import torch"], work)[0] for _ in range(a.repeat)]
    print(f"python -c 'import torch': median {med(imp):.2f} s", flush=True)
    for name in a.cases.split(","):
        prog, args = CASES[name]
        argv = shlex.split(args)
        cw, cc, ow, oc, iw, ic = [], [], [], [], [], []
        load0 = os.getloadavg()[0]
        run_inprocess(prog, argv, work)          # warm-up: imports, the kernels loaded
        for _ in range(a.repeat):
            w, c = run_process([cbin[prog]] + argv, work)
            cw.append(w), cc.append(c)
            w, c = run_process([ours[prog]] + argv, work)
            ow.append(w), oc.append(c)
            w, c = run_inprocess(prog, argv, work)
            iw.append(w), ic.append(c)
        row = dict(case=name, program=prog, args=args, c_wall=med(cw), ours_wall=med(ow), ours_inproc=med(iw),
                   c_cpu=med(cc), ours_cpu=med(oc), ours_inproc_cpu=med(ic),
                   whole_ratio=med(cw) / med(ow), inproc_ratio=med(cw) / med(iw), targets=TARGETS[name],
                   runs=dict(c=cw, ours=ow, inproc=iw), load=(load0, os.getloadavg()[0]))
        rows.append(row)
        tw, ti = (t if t is not None else "-" for t in TARGETS[name])
        print(f"{name} {prog:8s} C {row['c_wall']:7.2f}s  ours {row['ours_wall']:7.2f}s (x{row['whole_ratio']:.2f}, "
              f"target {tw})  in-process {row['ours_inproc']:7.2f}s (x{row['inproc_ratio']:.2f}, "
              f"target {ti})  CPU s: C {row['c_cpu']:.2f} ours {row['ours_cpu']:.2f} "
              f"in-process {row['ours_inproc_cpu']:.2f}  load {row['load'][0]:.1f}->{row['load'][1]:.1f}", flush=True)
    load = os.getloadavg()
    json.dump(dict(rows=rows, repeat=a.repeat, loadavg=load, cpus=os.cpu_count(), first_use=first,
                   import_torch=imp), open(a.json, "w"), indent=1)
    print(f"load average {load[0]:.1f} on {os.cpu_count()} CPUs; written {a.json}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
