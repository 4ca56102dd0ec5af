"""What a new user meets first (issue 17): -h, devices, pipes, optional packages, the PNG preview."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from conftest import golden_cases, golden_dir

ROOT = Path(__file__).resolve().parents[1]
BASE = ["-cell", "100", "100", "100", "90", "90", "90", "-default_F", "10", "-detpixels", "4", "-oversample", "1",
        "-nonoise", "-nopgm", "-noprogress", "-floatfile", "f.bin", "-intfile", "i.img"]


def _main(tmp_path, argv):
    from nanobragg_torch.cli.main import main
    old = os.getcwd()
    os.chdir(tmp_path)
    err, out = io.StringIO(), io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(out):
            rc = main(argv)
    finally:
        os.chdir(old)
    return rc, out.getvalue(), err.getvalue()


# -- -h ------------------------------------------------------------------------

def test_help_lists_every_flag_within_100_columns():
    from nanobragg_torch.cli.flags import _NAME_ARITY
    from nanobragg_torch.cli.usage import usage_text
    text = usage_text()
    names = set(re.findall(r"(?<![\w-])-{1,2}[A-Za-z0-9][A-Za-z0-9_-]*", text))
    assert sorted(n for n in _NAME_ARITY if n not in names) == []
    wide = [ln for ln in text.splitlines() if len(ln) > 100]
    assert wide == []
    assert "docs/" not in text and "src/" not in text and ".md" not in text and ".py" not in text


def test_readme_flag_tables_are_the_help_table():
    from nanobragg_torch.cli.usage import markdown_tables
    assert markdown_tables() in (ROOT / "README.md").read_text(), \
        "README flag tables are stale: python -m nanobragg_torch.cli.usage prints them"


# -- devices ---------------------------------------------------------------------

@pytest.mark.parametrize("device", ["mps", "xpu", "xpu:1", "cuda", "cuda:7"])
def test_missing_devices_are_refused_before_rendering(tmp_path, device):
    from nanobragg_torch.devices import device_problem
    if device_problem(device) is None:
        pytest.skip(f"{device} exists here")
    rc, out, err = _main(tmp_path, BASE + ["-device", device])
    assert rc == 2 and err.count("\n") == 1 and err.startswith(f"nanoBragg: error: -device {device}: ")
    assert out == "" and list(tmp_path.iterdir()) == []


def test_device_problem_api():
    import torch
    from nanobragg_torch import simulate
    from nanobragg_torch.config import BeamConfig, CrystalConfig, DetectorConfig, SimulationOptions, \
        StructureFactorConfig
    from nanobragg_torch.devices import device_problem
    assert device_problem("cpu") is None
    assert "not a device name" in device_problem("nonsense")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="device mps: "):
            simulate(CrystalConfig(), DetectorConfig(fpixels=2, spixels=2), BeamConfig(),
                     StructureFactorConfig(default_F=1), SimulationOptions(device="mps"))


# -- pipes -------------------------------------------------------------------------

def _script(name):
    return str(Path(sys.executable).with_name(name))


@pytest.mark.parametrize("tool", ["nanoBragg", "compare-traces", "nanobragg-dataset"])
def test_console_tools_are_quiet_in_a_closed_pipe(tmp_path, tool):
    if not os.path.exists(_script(tool)):
        pytest.skip(f"{tool} is not installed next to {sys.executable}")
    if tool == "nanoBragg":
        cmd = [_script(tool)] + BASE
    elif tool == "compare-traces":
        a = tmp_path / "a.txt"
        a.write_text("".join("TRACE_PY: q%d %d\n" % (i, i) for i in range(3000)))
        cmd = [_script(tool), "--all", str(a), str(a)]
    else:
        spec = tmp_path / "s.toml"
        spec.write_text((ROOT / "examples" / "rotation.toml").read_text())
        cmd = [_script(tool), str(spec), str(tmp_path / "out"), "--dry-run"]
    # a reader that takes one line and goes away, as `| head -1` does
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    rc = p.wait(timeout=300)
    assert "Traceback" not in err and "Broken pipe" not in err and "BrokenPipe" not in err, err
    assert rc in (0, 141), (rc, err)


# -- optional packages ---------------------------------------------------------------

def test_all_missing_writer_packages_in_one_line(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("fabio", "h5py", "PIL") else real(name, *a))
    rc, out, err = _main(tmp_path, BASE[:-4] + ["-floatfile", "f.h5", "-intfile", "i.cbf", "-pngfile", "p.png"])
    assert rc == 2 and err.count("\n") == 1, err
    for word in ("-floatfile f.h5", "-intfile i.cbf", "-pngfile p.png", "'fabio'", "'h5py'", "'pillow'",
                 "nanobragg-torch[formats]"):
        assert word in err, (word, err)
    assert list(tmp_path.iterdir()) == []


def test_nb_compare_notes_missing_pngs(monkeypatch, capsys):
    from nanobragg_torch.tools import nb_compare
    summary = {"png_note": nb_compare.PNG_NOTE % "c.png and py.png", "outdir": "x", "threshold": 0.99}
    nb_compare._report(summary, 0, "", quiet=True)
    err = capsys.readouterr().err
    assert err.startswith("nb-compare: note: Pillow is not installed") and "nanobragg-torch[formats]" in err


# -- PNG preview ---------------------------------------------------------------------

@pytest.mark.parametrize("case", ["misset_cubic", "mosaic", "mat_triclinic"])
def test_png_default_shows_the_spots(case):
    from nanobragg_torch.io.png import png_pixels
    g = golden_dir()
    if case not in golden_cases():
        pytest.skip(case)
    img = np.fromfile(g / case / "float.bin", dtype="<f4").astype(np.float64)
    n = int(round(np.sqrt(img.size)))
    img = img.reshape(n, n)
    grey = png_pixels(img).astype(int)                           # the default scale
    order = np.argsort(img, axis=None)
    # monotonic: a brighter pixel is never a darker grey, and the brightest pixel is white
    assert np.all(np.diff(grey.reshape(-1)[order]) >= 0) and grey.max() == 255
    top = img.reshape(-1)[order[-20:]]
    assert np.all(grey.reshape(-1)[order[-20:]] >= 200), top           # the spots' peaks are bright
    background = img < img.mean()
    assert np.mean(grey[background] < 32) > 0.95                         # between spots it is dark


def test_dataset_names_every_missing_package_in_one_line(tmp_path, monkeypatch, capsys):
    """nanobragg-dataset: the frame format's writer, gemmi for an MTZ and Dask for a cluster, all
    in one line with the extras that install them; exit 2 and no folder made."""
    import importlib.util
    from nanobragg_torch.dataset.cli import main as dataset_main
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("fabio", "gemmi", "distributed") else real(name, *a))
    exp = tmp_path / "e.toml"
    exp.write_text('[setup]\nflags = "-cell 50 50 50 90 90 90 -hkl x.mtz -N 2 -detpixels 8 -distance 100"\n'
                   '[rotation]\nstart = 0\nosc = 0.1\nframes = 2\n[output]\nformat = "cbf"\n')
    rc = dataset_main([str(exp), str(tmp_path / "out"), "--local-cluster", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "'fabio', 'gemmi' and 'distributed' packages" in err
    assert "pip install 'nanobragg-torch[cluster,formats]'" in err
    assert not (tmp_path / "out").exists()


def test_reader_and_writer_packages_missing_together(tmp_path, monkeypatch):
    """-hkl x.mtz without gemmi and -intfile i.cbf without fabio: one line names both, before
    any input is read (the MTZ file does not even exist)."""
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("fabio", "gemmi") else real(name, *a))
    argv = ["-cell", "50", "50", "50", "90", "90", "90", "-hkl", "x.mtz", "-N", "2", "-detpixels", "8",
            "-distance", "100", "-intfile", "i.cbf", "-nopgm", "-nonoise"]
    rc, out, err = _main(tmp_path, argv)
    assert rc == 2 and err.count("\n") == 1, err
    for word in ("-intfile i.cbf", "-hkl x.mtz", "'fabio' and 'gemmi' packages", "nanobragg-torch[formats]"):
        assert word in err, (word, err)
    assert list(tmp_path.iterdir()) == []
