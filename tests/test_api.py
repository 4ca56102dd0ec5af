"""The Python API (issue 5): models, the simulate function and the Simulator module.

``NB_TEST_DEVICE=cuda`` runs the renders on the GPU (skipped where there is none).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nanobragg_torch import (Beam, BeamConfig, Crystal, CrystalConfig, Detector, DetectorConfig,
                             SimulationOptions, Simulator, StructureFactorConfig, StructureFactors,
                             from_args, simulate)

from conftest import GOLDEN, TEST_DEVICE as DEVICE, requires_test_device  # noqa: E402

pytestmark = [requires_test_device, pytest.mark.usefixtures("one_thread")]
DEG = math.pi / 180.0
PX = 1e-3



def small_models(**crystal):
    xt = Crystal(cell=(30.0, 32.0, 34.0, 88 * DEG, 91 * DEG, 93 * DEG), misset=(10 * DEG, 20 * DEG, 30 * DEG),
                 N=3, **crystal)
    det = Detector(fpixels=20, spixels=20, pixel_size=PX, distance=0.05, Fbeam=10.3 * PX, Sbeam=9.6 * PX,
                   oversample=1)
    return xt, det, Beam(wavelength=1e-10), StructureFactors(default_F=10.0)


def opts(dtype="float64"):
    return SimulationOptions(dtype=dtype, device=DEVICE)


def test_models_from_config_and_keywords_agree():
    cfg = DetectorConfig(fpixels=20, spixels=20, pixel_size=PX, distance=0.05, Fbeam=0.0103, Sbeam=0.0096,
                         detector_rotx=0.01, twotheta=0.02)
    a = Detector(cfg).geometry(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    b = Detector(fpixels=20, spixels=20, pixel_size=PX, distance=0.05, Fbeam=0.0103, Sbeam=0.0096,
                 detector_rotx=0.01, twotheta=0.02).geometry(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    for f in ("pix0", "fdet", "sdet", "odet", "distance"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    # keywords override a record's fields
    c = Detector(cfg, distance=0.06)
    assert float(c.distance) == 0.06 and float(Detector(cfg).distance) == 0.05
    with pytest.raises(TypeError):
        Detector(distanse=0.1)


def test_configs_and_models_render_the_same_image():
    xt, det, bm, sf = small_models()
    img_models = simulate(xt, det, bm, sf, opts()).image
    img_cfgs = simulate(xt.to_config(), det.to_config(), bm.to_config(), sf.to_config(), opts()).image
    assert torch.equal(img_models, img_cfgs)
    assert img_models.shape == (20, 20) and img_models.device.type == torch.device(DEVICE).type


def test_function_and_module_agree_and_parameters_are_registered():
    xt, det, bm, sf = small_models()
    det.distance = torch.nn.Parameter(torch.tensor(0.05, dtype=torch.float64))
    xt.cell = (torch.nn.Parameter(torch.tensor(30.0, dtype=torch.float64)), 32.0, 34.0, 88 * DEG, 91 * DEG, 93 * DEG)
    sim = Simulator(xt, det, bm, sf, opts())
    names = {n for n, _ in sim.named_parameters()}
    assert names == {"detector.distance", "crystal.cell__0"}
    img = sim()
    assert torch.allclose(img, simulate(xt, det, bm, sf, opts()).image)
    # a gradient step on the module's parameters changes the image
    loss = img.sum()
    loss.backward()
    assert sim.detector.distance.grad is not None and sim.crystal.cell__0.grad is not None
    with torch.no_grad():
        for p in sim.parameters():
            p -= 1e-6 * p.grad.sign()
    assert not torch.allclose(sim(), img)


def test_to_moves_and_casts_every_tensor():
    xt, det, bm, _ = small_models(mosaic_spread=1.0 * DEG, mosaic_domains=4)
    grid = torch.rand(25, 25, 25, dtype=torch.float64) * 10 + 5
    sf = StructureFactors(grid=grid, hkl_min=(-12, -12, -12), hkl_max=(12, 12, 12), default_F=10.0)
    xt.mosaic_spread = torch.nn.Parameter(torch.tensor(1.0 * DEG, dtype=torch.float64))
    sim = Simulator(xt, det, bm, sf, opts())
    img64 = sim()
    sim32 = sim.to(torch.float32)
    assert sim32.crystal.mosaic_umats.dtype == torch.float32
    assert sim32.crystal.mosaic_axes.dtype == torch.float32
    assert sim32.structure_factors.grid.dtype == torch.float32
    assert sim32.crystal.mosaic_spread.dtype == torch.float32
    assert all(b.dtype == torch.float32 for b in sim32.buffers() if b.is_floating_point())
    img32 = sim32()
    assert img32.dtype == torch.float32
    rel = float((img32.detach().double() - img64.detach()).abs().max() / img64.detach().abs().max())
    assert rel < 1e-3
    img32.sum().backward()
    assert sim32.crystal.mosaic_spread.grad is not None
    sim.double()
    assert sim().dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_to_cuda_and_back():
    xt, det, bm, sf = small_models()
    sim = Simulator(xt, det, bm, sf).to("cuda")
    img = sim()
    assert img.is_cuda
    ref = Simulator(*small_models())()
    assert torch.allclose(img.cpu(), ref, rtol=1e-9, atol=1e-12)


def test_graph_tensors_in_fields_reach_their_leaves():
    """Functional style: fields built from a leaf each call (non-leaf tensors), gradients reach the leaf."""
    z = torch.tensor([0.0, 0.0], dtype=torch.float64, requires_grad=True)
    for _ in range(2):                                   # fresh models each call: repeated backward passes work
        xt, det, bm, sf = small_models()
        det = Detector(det.config, distance=0.05 + 1e-3 * z[0], Fbeam=(10.3 + z[1]) * PX)
        img = simulate(xt, det, bm, sf, opts()).image
        g, = torch.autograd.grad(img.sum(), z)
        assert torch.isfinite(g).all() and (g != 0).all()


def test_intermediates():
    xt, det, bm, sf = small_models()
    det = Detector(det.config, Fbeam=10.5 * PX, Sbeam=9.5 * PX)       # the beam hits the centre of pixel (9, 10)
    sim = Simulator(xt, det, bm, sf, opts())
    img, inter = sim(return_intermediates=True)
    assert inter["position"].shape == (20, 20, 3)
    assert inter["hkl"].shape == (20, 20, 3)
    assert float(inter["hkl"][9, 10].abs().max()) < 1e-9
    assert float(inter["F_latt"][9, 10]) == pytest.approx(27.0)
    assert (inter["solid_angle"] > 0).all()
    assert ((inter["polarization"] > 0) & (inter["polarization"] <= 1)).all()
    assert inter["lattices"].shape == (1, 3, 3)


def test_checkpointed_render_gives_the_same_image_and_gradients():
    grads = []
    for ck in (False, True):
        x = torch.tensor([30.0, 0.05, 10.0], dtype=torch.float64, requires_grad=True)
        xt, det, bm, sf = small_models()
        xt = Crystal(xt.config, cell=(x[0], 32.0, 34.0, 88 * DEG, 91 * DEG, 93 * DEG))
        det = Detector(det.config, distance=x[1])
        sf = StructureFactors(default_F=x[2])
        o = opts()
        o.max_chunk_elements = 64                        # several chunks
        img = simulate(xt, det, bm, sf, o, checkpoint=ck).image
        g, = torch.autograd.grad(img.sum(), x)
        grads.append((img.detach(), g))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-12, atol=0)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-10, atol=0)


def test_state_dict_round_trip():
    xt, det, bm, sf = small_models(mosaic_spread=1.0 * DEG, mosaic_domains=3)
    sim = Simulator(xt, det, bm, sf)
    state = sim.state_dict()
    assert "crystal.mosaic_umats" in state and "detector.distance" in state
    xt2, det2, bm2, sf2 = small_models(mosaic_spread=1.0 * DEG, mosaic_domains=3)
    det2.distance = 0.07
    sim2 = Simulator(xt2, det2, bm2, sf2)
    sim2.load_state_dict(state)
    assert float(sim2.detector.distance) == 0.05
    assert torch.equal(sim(), sim2())


def test_structure_factors_from_arrays():
    hkl = np.array([[0, 0, 0], [1, 0, 0], [-1, 2, 3]])
    F = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    sf = StructureFactors.from_arrays(hkl, F, default_F=0.5)
    assert sf.hkl_min == (-1, 0, 0) and sf.hkl_max == (1, 2, 3)
    g = sf.grid.detach()
    assert float(g[0, 2, 3]) == 3.0 and float(g[2, 0, 0]) == 2.0 and float(g[1, 0, 0]) == 1.0
    assert float(g[0, 0, 0]) == 0.5
    sf.grid.sum().backward()
    assert torch.equal(F.grad, torch.ones(3, dtype=torch.float64))


def test_float_config_fields_stay_exact():
    """Plain numbers are stored as float64 buffers: the geometry is bit-identical to the record's."""
    cfg = CrystalConfig(cell=(70.0, 80.0, 90.0, 75 * DEG, 85 * DEG, 95 * DEG), misset=(0.1, 0.2, 0.3))
    lat = Crystal(cfg).lattice()
    assert lat.a.dtype == torch.float64
    assert repr(Crystal(cfg)).startswith("Crystal(")


@pytest.mark.skipif(not (GOLDEN / "cases.json").is_file(), reason="golden folder missing")
@pytest.mark.parametrize("case", ["beamcenter_64", "hkl_pattern"])
def test_from_args_reproduces_golden_images(case):
    import json
    args = json.loads((GOLDEN / "cases.json").read_text())[case]["args"]
    s = from_args(args, cwd=str(GOLDEN))
    img = simulate(s.crystal, s.detector, s.beam, s.structure_factors, opts()).image.cpu().numpy()
    ref = np.fromfile(GOLDEN / case / "float.bin", dtype="<f4").reshape(img.shape)
    assert np.abs(img - ref).max() <= 1e-4 * np.abs(ref).max()
    # the same with every continuous crystal/detector field a parameter (the differentiable path)
    s.detector.distance = torch.nn.Parameter(s.detector.distance.clone())
    s.crystal.cell = torch.nn.Parameter(s.crystal.cell.clone())
    s.crystal.misset = None if s.crystal.misset is None else torch.nn.Parameter(s.crystal.misset.clone())
    sim = Simulator(s.crystal, s.detector, s.beam, s.structure_factors, opts())
    img2 = sim().detach().cpu().numpy()
    assert np.abs(img2 - ref).max() <= 1e-4 * np.abs(ref).max()
