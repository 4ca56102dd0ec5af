"""noisify and nonBragg: golden parity (../shared/companions), bad input, physics and gradients."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

COMPANIONS = Path(os.environ.get("NB_COMPANIONS")
                  or Path(__file__).resolve().parents[1].parent / "shared" / "companions")
BIN = Path(sys.executable).parent


def companions_dir() -> Path:
    """The companions folder; a missing folder fails under CI=true and skips elsewhere."""
    if not (COMPANIONS / "cases.json").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"companions reference folder missing: {COMPANIONS} (required in CI)")
        pytest.skip(f"companions reference folder missing: {COMPANIONS}")
    return COMPANIONS


# ---------------------------------------------------------------------------
# golden parity: the very comparison of the acceptance criterion
# ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def parity_rows(tmp_path_factory):
    g = companions_dir()
    out = tmp_path_factory.mktemp("companions") / "rows.json"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    p = subprocess.run([sys.executable, str(g / "compare.py"), str(g), "--noisify", str(BIN / "noisify"),
                        "--nonbragg", str(BIN / "nonBragg"), "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=1800)
    assert p.returncode == 0, p.stderr[-2000:]
    import json
    return p.stdout, json.loads(out.read_text())


def test_companion_parity_all_cases(parity_rows):
    text, rows = parity_rows
    assert len(rows) == 20, text
    bad = [f"{r['case']}: {r['problems']}" for r in rows if not r["ok"]]
    assert not bad, "\n".join(bad)
    assert "parity: 20/20 cases pass" in text


# ---------------------------------------------------------------------------
# command-line behaviour
# ---------------------------------------------------------------------------
class _Done:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _run(prog, args, cwd):
    """Run a companion program in-process in ``cwd`` (as its console script would)."""
    import contextlib
    import io
    from nanobragg_torch.cli import noisify_main, nonbragg_main
    main = {"noisify": noisify_main.main, "nonBragg": nonbragg_main.main}[prog]
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(args))
    finally:
        os.chdir(old)
    return _Done(rc, out.getvalue(), err.getvalue())


@pytest.fixture
def work(tmp_path):
    img = np.zeros((32, 40), np.float32)
    img[10:14, 20:24] = 50.0
    img += 0.5
    img.tofile(tmp_path / "img.bin")
    (tmp_path / "water.stol").write_text("# stol F\n0 2.57\n\n0.1 2.0\n0.2 1.8\n0.3 2.2\n0.5 1.5\n1.0 1.0\n")
    return tmp_path


def _one_line_error(p, needle):
    assert p.returncode == 2, (p.returncode, p.stdout[-500:], p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], p.stderr


@pytest.mark.parametrize("args,needle", [
    (["-floatfile", "img.bin", "-detpixels", "33"], "-floatfile img.bin"),           # size mismatch
    (["-floatfile", "img.bin", "-detpixels_x", "40", "-detpixels_y", "32", "-psf", "gauss",
      "-psf_radius", "100"], "-psf_radius"),                                              # PSF wider than detector
    (["-floatfile", "img.bin", "-bits", "12"], "-bits"),
    (["-floatfile", "img.bin", "-psf", "lorentz"], "-psf"),
    (["-floatfile", "missing.bin"], "missing.bin"),
    (["-floatfile", "img.bin", "-gain", "abc"], "-gain"),
    (["-floatfile", "img.bin", "-frobnicate"], "-frobnicate"),
])
def test_noisify_bad_input_writes_nothing(work, args, needle):
    p = _run("noisify", args, work)
    _one_line_error(p, needle)
    assert not any((work / n).exists() for n in ("intimage.img", "image.pgm", "noiseimage.img"))


def test_noisify_defaults_and_statistics(work):
    p = _run("noisify", ["-floatfile", "img.bin", "-detpixels_x", "40", "-detpixels_y", "32", "-seed", "3"], work)
    assert p.returncode == 0, p.stderr
    for n in ("intimage.img", "image.pgm", "noiseimage.img"):
        assert (work / n).is_file()
    assert "photons on noise image (0 overloads)" in p.stdout
    from nanobragg_torch.io.smv import read_smv
    hdr, data = read_smv(work / "intimage.img")
    assert data.shape == (32, 40) and hdr["SIZE1"] == "40"
    assert int(data[11, 21]) == 90 and int(data[0, 0]) == 40      # 50.5 and 0.5 photons + adc 40, truncated


@pytest.mark.parametrize("table,needle", [
    ("0 2\n0.2 1\n0.1 1.5\n", "increase"),
    ("0 2\n0.1 1\n0.1 1.5\n", "duplicated"),
    ("0 2\nabc 1\n", ":2: field 1"),
    ("# nothing\n", "no data"),
])
def test_nonbragg_bad_tables(work, table, needle):
    (work / "bad.stol").write_text(table)
    p = _run("nonBragg", ["-stol", "bad.stol", "-detpixels", "8", "-noprogress"], work)
    _one_line_error(p, needle)
    assert not any((work / n).exists() for n in ("floatimage.bin", "intimage.img", "noiseimage.img"))


def test_nonbragg_comment_lines_skipped_and_outputs(work):
    p = _run("nonBragg", ["-stol", "water.stol", "-detpixels", "16", "-pixel", "0.5", "-seed", "2"], work)
    assert p.returncode == 0, p.stderr
    img = np.fromfile(work / "floatimage.bin", np.float32).reshape(16, 16)
    assert np.all(np.isfinite(img)) and img.min() > 0
    for n in ("intimage.img", "image.pgm", "noiseimage.img"):
        assert (work / n).is_file()


def test_nonbragg_unknown_flag(work):
    _one_line_error(_run("nonBragg", ["-stol", "water.stol", "-N", "3"], work), "-N")


def test_help_lists_every_flag():
    from nanobragg_torch.cli import noisify_main, nonbragg_main
    for mod in (noisify_main, nonbragg_main):
        text = mod.usage_text()
        for r in mod.RULES:
            for n in r.names:
                assert n in text, n


def test_nonbragg_uses_nanobragg_rules():
    from nanobragg_torch.cli import flags, nonbragg_main
    shared = [r for r in nonbragg_main.RULES if any(r is s for s in flags.RULES)]
    assert len(shared) >= 60


# ---------------------------------------------------------------------------
# physics
# ---------------------------------------------------------------------------
def _polint(xa, ya, x):
    out = 0.0
    for i in range(4):
        t = ya[i]
        for j in range(4):
            if j != i:
                t *= (x - xa[j]) / (xa[i] - xa[j])
        out += t
    return out


def test_interpolation_matches_c_polint_with_padding():
    from nanobragg_torch.models.amorphous import StolTable
    s = np.array([0.0, 0.05, 0.12, 0.2, 0.31, 0.5])
    f = np.array([2.5, 2.4, 1.9, 2.6, 1.7, 1.1])
    tab = StolTable(s, f)
    xs = np.array([-0.02, 0.0, 0.03, 0.07, 0.15, 0.25, 0.4, 0.49, 0.6])
    got = tab.interpolate(torch.tensor(xs)).numpy()
    ext_x = np.concatenate([[-1e99, -1e98], s, [1e98, 1e99]])
    ext_y = np.concatenate([[f[0], f[0]], f, [f[-1], f[-1]]])
    for x, g in zip(xs, got):
        k = int(np.searchsorted(ext_x, x, side="right") - 1)
        k = min(max(k, 1), len(ext_x) - 3)
        ref = _polint(ext_x[k - 1:k + 3], ext_y[k - 1:k + 3], x)
        assert g == pytest.approx(ref, rel=1e-12, abs=1e-12)


def test_psf_kernels_integrate_to_one_and_match_c_formula():
    from nanobragg_torch.physics.psf import psf_kernel, gauss_pixel
    k = psf_kernel("gauss", 1.5, 12)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-9)
    # the C's ngauss2D_pixel at (1, 0) for fwhm 1.5, by hand: erf products
    c = math.sqrt(math.log(16))
    def integ(x, y):
        return 0.125 * math.erf(2 * x * math.sqrt(math.log(2))) * math.erf(y * c) * math.sqrt(math.log(16) / math.log(2))
    w, p = 1.5, 1 / 1.5
    ref = integ(1 / w + p / 2, p / 2) - integ(1 / w + p / 2, -p / 2) - integ(1 / w - p / 2, p / 2) + integ(1 / w - p / 2, -p / 2)
    assert float(gauss_pixel(torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64),
                             torch.tensor(1.5, dtype=torch.float64))) == pytest.approx(ref, rel=1e-12)
    kf = psf_kernel("fiber", 2.0, 400)
    assert 0.99 < float(kf.sum()) < 1.0


def test_fft_and_direct_convolution_agree():
    from nanobragg_torch.physics.psf import convolve, psf_kernel
    g = torch.Generator().manual_seed(0)
    img = torch.rand(40, 50, generator=g, dtype=torch.float64)
    k = psf_kernel("gauss", 3.0, 9)
    assert torch.allclose(convolve(img, k, "fft"), convolve(img, k, "direct"), atol=1e-12)


def test_api_noisify_c_noise_matches_program(work):
    """The API's C-generator noise gives the program's noise image (no PSF, no read-out)."""
    from nanobragg_torch.noisify import noisify, NoisifyParams, noisify_c
    img = np.fromfile(work / "img.bin", np.float32).reshape(32, 40)
    ref = noisify_c(img, NoisifyParams(xpixels=40, ypixels=32, seed=-5, calibration=0.03))
    out = noisify(torch.from_numpy(img).double(), seed=5, calibration=0.03, noise="c")
    got = np.trunc(out["noisy"].numpy()).astype(np.int64)
    assert np.array_equal(got, ref.noise_adu.astype(np.int64))


# ---------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------
def _small_nonbragg(dtype, thickness, density, distance, wavelength):
    from nanobragg_torch.config import BeamConfig, DetectorConfig
    from nanobragg_torch.models import Beam, Detector
    from nanobragg_torch.models.amorphous import AmorphousSample, StolTable, amorphous_image
    tab = StolTable([0.0, 0.1, 0.2, 0.3, 0.5, 1.0], [2.57, 2.0, 1.8, 2.2, 1.5, 1.0])
    det = Detector(DetectorConfig(fpixels=5, spixels=4, pixel_size=2e-3, convention="custom", pivot="beam",
                                  Fbeam=4e-3, Sbeam=5e-3, Fclose=4e-3, Sclose=5e-3), distance=distance)
    beam = Beam(BeamConfig(fluence=1e22, polarization=0.5), wavelength=wavelength)
    sample = AmorphousSample(tab, thickness=thickness, density=density)
    return amorphous_image(sample, det, beam, oversample=2, dtype=dtype)


def test_gradcheck_nonbragg_parameters():
    d64 = dict(dtype=torch.float64, requires_grad=True)
    th, de = torch.tensor(1e-4, **d64), torch.tensor(1.0, **d64)
    dist, lam = torch.tensor(0.02, **d64), torch.tensor(1e-10, **d64)

    def f(th, de, dist, lam):
        return _small_nonbragg(torch.float64, th * 1e-4, de, dist * 1e-2, lam * 1e-10) * 1e-6
    # scaled inputs keep the finite differences well conditioned
    args = (torch.tensor(1.0, **d64), de, torch.tensor(2.0, **d64), torch.tensor(1.0, **d64))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_nonbragg_float32_gradients_match_float64():
    grads = {}
    for dt in (torch.float32, torch.float64):
        lam = torch.tensor(1e-10, dtype=torch.float64, requires_grad=True)
        dist = torch.tensor(0.02, dtype=torch.float64, requires_grad=True)
        img = _small_nonbragg(dt, 1e-4, 1.0, dist, lam)
        img.sum().backward()
        grads[dt] = (float(lam.grad), float(dist.grad))
    for a, b in zip(grads[torch.float32], grads[torch.float64]):
        assert a == pytest.approx(b, rel=2e-3)


def _img64():
    g = torch.Generator().manual_seed(1)
    img = torch.rand(12, 14, generator=g, dtype=torch.float64) * 5
    img[5:7, 6:8] += 100
    return img


@pytest.mark.parametrize("psf,method", [("gauss", "direct"), ("fiber", "fft")])
def test_gradcheck_noisify_psf_gain_scale(psf, method):
    from nanobragg_torch.noisify import noisify
    img = _img64()

    def f(fwhm, gain, scale):
        o = noisify(img, pixel_size=1e-4, psf=psf, psf_fwhm=fwhm * 1e-4, psf_radius=4, psf_method=method,
                    gain=gain, scale=scale, noise="normal", generator=torch.Generator().manual_seed(3))
        return torch.stack([o["ideal"], o["noisy"]])
    args = tuple(torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (1.5, 2.0, 0.7))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_noisify_float32_gradients_match_float64():
    from nanobragg_torch.noisify import noisify
    res = {}
    for dt in (torch.float32, torch.float64):
        fwhm = torch.tensor(1.5e-4, dtype=dt, requires_grad=True)
        gain = torch.tensor(2.0, dtype=dt, requires_grad=True)
        scale = torch.tensor(0.7, dtype=dt, requires_grad=True)
        o = noisify(_img64().to(dt), psf="gauss", psf_fwhm=fwhm, psf_radius=4, gain=gain, scale=scale, noise=None)
        (o["ideal"] ** 2).sum().backward()
        res[dt] = [float(fwhm.grad), float(gain.grad), float(scale.grad)]
    for a, b in zip(res[torch.float32], res[torch.float64]):
        assert a == pytest.approx(b, rel=1e-3)


def test_modules_wrap_functions():
    from nanobragg_torch.noisify import Noisify, noisify
    img = _img64()
    m = Noisify(psf="gauss", psf_fwhm=torch.nn.Parameter(torch.tensor(1.5e-4, dtype=torch.float64)),
                psf_radius=3, noise=None)
    assert [n for n, _ in m.named_parameters()] == ["psf_fwhm"]
    ref = noisify(img, psf="gauss", psf_fwhm=1.5e-4, psf_radius=3, noise=None)["ideal"]
    assert torch.allclose(m(img)["ideal"], ref)


# ---------------------------------------------------------------------------
# nanobragg-dataset [background] and [detector]
# ---------------------------------------------------------------------------
def _spec_doc(tmp_path, **extra):
    (tmp_path / "w.stol").write_text("# water-ish\n0 2.57\n0.1 2.2\n0.2 3.1\n0.3 2.3\n0.5 1.7\n1.0 1.1\n")
    doc = {"setup": {"flags": "-cell 70 80 90 75 85 95 -default_F 100 -N 3 -lambda 1 -distance 100 "
                              "-detpixels 24 -pixel 0.4 -fluence 1e20"},
           "rotation": {"osc": 0.5, "frames": 1}, "noise": {"enabled": True, "seed": 3}}
    doc.update(extra)
    return doc


def test_dataset_background_and_detector(tmp_path):
    from nanobragg_torch.dataset.render import render_frame
    from nanobragg_torch.dataset.spec import spec_from_dict
    plain = spec_from_dict(_spec_doc(tmp_path), input_dir=str(tmp_path))
    real = spec_from_dict(_spec_doc(tmp_path, background={"stol": "w.stol", "thickness": 0.1},
                                    detector={"psf": "gauss", "psf_fwhm": 300, "gain": 2.0, "readout": 2.0}),
                          input_dir=str(tmp_path))
    assert plain.identity_sha256() != real.identity_sha256()
    fr0, fr1 = plain.frame(0), real.frame(0)
    a, _, _ = render_frame(fr0.args, "smv", True, str(tmp_path), realism=plain.realism)
    b, _, _ = render_frame(fr1.args, "smv", True, str(tmp_path), realism=real.realism)
    pa = np.frombuffer(a[512:], np.uint16).astype(float)
    pb = np.frombuffer(b[512:], np.uint16).astype(float)
    # water photons (hundreds per pixel at gain 2) lift the background well above the adc offset
    assert np.median(pb) > np.median(pa) + 100
    # the same frame renders the same bytes again
    assert render_frame(fr1.args, "smv", True, str(tmp_path), realism=real.realism)[0] == b


@pytest.mark.parametrize("extra,needle", [
    ({"background": {"thickness": 0.1}}, "[background] stol"),
    ({"background": {"stol": "w.stol", "thickness": -1}}, "[background] thickness"),
    ({"background": {"stol": "w.stol", "colour": 1}}, "unknown keys"),
    ({"detector": {"psf": "lorentz"}}, "[detector] psf"),
    ({"detector": {"psf_radius": -2}}, "[detector] psf_radius"),
])
def test_dataset_section_errors(tmp_path, extra, needle):
    from nanobragg_torch.dataset.spec import SpecError, spec_from_dict
    with pytest.raises(SpecError, match=__import__("re").escape(needle)):
        spec_from_dict(_spec_doc(tmp_path, **extra), input_dir=str(tmp_path))


def test_dataset_detector_needs_noise(tmp_path):
    from nanobragg_torch.dataset.spec import SpecError, spec_from_dict
    doc = _spec_doc(tmp_path, detector={"psf": "gauss"})
    doc["noise"] = {"enabled": False}
    with pytest.raises(SpecError, match="enable"):
        spec_from_dict(doc, input_dir=str(tmp_path))


def test_numba_backend_matches_torch():
    from nanobragg_torch.config import BeamConfig, DetectorConfig
    from nanobragg_torch.models import Beam, Detector
    from nanobragg_torch.models.amorphous import AmorphousSample, StolTable, amorphous_image
    tab = StolTable([0.0, 0.1, 0.2, 0.3, 0.5, 1.0], [2.57, 2.0, 1.8, 2.2, 1.5, 1.0])
    det = Detector(DetectorConfig(fpixels=9, spixels=7, pixel_size=2e-3, convention="custom", pivot="sample",
                                  Fbeam=4e-3, Sbeam=5e-3, Fclose=4e-3, Sclose=5e-3, twotheta=0.3,
                                  detector_rotx=0.1, curved=True), distance=0.03)
    beam = Beam(BeamConfig(fluence=1e22, polarization=0.7, hdivrange=1e-3, hdivstep=5e-4, hdivsteps=3,
                           dispersion=0.02, dispstep=0.01, dispsteps=3))
    sample = AmorphousSample(tab, thickness=1e-4)
    a = amorphous_image(sample, det, beam, oversample=2, backend="torch").numpy()
    b = amorphous_image(sample, det, beam, oversample=2, backend="numba").numpy()
    assert np.allclose(a, b, rtol=1e-6, atol=0)
