"""The compiled path (issue 3): ``render(..., compiled=True)`` / ``-compile``.

torch.compile traces the same ``render_chunk`` into fused kernels.  Each golden case
here costs one compilation (tens of seconds on the 2-core machine), so the suite
takes a subset that covers the engine's branches (oversample_* factors, sensor
thickness, mosaic domains x phi steps, d_min cut, water background, several
sources, curved detector, no polarization); every eligible golden case was
checked once by hand (benchmarks/README.md).  Chunks are forced small so that
every case renders at least two full chunks through the compiled kernel.
``NB_TEST_DEVICE=cuda`` runs them on the GPU (inductor's Triton kernels there).
"""
from __future__ import annotations

import contextlib
import io
import os
import shlex
import warnings

import numpy as np
import pytest
import torch

import nanobragg_torch.engine as engine
from nanobragg_torch.cli.flags import parse_flags
from nanobragg_torch.cli.resolve import build_setup
from nanobragg_torch.engine import chunk_weight, compile_eligible, render
from nanobragg_torch.simulator import build_problem, prepare

from conftest import TEST_DEVICE, golden_cases, golden_dir, requires_test_device

pytestmark = requires_test_device


def _problem(case, dtype, tmp_path):
    work = tmp_path / f"{case}_{dtype}"
    work.mkdir()
    os.symlink(golden_dir() / "inputs", work / "inputs")
    with contextlib.redirect_stdout(io.StringIO()):
        st = build_setup(parse_flags(shlex.split(golden_cases()[case]["args"]) + ["-dtype", dtype, "-device", TEST_DEVICE]),
                         cwd=str(work))
        prep = prepare(st.crystal, st.detector, st.beam)
        pb = build_problem(prep, st.crystal, st.detector, st.beam, st.structure_factors, st.options)
    return pb


def _small_chunks(pb):
    """A chunk budget that gives at least two full chunks (the compiled kernel's shape)."""
    n = pb.pixels.numel()
    ch = min(max(1, n // 2), max(1, (1 << 19) // chunk_weight(pb)))
    return ch * chunk_weight(pb)


def _corr_rel(ref, got):
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    corr = float(np.corrcoef(ref, got)[0, 1]) if ref.std() > 0 and got.std() > 0 else float(np.allclose(ref, got))
    return corr, float(np.abs(ref - got).max() / (np.abs(ref).max() or 1.0))


def _render_compiled(pb, max_elements):
    with torch.no_grad():
        res = render(pb, max_elements, compiled=True)
    full = pb.pixels.numel() // engine.choose_chunk(pb, max_elements)
    assert full >= 2 and res.compiled_chunks == full, f"{res.compiled_chunks} of {full} chunks compiled"
    return res.image.double().cpu().numpy().ravel()


F32_CASES = ["oversample_3_flags", "thickness", "mosaic", "dmin", "water", "sourcefile", "curved_det",
             "nopolar"]
F64_CASES = ["triclinic_512", "thickness_oversample_thick"]


@pytest.mark.parametrize("dtype,case", [("float32", c) for c in F32_CASES] + [("float64", c) for c in F64_CASES])
def test_compiled_golden(tmp_path, dtype, case):
    if case not in golden_cases():
        pytest.skip(f"{case} not in this golden suite")
    pb = _problem(case, dtype, tmp_path)
    assert compile_eligible(pb)
    got = _render_compiled(pb, _small_chunks(pb))
    ref = np.fromfile(golden_dir() / case / "float.bin", dtype="<f4")
    corr, rel = _corr_rel(ref, got)
    if dtype == "float64":       # the strict tolerance of the golden suite
        assert corr >= 0.999999 and rel <= 1e-4, f"{case}: corr={corr:.8f} max_rel={rel:.3e}"
    else:                        # float32's
        assert corr >= 0.9999, f"{case}: float32 corr={corr:.7f}"


def test_ineligible_and_gradient_renders_take_the_eager_path(tmp_path, monkeypatch):
    """Order-dependent state (interpolation switch-off) or a gradient: no compiled chunk at all."""
    def boom(pb, pix):
        raise AssertionError("compiled kernel used")
    monkeypatch.setattr(engine, "_compiled_chunk", boom)
    pb = _problem("interp_auto", "float64", tmp_path)
    assert not compile_eligible(pb)
    with torch.no_grad():
        res = render(pb, _small_chunks(pb), compiled=True)
        b = render(pb, _small_chunks(pb)).image
    assert res.compiled_chunks == 0 and torch.equal(res.image, b)
    # a tensor that asks for a gradient
    pb2 = _problem("tiny", "float64", tmp_path)
    pb2.fluence = pb2.fluence.detach().clone().requires_grad_()
    img = render(pb2, _small_chunks(pb2), compiled=True).image
    assert img.requires_grad
    img.sum().backward()
    assert pb2.fluence.grad is not None and torch.isfinite(pb2.fluence.grad)


def test_compile_failure_warns_once_and_renders_uncompiled(tmp_path, monkeypatch):
    pb = _problem("tiny", "float64", tmp_path)
    monkeypatch.setattr(engine, "_compile_error", None)

    def broken(pb_, pix):
        raise RuntimeError("no C compiler found\nsecond line")
    monkeypatch.setattr(engine, "_compiled_fn", broken)
    with warnings.catch_warnings(record=True) as w, torch.no_grad():
        warnings.simplefilter("always")
        res = render(pb, _small_chunks(pb), compiled=True)
    a = res.image
    assert res.compiled_chunks == 0
    msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    assert len(msgs) == 1 and "no C compiler found" in msgs[0] and "second line" not in msgs[0]
    with torch.no_grad():
        b = render(pb, _small_chunks(pb), backend="torch").image       # the eager reference
    assert res.backend == "compile" and torch.equal(a, b)


def test_compile_flag_reaches_the_options(tmp_path):
    f = parse_flags(["-cell", "50", "50", "50", "90", "90", "90", "-default_F", "10", "-compile", "-detpixels", "8"])
    assert f.compile
    st = build_setup(f, cwd=str(tmp_path))
    assert st.options.compile
    assert not build_setup(parse_flags(["-cell", "50", "50", "50", "90", "90", "90", "-default_F", "10"]),
                           cwd=str(tmp_path)).options.compile
