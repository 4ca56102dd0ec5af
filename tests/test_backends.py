"""The backend seam (issue 14): routing rules, the fused CPU kernel against the torch reference,
the no-compiler fallback, and the kernel cache.  The golden suite itself runs through the fused
backend in test_golden.py."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from nanobragg_torch import Beam, Crystal, Detector, StructureFactors, simulate
from nanobragg_torch.backends import REGISTRY, BackendError, Request, explain, fused_cpu, select
from nanobragg_torch.config import SimulationOptions
from nanobragg_torch.engine import render
from nanobragg_torch.simulator import as_models, build_problem, prepare

from conftest import run_cli

# every test here but the fallback ones needs the kernel built (a compiler): see conftest
needs_kernel = pytest.mark.usefixtures("fused_kernel")

RIGHT = math.pi / 2


def _problem(dtype="float64", N=3, grad=False, interpolate=False, **det):
    cell = (70.0, 80.0, 90.0, 1.3, 1.45, 1.65)
    xt = Crystal(cell=cell, N=N, mosaic_spread=0.01, mosaic_domains=2, phisteps=2, phistep=0.01)
    d = Detector(fpixels=24, spixels=20, distance=0.08, pixel_size=2e-4, **det)
    bm = Beam(wavelength=1.0e-10, polarization=0.9)
    if interpolate:
        grid = np.random.default_rng(0).uniform(10, 100, size=(9, 9, 9))
        sf = StructureFactors(grid=grid, hkl_min=(-4, -4, -4), hkl_max=(4, 4, 4), interpolate=True)
    else:
        sf = StructureFactors(default_F=50.0)
    if grad:
        d = Detector(fpixels=24, spixels=20, distance=torch.tensor(0.08, dtype=torch.float64, requires_grad=True),
                     pixel_size=2e-4)
    opts = SimulationOptions(dtype=dtype)
    prep = prepare(xt, d, bm)
    return build_problem(prep, xt, d, bm, sf, opts)


@needs_kernel
def test_auto_takes_fused_for_a_forward_cpu_render():
    pb = _problem()
    res = render(pb)
    assert res.backend == "fused"
    ref = render(pb, backend="torch")
    assert ref.backend == "torch"
    assert torch.allclose(res.image, ref.image, rtol=1e-9, atol=1e-12 * float(ref.image.abs().max()))
    assert math.isclose(float(res.omega_sum), float(ref.omega_sum), rel_tol=1e-12)


@needs_kernel
def test_float32_fused_matches_torch():
    pb = _problem("float32", N=7)
    a, b = render(pb).image.double(), render(pb, backend="torch").image.double()
    corr = float(np.corrcoef(a.ravel().numpy(), b.ravel().numpy())[0, 1])
    assert corr >= 0.99999 and a.dtype == torch.float64 and render(pb).image.dtype == torch.float32


@needs_kernel
def test_gradient_render_takes_torch():
    pb = _problem(grad=True)
    assert select(pb).name == "torch"
    res = render(pb)
    assert res.backend == "torch" and res.image.requires_grad
    with torch.no_grad():               # the same problem without a gradient: fused
        assert render(pb).backend == "fused"
    with pytest.raises(BackendError, match="gradients"):
        select(pb, "fused")


def test_simulate_gradients_take_torch():
    d = torch.tensor(0.08, dtype=torch.float64, requires_grad=True)
    res = simulate(Crystal(cell=(100, 100, 100, RIGHT, RIGHT, RIGHT), N=3),
                   Detector(fpixels=8, spixels=8, distance=d), Beam(wavelength=6.2e-10), StructureFactors(default_F=10))
    res.image.sum().backward()
    assert d.grad is not None and torch.isfinite(d.grad) and res.backend == "torch"
    with torch.no_grad():
        res = simulate(Crystal(cell=(100, 100, 100, RIGHT, RIGHT, RIGHT), N=3),
                       Detector(fpixels=8, spixels=8, distance=d), Beam(wavelength=6.2e-10),
                       StructureFactors(default_F=10))
    assert res.backend == ("fused" if fused_cpu.available()[0] else "torch")


def test_interpolation_and_carryover_route_to_torch():
    pb = _problem(interpolate=True)
    assert pb.interpolate
    assert select(pb).name == "torch" and render(pb).backend == "torch"
    ok, why = REGISTRY["fused"].supports(pb, Request())
    assert not ok and "interpolation" in why
    pb = _problem()
    pb.lattices_first = pb.lattices.clone()
    assert select(pb).name == "torch"
    with pytest.raises(BackendError, match="carry-over"):
        select(pb, "fused")


@needs_kernel
def test_other_devices_are_not_the_fused_kernels():
    pb = _problem()
    ok, why = REGISTRY["fused"].supports(pb, Request(device="cuda", dtype=torch.float32))
    assert not ok and "cuda" in why
    names = {name: ok for name, ok, _ in explain(pb)}
    assert names == {"torch": True, "fused": True, "compile": True}


def test_unknown_backend_is_an_error():
    with pytest.raises(BackendError, match="unknown backend"):
        select(_problem(), "numba")


@needs_kernel
def test_fused_covers_the_engine_switches():
    """ROI/mask, curved detector, point pixel, thickness with -oversample_thick, d_min, shapes,
    non-integer N, nopolar: the fused kernel agrees with the torch reference (float64)."""
    base = dict(fpixels=18, spixels=14, distance=0.06, pixel_size=3e-4)
    mask = np.ones((14, 18), dtype=np.int32)
    mask[3:6, 4:9] = 0
    variants = [
        (dict(roi=(2, 12, 1, 9), mask=mask), {}, {}, {}),
        (dict(curved=True, point_pixel=True, oversample=2), {}, {}, {}),
        (dict(thickness=3e-4, mu=1 / 2.5e-4, thicksteps=3, oversample=2, oversample_thick=True,
              oversample_omega=True), {}, {}, {}),
        ({}, dict(shape="round", fudge=1.2), {}, {}),
        ({}, dict(shape="gauss"), {}, {}),
        ({}, dict(shape="tophat"), {}, {}),
        ({}, dict(N=3.5), {}, {}),
        (dict(oversample=2, oversample_polar=True), {}, dict(nopolar=True), {}),
        ({}, {}, {}, dict(dmin=30e-10)),       # m: cuts the outer pixels
    ]
    for det, xt, bm, opt in variants:
        xt_kw = dict(cell=(70.0, 80.0, 90.0, 1.3, 1.45, 1.65), N=4, misset=(0.1, 0.2, 0.3))
        xt_kw.update(xt)
        c = Crystal(**xt_kw)
        d = Detector(**{**base, **det})
        b = Beam(wavelength=1.2e-10, polarization=0.8, **bm)
        sf = StructureFactors(default_F=20.0)
        pb = build_problem(prepare(c, d, b), c, d, b, sf, SimulationOptions(**opt))
        fused, ref = render(pb), render(pb, backend="torch")
        assert fused.backend == "fused", (det, xt, bm, opt)
        a, r = fused.image.numpy(), ref.image.numpy()
        if not (det.get("oversample_thick") or det.get("oversample_polar")):
            # the -oversample_* rules: compared with the golden images in test_golden.py
            assert np.allclose(a, r, rtol=1e-8, atol=1e-10 * np.abs(r).max()), (det, xt, bm, opt, np.abs(a - r).max())
        assert np.all(np.isfinite(a)) and a.max() > 0, (det, xt, bm, opt)
        if opt.get("dmin"):
            assert (a == 0).sum() > 10 and (a > 0).sum() > 10
        if det.get("mask") is not None:
            assert np.all(a[3:6, 4:9] == 0) and np.all(a[:, 13:] == 0)


@needs_kernel
def test_progress_is_reported_through_the_fused_kernel():
    pb = _problem()
    seen = []
    res = render(pb, progress=lambda done, total: seen.append((done, total)))
    assert res.backend == "fused" and seen and seen[-1] == (pb.pixels.numel(), pb.pixels.numel())


@needs_kernel
def test_no_compiler_falls_back_with_one_note(monkeypatch, tmp_path, capsys):
    import nanobragg_torch.backends as backends
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("NANOBRAGG_TORCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backends, "_noted", set())
    fused_cpu._reset_for_tests()
    try:
        pb = _problem()
        assert render(pb).backend == "torch"
        assert render(pb).backend == "torch"
        err = capsys.readouterr().err
        lines = [l for l in err.splitlines() if "fused CPU kernel" in l]
        assert len(lines) == 1 and "no C compiler" in lines[0] and "torch backend" in lines[0], err
        with pytest.raises(BackendError, match="no C compiler"):
            select(pb, "fused")
    finally:
        monkeypatch.undo()
        fused_cpu._reset_for_tests()
    assert render(_problem()).backend == "fused"


def test_a_failing_compiler_falls_back(monkeypatch, tmp_path, capsys):
    import nanobragg_torch.backends as backends
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("NANOBRAGG_TORCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backends, "_noted", set())
    fused_cpu._reset_for_tests()
    try:
        assert render(_problem()).backend == "torch"
        assert "compiling the fused CPU kernel failed" in capsys.readouterr().err
        assert not list((tmp_path / "cache").glob("*.so"))        # no half-written library left
    finally:
        monkeypatch.undo()
        fused_cpu._reset_for_tests()


@needs_kernel
def test_a_new_process_loads_the_cached_kernel():
    assert fused_cpu.available()[0]
    code = ("import time; from nanobragg_torch.backends import fused_cpu; t = time.perf_counter(); "
            "ok = fused_cpu.available(); print(ok[0], fused_cpu.build_seconds, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "True" and out[1] == "None", out            # loaded from the cache, not compiled
    assert float(out[2]) < 0.5                                   # hash the sources, dlopen: milliseconds


@needs_kernel
def test_cli_backend_flag(tmp_path):
    args = "-cell 100 100 100 90 90 90 -default_F 100 -lambda 6.2 -N 5 -distance 100 -detpixels 32".split()
    outs = {}
    for b in ("torch", "fused", "auto"):
        rc, _ = run_cli(args + ["-floatfile", f"{b}.bin", "-backend", b], tmp_path)
        assert rc == 0
        outs[b] = np.fromfile(tmp_path / f"{b}.bin", dtype="<f4")
    t, f = outs["torch"].astype(np.float64), outs["fused"].astype(np.float64)     # float32 (the default)
    assert np.abs(t - f).max() <= 1e-5 * np.abs(t).max() and np.array_equal(outs["fused"], outs["auto"])
    p = subprocess.run([sys.executable, "-m", "nanobragg_torch"] + args + ["-backend", "gpu", "-floatfile", "x.bin"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "-backend" in p.stderr
    assert not (tmp_path / "x.bin").exists()
