"""The one render pipeline (issue 14): every caller gets what the ``nanoBragg`` command writes.

Small detectors only; the golden suite checks the pixels against the C program.
"""
from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import run_cli

from nanobragg_torch import pipeline
from nanobragg_torch.config import DetectorConfig
from nanobragg_torch.io.smv import read_smv
from nanobragg_torch.simulator import rendered_pixels

ARGS = ["-cell", "40", "45", "50", "88", "92", "95", "-default_F", "50", "-lambda", "1.2", "-N", "4",
        "-distance", "80", "-detpixels", "24", "-pixel", "0.4", "-misset", "10", "20", "30",
        "-seed", "7", "-noprogress", "-roi", "2", "20", "1", "22"]


def test_render_args_is_what_the_cli_writes(tmp_path):
    """Float image, statistics, scaled integer image, PGM and noise image: byte for byte the CLI's files."""
    rc, text = run_cli(ARGS + ["-floatfile", "f.bin", "-intfile", "i.img", "-pgmfile", "p.pgm",
                               "-noisefile", "n.img"], tmp_path)
    assert rc == 0
    done = pipeline.render_args(ARGS, cwd=str(tmp_path), now=0)
    assert done.image.dtype == np.float32 and done.image.shape == (24, 24)
    assert np.array_equal(done.image.reshape(-1), np.fromfile(tmp_path / "f.bin", dtype="<f4"))
    s = done.stats
    assert "mean= %g rms= %g rmsd= %g" % (s.mean, s.rms, s.rmsd) in text
    assert "max_I = %g  at %g %g" % ((s.max_I,) + done.max_position()) in text
    images = pipeline.OutputImages(done)
    assert "intfile_scale = %g" % images.int_scale in text
    for kind, name, fmt in (("int", "i.img", "smv"), ("pgm", "p.pgm", "pgm"), ("noise", "n.img", "smv")):
        images.write(str(tmp_path / f"again_{name}"), kind, fmt)
        assert (tmp_path / f"again_{name}").read_bytes() == (tmp_path / name).read_bytes(), kind
    _, noise = read_smv(tmp_path / "n.img")
    assert np.array_equal(noise, images.noise)
    assert "%.0f photons on noise image (%d overloads)" % (images.photons, images.overloads) in text


def test_stages_compose_to_render_args(tmp_path):
    """setup -> prepare -> problem -> render -> finish gives render_args's image; the trace's float64 problem too."""
    st = pipeline.setup_from_args(" ".join(ARGS), cwd=str(tmp_path))
    prep = pipeline.prepare_setup(st)
    pb = pipeline.make_problem(st, prep)
    assert pb.fdet.dtype == torch.float32                  # the CLI's default dtype
    done = pipeline.finish(st, prep, pb, pipeline.render_problem(st, pb))
    assert np.array_equal(done.image, pipeline.render_args(ARGS, cwd=str(tmp_path)).image)
    pb64 = pipeline.make_problem(st, prep, dtype="float64")
    assert pb64.fdet.dtype == torch.float64
    img64 = pipeline.render_problem(st, pb64).image.numpy()
    assert np.allclose(img64, done.image, rtol=1e-4, atol=1e-6 * float(done.image.max()))
    assert pipeline.count_evaluations(st, prep) == prep.oversample ** 2   # one layer, source, orientation


def test_hooks_run_between_the_stages(tmp_path):
    seen = []
    hooks = pipeline.Hooks(prepared=lambda st, prep: seen.append(("prepared", prep.oversample)),
                           problem=lambda st, prep, pb: seen.append(("problem", int(pb.pixels.numel()))))
    done = pipeline.run_setup(pipeline.setup_from_args(ARGS, cwd=str(tmp_path)), hooks)
    assert seen == [("prepared", done.prepared.oversample), ("problem", 19 * 22)]   # the ROI's pixels


def test_cuda_request_without_cuda_is_a_setup_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from nanobragg_torch.cli.resolve import SetupError
    st = pipeline.setup_from_args(ARGS + ["-device", "cuda"], cwd=str(tmp_path))
    with pytest.raises(SetupError, match="-device cuda: CUDA is not available"):
        pipeline.prepare_setup(st)


@pytest.mark.parametrize("S,F", [(5, 7), (1, 1), (4, 3)])
def test_rendered_pixels_of_a_rectangle_match_the_mask_scan(S, F):
    """The ROI fast path gives the flat indices a full mask scan gives, for every ROI (also out of range)."""
    def scan(roi):
        keep = np.ones((S, F), dtype=bool)
        if roi is not None:
            x0, x1, y0, y1 = roi
            keep &= ((np.arange(F) >= x0) & (np.arange(F) <= x1))[None, :]
            keep &= ((np.arange(S) >= y0) & (np.arange(S) <= y1))[:, None]
        return np.flatnonzero(keep)
    rois = [None] + list(itertools.product(range(-1, F + 2), range(-1, F + 2), range(-1, S + 2), range(-1, S + 2)))
    for roi in rois:
        got = rendered_pixels(DetectorConfig(fpixels=F, spixels=S, roi=roi)).numpy()
        assert np.array_equal(got, scan(roi)), roi
    mask = np.arange(S * F).reshape(S, F) % 3 != 0
    got = rendered_pixels(DetectorConfig(fpixels=F, spixels=S, roi=(0, F - 1, 0, S - 1), mask=mask)).numpy()
    assert np.array_equal(got, np.flatnonzero(mask))


def test_statistics_follow_the_c_formulas():
    img = np.array([[1.0, 2.0, 3.0], [4.0, np.float32(5.5), 0.0]], dtype=np.float32)
    s = pipeline.image_statistics(img, np.array([0, 1, 2, 3, 4]), (0, 2, 0, 1))
    vals = np.array([1.0, 2.0, 3.0, 4.0, 5.5])
    assert (s.max_I, s.imax) == (5.5, 4)
    assert s.mean == pytest.approx(vals.mean())
    assert s.rms == pytest.approx(np.sqrt((vals ** 2).sum() / 4))
    # rmsd: over the whole ROI (masked pixel 5 included) about the rendered mean
    assert s.rmsd == pytest.approx(np.sqrt(((img.reshape(-1) - vals.mean()) ** 2).sum() / 5))
    every = pipeline.image_statistics(img, np.arange(6), (0, 2, 0, 1))
    assert every.mean == pytest.approx(img.mean()) and every.imax == 4
    assert pipeline.image_statistics(np.zeros((2, 2), np.float32), np.arange(4), (0, 1, 0, 1)).imax is None


def test_help_and_flag_errors_load_no_torch():
    """Start-up: ``nanoBragg -h`` and a bad flag are answered without importing PyTorch."""
    code = ("import io, sys, contextlib\n"
            "from nanobragg_torch.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "    assert main(['-h']) == 0\n"
            "    assert main(['-cell', '1', '2']) == 2\n"
            "print('torch' in sys.modules, 'numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_plain_render_imports_no_optional_package(tmp_path):
    """numba (noise), fabio, h5py, PIL and dask are imported only by the runs that use them."""
    code = ("import sys, io\n"
            "from nanobragg_torch.cli.main import run\n"
            f"run({ARGS + ['-nonoise']!r}, out=io.StringIO(), cwd={str(tmp_path)!r})\n"
            "print(' '.join(m for m in ('numba', 'fabio', 'h5py', 'PIL', 'dask', 'scipy') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
    assert (tmp_path / "floatimage.bin").stat().st_size == 24 * 24 * 4


def test_report_counts_hkl_lines_and_dump_cells_as_the_c(tmp_path):
    """'N initialized hkls': the lines of -hkl (the C counts them), the grid cells of a Fdump.bin read back."""
    (tmp_path / "two.hkl").write_text("0 0 1 10\n2 3 4 20\n")
    base = ["-cell", "40", "40", "40", "90", "90", "90", "-N", "3", "-detpixels", "8", "-nonoise", "-noprogress"]
    rc, text = run_cli(base + ["-hkl", "two.hkl"], tmp_path)
    assert rc == 0 and "  2 initialized hkls (all others =0)" in text
    rc, text = run_cli(base, tmp_path)                       # reads the Fdump.bin the first run wrote
    assert rc == 0 and "reading Fs from Fdump.bin" in text
    assert "  %d initialized hkls (all others =0)" % (3 * 4 * 4) in text
