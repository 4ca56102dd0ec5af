"""Per-pixel trace (-trace_pixel / --trace-json) and compare-traces.

The trace must report the engine's own numbers: the traced final value is the
rendered pixel, the Miller indices of every (layer, sub-pixel, source, phi,
mosaic) evaluation are the engine's tensors, and the loop-carried state
(interpolation switch-off, phi carry-over, -dmin cuts, polarization caching)
is that of the pixels rendered before it.
"""
from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import golden_cases, golden_dir, run_cli

from nanobragg_torch import engine as E
from nanobragg_torch import pipeline
from nanobragg_torch.cli.resolve import SetupError
from nanobragg_torch.tools import compare_traces
from nanobragg_torch.tools.trace import TraceError, compute_trace, format_lines

COMPREHENSIVE_EXTRA = ["-roi", "127", "130", "127", "130", "-phi_carryover", "c"]
TRACED = (128, 129)          # slow, fast


def _workdir(tmp: Path) -> Path:
    g = golden_dir()
    tmp.mkdir(parents=True, exist_ok=True)
    if not (tmp / "inputs").exists():
        os.symlink(g / "inputs", tmp / "inputs")
    return tmp


def _case_args(case, extra=()):
    return shlex.split(golden_cases()[case]["args"]) + ["-dtype", "float64", "-noprogress"] + list(extra)


def _problem(case, extra, workdir):
    st = pipeline.setup_from_args(_case_args(case, extra), cwd=str(workdir))
    prep = pipeline.prepare_setup(st)
    pb = pipeline.make_problem(st, prep)
    return st, prep, pb


@pytest.fixture(scope="module")
def comprehensive(tmp_path_factory):
    """The CLI trace of one pixel of `comprehensive` (ROI 4x4) and the engine's own tensors."""
    work = _workdir(tmp_path_factory.mktemp("trace_comprehensive"))
    argv = _case_args("comprehensive", COMPREHENSIVE_EXTRA) + [
        "-trace_pixel", str(TRACED[0]), str(TRACED[1]), "--trace-json", "trace.json", "-floatfile", "float.bin"]
    rc, text = run_cli(argv, work)
    assert rc == 0, text
    data = json.loads((work / "trace.json").read_text())
    img32 = np.fromfile(work / "float.bin", dtype="<f4")

    # the engine, with a spy on its Miller-index helper (one chunk for the whole ROI)
    st, prep, pb = _problem("comprehensive", COMPREHENSIVE_EXTRA, work)
    calls = []
    orig = E.miller_indices

    def spy(pb_, q, lattices=None):
        out = orig(pb_, q, lattices)
        if lattices is None:
            calls.append((q.detach().clone(), [t.detach().clone() for t in out]))
        return out

    E.miller_indices = spy
    try:
        with torch.no_grad():
            res = E.render(pb, 1 << 26)
    finally:
        E.miller_indices = orig
    parsed = compare_traces.parse_trace_lines(text.splitlines())
    return dict(work=work, text=text, data=data, img32=img32, st=st, prep=prep, pb=pb,
                image=res.image, calls=calls, parsed=parsed)


def _vec_list(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def _py_lines(text):
    return [ln for ln in text.splitlines() if ln.startswith("TRACE_PY")]


def test_trace_final_value_is_the_rendered_pixel(comprehensive):
    c = comprehensive
    s, f = TRACED
    fin = c["data"]["final"]
    engine_value = float(c["image"][s, f])
    assert engine_value > 0
    assert fin["I_pixel_final"] == pytest.approx(engine_value, rel=1e-12)
    # the CLI's float image holds the same value (4-byte float)
    F = c["pb"].fpixels
    assert fin["floatimage_accumulated"] == pytest.approx(float(c["img32"][s * F + f]), rel=1e-6)
    # final = r_e^2 fluence I / steps * capture * polar * omega (no oversample_* switches here)
    expect = (fin["r_e_sqr"] * fin["fluence_photons_per_m2"] * fin["I_before_scaling"] / fin["steps"]
              * fin["capture_fraction"] * fin["polar"] * fin["omega_pixel"])
    assert fin["I_pixel_final"] == pytest.approx(expect, rel=1e-13)
    # the text trace carries the same numbers
    tr = c["parsed"]
    assert tr.items[("I_pixel_final", 0)].values[0] == pytest.approx(fin["I_pixel_final"], rel=1e-14)
    assert tr.counts["I_before_scaling"] == 1


def test_trace_miller_indices_are_the_engines(comprehensive):
    c = comprehensive
    pb, data = c["pb"], c["data"]
    T, O, S = pb.thicksteps, pb.oversample, pb.incident.shape[0]
    M = pb.lattices.shape[0]
    per_pixel = T * O * O * S
    pos = int(torch.nonzero(pb.pixels == TRACED[0] * pb.fpixels + TRACED[1]).reshape(-1)[0])
    if c["calls"]:
        q_all, (h, k, l) = c["calls"][0]
        P = pb.pixels.shape[0]
        assert q_all.shape[0] == P * per_pixel
        # the engine's rows are laid out (layer, sub_s, sub_f, source, pixel): this pixel's subpaths
        rows = torch.arange(per_pixel) * P + pos
        h, k, l = h[rows], k[rows], l[rows]
    else:       # the engine no longer calls the helper per chunk: use the helper directly
        p = E._subpixel_positions(pb, pb.pixels[pos:pos + 1])
        d = p / torch.linalg.vector_norm(p, dim=-1, keepdim=True)
        q = ((d.unsqueeze(-2) - pb.incident) / pb.wavelength.unsqueeze(-1)).reshape(-1, 3)
        h, k, l = E.miller_indices(pb, q)
    got = np.zeros((per_pixel, M, 3))
    seen = set()
    for sub in data["subpixels"]:
        for src in sub["sources"]:
            e = ((sub["layer"] * O + sub["sub_s"]) * O + sub["sub_f"]) * S + src["source"]
            for ph in src["phi_steps"]:
                D = len(ph["mosaic_domains"])
                for dom in ph["mosaic_domains"]:
                    j = ph["phi_tic"] * D + dom["mos_tic"]
                    got[e, j] = dom["hkl_frac"]
                    seen.add((e, j))
    assert len(seen) == per_pixel * M
    want = torch.stack([h, k, l], dim=-1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_trace_covers_every_layer_subpixel_phi_and_mosaic(comprehensive):
    c = comprehensive
    pb, data, st = c["pb"], c["data"], c["st"]
    T, O = pb.thicksteps, pb.oversample
    phisteps = st.crystal.phisteps
    domains = len(st.crystal.mosaic_umats)
    assert (T, O, phisteps, domains) == (5, 2, 9, 5)
    assert len(data["subpixels"]) == T * O * O
    for sub in data["subpixels"]:
        src = sub["sources"][0]
        assert [p["phi_tic"] for p in src["phi_steps"]] == list(range(phisteps))
        for p in src["phi_steps"]:
            assert [m["mos_tic"] for m in p["mosaic_domains"]] == list(range(domains))
            for m in p["mosaic_domains"]:
                for key in ("rot_a_angstroms", "a_star_A_inv", "hkl_frac", "hkl_rounded", "F_latt",
                            "F_latt_a", "F_latt_b", "F_latt_c"):
                    assert key in m
    tr = c["parsed"]
    # the C's own names, with the C's loop conditions (source 0; phi 0 / mosaic 0 for the lattice lines)
    for name in ("pixel_pos_meters", "omega_pixel_sr", "diffracted_vec", "scattering_vec_A_inv",
                 "rot_a_angstroms", "rot_a_star_A_inv", "hkl_frac", "hkl_rounded", "F_latt", "F_cell"):
        assert tr.counts[name] == T * O * O, name
    assert tr.counts["PHI.k_frac"] == T * O * O * phisteps
    for p in range(phisteps):
        for m in range(domains):
            assert tr.counts[f"hkl_frac@phi{p}_mos{m}"] == T * O * O
    for name in ("fdet_vector", "pix0_vector", "distance_final_m", "Fbeam_m", "I_before_scaling",
                 "capture_fraction", "polar", "omega_pixel", "I_pixel_final",
                 # the detector's construction, under the names of the C's -DTRACING build
                 "detector_convention", "angles_rad", "initial_fdet", "fdet_after_rotz", "twotheta_axis",
                 "fdet_after_twotheta", "term_fast", "term_slow", "term_beam"):
        assert tr.counts[name] == 1, name
    # ... which are the geometry step's own values: the final basis and the origin are their sums
    hdr = data["header"]
    assert hdr["fdet_after_twotheta"] == _vec_list(c["pb"].fdet)
    assert hdr["fdet_after_rotz"] != hdr["fdet_after_twotheta"]          # -twotheta 10
    pix0 = (torch.tensor(hdr["term_fast"], dtype=torch.float64) + torch.tensor(hdr["term_slow"], dtype=torch.float64)
            + torch.tensor(hdr["term_beam"], dtype=torch.float64))
    assert pix0.tolist() == _vec_list(c["pb"].pix0) == hdr["pix0_vector"]
    # the C program's rotated lattice at phi 0 is the carried-over one (C-PARITY-001, -phi_carryover c)
    first = data["subpixels"][0]["sources"][0]["phi_steps"]
    assert first[0]["mosaic_domains"][0]["rot_a_angstroms"] != pytest.approx(
        (c["prep"].lattice.a * 1e10).tolist(), rel=1e-6)


def test_trace_follows_interpolation_switch_off(tmp_path):
    work = _workdir(tmp_path)
    st, prep, pb = _problem("interp_oob", ["-roi", "112", "117", "60", "61"], work)
    assert pb.interpolate
    with torch.no_grad():
        res = E.render(pb, 1 << 24)
    assert res.state.oob_warning is not None
    states = {}
    for s, f in ((60, 115), (60, 116), (61, 113)):
        d = compute_trace(pb, s, f, st=st, prep=prep)
        assert d["final"]["I_pixel_final"] == pytest.approx(float(res.image[s, f]), rel=1e-12)
        states[(s, f)] = (d["state_before"]["interpolate"], d["state_after"]["interpolate"])
    assert states[(60, 115)] == (True, True)
    assert states[(60, 116)] == (True, False)       # the first out-of-range evaluation is in this pixel
    assert states[(61, 113)] == (False, False)


def test_trace_sources_dmin_and_oversample_switches(tmp_path):
    work = _workdir(tmp_path)
    extra = ["-roi", "106", "115", "106", "115", "-oversample", "2", "-oversample_polar",
             "-oversample_omega", "-dmin", "15"]
    st, prep, pb = _problem("dispersion", extra, work)
    assert pb.incident.shape[0] == 3
    with torch.no_grad():
        res = E.render(pb, 1 << 24)
    d = compute_trace(pb, 107, 112, st=st, prep=prep)
    assert d["final"]["I_pixel_final"] == pytest.approx(float(res.image[107, 112]), rel=1e-12)
    skipped = [src["dmin_skipped"] for sub in d["subpixels"] for src in sub["sources"]]
    assert any(skipped) and not all(skipped)          # a pixel on the -dmin edge
    assert d["final"]["oversample_polar"] == 1 and d["final"]["oversample_omega"] == 1
    text = "\n".join(format_lines(d["lines"]))
    assert "TRACE_PY:stol@src2 " in text and "TRACE_PY:incident_vec@src1 " in text
    if any(not src["dmin_skipped"] and src["phi_steps"][0]["mosaic_domains"][0]["evaluated"]
           for sub in d["subpixels"] for src in sub["sources"] if src["source"] == 2):
        assert "TRACE_PY_SOURCE2:I_contribution " in text
    # a pixel outside the ROI is reported as not rendered; one outside the detector is an error
    out = compute_trace(pb, 10, 10, st=st, prep=prep)
    assert out["rendered"] is False and out["final"]["I_pixel_final"] == 0.0
    with pytest.raises(TraceError):
        compute_trace(pb, 128, 0)


def test_trace_pixel_outside_detector_is_a_usage_error(tmp_path):
    work = _workdir(tmp_path)
    argv = _case_args("hkl_pattern", ["-trace_pixel", "64", "3", "-floatfile", "f.bin"])
    with pytest.raises(SetupError):
        run_cli(argv, work)


# ---------------------------------------------------------------------------- compare-traces

C_STYLE = """\
noise line
TRACE_CONFIG: tracing pixel (spixel=1, fpixel=2)
TRACE_C:distance_m=0.1
TRACE_C:angles_rad=rotx:0.5 roty:0 rotz:0 twotheta:0
TRACE_C: hkl_frac 1.5 -2.25 3
TRACE_C: hkl_rounded 2 -2 3
TRACE_C_PHI phi_tic=0 phi_deg=0 k_frac=-2.25 F_latt_b=4.5 F_latt=10
TRACE_C_PHI phi_tic=1 phi_deg=1 k_frac=-2.5 F_latt_b=4.25 F_latt=9
WARNING: further warnings will not be printed! TRACE_C_SOURCE2: F_cell 12.5
TRACE_C: hkl_frac 0.5 0.25 1e-20
TRACE_C:detector_convention=MOSFLM
"""


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_compare_traces_parses_both_programs_formats(tmp_path, capsys):
    tr = compare_traces.parse_trace_lines(C_STYLE.splitlines())
    assert tr.counts["hkl_frac"] == 2
    assert tr.items[("hkl_frac", 1)].values == [0.5, 0.25, 1e-20]
    assert tr.items[("angles_rad", 0)].values == [0.5, 0.0, 0.0, 0.0]
    assert tr.counts["PHI.k_frac"] == 2 and tr.items[("PHI.k_frac", 1)].values == [-2.5]
    assert tr.items[("SOURCE2.F_cell", 0)].values == [12.5]
    assert tr.items[("detector_convention", 0)].values == ["MOSFLM"] and not tr.items[("detector_convention", 0)].numeric
    assert "ONFIG:" not in " ".join(tr.counts)
    py = (C_STYLE.replace("TRACE_C:", "TRACE_PY:").replace("TRACE_C_", "TRACE_PY_")
          .replace("TRACE_PY: ", "TRACE_PY:"))
    a, b = _write(tmp_path, "py.txt", py), _write(tmp_path, "c.txt", C_STYLE)
    assert compare_traces.main([a, b]) == 0
    assert "PASS" in capsys.readouterr().out


def test_compare_traces_names_first_quantity_above_threshold(tmp_path, capsys):
    b = _write(tmp_path, "c.txt", C_STYLE)
    bad = C_STYLE.replace("k_frac=-2.5 ", "k_frac=-2.5000001 ").replace("F_cell 12.5", "F_cell 13")
    a = _write(tmp_path, "a.txt", bad)
    assert compare_traces.main([a, b]) == 1
    out = capsys.readouterr().out
    assert "FAIL: first quantity above threshold" in out and "PHI.k_frac[1]" in out
    assert compare_traces.main([a, b, "--threshold", "1e-6", "--ignore", "SOURCE2.*"]) == 0
    capsys.readouterr()
    # a vector is compared relative to its largest component: 1e-20 vs 2e-20 is no difference
    tiny = _write(tmp_path, "t.txt", C_STYLE.replace("0.25 1e-20", "0.25 2e-20"))
    assert compare_traces.main([tiny, b]) == 0
    assert compare_traces.main([tiny, b, "--componentwise"]) == 1
    # a quantity printed a different number of times is a structural difference
    extra = _write(tmp_path, "x.txt", C_STYLE + "TRACE_C: hkl_rounded 2 -2 3\n")
    assert compare_traces.main([extra, b]) == 1
    assert "occurs 2 times in A, 1 times in B" in capsys.readouterr().out
    assert compare_traces.main([extra, b, "--allow-count-mismatch"]) == 0
    assert compare_traces.main([extra, b, "--count-mismatch-ok", "hkl_r*"]) == 0
    assert compare_traces.main([extra, b, "--count-mismatch-ok", "hkl_frac"]) == 1
    text = _write(tmp_path, "m.txt", C_STYLE.replace("=MOSFLM", "=XDS"))
    assert compare_traces.main([text, b]) == 1
    empty = _write(tmp_path, "e.txt", "nothing here\n")
    assert compare_traces.main([empty, b]) == 2


def test_compare_traces_on_a_real_trace(comprehensive, tmp_path, capsys):
    lines = [ln for ln in _py_lines(comprehensive["text"]) if "@" not in ln]   # the C-named part
    a = _write(tmp_path, "a.txt", "\n".join(lines) + "\n")
    assert compare_traces.main([a, a, "-q"]) == 0
    # perturb the third hkl_frac line by 1e-7 (relative)
    out, n = [], 0
    for ln in lines:
        if ln.startswith("TRACE_PY:hkl_frac "):
            if n == 2:
                vals = [float(v) * (1 + 1e-7) for v in ln.split()[1:]]
                ln = "TRACE_PY:hkl_frac " + " ".join("%.15g" % v for v in vals)
            n += 1
        out.append(ln)
    b = _write(tmp_path, "b.txt", "\n".join(out) + "\n")
    capsys.readouterr()
    assert compare_traces.main([a, b]) == 1
    assert "hkl_frac[2]" in capsys.readouterr().out


@pytest.mark.skipif(not os.environ.get("NB_TRACE_C_BIN"),
                    reason="set NB_TRACE_C_BIN to the instrumented C nanoBragg (TRACE_C: lines) to run")
def test_trace_matches_instrumented_c(comprehensive, tmp_path, capsys):
    """Optional: the instrumented reference program's trace of the same pixel (1e-9 relative)."""
    args = shlex.split(golden_cases()["comprehensive"]["args"]) + ["-roi", "127", "130", "127", "130",
                                                                  "-trace_pixel", "128", "129"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([os.environ["NB_TRACE_C_BIN"]] + args + ["-floatfile", "c.bin"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    c_path = _write(tmp_path, "c.txt", p.stdout)
    py_path = _write(tmp_path, "py.txt", comprehensive["text"])
    # a -DTRACING build (beam pivot) prints the rotated basis twice, the 2nd time after all rotations
    quirks = ["--count-mismatch-ok", "*_after_rotz", "--count-mismatch-ok", "*_after_twotheta",
              "--count-mismatch-ok", "twotheta_axis"]
    assert compare_traces.main([py_path, c_path] + quirks) == 0, capsys.readouterr().out
