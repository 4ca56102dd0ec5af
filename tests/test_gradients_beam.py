"""Gradients of the beam's source grid (issue 17): divergence ranges and steps, dispersion.

The source grid used to be built from Python floats, so a divergence or
dispersion field that required grad was silently detached.  Each family is
checked with torch.autograd.gradcheck in float64 (the set-up of
tests/test_gradients.py: 20 x 20 pixels of 1 mm at 50 mm, N = 3), and through
``from_args`` as the issue reproduced it.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from nanobragg_torch import Beam, Crystal, Detector, SimulationOptions, StructureFactors, from_args, simulate

from conftest import TEST_DEVICE as DEVICE, requires_test_device  # noqa: E402

pytestmark = [requires_test_device, pytest.mark.usefixtures("one_thread")]

DEG = math.pi / 180.0
PX = 1e-3
MRAD = 1e-3
XTAL = dict(cell=(30.0, 32.0, 34.0, 88.0 * DEG, 91.0 * DEG, 93.0 * DEG),
            misset=(10.0 * DEG, 20.0 * DEG, 30.0 * DEG), N=3)
DET = dict(fpixels=20, spixels=20, pixel_size=PX, distance=0.05, Fbeam=10.3 * PX, Sbeam=9.6 * PX, oversample=1)
SCALE = 0.05


def f64(*x):
    return torch.tensor(x if len(x) > 1 else x[0], dtype=torch.float64, requires_grad=True)


def render(**beam):
    bm = Beam(**{"wavelength": 1e-10, **beam})
    opts = SimulationOptions(dtype=torch.float64, device=DEVICE)
    return simulate(Crystal(**XTAL), Detector(**DET), bm, StructureFactors(default_F=10.0), opts).image * SCALE


def check(fn, *inputs):
    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)
    g = torch.autograd.grad(fn(*inputs).sum(), inputs)
    assert all(torch.isfinite(x).all() for x in g)
    assert all(x.abs().max() > 0 for x in g), "an input without gradient"


def test_grad_divergence_ranges_and_steps():
    # 3 x 3 grid, square (no elliptical trim): ranges and steps are independent fields
    def fn(hr, hs, vr, vs):
        return render(hdivrange=hr * MRAD, hdivstep=hs * MRAD, hdivsteps=3, vdivrange=vr * MRAD,
                      vdivstep=vs * MRAD, vdivsteps=3, round_div=False)
    check(fn, f64(4.0), f64(2.0), f64(3.0), f64(1.5))


def test_grad_divergence_range_with_tied_step():
    # the command line's rule step = range / (steps - 1), kept differentiable by the caller
    def fn(r):
        return render(hdivrange=r * MRAD, hdivstep=r * MRAD / 2, hdivsteps=3, vdivrange=r * MRAD,
                      vdivstep=r * MRAD / 2, vdivsteps=3)
    check(fn, f64(4.0))


def test_grad_dispersion_and_step():
    def fn(disp, step):
        return render(dispersion=disp * 0.01, dispstep=step * 0.01, dispsteps=3)
    check(fn, f64(4.0), f64(2.0))


def test_grad_source_distance_has_no_effect_but_flows():
    # only the direction of a generated source matters: the gradient is exactly zero, not missing
    d = f64(10.0)
    img = render(source_distance=d, hdivrange=2 * MRAD, hdivstep=1 * MRAD, hdivsteps=3)
    (g,) = torch.autograd.grad(img.sum(), d, allow_unused=False)
    assert torch.isfinite(g) and abs(float(g)) < 1e-9 * float(img.sum().detach())


def test_from_args_divergence_and_dispersion_parameters_carry_gradients():
    """The issue's reproduction: nn.Parameters on a from_args set-up."""
    s = from_args("-cell 30 32 34 88 91 93 -misset 10 20 30 -N 3 -default_F 10 -lambda 1 -distance 50 "
                  "-pixel 1 -detpixels 12 -oversample 1 -divergence 2 -divsteps 3 -dispersion 2 -dispsteps 3")
    names = ("hdivrange", "hdivstep", "vdivrange", "vdivstep", "dispersion", "dispstep")
    for name in names:
        setattr(s.beam, name, torch.nn.Parameter(torch.as_tensor(float(getattr(s.beam, name)), dtype=torch.float64)))
    img = simulate(s.crystal, s.detector, s.beam, s.structure_factors, s.options).image
    img.sum().backward()
    for name in names:
        g = getattr(s.beam, name).grad
        assert g is not None and torch.isfinite(g) and float(g) != 0.0, name


def test_source_grid_values_unchanged():
    """The tensor grid holds the same float64 values as the float one (golden parity)."""
    from nanobragg_torch.models.beam import divergence_grid
    bm = Beam(wavelength=1e-10, hdivrange=2e-3, hdivstep=1e-3, hdivsteps=3, vdivrange=2e-3, vdivstep=1e-3,
              vdivsteps=3, dispersion=0.02, dispstep=0.01, dispsteps=3)
    src = bm.sources()
    grid = divergence_grid(bm)
    assert src.incident.shape[0] == 3 * len(grid)
    lam = src.wavelength.reshape(len(grid), 3)[0]
    assert lam.tolist() == [1e-10 * (1.0 + 0.01 * d - 0.02 / 2.0) for d in range(3)]
