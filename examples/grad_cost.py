#!/usr/bin/env python
"""Cost of a backward pass relative to a forward pass, on golden case triclinic_512.

    python examples/grad_cost.py [--repeats 2] [--threads N] [--dtypes float32 float64]

Renders the 512 x 512 triclinic case (``-cell 70 80 90 75 85 95 -default_F 100
-lambda 1.0 -N 5 -distance 100 -detpixels 512 -misset -89.968546 -31.328953
177.753396``) and times, for each dtype:

* forward without autograd (``torch.no_grad()``: what the command line does);
* forward building the graph, with gradients requested for the six cell
  parameters, the three misset angles and the detector distance;
* the backward pass of ``image.sum()`` to those ten parameters.

Prints the best of ``--repeats`` runs of each (wall-clock seconds, and CPU
seconds of this process, which a busy machine disturbs less) and the ratios
backward / forward and (forward + backward) / forward, where "forward" is the
plain (no-grad) render.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from nanobragg_torch import SimulationOptions, from_args, simulate

ARGS = ("-cell 70 80 90 75 85 95 -default_F 100 -lambda 1.0 -N 5 -distance 100 -detpixels 512 "
        "-misset -89.968546 -31.328953 177.753396")


def measure(dtype: str, repeats: int = 2, device: str = "cpu"):
    s = from_args(ARGS, dtype=dtype)
    opts = SimulationOptions(dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def models_with_grad():
        cell = torch.tensor([float(x) for x in s.crystal.cell], dtype=torch.float64, requires_grad=True)
        misset = torch.tensor([float(x) for x in s.crystal.misset], dtype=torch.float64, requires_grad=True)
        dist = torch.tensor(float(s.detector.distance), dtype=torch.float64, requires_grad=True)
        return cell, misset, dist

    t_plain, t_fwd, t_bwd = [], [], []

    def clock():
        sync()
        return time.perf_counter(), time.process_time()

    def since(t0):
        t1 = clock()
        return (t1[0] - t0[0], t1[1] - t0[1])

    for _ in range(repeats):
        t = clock()
        with torch.no_grad():
            img = simulate(s.crystal, s.detector, s.beam, s.structure_factors, opts).image
        t_plain.append(since(t))
        del img

        cell, misset, dist = models_with_grad()
        s.crystal.cell, s.crystal.misset, s.detector.distance = cell, misset, dist
        t = clock()
        img = simulate(s.crystal, s.detector, s.beam, s.structure_factors, opts).image
        t_fwd.append(since(t))
        t = clock()
        img.sum().backward()
        t_bwd.append(since(t))
        grads = (cell.grad.clone(), misset.grad.clone(), dist.grad.clone())
        # back to plain values for the next no-grad forward
        s.crystal.cell = cell.detach()
        s.crystal.misset = misset.detach()
        s.detector.distance = dist.detach()
        del img
    best = lambda xs: (min(x[0] for x in xs), min(x[1] for x in xs))
    return best(t_plain), best(t_fwd), best(t_bwd), grads


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"triclinic_512 on {a.device} ({torch.get_num_threads()} threads), best of {a.repeats}")
    print("%-8s %-5s %12s %14s %12s %9s %14s" % ("dtype", "clock", "forward (s)", "fwd+graph (s)",
                                                  "backward (s)", "bwd/fwd", "(fwd+bwd)/fwd"))
    for dt in a.dtypes:
        plain, fwd, bwd, grads = measure(dt, a.repeats, a.device)
        for i, clock in enumerate(("wall", "cpu")):
            print("%-8s %-5s %12.2f %14.2f %12.2f %9.2f %14.2f" % (dt, clock, plain[i], fwd[i], bwd[i],
                                                                 bwd[i] / plain[i], (fwd[i] + bwd[i]) / plain[i]))
        cell_g, mis_g, dist_g = grads
        print("         d(sum)/d(cell) =", [f"{float(x):.4g}" for x in cell_g],
              " d/d(misset) =", [f"{float(x):.4g}" for x in mis_g], f" d/d(distance) = {float(dist_g):.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
