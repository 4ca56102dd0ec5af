#!/usr/bin/env python
"""Geometry refinement by gradient descent on a simulated diffraction image.

A target still image is simulated with known parameters; the detector distance,
the beam centre, the three cell lengths and the crystal orientation are then
perturbed (by 1 mm, 2 pixels in each direction, 1 % and 0.5 degree) and
recovered by minimising the difference between the simulated and the target
image with respect to all of them at once, using exact gradients from autograd.

Bragg-spot images are very non-convex in these parameters, so the loss is
made broad first and sharpened in stages (coarse to fine): both images are
square-rooted (which also stabilises Poisson variance) and blurred with a
Gaussian whose width shrinks from a few pixels to none; Adam runs on each
stage, and L-BFGS polishes the result on the unblurred images.  The spot
profile is Gaussian (``shape="gauss"``), which has no side lobes.

    python examples/refine_geometry.py            # noise-free target
    python examples/refine_geometry.py --noise    # Poisson noise on the target

Prints a table of true, start and refined values, and the time taken.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from nanobragg_torch import Beam, Crystal, Detector, SimulationOptions, StructureFactors, simulate
from nanobragg_torch.models.crystal import rotvec_matrix

DEG = math.pi / 180.0

# the experiment (fixed, known)
PIXELS = 100
PIXEL_SIZE = 0.35e-3          # m
WAVELENGTH = 1.0e-10          # m
ANGLES = (88.0, 94.0, 99.0)   # cell angles, degrees (not refined)
MISSET = (20.0, 30.0, 40.0)   # degrees
N_CELLS = 5
DEFAULT_F = 100.0

# the truth
TRUE = dict(distance_mm=60.0, beam_f_px=50.3, beam_s_px=49.8, a=20.0, b=23.0, c=26.0)

# starting errors
START_ERR = dict(distance_mm=1.0, beam_f_px=2.0, beam_s_px=-2.0, a=0.01, b=-0.01, c=0.01, rot_deg=0.5)

# optimiser units: one unit of each scaled variable is this much of the parameter
UNITS = dict(distance_mm=1.0, beam_f_px=1.0, beam_s_px=1.0, a=0.2, b=0.23, c=0.26,
             rot_x=1.0, rot_y=1.0, rot_z=1.0)
NAMES = list(UNITS)


def build(params: dict, dtype=torch.float64):
    """Models for a parameter dict (values may be tensors): beam centre in pixels
    (0 = centre of the first pixel), distance in mm, cell lengths in Angstrom,
    orientation as a rotation vector in degrees on top of the misset."""
    rot = torch.stack([torch.as_tensor(params[k], dtype=torch.float64) for k in ("rot_x", "rot_y", "rot_z")])
    crystal = Crystal(cell=(params["a"], params["b"], params["c"], *(x * DEG for x in ANGLES)),
                      misset=tuple(x * DEG for x in MISSET), rotvec=rot * DEG,
                      N=N_CELLS, shape="gauss")
    detector = Detector(fpixels=PIXELS, spixels=PIXELS, pixel_size=PIXEL_SIZE, oversample=1,
                        distance=params["distance_mm"] * 1e-3,
                        Fbeam=(params["beam_f_px"] + 0.5) * PIXEL_SIZE,
                        Sbeam=(params["beam_s_px"] + 0.5) * PIXEL_SIZE)
    return crystal, detector, Beam(wavelength=WAVELENGTH), StructureFactors(default_F=DEFAULT_F)


def render(params: dict, dtype=torch.float64, device="cpu") -> torch.Tensor:
    return simulate(*build(params), options=SimulationOptions(dtype=dtype, device=device)).image


def blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (sigma in pixels; 0 = none)."""
    if sigma <= 0:
        return img
    r = int(math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    im = img[None, None]
    im = torch.nn.functional.conv2d(torch.nn.functional.pad(im, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    im = torch.nn.functional.conv2d(torch.nn.functional.pad(im, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return im[0, 0]


def orientation_error_deg(rot_deg) -> float:
    """Angle (degrees) of the rotation between the refined and the true orientation (true rotvec = 0)."""
    r = torch.as_tensor([float(x) for x in rot_deg], dtype=torch.float64) * DEG
    R = rotvec_matrix(r)
    return math.degrees(math.acos(max(-1.0, min(1.0, (float(torch.trace(R)) - 1.0) / 2.0))))


# optimiser schedule: (blur sigma in pixels, Adam steps, Adam learning rate in scaled units)
STAGES = ((3.0, 25, 0.3), (1.5, 25, 0.15), (0.7, 25, 0.08))
POLISH_ITERATIONS = 40


def adam(z, value_and_grad, steps, lr, betas=(0.9, 0.999), eps=1e-8):
    """Plain Adam (torch.optim would import torch._dynamo, seconds of start-up on a small machine)."""
    m = torch.zeros_like(z)
    v = torch.zeros_like(z)
    loss = float("nan")
    for t in range(1, steps + 1):
        loss, g = value_and_grad(z)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        z = z - lr * (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
    return z, loss


def lbfgs(z, value_and_grad, iterations, history=10, gtol=1e-10):
    """L-BFGS (two-loop recursion) with a backtracking Armijo line search."""
    loss, g = value_and_grad(z)
    S, Y = [], []
    for _ in range(iterations):
        q = g.clone()
        alphas = []
        for s, y in reversed(list(zip(S, Y))):
            rho = 1.0 / float(y @ s)
            a = rho * float(s @ q)
            q = q - a * y
            alphas.append((rho, a))
        if S:
            q = q * (float(S[-1] @ Y[-1]) / float(Y[-1] @ Y[-1]))
        else:
            q = q / max(1.0, float(g.abs().max()))
        for (s, y), (rho, a) in zip(zip(S, Y), reversed(alphas)):
            q = q + s * (a - rho * float(y @ q))
        d = -q
        slope = float(g @ d)
        if slope >= 0:                      # not a descent direction: restart
            S, Y = [], []
            d = -g / max(1.0, float(g.abs().max()))
            slope = float(g @ d)
        step = 1.0
        while True:
            z_new = z + step * d
            loss_new, g_new = value_and_grad(z_new)
            if loss_new <= loss + 1e-4 * step * slope or step < 1e-8:
                break
            step *= 0.5
        s, y = z_new - z, g_new - g
        if float(s @ y) > 1e-300:
            S.append(s)
            Y.append(y)
            S, Y = S[-history:], Y[-history:]
        z, loss, g = z_new, loss_new, g_new
        if float(g.abs().max()) < gtol or float(s.abs().max()) < 1e-12:
            break
    return z, loss


def refine(noise: bool = False, seed: int = 0, verbose: bool = True, dtype=torch.float64, device="cpu"):
    """Run the whole experiment; returns a dict with the true, start and refined values and timings."""
    t0 = time.perf_counter()
    c0 = time.process_time()
    true = dict(TRUE, rot_x=0.0, rot_y=0.0, rot_z=0.0)
    with torch.no_grad():
        target = render(true, dtype, device)
    if noise:
        g = torch.Generator().manual_seed(seed)
        target = torch.poisson(target.cpu(), generator=g).to(device)

    # the start: distance, beam centre and cell lengths off; orientation off by 0.5 deg about a random axis
    g = torch.Generator().manual_seed(seed + 1)
    axis = torch.randn(3, generator=g, dtype=torch.float64)
    axis = axis / torch.linalg.vector_norm(axis) * START_ERR["rot_deg"]
    start = dict(distance_mm=TRUE["distance_mm"] + START_ERR["distance_mm"],
                 beam_f_px=TRUE["beam_f_px"] + START_ERR["beam_f_px"],
                 beam_s_px=TRUE["beam_s_px"] + START_ERR["beam_s_px"],
                 a=TRUE["a"] * (1 + START_ERR["a"]), b=TRUE["b"] * (1 + START_ERR["b"]),
                 c=TRUE["c"] * (1 + START_ERR["c"]),
                 rot_x=float(axis[0]), rot_y=float(axis[1]), rot_z=float(axis[2]))

    z = torch.zeros(len(NAMES), dtype=torch.float64)     # scaled offsets from the start

    def params_of(zv):
        return {n: start[n] + UNITS[n] * zv[i] for i, n in enumerate(NAMES)}

    st = target.clamp_min(0).to(dtype).sqrt()
    evals = [0]

    def loss_at(zv, sigma):
        evals[0] += 1
        img = render(params_of(zv), dtype, device)
        return (blur(img.clamp_min(0).sqrt() - st, sigma) ** 2).mean()

    def value_and_grad(zv, sigma):
        zv = zv.detach().requires_grad_(True)
        loss = loss_at(zv, sigma)
        g, = torch.autograd.grad(loss, zv)
        return float(loss.detach()), g

    history = []
    # coarse to fine: Adam on blurred images
    for sigma, steps, lr in STAGES:
        z, loss = adam(z, lambda zv: value_and_grad(zv, sigma), steps, lr)
        history.append((sigma, loss))
        if verbose:
            print(f"  Adam, blur {sigma:3.1f} px: loss {loss:.4e}  ({time.perf_counter() - t0:5.1f} s)")
    # polish: L-BFGS on the sharp images
    z, loss = lbfgs(z, lambda zv: value_and_grad(zv, 0.0), POLISH_ITERATIONS)
    history.append((0.0, loss))
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if verbose:
        print(f"  L-BFGS, no blur:  loss {loss:.4e}  ({elapsed:5.1f} s)")

    refined = {n: float(v) for n, v in params_of(z.detach()).items()}
    true_all = dict(true)
    result = dict(true=true_all, start=start, refined=refined, seconds=elapsed, cpu_seconds=cpu,
                  evaluations=evals[0],
                  history=history,
                  orientation_error_start_deg=orientation_error_deg([start[k] for k in ("rot_x", "rot_y", "rot_z")]),
                  orientation_error_deg=orientation_error_deg([refined[k] for k in ("rot_x", "rot_y", "rot_z")]))
    result["errors"] = dict(
        distance_mm=abs(refined["distance_mm"] - true["distance_mm"]),
        beam_f_px=abs(refined["beam_f_px"] - true["beam_f_px"]),
        beam_s_px=abs(refined["beam_s_px"] - true["beam_s_px"]),
        a_rel=abs(refined["a"] / true["a"] - 1), b_rel=abs(refined["b"] / true["b"] - 1),
        c_rel=abs(refined["c"] / true["c"] - 1), orientation_deg=result["orientation_error_deg"])
    return result


TOLERANCES = dict(distance_mm=0.05, beam_f_px=0.05, beam_s_px=0.05, a_rel=1e-3, b_rel=1e-3, c_rel=1e-3,
                  orientation_deg=0.01)


def table(result) -> str:
    t, s, r = result["true"], result["start"], result["refined"]
    rows = [("distance (mm)", "distance_mm", "distance_mm", "%.4f"),
            ("beam centre fast (px)", "beam_f_px", "beam_f_px", "%.4f"),
            ("beam centre slow (px)", "beam_s_px", "beam_s_px", "%.4f"),
            ("cell a (A)", "a", "a_rel", "%.5f"), ("cell b (A)", "b", "b_rel", "%.5f"),
            ("cell c (A)", "c", "c_rel", "%.5f")]
    lines = ["%-24s %12s %12s %12s %12s %10s" % ("parameter", "true", "start", "refined", "error", "tolerance"),
             "-" * 88]
    for label, key, ekey, fmt in rows:
        err = result["errors"][ekey]
        tol = TOLERANCES[ekey]
        es = ("%.2e" % err) if ekey.endswith("_rel") else ("%.4f" % err)
        ts = ("%.1e" % tol) if ekey.endswith("_rel") else ("%g" % tol)
        lines.append("%-24s %12s %12s %12s %12s %10s%s" % (label, fmt % t[key], fmt % s[key], fmt % r[key], es, ts,
                                                         "" if err <= tol else "  FAIL"))
    oe0, oe = result["orientation_error_start_deg"], result["orientation_error_deg"]
    lines.append("%-24s %12s %12s %12s %12s %10s%s" % ("orientation error (deg)", "0", "%.4f" % oe0, "%.5f" % oe,
                                                     "%.5f" % oe, "0.01", "" if oe <= 0.01 else "  FAIL"))
    lines.append("%d image evaluations (forward + backward) in %.1f s (%.1f s of CPU time)"
                 % (result["evaluations"], result["seconds"], result["cpu_seconds"]))
    return "\n".join(lines)


def passed(result) -> bool:
    return all(result["errors"][k] <= v for k, v in TOLERANCES.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noise", action="store_true", help="add Poisson noise to the target image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: these small images gain nothing from more, "
                         "and a busy machine stalls multi-threaded kernels; 0: torch's default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print("refining distance, beam centre, cell lengths and orientation on a %dx%d image%s"
          % (PIXELS, PIXELS, " with Poisson noise" if a.noise else ""))
    res = refine(noise=a.noise, seed=a.seed, device=a.device)
    print(table(res))
    return 0 if passed(res) else 1


if __name__ == "__main__":
    sys.exit(main())
