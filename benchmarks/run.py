#!/usr/bin/env python
"""Benchmark suite: this project against the C nanoBragg on the same machine, in one run.

    python benchmarks/run.py [--c-bin PATH | NB_C_BIN=PATH] [--cases B1,B2,B3,B4] [--dtype float32]
                             [--repeat 3] [--json benchmarks/results.json] [--b3-size 2048]
                             [--device cpu|cuda] [--compile]

For every case it reports: evaluations (pixels x subpaths), the C program's
whole-process wall time, ours as a whole CLI process, ours in-process after a
warm-up ("steady state"), the ratios, and the peak resident memory of each
process, plus CPU seconds (user + system) of the C process and of our steady-state
renders as a diagnostic.  Whole-process figures are medians over ``--repeat``
runs; the C program runs with its default OpenMP threads.  ``--compile`` runs our
side with ``-compile`` (torch.compile's fused kernels where the problem allows):
the first in-process render, which pays the compilation, is reported on its own
("first s"), the steady state after it.  Not part of the test suite.
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
}

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


def timed_process(cmd, cwd):
    """(wall s, peak RSS MiB, cpu s) of one whole process."""
    p = subprocess.run([sys.executable, "-c", _WRAP] + cmd, cwd=cwd, capture_output=True, text=True)
    rc, wall, rss_kb, cpu = p.stdout.split()
    if int(rc) != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit {rc}): {p.stderr.strip()[-500:]}")
    return float(wall), int(rss_kb) / 1024.0, float(cpu)


def steady_state(args, cwd, repeat, dtype, device="cpu", compiled=False):
    """In-process render time after a warm-up (set-up excluded), and the evaluation count."""
    import torch
    from nanobragg_torch.cli.flags import parse_flags
    from nanobragg_torch.cli.resolve import build_setup
    from nanobragg_torch.engine import render
    from nanobragg_torch.simulator import build_problem, prepare
    st = build_setup(parse_flags(args + ["-dtype", dtype, "-device", device]), cwd=str(cwd))
    prep = prepare(st.crystal, st.detector, st.beam)
    pb = build_problem(prep, st.crystal, st.detector, st.beam, st.structure_factors, st.options)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    evals = (pb.pixels.numel() * pb.thicksteps * pb.oversample ** 2 * pb.incident.shape[0]
             * pb.lattices.shape[0])
    times, cpus = [], []
    with torch.no_grad():
        t = time.perf_counter()
        render(pb, st.options.max_chunk_elements, compiled=compiled)
        sync()
        first = time.perf_counter() - t
        for _ in range(repeat):
            t, c = time.perf_counter(), time.process_time()
            res = render(pb, st.options.max_chunk_elements, compiled=compiled)
            sync()
            times.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    return statistics.median(times), first, evals, statistics.median(cpus), res.backend


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--c-bin", default=os.environ.get("NB_C_BIN"), help="reference nanoBragg binary (or NB_C_BIN)")
    ap.add_argument("--cases", default="B1,B2,B3,B4")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--b3-size", type=int, default=2048, help="detector pixels of B3 (4096 for the memory check)")
    ap.add_argument("--device", default="cpu", help="our -device (cpu, cuda, cuda:N); the C always runs on the CPU")
    ap.add_argument("--compile", action="store_true", help="our side with -compile (fused kernels)")
    ap.add_argument("--no-cli", action="store_true", help="skip our whole-process runs")
    ap.add_argument("--no-steady", action="store_true", help="skip the in-process steady-state runs")
    ap.add_argument("--json", default="benchmarks/results.json")
    a = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="nbbench_"))
    write_dense_hkl(work / "dense_p1.hkl")
    rows = []
    for name in a.cases.split(","):
        args = shlex.split(CASES[name].format(b3=a.b3_size)) + ["-noprogress"]
        row = {"case": name, "args": " ".join(args), "dtype": a.dtype, "device": a.device, "compile": a.compile}
        if a.c_bin:
            runs = [timed_process([a.c_bin] + args, work) for _ in range(a.repeat)]
            row["c_wall_s"] = statistics.median(r[0] for r in runs)
            row["c_rss_mib"] = max(r[1] for r in runs)
            row["c_cpu_s"] = statistics.median(r[2] for r in runs)
        if not a.no_cli:
            ours = [sys.executable, "-m", "nanobragg_torch"] + args + ["-dtype", a.dtype, "-device", a.device] + (["-compile"] if a.compile else [])
            runs = [timed_process(ours, work) for _ in range(a.repeat)]
            row["ours_wall_s"] = statistics.median(r[0] for r in runs)
            row["ours_rss_mib"] = max(r[1] for r in runs)
            row["ours_cpu_s"] = statistics.median(r[2] for r in runs)
        if not a.no_steady:
            steady, first, evals, steady_cpu, backend = steady_state(args, work, a.repeat, a.dtype, a.device,
                                                                  a.compile)
            row.update(ours_steady_s=steady, ours_first_render_s=first, evaluations=evals,
                       ours_steady_cpu_s=steady_cpu, backend=backend)
        if "c_wall_s" in row and "ours_steady_s" in row:
            row["ratio_c_over_steady"] = row["c_wall_s"] / row["ours_steady_s"]
        if "c_wall_s" in row and "ours_wall_s" in row:
            row["ratio_c_over_wall"] = row["c_wall_s"] / row["ours_wall_s"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    hdr = f"{'case':4s} {'evaluations':>12s} {'C wall s':>9s} {'ours wall s':>11s} {'steady s':>9s} " \
          f"{'C/steady':>8s} {'C/wall':>7s} {'C RSS MiB':>9s} {'ours RSS MiB':>12s} " \
          f"{'C cpu s':>8s} {'steady cpu s':>12s} {'first s':>8s} {'backend':>7s}"
    print(f"# {platform.node()} {os.cpu_count()} cores, ours on {a.device}, dtype {a.dtype}, median of {a.repeat}"
          + (", -compile" if a.compile else ""))
    print(hdr)
    f = lambda r, k, fmt: (fmt % r[k]) if k in r else "-"
    for r in rows:
        print(f"{r['case']:4s} {f(r, 'evaluations', '%12d'):>12s} {f(r, 'c_wall_s', '%9.2f'):>9s} "
              f"{f(r, 'ours_wall_s', '%11.2f'):>11s} {f(r, 'ours_steady_s', '%9.3f'):>9s} "
              f"{f(r, 'ratio_c_over_steady', '%8.2f'):>8s} {f(r, 'ratio_c_over_wall', '%7.2f'):>7s} "
              f"{f(r, 'c_rss_mib', '%9.0f'):>9s} {f(r, 'ours_rss_mib', '%12.0f'):>12s} "
              f"{f(r, 'c_cpu_s', '%8.2f'):>8s} {f(r, 'ours_steady_cpu_s', '%12.3f'):>12s} "
              f"{f(r, 'ours_first_render_s', '%8.2f'):>8s} {str(r.get('backend')):>7s}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump({"machine": platform.platform(), "cores": os.cpu_count(), "dtype": a.dtype, "device": a.device,
                       "compile": a.compile,
                       "repeat": a.repeat, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
