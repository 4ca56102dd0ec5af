"""Degenerate geometry renders finite images or is refused with one line (issue 17).

Failure classes found by the random runs of tests/test_property.py, and what is
done about each (compared with the C program, nanoBragg.c):

* a -curved_det pixel past the horizon of the detector plane, with a sensor
  thickness: the ray meets the sensor from behind, the C's signed cosine gives a
  capture fraction ~ -exp(+dt mu/|cos|) that overflows (NaN in float32).  The
  path through a slab is dt/|cos| from either side: |cos| is used, finite image.
* a beam in the detector plane (beam . normal = 0 after the rotations): the C
  computes distance = 0/0 and renders NaN; here a one-line error.
* N = 0 (no unit cells): the lattice factor is zero, the image is zeros (as in C).
* a flat detector closer to the sample than float32 resolves its pixel positions
  (R rounds to 0: NaN): refused in float32 with one line naming -dtype float64.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from nanobragg_torch.cli.main import main, run


HKL = "1 2 3 10\n0 0 1 20\n-1 0 2 30\n"
OUT = ["-floatfile", "f.bin", "-intfile", "i.img", "-nonoise", "-nopgm", "-noprogress"]

# the three command lines of issue 17 (each ended in NaN pixels or an internal error)
ISSUE_COMMANDS = {
    "curved_thick_float32": "-cell 20 20 20 70 70 70 -N 0 -hkl legal.hkl -lambda 1 -detpixels_f 1 -detpixels_s 1 "
                            "-pixel 1 -distance 5 -detector_rotz 79 -detector_thick 1 -detector_abs 1 "
                            "-thicksteps 1 -curved_det -oversample 1 -dtype float32",
    "beam_in_plane_N0": "-cell 20 20 20 70 70 70 -N 0 -hkl legal.hkl -lambda 1 -detpixels 4 -pixel 1 "
                        "-distance 5 -beam_vector 0 0 1 -curved_det -oversample 1",
    "beam_in_plane_N3": "-cell 20 20 20 70 70 70 -N 3 -hkl legal.hkl -lambda 1 -detpixels 4 -pixel 1 "
                        "-distance 5 -beam_vector 0 0 1 -curved_det -oversample 1",
}


def _main(tmp_path: Path, args: str, *extra):
    (tmp_path / "legal.hkl").write_text(HKL)
    import os
    old = os.getcwd()
    os.chdir(tmp_path)
    err = io.StringIO()
    try:
        from contextlib import redirect_stderr, redirect_stdout
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            rc = main(args.split() + list(extra) + OUT)
    finally:
        os.chdir(old)
    return rc, err.getvalue()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_curved_detector_ray_from_behind_is_finite(tmp_path, dtype):
    cmd = ISSUE_COMMANDS["curved_thick_float32"].replace("-dtype float32", "-dtype " + dtype)
    rc, err = _main(tmp_path, cmd)
    assert rc == 0 and err == ""
    img = np.fromfile(tmp_path / "f.bin", dtype="<f4")
    assert img.shape == (1,) and np.isfinite(img).all() and img[0] == 0.0     # N = 0: zero, as the C gives


def test_curved_detector_ray_from_behind_with_cells(tmp_path):
    """Same pixel with N = 1 and a structure factor: finite and non-negative (the C: negative or NaN)."""
    rc, err = _main(tmp_path, ISSUE_COMMANDS["curved_thick_float32"].replace("-N 0", "-N 1"), "-default_F", "100")
    assert rc == 0 and err == ""
    img = np.fromfile(tmp_path / "f.bin", dtype="<f4")
    assert np.isfinite(img).all() and (img >= 0).all()


@pytest.mark.parametrize("case", ["beam_in_plane_N0", "beam_in_plane_N3"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_beam_in_the_detector_plane_is_refused(tmp_path, case, dtype):
    rc, err = _main(tmp_path, ISSUE_COMMANDS[case], "-dtype", dtype)
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nanoBragg: error: the beam runs parallel to the detector plane")
    assert not (tmp_path / "f.bin").exists()


@pytest.mark.parametrize("flags", [
    "-detector_roty 90",                  # detector normal rotated perpendicular to the beam
    "-beam_vector 0 1 0",                 # beam along the slow axis
    "-beam_vector 0 0 1 -pivot sample",   # sample pivot: the spot would be at infinity
    "-beam_vector 0 0 1 -curved_det",
])
def test_other_beams_in_the_detector_plane(tmp_path, flags):
    rc, err = _main(tmp_path, "-cell 50 50 50 90 90 90 -default_F 10 -N 2 -detpixels 4 -distance 50 "
                              "-oversample 1 " + flags)
    assert rc == 2 and err.count("\n") == 1 and "parallel to the detector" in err


@pytest.mark.parametrize("flags", [
    "-N 0", "-Na 0 -Nb 3 -Nc 3", "-N 0 -round_xtal", "-N 0 -gauss_xtal", "-N 0 -tophat_spots",
    "-distance 1e-9", "-distance 1e-4 -curved_det", "-distance 1e9", "-close_distance 1e-6 -Xclose 0.2 -Yclose 0.2",
    "-twotheta 90 -pivot sample", "-twotheta 89.9999", "-beam_vector 0 0 1 -spindle_axis 0 0 1 -fdet_vector 0 1 0 "
    "-sdet_vector 1 0 0 -odet_vector 0 0 1", "-spindle_axis 1 0 0 -phi 0 -osc 10 -phisteps 2", "-lambda 1e-6", "-pixel 1e-9",
    "-detector_thick 100 -detector_abs 1e-9 -thicksteps 3 -curved_det -distance 1",
    "-detector_thick 100 -thicksteps 2 -oversample_thick -curved_det -distance 1 -detector_rotx 80",
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_degenerate_but_legal_geometry_renders_finite(tmp_path, flags, dtype):
    rc, err = _main(tmp_path, "-cell 50 50 50 90 90 90 -hkl legal.hkl -default_F 10 -N 2 -detpixels 4 "
                              "-distance 50 -oversample 1 -pixel 0.5 " + flags, "-dtype", dtype)
    if dtype == "float32" and flags in FLOAT32_UNRESOLVED:
        # a flat detector plane closer to the sample than float32 resolves its pixel positions
        assert rc == 2 and err.count("\n") == 1 and "closer than -dtype float32 resolves" in err, err
        return
    assert rc == 0, err
    img = np.fromfile(tmp_path / "f.bin", dtype="<f4")
    assert img.size == 16 and np.isfinite(img).all() and (img >= 0).all(), (flags, img)


FLOAT32_UNRESOLVED = ("-distance 1e-9", "-close_distance 1e-6 -Xclose 0.2 -Yclose 0.2")


def test_float32_refuses_a_flat_detector_closer_than_it_resolves(tmp_path):
    """Found by the extended random run: a 1 mm pixel whose centre lies 1e-12 m from the sample
    (-twotheta 7 moves the beam spot onto it): in float32 its position is a difference of 5e-4 m
    terms, R rounds to 0 and the pixel is NaN.  float32 refuses the set-up with one line;
    float64 renders it."""
    cmd = ("-cell 20 20 20 70 70 70 -N 0 -default_F 1 -lambda 1 -detpixels_f 1 -detpixels_s 1 -pixel 1 "
           "-distance 1e-9 -twotheta 7 -beam_vector 1 0 0 -oversample 1 -seed 0 -mosaic_seed 0")
    rc, err = _main(tmp_path, cmd, "-dtype", "float32")
    assert rc == 2 and err.count("\n") == 1 and "closer than -dtype float32 resolves" in err, err
    assert not (tmp_path / "f.bin").exists()
    rc, err = _main(tmp_path, cmd, "-dtype", "float64")
    assert rc == 0, err
    img = np.fromfile(tmp_path / "f.bin", dtype="<f4")
    assert img.size == 1 and np.isfinite(img).all()


def test_float64_refuses_a_detector_closer_than_it_resolves(tmp_path):
    """Found by the extended random run: -detector_rotz 0.0078125 with the beam along y leaves the
    1 mm pixel 1.4e-16 m from the sample, below float64's resolution of its position too: one line
    (without the advice to use float64), nothing written."""
    rc, err = _main(tmp_path, "-cell 20 20 20 70 70 70 -N 0 -default_F 1 -lambda 1 -detpixels_f 1 "
                              "-detpixels_s 1 -pixel 1 -distance 1e-9 -detector_rotx 0 -detector_roty 0 "
                              "-detector_rotz 0.0078125 -beam_vector 0 1 0 -oversample 1 -dtype float64 "
                              "-seed 0 -mosaic_seed 0")
    assert rc == 2 and err.count("\n") == 1, err
    assert "closer than -dtype float64 resolves" in err and "render with -dtype float64" not in err, err
    assert not (tmp_path / "f.bin").exists()


def test_api_refuses_float32_below_its_resolution():
    from nanobragg_torch import simulate
    from nanobragg_torch.config import (BeamConfig, CrystalConfig, DetectorConfig, SimulationOptions,
                                        StructureFactorConfig)
    import math
    args = (CrystalConfig(cell=(50, 50, 50, math.pi / 2, math.pi / 2, math.pi / 2)),
            DetectorConfig(fpixels=4, spixels=4, distance=1e-12, pixel_size=5e-4, Fbeam=1e-3, Sbeam=1e-3),
            BeamConfig(), StructureFactorConfig(default_F=10))
    with pytest.raises(ValueError, match="closer than -dtype float32 resolves"):
        simulate(*args, options=SimulationOptions(dtype="float32"))
    assert bool(simulate(*args, options=SimulationOptions(dtype="float64")).image.isfinite().all())


def test_capture_fraction_is_finite_for_any_cosine():
    import torch
    from nanobragg_torch.physics.detector_response import capture_fraction
    p = torch.tensor([-1.0, -0.01, -1e-30, 0.0, 1e-30, 0.01, 1.0], dtype=torch.float32)
    for layer in (0.0, 1.0, 3.0):
        c = capture_fraction(torch.tensor(layer), 1e-6, 1e6, p)
        assert torch.isfinite(c).all() and (c >= 0).all() and (c <= 1).all()
    c0 = capture_fraction(torch.tensor(0.0), 1e-6, 1e6, p)
    assert c0[3] == 1.0                                   # a grazing ray stops in the first layer
    assert torch.allclose(c0[:3].flip(0), c0[4:])         # the same from either side


def test_api_refuses_the_beam_in_the_detector_plane():
    import math
    from nanobragg_torch import simulate
    from nanobragg_torch.config import BeamConfig, CrystalConfig, DetectorConfig, StructureFactorConfig
    with pytest.raises(ValueError, match="parallel to the detector"):
        simulate(CrystalConfig(cell=(50, 50, 50, math.pi / 2, math.pi / 2, math.pi / 2)),
                 DetectorConfig(fpixels=4, spixels=4, detector_roty=math.pi / 2),
                 BeamConfig(), StructureFactorConfig(default_F=10))


def test_run_writes_nothing_for_refused_geometry(tmp_path):
    (tmp_path / "legal.hkl").write_text(HKL)
    with pytest.raises(Exception, match="parallel to the detector"):
        run(ISSUE_COMMANDS["beam_in_plane_N3"].split() + OUT, out=io.StringIO(), cwd=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["legal.hkl"]


def test_overflow_of_the_float_image_is_refused(tmp_path):
    """Found by the extended random run: a point pixel 1e-12 m from the sample with water
    background overflows 4-byte floats (+inf); refused with one line, nothing written."""
    rc, err = _main(tmp_path, "-cell 20 20 20 70 70 70 -N 0 -hkl legal.hkl -lambda 1 -detpixels_f 1 "
                              "-detpixels_s 1 -pixel 1 -distance 1e-9 -curved_det -point_pixel -water 13 "
                              "-oversample 1 -dtype float32 -seed 0 -mosaic_seed 0")
    assert rc == 2 and err.count("\n") == 1 and "exceed the range of the 4-byte float image" in err
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "i.img").exists()


@pytest.mark.parametrize("flags,message", [
    # found by the extended random run: the given odet (unit, so kept as the C keeps it) equals sdet
    ("-distance 5 -detector_rotx 0 -detector_roty 2.22507e-311 -detector_rotz 0 -fdet_vector 0 0 1 "
     "-sdet_vector 1 0 0 -beam_vector 1 0 0 -beam_vector 0 0 1", "axes are parallel"),
    # a subnormal rotation leaves the beam exactly in the detector plane
    ("-close_distance 70 -detector_rotx 0 -detector_roty 0 -detector_rotz 2.22507e-308 -beam_vector 0 1 0",
     "parallel to the detector plane"),
    # a subnormal beam . normal: the distance close_distance / cos overflows; the oversampling
    # recommendation divided by it (NaN -> int: an internal error) before the geometry check ran
    ("-close_distance 5 -Xbeam 0 -Ybeam 0 -beam_vector 4.94066e-324 1 0", "parallel to the detector plane"),
])
def test_fuzz_found_degenerate_frames_are_refused(tmp_path, flags, message):
    rc, err = _main(tmp_path, "-cell 20 20 20 70 70 70 -N 0 -hkl legal.hkl -lambda 1 -detpixels_f 1 "
                              "-detpixels_s 1 -pixel 1 -oversample 1 -dtype float32 " + flags)
    assert rc == 2 and err.count("\n") == 1 and message in err, err


def test_zero_optical_depth_at_a_grazing_ray_is_finite(tmp_path):
    """Found by the extended random run: a subnormal -detector_thick (0 in float32) and a ray that
    rounds into the detector plane (a detector 1e-12 m away) gave 0/0 in the capture fraction."""
    rc, err = _main(tmp_path, "-cell 20 20 20 70 70 70 -N 0 -hkl legal.hkl -lambda 1 -detpixels_f 1 "
                              "-detpixels_s 2 -pixel 0.625 -distance 1e-9 -twotheta 2 -detector_thick 1.11254e-308 "
                              "-detector_abs 1 -thicksteps 1 -oversample 1 -dtype float32 -seed 0 -mosaic_seed 0")
    assert rc == 0, err
    img = np.fromfile(tmp_path / "f.bin", dtype="<f4")
    assert img.size == 2 and np.isfinite(img).all()


def test_capture_fraction_zero_depth():
    import torch
    from nanobragg_torch.physics.detector_response import capture_fraction
    p = torch.tensor([0.0, 1e-9, 1.0], dtype=torch.float32)
    for layer in (0.0, 1.0):
        c = capture_fraction(torch.tensor(layer), torch.tensor(0.0), 1e6, p)
        assert torch.equal(c, torch.zeros(3))


@pytest.mark.usefixtures("fused_kernel")
@pytest.mark.parametrize("flags", ["", "-oversample_thick -thicksteps 3"])
def test_fused_capture_fraction_from_behind_matches_torch(tmp_path, flags):
    """Found by the extended random run (2 non-finite pixels): the fused kernel used the signed
    cosine in the capture fraction, so a -curved_det pixel 1e-12 m from the sample that sees the
    sensor from behind got 1 - exp(+big) = -inf; it now uses |cos| as the torch backend does."""
    cmd = ("-cell 20 20 20 70 70 70 -N 0 -default_F 1 -lambda 0.5 -detpixels_f 1 -detpixels_s 4 -pixel 1 "
           "-distance 1e-9 -detector_thick 75 -detector_abs 1 -thicksteps 1 -curved_det -oversample 1 "
           "-dtype float32 " + flags)
    imgs = {}
    for backend in ("fused", "torch"):
        rc, err = _main(tmp_path, cmd, "-backend", backend)
        assert rc == 0, err
        imgs[backend] = np.fromfile(tmp_path / "f.bin", dtype="<f4")
        assert imgs[backend].size == 4 and np.isfinite(imgs[backend]).all()
    np.testing.assert_allclose(imgs["fused"], imgs["torch"], rtol=1e-5)
