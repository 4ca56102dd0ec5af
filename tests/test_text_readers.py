"""Text inputs (HKL, MOSFLM matrix, source file, stol table) and the -oversample_* rule (issue 13).

Reader rules: blank lines and lines whose first non-blank character is '#' are skipped;
a field that is not a number, or a line with fewer fields than the format needs, is a
one-line error naming the file and the line (exit 2, nothing written); the source file's
missing trailing fields take the C program's defaults.
"""
from __future__ import annotations

import io
import math
import os
import random
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import torch

from conftest import run_cli

from nanobragg_torch import SimulationOptions, from_args, simulate
from nanobragg_torch.cutil import c_atof
from nanobragg_torch.io.errors import InputFileError
from nanobragg_torch.io.hkl import read_hkl
from nanobragg_torch.io.mosflm import read_mosflm_matrix
from nanobragg_torch.io.text import read_table
from nanobragg_torch.io.textcolumns import read_columns

BASE = ["-cell", "50", "60", "70", "90", "90", "90", "-lambda", "1", "-N", "3", "-distance", "60",
        "-detpixels", "24", "-pixel", "0.4", "-noprogress", "-nonoise", "-nopgm"]


def _cli(tmp_path, args, files=None):
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    return run_cli(BASE + args, tmp_path)


def _main(tmp_path, args, files):
    """(exit status, stderr) of the command line's entry point run in ``tmp_path``."""
    from nanobragg_torch.cli.main import main
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    err, out = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        with redirect_stderr(err), redirect_stdout(out):
            rc = main(BASE + args)
    finally:
        os.chdir(old)
    return rc, err.getvalue()


# -- the refusals the issue names ----------------------------------------------------------

def test_source_file_of_words_is_refused_with_file_and_line(tmp_path):
    rc, err = _main(tmp_path, ["-default_F", "10", "-sourcefile", "src.txt", "-floatfile", "out.bin"],
                    {"src.txt": "a b c\n"})
    assert rc == 2
    assert err == "nanoBragg: error: -sourcefile src.txt:1: field 1 'a' is not a number\n"
    assert not (tmp_path / "out.bin").exists() and not (tmp_path / "intimage.img").exists()


def test_hkl_line_with_a_word_is_refused_with_file_line_and_field(tmp_path):
    rc, err = _main(tmp_path, ["-hkl", "p1.hkl", "-floatfile", "out.bin"],
                    {"p1.hkl": "# h k l F\n1 2 3 100\n\n2 two 3 50\n"})
    assert rc == 2
    assert err == "nanoBragg: error: p1.hkl:4: field 2 'two' is not a number\n"
    assert not (tmp_path / "out.bin").exists() and not (tmp_path / "Fdump.bin").exists()


@pytest.mark.parametrize("text,line,needle", [
    ("1 2 3 100\n1 2 3\n", 2, "expected 4 fields (h k l F), found 3"),
    ("1 2 3 100 7\n", 1, "expected 4 fields (h k l F), found 5"),
    ("1 2 3 100 # inline\n", 1, "field 5 '#' is not a number"),
    ("0 0 0 100\n1 2 3 1e400\n", 2, "structure factor inf is not finite"),
    ("0 0 0 100\n1.5 2 3 10\n", 2, "Miller index h=1.5 is not an integer"),
])
def test_hkl_reader_errors_name_the_line(tmp_path, text, line, needle):
    p = tmp_path / "x.hkl"
    p.write_text(text)
    with pytest.raises(InputFileError) as e:
        read_hkl(str(p))
    assert str(e.value).startswith(f"{p}:{line}: ") and needle in str(e.value)
    assert "\n" not in str(e.value)


def test_stol_table_needs_two_fields(tmp_path):
    p = tmp_path / "water.stol"
    p.write_text("# stol F\n0.0 2.57\n0.1\n")
    with pytest.raises(InputFileError, match=r"water.stol:3: expected at least 2 fields \(stol F\), found 1"):
        read_columns(str(p), 2, min_fields=2, what="stol table", layout="stol F")


# -- comment and blank lines are skipped in every text input --------------------------------

def _with_comments(lines):
    out = ["# written by hand", "", "   # indented comment"]
    for i, ln in enumerate(lines):
        out.append(ln)
        if i % 2 == 0:
            out += ["", "#"]
    return "\n".join(out) + "\n"


def test_comments_and_blank_lines_skipped_in_hkl_matrix_sources_and_stol(tmp_path):
    hkl = ["0 0 0 150", "1 0 0 100", "0 1 0 80", "0 0 1 60", "1 1 1 40", "-1 0 0 100"]
    mat = ["0.0137 0.0031 -0.0012", "-0.0025 0.0118 0.0044", "0.0009 -0.0037 0.0102"]
    src = ["-10 0 0 1 1e-10", "-10 0.01 0 0.5 1.05e-10"]
    stol = ["0 2.57", "0.1 2.2", "0.3 1.5"]
    for name, lines in (("plain", None), ("commented", _with_comments)):
        f = (lambda x: "\n".join(x) + "\n") if lines is None else lines
        (tmp_path / f"{name}.hkl").write_text(f(hkl))
        (tmp_path / f"{name}.mat").write_text(f(mat))
        (tmp_path / f"{name}.src").write_text(f(src))
        (tmp_path / f"{name}.stol").write_text(f(stol))
    a, b = read_hkl(str(tmp_path / "plain.hkl")), read_hkl(str(tmp_path / "commented.hkl"))
    assert a.count == b.count == 6 and np.array_equal(a.grid, b.grid)
    ma = read_mosflm_matrix(str(tmp_path / "plain.mat"), 1e-10)
    mb = read_mosflm_matrix(str(tmp_path / "commented.mat"), 1e-10)
    assert np.array_equal(ma, mb)
    for ext, n in (("src", 5), ("stol", 2)):
        ta = read_columns(str(tmp_path / f"plain.{ext}"), n)
        tb = read_columns(str(tmp_path / f"commented.{ext}"), n)
        assert ta.shape == (len(src) if ext == "src" else len(stol), n) and np.array_equal(ta, tb)
    # and through the command line: the same image with and without comments
    imgs = []
    for name in ("plain", "commented"):
        rc, text = _cli(tmp_path, ["-hkl", f"{name}.hkl", "-mat", f"{name}.mat", "-sourcefile", f"{name}.src",
                                   "-floatfile", f"{name}.bin", "-intfile", f"{name}.img"])
        assert rc == 0, text
        imgs.append(np.fromfile(tmp_path / f"{name}.bin", dtype="<f4"))
    assert imgs[0].max() > 0 and np.array_equal(imgs[0], imgs[1])


def test_source_file_missing_trailing_fields_take_the_defaults(tmp_path):
    p = tmp_path / "s.txt"
    p.write_text("-10 0 0\n-10 0 0 2\n")
    t = read_columns(str(p), 5, min_fields=1)
    assert t.shape == (2, 5)
    assert np.isnan(t[0, 3]) and np.isnan(t[0, 4]) and t[1, 3] == 2 and np.isnan(t[1, 4])
    rc, text = _cli(tmp_path, ["-default_F", "10", "-sourcefile", "s.txt", "-floatfile", "o.bin"])
    assert rc == 0, text


def test_matrix_comment_lines_and_word_errors(tmp_path):
    p = tmp_path / "m.mat"
    p.write_text("# A matrix\n0.01 0 0\n\n0 0.01 zero\n0 0 0.01\n")
    with pytest.raises(InputFileError, match=r"m.mat:4: field 3 'zero' is not a number"):
        read_mosflm_matrix(str(p), 1e-10)


# -- the fast number parser gives atof's values ----------------------------------------------

def test_fast_parser_equals_atof_on_every_kind_of_number(tmp_path):
    rnd = random.Random(7)
    tokens = ["0", "-0", "+5", "5.", ".5", "-.25", "007", "123456789012345", "1234567890123456789",
              "3.14159265358979323846", "1e5", "-2.5E-3", "0x1A", "0x1p-3", "inf", "-inf", "nan",
              "0.1", "0.30000000000000004", "999999999999999.9"]
    tokens += [f"{rnd.uniform(-1e4, 1e4):.{rnd.randint(0, 9)}f}" for _ in range(400)]
    tokens += [str(rnd.randint(-10 ** 12, 10 ** 12)) for _ in range(100)]
    rows = [tokens[i:i + 4] for i in range(0, len(tokens) - len(tokens) % 4, 4)]
    p = tmp_path / "nums.txt"
    p.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    t = read_table(str(p), 4, min_fields=4)
    want = np.array([[c_atof(x) for x in r] for r in rows])
    same = (t.values == want) | (np.isnan(t.values) & np.isnan(want))
    assert same.all(), [rows[i][j] for i, j in np.argwhere(~same)]
    assert np.signbit(t.values[0, 1])                     # -0 keeps its sign, as atof's does
    assert list(t.lines[:2]) == [1, 2]


def test_hkl_reader_large_file_and_last_line_wins(tmp_path):
    rnd = random.Random(3)
    rows = [(rnd.randint(-20, 20), rnd.randint(-20, 20), rnd.randint(-25, 25), round(rnd.uniform(1, 999), 2))
            for _ in range(20000)]
    p = tmp_path / "big.hkl"
    p.write_text("".join(f"{h} {k} {l} {F}\n" for h, k, l, F in rows))
    d = read_hkl(str(p))
    last = {}
    for h, k, l, F in rows:
        last[(h, k, l)] = F
    lo = np.array(d.hkl_min)
    for (h, k, l), F in last.items():
        i, j, m = np.array((h, k, l)) - lo
        assert d.grid[i, j, m] == F
    assert d.count == len(rows)


# -- the -oversample_* rule: corrected by default, the C's compounding with c_legacy ----------

OVERSAMPLE_ARGS = ("-cell 70 80 90 75 85 95 -default_F 100 -lambda 1.0 -N 5 -distance 100 -detpixels 24 "
                   "-pixel 0.4 -detector_abs 300 -detector_thick 200 -thicksteps 2 -oversample 2 "
                   "-oversample_thick -oversample_polar -oversample_omega -polar 0.8 -water 0.001")


def test_oversample_factors_weight_their_own_terms_and_c_legacy_compounds():
    st = from_args(OVERSAMPLE_ARGS + " -dtype float64")
    fixed = simulate(st.crystal, st.detector, st.beam, st.structure_factors, st.options).image
    legacy_opts = SimulationOptions(**{**st.options.__dict__, "c_legacy": True})
    legacy = simulate(st.crystal, st.detector, st.beam, st.structure_factors, legacy_opts).image
    assert torch.isfinite(fixed).all() and torch.isfinite(legacy).all()
    # the factors are each below 1, so compounding them over 2x2x2 terms shrinks the image
    assert float(legacy.max()) < 0.5 * float(fixed.max())
    # the corrected rule is linear in the terms and leaves I_bg (water) unweighted:
    # I(F) = I_bg + F^2 b, so I(300) - I(100) = 8/3 (I(200) - I(100)), with I_bg > 0
    imgs = {}
    for F in (100, 200, 300):
        s = from_args(OVERSAMPLE_ARGS.replace("-default_F 100", f"-default_F {F}") + " -dtype float64")
        imgs[F] = simulate(s.crystal, s.detector, s.beam, s.structure_factors, s.options).image
    assert torch.equal(imgs[100], fixed)
    d2, d3 = imgs[200] - imgs[100], imgs[300] - imgs[100]
    assert torch.allclose(d3, 8.0 / 3.0 * d2, rtol=1e-9, atol=0)
    bg = imgs[100] - d2 / 3.0
    assert float(bg.min()) > 0


def test_c_legacy_flag_reaches_the_options():
    st = from_args(OVERSAMPLE_ARGS + " -c_legacy")
    assert st.options.c_legacy is True
    assert from_args(OVERSAMPLE_ARGS).options.c_legacy is False


def test_trace_follows_the_rule_in_both_modes(tmp_path):
    from nanobragg_torch import engine as E
    from nanobragg_torch.simulator import build_problem, prepare
    from nanobragg_torch.tools.trace import compute_trace
    for extra in ("", " -c_legacy"):
        st = from_args(OVERSAMPLE_ARGS + " -dtype float64" + extra)
        prep = prepare(st.crystal, st.detector, st.beam, device="cpu", dtype=torch.float64)
        pb = build_problem(prep, st.crystal, st.detector, st.beam, st.structure_factors, st.options)
        assert pb.legacy_oversample == bool(extra)
        with torch.no_grad():
            img = E.render(pb).image
        d = compute_trace(pb, 7, 15, prep=prep)
        assert d["final"]["I_pixel_final"] == pytest.approx(float(img[7, 15]), rel=1e-12)
        assert math.isfinite(d["final"]["I_pixel_final"])
