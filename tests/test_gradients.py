"""Exact gradients (issue 5): torch.autograd.gradcheck in float64 for every parameter family.

Each family is checked on a small detector (20 x 20 pixels of 1 mm at 50 mm,
no oversampling, N = 3) with inputs in well-scaled units (mm, pixels, degrees,
Angstrom) so that gradcheck's finite differences are accurate.  The geometry
families use ``default_F`` (or tricubic interpolation), never the piecewise
constant nearest-neighbour lookup.  A last group checks that float32 gradients
agree with float64 ones to 1e-3 (relative: per component, or over the
whole grid for the structure-factor grids).

``NB_TEST_DEVICE=cuda`` runs the renders on the GPU (skipped where there is none).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from nanobragg_torch import Beam, Crystal, Detector, SimulationOptions, StructureFactors, simulate

from conftest import TEST_DEVICE as DEVICE, requires_test_device  # noqa: E402

pytestmark = [requires_test_device, pytest.mark.usefixtures("one_thread")]

DEG = math.pi / 180.0
PX = 1e-3

XTAL = dict(cell=(30.0, 32.0, 34.0, 88.0 * DEG, 91.0 * DEG, 93.0 * DEG),
            misset=(10.0 * DEG, 20.0 * DEG, 30.0 * DEG), N=3)
DET = dict(fpixels=20, spixels=20, pixel_size=PX, distance=0.05, Fbeam=10.3 * PX, Sbeam=9.6 * PX, oversample=1)
BEAM = dict(wavelength=1e-10)
SF = dict(default_F=10.0)
SCALE = 0.05            # brings the images to O(1)


def f64(*x):
    return torch.tensor(x if len(x) > 1 else x[0], dtype=torch.float64, requires_grad=True)


def render(crystal=None, detector=None, beam=None, sf=None, dtype=torch.float64, sf_model=None):
    """The image for the base set-up with fields overridden (functional style: fresh models)."""
    xt = Crystal(**{**XTAL, **(crystal or {})})
    det = Detector(**{**DET, **(detector or {})})
    bm = Beam(**{**BEAM, **(beam or {})})
    sfm = sf_model if sf_model is not None else StructureFactors(**{**SF, **(sf or {})})
    opts = SimulationOptions(dtype=dtype, device=DEVICE)
    return simulate(xt, det, bm, sfm, opts).image * SCALE


def check(fn, *inputs):
    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)
    out = fn(*inputs)
    assert out.abs().max() > 1e-3, "degenerate test: the image is empty"
    g = torch.autograd.grad(out.sum(), inputs)
    assert all(torch.isfinite(x).all() for x in g)
    assert all(x.abs().max() > 0 for x in g), "degenerate test: an input without gradient"


# -- crystal -------------------------------------------------------------------

def test_grad_cell_lengths_and_angles():
    def fn(lengths, angles_deg):
        return render(crystal=dict(cell=(*lengths.unbind(), *(angles_deg * DEG).unbind())))
    check(fn, f64(30.0, 32.0, 34.0), f64(88.0, 91.0, 93.0))


def test_grad_misset_angles():
    check(lambda m: render(crystal=dict(misset=m * DEG)), f64(10.0, 20.0, 30.0))


def test_grad_rotation_vector_orientation():
    # smooth at zero and away from it
    check(lambda r: render(crystal=dict(rotvec=r * DEG)), f64(0.0, 0.0, 0.0))
    check(lambda r: render(crystal=dict(rotvec=r * DEG)), f64(0.3, -0.2, 0.5))


def test_grad_phi_start_and_step():
    def fn(phi0, step):
        return render(crystal=dict(phi0=phi0 * DEG, phistep=step * DEG, phisteps=3))
    check(fn, f64(5.0), f64(0.7))


def test_grad_N_continuous_square():
    def fn(Na, Nb, Nc):
        return render(crystal=dict(Na=Na, Nb=Nb, Nc=Nc))
    check(fn, f64(3.2), f64(2.7), f64(3.5))


@pytest.mark.parametrize("shape", ["round", "gauss"])
def test_grad_N_continuous_other_shapes(shape):
    def fn(Na, Nb, Nc):
        return render(crystal=dict(Na=Na, Nb=Nb, Nc=Nc, shape=shape))
    check(fn, f64(3.2), f64(2.7), f64(3.5))


def test_grad_mosaic_spread():
    def fn(spread_deg):
        return render(crystal=dict(mosaic_spread=spread_deg * DEG, mosaic_domains=6, mosaic_seed=-7))
    check(fn, f64(2.0))


def test_mosaic_reparameterisation_matches_c_domains():
    """A spread given as a tensor rebuilds the C generator's matrices from the stored draws."""
    from nanobragg_torch.config import CrystalConfig
    from nanobragg_torch.models.crystal import mosaic_domain_matrices
    xt = Crystal(**XTAL, mosaic_spread=2.0 * DEG, mosaic_domains=6, mosaic_seed=-7)
    fixed = xt.mosaic_matrices()
    assert torch.equal(fixed, torch.as_tensor(mosaic_domain_matrices(2.0 * DEG, 6, -7)))
    xt.mosaic_spread = f64(2.0 * DEG)
    rebuilt = xt.mosaic_matrices()
    assert rebuilt.requires_grad
    # the C rounds each angle to float32; the draws are stored unrounded
    assert torch.allclose(fixed, rebuilt.detach(), atol=1e-8, rtol=0)
    # from a configuration record's matrices (as the command line resolves them)
    cfg = CrystalConfig(cell=XTAL["cell"], mosaic_spread=2.0 * DEG, mosaic_umats=mosaic_domain_matrices(2.0 * DEG, 6, -7))
    xt = Crystal(cfg)
    assert not xt.mosaic_reparameterised
    xt.mosaic_spread = f64(2.0 * DEG)
    assert torch.allclose(torch.as_tensor(cfg.mosaic_umats), xt.mosaic_matrices().detach(), atol=1e-14, rtol=0)


# -- detector -----------------------------------------------------------------

def test_grad_distance_and_beam_centre():
    def fn(dist_mm, beam_px):
        Fb, Sb = (beam_px * PX).unbind()
        return render(detector=dict(distance=dist_mm * 1e-3, Fbeam=Fb, Sbeam=Sb))
    check(fn, f64(50.0), f64(10.3, 9.6))


def test_grad_detector_rotations_and_twotheta():
    def fn(rot_deg, tt_deg):
        rx, ry, rz = (rot_deg * DEG).unbind()
        return render(detector=dict(detector_rotx=rx, detector_roty=ry, detector_rotz=rz, twotheta=tt_deg * DEG))
    check(fn, f64(1.0, -2.0, 3.0), f64(4.0))


def test_grad_sample_pivot_geometry():
    def fn(dist_mm, close_px, tt_deg):
        Fc, Sc = (close_px * PX).unbind()
        return render(detector=dict(pivot="sample", distance=dist_mm * 1e-3, Fclose=Fc, Sclose=Sc,
                                    twotheta=tt_deg * DEG))
    check(fn, f64(50.0), f64(10.3, 9.6), f64(3.0))


def test_grad_thickness_and_attenuation():
    def fn(thick_um, mu_per_mm):
        return render(detector=dict(thickness=thick_um * 1e-6, thicksteps=3, mu=mu_per_mm * 1e3))
    check(fn, f64(300.0), f64(2.5))


def test_grad_oversampled_factors():
    """oversample_thick/polar/omega: the per-step factor products."""
    def fn(dist_mm, thick_um, kahn):
        return render(detector=dict(distance=dist_mm * 1e-3, thickness=thick_um * 1e-6, thicksteps=2,
                                    mu=2000.0, oversample=2, oversample_thick=True, oversample_polar=True,
                                    oversample_omega=True),
                      beam=dict(polarization=kahn))
    check(fn, f64(50.0), f64(300.0), f64(0.6))


# -- beam -----------------------------------------------------------------------

def test_grad_wavelength():
    check(lambda lam_A: render(beam=dict(wavelength=lam_A * 1e-10)), f64(1.0))


def test_grad_fluence():
    check(lambda rel: render(beam=dict(fluence=rel * 1.2e29)), f64(1.0))


def test_grad_polarization_factor():
    check(lambda kahn: render(beam=dict(polarization=kahn)), f64(0.6))


# -- structure factors -----------------------------------------------------------

def _random_grid(lo=-12, hi=12, seed=0):
    g = np.random.default_rng(seed).uniform(5.0, 15.0, size=(hi - lo + 1,) * 3)
    return torch.tensor(g, dtype=torch.float64, requires_grad=True), (lo,) * 3, (hi,) * 3


def test_grad_structure_factor_grid_nearest():
    grid, lo, hi = _random_grid()

    def fn(g):
        return render(sf_model=StructureFactors(grid=g, hkl_min=lo, hkl_max=hi, default_F=10.0))
    check(fn, grid)


def test_grad_structure_factor_grid_tricubic():
    grid, lo, hi = _random_grid()

    def fn(g):
        return render(sf_model=StructureFactors(grid=g, hkl_min=lo, hkl_max=hi, interpolate=True))
    check(fn, grid)


def test_grad_geometry_through_tricubic_interpolation():
    grid, lo, hi = _random_grid()
    grid = grid.detach()

    def fn(lengths, dist_mm):
        return render(crystal=dict(cell=(*lengths.unbind(), *XTAL["cell"][3:])),
                      detector=dict(distance=dist_mm * 1e-3),
                      sf_model=StructureFactors(grid=grid, hkl_min=lo, hkl_max=hi, interpolate=True))
    check(fn, f64(30.0, 32.0, 34.0), f64(50.0))


def test_grad_default_F():
    check(lambda F: render(sf=dict(default_F=F)), f64(10.0))


# -- float32 against float64 ----------------------------------------------------------

FAMILIES = {
    "cell": (lambda x: dict(crystal=dict(cell=(*x[:3].unbind(), *(x[3:] * DEG).unbind()))),
             [30.0, 32.0, 34.0, 88.0, 91.0, 93.0]),
    "misset": (lambda x: dict(crystal=dict(misset=x * DEG)), [10.0, 20.0, 30.0]),
    "N": (lambda x: dict(crystal=dict(Na=x[0], Nb=x[1], Nc=x[2])), [3.2, 2.7, 3.5]),
    "mosaic": (lambda x: dict(crystal=dict(mosaic_spread=x[0] * DEG, mosaic_domains=6, mosaic_seed=-7)), [2.0]),
    "distance_beam": (lambda x: dict(detector=dict(distance=x[0] * 1e-3, Fbeam=x[1] * PX, Sbeam=x[2] * PX)),
                      [50.0, 10.3, 9.6]),
    "rotations": (lambda x: dict(detector=dict(detector_rotx=x[0] * DEG, detector_roty=x[1] * DEG,
                                                detector_rotz=x[2] * DEG, twotheta=x[3] * DEG)),
                  [1.0, -2.0, 3.0, 4.0]),
    "wavelength_polar": (lambda x: dict(beam=dict(wavelength=x[0] * 1e-10, polarization=x[1])), [1.0, 0.6]),
    "rotvec": (lambda x: dict(crystal=dict(rotvec=x * DEG)), [0.3, -0.2, 0.5]),
    "phi": (lambda x: dict(crystal=dict(phi0=x[0] * DEG, phistep=x[1] * DEG, phisteps=3)), [5.0, 0.7]),
    "sample_pivot": (lambda x: dict(detector=dict(pivot="sample", distance=x[0] * 1e-3, Fclose=x[1] * PX,
                                                   Sclose=x[2] * PX, twotheta=x[3] * DEG)),
                     [50.0, 10.3, 9.6, 3.0]),
    "thickness_mu": (lambda x: dict(detector=dict(thickness=x[0] * 1e-6, thicksteps=3, mu=x[1] * 1e3)),
                     [300.0, 2.5]),
    "fluence_default_F": (lambda x: dict(beam=dict(fluence=x[0] * 1.2e29), sf=dict(default_F=x[1])), [1.0, 10.0]),
    "sf_grid_nearest": (lambda x: dict(sf_model=StructureFactors(grid=x.reshape((25,) * 3), hkl_min=(-12,) * 3,
                                                                 hkl_max=(12,) * 3, default_F=10.0)),
                        np.random.default_rng(0).uniform(5.0, 15.0, size=25 ** 3).tolist()),
    "sf_grid_tricubic": (lambda x: dict(sf_model=StructureFactors(grid=x.reshape((25,) * 3), hkl_min=(-12,) * 3,
                                                                  hkl_max=(12,) * 3, interpolate=True)),
                         np.random.default_rng(0).uniform(5.0, 15.0, size=25 ** 3).tolist()),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_float32_gradients_match_float64(family):
    make, x0 = FAMILIES[family]
    w = torch.as_tensor(np.random.default_rng(1).uniform(0.5, 1.5, size=(20, 20)))
    grads = {}
    for dt in (torch.float64, torch.float32):
        x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
        img = render(dtype=dt, **make(x))
        loss = (img.to(torch.float64).cpu() * w).sum()
        grads[dt], = torch.autograd.grad(loss, x)
    g64, g32 = grads[torch.float64], grads[torch.float32]
    assert torch.isfinite(g32).all()
    if g64.numel() <= 8:
        # every component on its own (a norm would hide the small ones, e.g. the thickness next to mu)
        assert (g64 != 0).all(), f"{family}: degenerate test, a zero float64 gradient"
        rel = float(((g32 - g64).abs() / g64.abs()).max())
    else:
        # a structure-factor grid: most entries have no gradient at all; the norm over the grid
        rel = float(torch.linalg.vector_norm(g32 - g64) / torch.linalg.vector_norm(g64))
    assert rel < 1e-3, f"{family}: float32 gradient differs from float64 by {rel:.2e} (relative)"


def test_no_nan_gradient_when_beam_hits_a_pixel_centre():
    """h = k = l = 0 exactly at one pixel: the sincg limit branch must not poison the gradient."""
    for dt in (torch.float64, torch.float32):
        d = f64(50.0)
        img = render(detector=dict(distance=d * 1e-3, Fbeam=8.5 * PX, Sbeam=8.5 * PX), dtype=dt)
        g, = torch.autograd.grad(img.sum(), d)
        assert torch.isfinite(g)
