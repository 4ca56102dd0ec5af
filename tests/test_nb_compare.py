"""nb-compare end to end, with stand-in runners (small Python scripts) for both programs.

The stand-in writes a known float image to the path after -floatfile and
reports its size the way nanoBragg does ("(FxS pixels)"); its first argument
selects a behaviour, so that every exit status of nb-compare is reached.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from nanobragg_torch.tools import nb_compare

RUNNER = r'''
import array, math, os, sys
mode, args = sys.argv[1], sys.argv[2:]
def val(flag, default=None):
    return args[args.index(flag) + 1] if flag in args else default
n = int(val("-detpixels", "8"))
S = F = n
if mode == "fail":
    print("stand-in: failing on purpose", file=sys.stderr)
    sys.exit(3)
hkl = val("-hkl")
if hkl is not None and not os.path.isfile(hkl):
    print("stand-in: cannot open %s" % hkl, file=sys.stderr)
    sys.exit(7)
if mode == "dump" and not os.path.isfile("Fdump.bin"):
    print("stand-in: no Fdump.bin in %s" % os.getcwd(), file=sys.stderr)
    sys.exit(9)
if mode == "wide":
    F += 2
if mode != "noreport":
    print("  distance=0.1 detsize=0.0008x0.0008  pixel=0.0001 meters (%dx%d pixels)" % (F, S))
out = val("-floatfile", "floatimage.bin")
if val("-intfile") is not None:
    with open(val("-intfile"), "wb") as fh:
        fh.write(b"int image")
if mode == "nofile":
    sys.exit(0)
vals = []
for s in range(S):
    for f in range(F):
        v = 1.0 + ((s * 5 + f * 3) % 7) + 0.5 * s
        if mode == "scaled":
            v *= 2.0
        if mode == "scrambled":
            v = 1.0 + ((s * 11 + f * 13 + 5) % 17)
        vals.append(v)
if mode == "short":
    vals = vals[: len(vals) // 2]
with open(out, "wb") as fh:
    array.array("f", vals).tofile(fh)
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    script = tmp_path / "stand_in.py"
    script.write_text(RUNNER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NB_C_BIN", raising=False)

    def cmd(mode):
        return shlex.join([sys.executable, str(script), mode])
    return cmd


def _run(stand_in, c_mode, py_mode, forwarded, *opts, outdir="out"):
    argv = ["--c-bin", stand_in(c_mode), "--py-bin", stand_in(py_mode), "-q"]
    if outdir:
        argv += ["--outdir", outdir]
    argv += list(opts) + ["--"] + list(forwarded)
    rc = nb_compare.main(argv)
    summary = None
    if outdir and (Path(outdir) / "summary.json").is_file():
        summary = json.loads((Path(outdir) / "summary.json").read_text())
    return rc, summary


def test_success_writes_everything(stand_in, tmp_path):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "x.hkl").write_text("0 0 0 1\n")
    fwd = ["-detpixels", "8", "-hkl", "inputs/x.hkl", "-floatfile", "mine.bin", "-intfile", "int.img"]
    rc, s = _run(stand_in, "ok", "ok", fwd, "--save-diff")
    assert rc == 0
    out = tmp_path / "out"
    for name in ("c_stdout.txt", "c_stderr.txt", "py_stdout.txt", "py_stderr.txt", "c_float.bin",
                 "py_float.bin", "c.png", "py.png", "diff.png", "diff.bin", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "c_files" / "int.img").read_bytes() == b"int image"
    assert (out / "py_files" / "int.img").is_file()
    assert not (tmp_path / "mine.bin").exists()          # -floatfile is replaced, not obeyed
    m = s["metrics"]
    assert s["exit_code"] == 0 and s["passed"] is True
    assert m["correlation"] == 1.0 and m["mse"] == 0.0 and m["rmse"] == 0.0 and m["max_abs_diff"] == 0.0
    assert m["sum_c"] == pytest.approx(m["sum_py"]) and m["sum_ratio_py_over_c"] == 1.0 and m["pixels"] == 64
    assert s["shape"] == {"c": [8, 8], "py": [8, 8]}
    assert s["runtime_s"]["c"] > 0 and s["runtime_s"]["py"] > 0
    # the relative input path was handed over as an absolute one
    assert str(tmp_path / "inputs" / "x.hkl") in s["args_used"]
    assert "-floatfile" not in s["args_used"]
    img = np.fromfile(out / "c_float.bin", dtype="<f4").reshape(8, 8)
    assert img[1, 2] == pytest.approx(1.0 + (5 + 6) % 7 + 0.5)
    from PIL import Image
    assert Image.open(out / "c.png").size == (8, 8)
    assert Image.open(out / "diff.png").mode == "RGB"


def test_scaled_image_roi_and_default_outdir(stand_in, tmp_path, monkeypatch):
    monkeypatch.setenv("NB_C_BIN", stand_in("ok"))
    rc = nb_compare.main(["--py-bin", stand_in("scaled"), "--roi", "1", "4", "2", "6", "-q",
                          "--", "-detpixels", "8"])
    assert rc == 0                                 # same pattern, twice as bright: correlation 1
    dirs = list((tmp_path / "comparisons").iterdir())
    assert len(dirs) == 1 and len(dirs[0].name.split("-")[-1]) == 8
    s = json.loads((dirs[0] / "summary.json").read_text())
    m = s["metrics"]
    assert m["pixels"] == 4 * 5
    assert m["correlation"] == pytest.approx(1.0)
    assert m["sum_ratio_py_over_c"] == pytest.approx(2.0)
    assert m["max_abs_diff"] > 0


def test_fdump_is_copied_into_each_working_directory(stand_in, tmp_path):
    (tmp_path / "Fdump.bin").write_bytes(b"dump")
    rc, s = _run(stand_in, "dump", "dump", ["-detpixels", "4"])
    assert rc == 0, s
    assert (tmp_path / "Fdump.bin").read_bytes() == b"dump"


def test_usage_errors(stand_in, capsys):
    assert nb_compare.main(["--c-bin", stand_in("ok"), "--"]) == 1          # nothing to forward
    assert nb_compare.main(["--", "-detpixels", "8"]) == 1                  # no C program
    assert nb_compare.main(["--c-bin", stand_in("ok"), "--bogus", "--", "-N", "1"]) == 1
    assert nb_compare.main(["--c-bin", stand_in("ok"), "--roi", "4", "1", "0", "0", "--", "-N", "1"]) == 1
    rc, s = _run(stand_in, "ok", "ok", ["-detpixels", "8"], "--roi", "0", "8", "0", "7")
    assert rc == 1 and "outside" in s["error"]


def test_runner_failure(stand_in):
    rc, s = _run(stand_in, "fail", "ok", ["-detpixels", "8"])
    assert rc == 2
    assert s["runs"]["c"]["returncode"] == 3 and "c runner" in s["error"]
    assert "failing on purpose" in (Path("out") / "c_stderr.txt").read_text()
    rc, s = _run(stand_in, "ok", "ok", ["-detpixels", "8", "-hkl", "missing.hkl"], outdir="out2")
    assert rc == 2
    rc = nb_compare.main(["--c-bin", "/nonexistent/nanoBragg", "--py-bin", "/nonexistent/py",
                          "--outdir", "out3", "-q", "--", "-N", "1"])
    assert rc == 2


def test_low_correlation(stand_in):
    rc, s = _run(stand_in, "ok", "scrambled", ["-detpixels", "8"])
    assert rc == 3
    assert s["metrics"]["correlation"] < 0.999 and s["passed"] is False
    rc, s = _run(stand_in, "ok", "scrambled", ["-detpixels", "8"], "--threshold", "-1", outdir="out2")
    assert rc == 0


def test_shapes_differ(stand_in):
    rc, s = _run(stand_in, "ok", "wide", ["-detpixels", "8"])
    assert rc == 4
    assert s["shape"] == {"c": [8, 8], "py": [8, 10]}
    rc, s = _run(stand_in, "ok", "wide", ["-detpixels", "8"], "--resample", "--threshold", "0", outdir="out2")
    assert rc in (0, 3) and s["resampled"] is True and s["metrics"]["pixels"] == 64


def test_io_and_parse_errors(stand_in, tmp_path):
    rc, s = _run(stand_in, "ok", "nofile", ["-detpixels", "8"])
    assert rc == 5 and "cannot read" in s["error"]
    rc, s = _run(stand_in, "ok", "short", ["-detpixels", "8"], outdir="out2")
    assert rc == 5
    rc, s = _run(stand_in, "ok", "noreport", ["-detpixels", "8"], outdir="out3")
    assert rc == 0                                  # a square image needs no size report
    (tmp_path / "blocker").write_text("a file where the output folder should go")
    rc, _ = _run(stand_in, "ok", "ok", ["-detpixels", "8"], outdir="blocker/sub")
    assert rc == 5


def test_prepare_args_keeps_outputs_and_numbers(tmp_path):
    (tmp_path / "in.txt").write_text("x")
    (tmp_path / "int.img").write_text("old")
    (tmp_path / "5").write_text("a file named like a number")
    args, copies = nb_compare.prepare_args(
        ["-sourcefile", "in.txt", "-intfile", "int.img", "-N", "5", "-floatimage", "f.bin", "-hkl", "nope.hkl",
         "in.txt"], str(tmp_path))
    assert args == ["-sourcefile", str(tmp_path / "in.txt"), "-intfile", "int.img", "-N", "5",
                    "-hkl", "nope.hkl", str(tmp_path / "in.txt")]
    assert copies == []
    (tmp_path / "my.dump").write_text("d")
    _, copies = nb_compare.prepare_args(["-dump", "my.dump", "-N", "1"], str(tmp_path))
    assert copies == ["my.dump"]
    _, copies = nb_compare.prepare_args(["-dump", "my.dump", "-hkl", "in.txt"], str(tmp_path))
    assert copies == []
