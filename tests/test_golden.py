"""Golden parity: every case of ../shared/golden rendered by the CLI and compared with the C images.

Acceptance (issue 2): float64 images match float.bin with correlation >= 0.999999 and
max |diff| <= 1e-4 max |ref|; with -c_legacy (the unmodified C program's bugs) the cases
that keep c_legacy_float.bin match it, and -phi_carryover c alone still reproduces the
carry-over cases; SMV/noise/PGM files match where the suite keeps them.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import golden_cases, golden_dir

CASES = sorted(golden_cases())
LEGACY = [c for c in CASES if golden_cases()[c].get("c_legacy_differs")]


def _compare(ref, got, strict=True):
    assert got.shape == ref.shape, f"{got.size} pixels, reference has {ref.size}"
    assert np.all(np.isfinite(got))
    ref = ref.astype(np.float64)
    got = got.astype(np.float64)
    if ref.std() > 0 and got.std() > 0:
        corr = float(np.corrcoef(ref, got)[0, 1])
    else:
        corr = 1.0 if np.allclose(ref, got) else 0.0
    rel = float(np.abs(ref - got).max() / (np.abs(ref).max() or 1.0))
    return corr, rel


def test_golden_backend_coverage(golden_runner):
    """Only the cases the fused backend documents as the torch backend's fall back to it."""
    if golden_runner.backend != "fused":
        pytest.skip("NB_GOLDEN_BACKEND names another backend")
    for case in CASES:
        golden_runner.render(case, ("-dtype", "float64"))
    fallback = {c: why for (c, extra), why in golden_runner.torch_cases.items() if extra == ("-dtype", "float64")}
    # tricubic interpolation (its order-dependent switch-off) is the torch backend's: the two cases
    # that interpolate (interp_auto switches it on for small N, interp_oob asks for it)
    assert sorted(fallback) == sorted(c for c in ("interp_auto", "interp_oob") if c in CASES), fallback
    assert all("tricubic interpolation" in why for why in fallback.values()), fallback


def test_suite_present():
    g = golden_dir()
    assert len(CASES) == 69, f"expected 69 golden cases in {g}, found {len(CASES)}"
    assert len(LEGACY) == 6, f"expected 6 cases with c_legacy_float.bin, found {LEGACY}"


@pytest.mark.parametrize("case", CASES)
def test_float64_parity(golden_runner, case):
    g = golden_dir()
    _, got, _ = golden_runner.render(case, ("-dtype", "float64"))
    ref = np.fromfile(g / case / "float.bin", dtype="<f4")
    corr, rel = _compare(ref, got)
    assert corr >= 0.999999 and rel <= 1e-4, f"{case}: corr={corr:.8f} max_rel={rel:.3e}"


def _legacy_parity(golden_runner, case, extra):
    g = golden_dir()
    _, got, _ = golden_runner.render(case, extra)
    ref = np.fromfile(g / case / "c_legacy_float.bin", dtype="<f4")
    corr, rel = _compare(ref, got)
    assert corr >= 0.999999 and rel <= 1e-4, f"{case}: corr={corr:.8f} max_rel={rel:.3e}"
    # and the default (corrected) image differs from the legacy one, so the switch matters
    fixed = np.fromfile(g / case / "float.bin", dtype="<f4")
    assert not np.allclose(fixed, ref)


@pytest.mark.parametrize("case", LEGACY)
def test_c_legacy_matches_unmodified_c(golden_runner, case):
    _legacy_parity(golden_runner, case, ("-dtype", "float64", "-c_legacy"))


@pytest.mark.parametrize("case", ["phi0_carryover"])
def test_phi_carryover_c_matches_legacy(golden_runner, case):
    # the older, narrower switch: the carry-over alone (the case has no -oversample_* factor)
    _legacy_parity(golden_runner, case, ("-dtype", "float64", "-phi_carryover", "c"))


# float32 on every case: the fused CPU kernel renders them in a fraction of a second each
# (the two interpolating cases go through the torch backend)
FLOAT32_CASES = CASES


@pytest.mark.parametrize("case", [c for c in FLOAT32_CASES if c in CASES])
def test_float32_parity(golden_runner, case):
    g = golden_dir()
    _, got, _ = golden_runner.render(case, ("-dtype", "float32"))
    ref = np.fromfile(g / case / "float.bin", dtype="<f4")
    corr, _ = _compare(ref, got)
    assert corr >= 0.9999, f"{case}: float32 corr={corr:.7f}"


def _smv(path):
    from nanobragg_torch.io.smv import read_smv
    return read_smv(path)


@pytest.mark.parametrize("case,name", [(c, n) for c in CASES for n in ("int.img", "noise.img", "image.pgm")
                                       if n in golden_cases()[c]["outputs"]])
def test_integer_outputs_match(golden_runner, case, name):
    g = golden_dir()
    work, _, _ = golden_runner.render(case, ("-dtype", "float64"))
    args = golden_cases()[case]["args"].split()
    flag = {"int.img": "-intfile", "noise.img": "-noisefile", "image.pgm": "-pgmfile"}[name]
    ours = work / args[args.index(flag) + 1]
    if name.endswith(".img"):
        h_ref, ref = _smv(g / case / name)
        h_got, got = _smv(ours)
        assert h_got == h_ref, "SMV header keys/values differ"
    else:
        from nanobragg_torch.io.pgm import read_pgm
        ref, c_ref = read_pgm(g / case / name)
        got, c_got = read_pgm(ours)
        assert c_got == c_ref
    assert got.shape == ref.shape
    diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
    assert diff.max() <= 1, f"{name}: max difference {diff.max()} counts"
    assert (diff > 0).mean() <= 0.001, f"{name}: {(diff > 0).mean():.4%} of pixels off by one"


def test_reported_statistics(golden_runner):
    """The statistics lines printed by the C program (max_I, mean, rms, rmsd) agree."""
    import re
    g = golden_dir()
    for case in ("simple_cubic_1024", "roi", "mask", "triclinic_512"):
        _, _, text = golden_runner.render(case, ("-dtype", "float64"))
        ref = (g / case / "stdout.txt").read_text()
        for key in ("max_I = ", "mean= "):
            r = next(l for l in ref.splitlines() if l.startswith(key))
            o = next(l for l in text.splitlines() if l.startswith(key))
            rn = [float(x) for x in re.findall(r"-?[0-9.]+(?:e[-+]?[0-9]+)?", r)]
            on = [float(x) for x in re.findall(r"-?[0-9.]+(?:e[-+]?[0-9]+)?", o)]
            assert np.allclose(rn, on, rtol=2e-5), f"{case}: {o!r} vs C {r!r}"
