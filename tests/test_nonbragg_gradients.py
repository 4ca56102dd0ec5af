"""Gradients of the amorphous (nonBragg) model, one parameter at a time.

float64 gradcheck of each differentiable parameter not covered by
tests/test_companions.py (sample width and height, one size for all three
axes, molecular weight, molecules, beam size, polarization, the detector
rotations and two-theta), float32 gradients against float64 for each, and the
one-line refusals of what cannot carry a gradient.
"""
from __future__ import annotations

import pytest
import torch

TAB = ([0.0, 0.1, 0.2, 0.3, 0.5, 1.0], [2.57, 2.0, 1.8, 2.2, 1.5, 1.0])

#: name -> (value at which to check, how the value enters the model)
PARAMS = {
    "width": 8e-5,
    "height": 1.2e-4,
    "size": 1e-4,            # -samplesize: thickness = width = height
    "molecular_weight": 18.0,
    "molecules": 3e16,
    "beamsize": 9e-5,        # clips width 1e-4 and height 1.2e-4
    "polarization": 0.6,
    "detector_rotx": 0.05,
    "detector_roty": -0.04,
    "detector_rotz": 0.03,
    "twotheta": 0.2,
}


def _image(name, value, dtype, pivot="sample"):
    from nanobragg_torch.config import BeamConfig, DetectorConfig
    from nanobragg_torch.models import Beam, Detector
    from nanobragg_torch.models.amorphous import AmorphousSample, StolTable, amorphous_image
    det_kw = {k: value for k in ("detector_rotx", "detector_roty", "detector_rotz", "twotheta") if k == name}
    det = Detector(DetectorConfig(fpixels=5, spixels=4, pixel_size=2e-3, convention="custom", pivot=pivot,
                                  Fbeam=3e-3, Sbeam=5e-3, Fclose=3e-3, Sclose=5e-3, twotheta_axis=(0.0, 1.0, 0.0)),
                   distance=0.02, **det_kw)
    beam = Beam(BeamConfig(fluence=1e22, polarization=0.5),
                **({"polarization": value} if name == "polarization" else {}))
    s_kw = dict(thickness=1e-4, width=1e-4, height=1.2e-4)
    if name in ("width", "height", "molecular_weight", "molecules", "beamsize"):
        s_kw[name] = value
    if name == "size":
        s_kw.update(thickness=value, width=value, height=value)
    sample = AmorphousSample(StolTable(*TAB), **s_kw)
    return amorphous_image(sample, det, beam, oversample=2, dtype=dtype)


def _scaled(name):
    base = PARAMS[name]
    ref = float(_image(name, base, torch.float64).mean())
    weights = torch.linspace(0.5, 1.5, 20, dtype=torch.float64).reshape(4, 5)

    def f(x):
        # x ~ 1: finite differences well conditioned; weights break the detector's symmetries
        return _image(name, x * base, torch.float64) * weights / ref
    return f


@pytest.mark.parametrize("name", list(PARAMS))
def test_gradcheck_float64(name):
    f = _scaled(name)
    x = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)
    # and the gradient is not trivially zero
    g, = torch.autograd.grad(f(x).sum(), x)
    assert abs(float(g)) > 1e-4


@pytest.mark.parametrize("pivot", ["beam", "sample"])
def test_gradcheck_rotations_both_pivots(pivot):
    def f(rx, ry, rz, tt):
        from nanobragg_torch.config import BeamConfig, DetectorConfig
        from nanobragg_torch.models import Beam, Detector
        from nanobragg_torch.models.amorphous import AmorphousSample, StolTable, amorphous_image
        det = Detector(DetectorConfig(fpixels=4, spixels=3, pixel_size=2e-3, convention="custom", pivot=pivot,
                                      Fbeam=3e-3, Sbeam=4e-3, Fclose=3e-3, Sclose=4e-3, twotheta_axis=(0.0, 1.0, 0.0)),
                       distance=0.02, detector_rotx=rx * 0.05, detector_roty=ry * 0.05, detector_rotz=rz * 0.05,
                       twotheta=tt * 0.2)
        beam = Beam(BeamConfig(fluence=1e22, polarization=0.5))
        img = amorphous_image(AmorphousSample(StolTable(*TAB)), det, beam, oversample=1)
        return img / 2e4
    xs = tuple(torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (1.0, -0.8, 0.6, 1.0))
    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("name", list(PARAMS))
def test_float32_gradient_matches_float64(name):
    weights = torch.linspace(0.5, 1.5, 20, dtype=torch.float64).reshape(4, 5)
    grads = {}
    for dt in (torch.float32, torch.float64):
        x = torch.tensor(PARAMS[name], dtype=torch.float64, requires_grad=True)
        img = _image(name, x, dt)
        (img.to(torch.float64) * weights).sum().backward()
        grads[dt] = float(x.grad)
    assert grads[torch.float64] != 0.0
    assert grads[torch.float32] == pytest.approx(grads[torch.float64], rel=2e-3)


def test_fixed_inputs_refuse_tensors_that_require_grad():
    from nanobragg_torch.config import BeamConfig, DetectorConfig
    from nanobragg_torch.models import Beam, Detector
    from nanobragg_torch.models.amorphous import AmorphousSample, StolTable, amorphous_image
    F = torch.tensor(TAB[1], dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="StolTable: the table is fixed") as e:
        StolTable(TAB[0], F)
    assert "\n" not in str(e.value)
    det = Detector(DetectorConfig(fpixels=3, spixels=3, pixel_size=2e-3, convention="custom", pivot="beam",
                                  Fbeam=3e-3, Sbeam=3e-3, Fclose=3e-3, Sclose=3e-3), distance=0.02)
    th = torch.tensor(1e-4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="backend='numba' has no gradients") as e:
        amorphous_image(AmorphousSample(StolTable(*TAB), thickness=th), det, Beam(BeamConfig()), backend="numba")
    assert "\n" not in str(e.value)
    for call in (lambda: amorphous_image(AmorphousSample(StolTable(*TAB)), det, Beam(BeamConfig()),
                                         oversample=torch.tensor(2.0, requires_grad=True)),):
        with pytest.raises(ValueError, match="oversample cannot carry a gradient"):
            call()
    from nanobragg_torch.models.amorphous import image_stol_profile
    img = torch.ones(3, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="image_stol_profile: image cannot carry a gradient"):
        image_stol_profile(img, AmorphousSample(StolTable(*TAB)), det, Beam(BeamConfig()))
    # with nothing requiring grad the numba backend is the torch path's result
    a = amorphous_image(AmorphousSample(StolTable(*TAB)), det, Beam(BeamConfig()), backend="numba")
    b = amorphous_image(AmorphousSample(StolTable(*TAB)), det, Beam(BeamConfig()), backend="torch")
    assert torch.allclose(a.double(), b, rtol=1e-6)
