"""Read-back (issue 16): a read_*/write_* pair per format exported from ``nanobragg_torch.io``; ``io``
imports nothing from ``cli`` and has no import cycle; -img/-mask read CBF and NeXus as they read SMV.
"""
from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fabio")
pytest.importorskip("h5py")

IO_DIR = Path(__file__).resolve().parents[1] / "src" / "nanobragg_torch" / "io"
GEOMETRY = ("-cell 57 68 79 90 90 90 -default_F 100 -N 2 -lambda 1.3 -distance 120 -pixel 0.1 "
            "-detpixels_f 48 -detpixels_s 32 -Xbeam 1.7 -Ybeam 2.9 -phi 12 -osc 0.5 -noprogress").split()


def test_io_exports_a_pair_per_format():
    import nanobragg_torch.io as nio
    for fmt in ("float", "smv", "cbf", "nexus", "pgm", "image"):
        assert callable(getattr(nio, "read_" + fmt)) and callable(getattr(nio, "write_" + fmt)), fmt
    assert callable(nio.read_structure_factors) and callable(nio.write_hkl)


def _module_imports(path: Path):
    """(module-level imports, all imports) of a source file, as absolute module names."""
    tree = ast.parse(path.read_text())
    top, every = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = "nanobragg_torch.io".split(".")
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            names = [base]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        every.update(names)
        if node in tree.body:
            top.update(names)
    return top, every


def test_io_imports_nothing_from_cli_and_has_no_cycle():
    graph = {}
    for path in IO_DIR.glob("*.py"):
        top, every = _module_imports(path)
        assert not any(n.startswith("nanobragg_torch.cli") for n in every), path.name
        mod = "nanobragg_torch.io" + ("" if path.stem == "__init__" else "." + path.stem)
        graph[mod] = {n for n in top if n.startswith("nanobragg_torch.io.")}
    # module-level imports among io's modules form no cycle
    state = {}

    def visit(m, chain):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(chain + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for n in graph.get(m, ()):
            visit(n, chain + [m])
        state[m] = 2
    for m in graph:
        visit(m, [])
    # and they all import, without pulling in the command line or the optional readers
    code = ("import sys, importlib\n"
            "for m in %r:\n"
            "    importlib.import_module(m)\n"
            "bad = [m for m in sys.modules if m.startswith('nanobragg_torch.cli') or m in ('gemmi', 'fabio', 'h5py')]\n"
            "assert not bad, bad\n" % sorted(graph))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-800:]


def _meta():
    from nanobragg_torch.cli.flags import parse_flags
    from nanobragg_torch.cli.resolve import build_setup
    from nanobragg_torch.io import frame_metadata
    from nanobragg_torch.simulator import prepare
    st = build_setup(parse_flags(GEOMETRY))
    return frame_metadata(st, prepare(st.crystal, st.detector, st.beam))


def test_round_trip_of_every_pair(tmp_path):
    import nanobragg_torch.io as nio
    meta = _meta()
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 60000, (32, 48)).astype(np.uint16)
    floats = rng.uniform(0, 1e3, (32, 48)).astype(np.float32)
    nio.write_float(tmp_path / "a.bin", floats)
    assert np.array_equal(nio.read_float(tmp_path / "a.bin", (32, 48)), floats)
    nio.write_smv(tmp_path / "a.img", counts, meta["smv_header"])
    assert np.array_equal(nio.read_smv(tmp_path / "a.img")[1], counts)
    nio.write_cbf(str(tmp_path / "a.cbf"), counts, meta)
    header, data = nio.read_cbf(str(tmp_path / "a.cbf"))
    assert np.array_equal(data, counts.astype(np.int32)) and "Beam_xy" in header and "timestamp" in header
    nio.write_nexus(str(tmp_path / "a.nxs"), floats, meta)
    geo, data, mask = nio.read_nexus(str(tmp_path / "a.nxs"))
    assert np.array_equal(data, floats) and geo["fpixels"] == 48 and not mask.any()
    nio.write_pgm(tmp_path / "a.pgm", (counts >> 8).astype(np.uint8), 2.0)
    assert np.array_equal(nio.read_pgm(tmp_path / "a.pgm")[0], (counts >> 8).astype(np.uint8))
    for name in ("a.img", "a.cbf", "a.nxs"):
        image, info = nio.read_image(str(tmp_path / name))
        assert image.shape == (32, 48)
        assert info["pixel_size_m"] == pytest.approx(1e-4)
        assert info["wavelength_m"] == pytest.approx(1.3e-10)
        assert info["phi_start_deg"] == pytest.approx(12) and info["osc_range_deg"] == pytest.approx(0.5)


def test_nexus_sweep_in_one_file(tmp_path):
    import nanobragg_torch.io as nio
    from nanobragg_torch.io.nexus import stack_nexus
    meta = _meta()
    frames = []
    for i in range(3):
        m = dict(meta, phi_start_deg=12 + 0.5 * i)
        img = np.full((32, 48), i + 1, dtype=np.int32)
        frames.append(img)
        nio.write_nexus(str(tmp_path / f"f{i}.nxs"), img, m)
    stack_nexus([tmp_path / f"f{i}.nxs" for i in range(3)], str(tmp_path / "sweep.nxs"))
    import h5py
    with h5py.File(tmp_path / "sweep.nxs", "r") as fh:
        assert np.array_equal(fh["/entry/data/data"][()], np.stack(frames))
        assert np.allclose(fh["/entry/sample/transformations/phi"][()], [12, 12.5, 13])
    with pytest.raises(ValueError, match="f0.nxs"):
        stack_nexus([tmp_path / "f1.nxs", tmp_path / "f0.nxs"], str(tmp_path / "bad.nxs"))
    assert not (tmp_path / "bad.nxs").exists()


def _setup_with(flag, path, *extra):
    from nanobragg_torch.cli.flags import parse_flags
    from nanobragg_torch.cli.resolve import build_setup
    from nanobragg_torch.simulator import prepare
    argv = ["-cell", "57", "68", "79", "90", "90", "90", "-default_F", "100", "-N", "2", flag, str(path),
            "-noprogress", *extra]
    st = build_setup(parse_flags(argv))
    return st, prepare(st.crystal, st.detector, st.beam)


@pytest.mark.parametrize("convention", ["-mosflm", "-adxv", "-denzo"])
def test_img_and_mask_from_cbf_and_nexus_as_from_smv(tmp_path, convention):
    """The same image as SMV, CBF and NeXus: -img gives the same detector, -mask the same mask."""
    from nanobragg_torch.cli.main import run
    argv = GEOMETRY + [convention, "-roi", "5", "40", "3", "28", "-nopgm"]
    for name, ext in (("i", "img"), ("i", "cbf"), ("i", "nxs")):
        assert run(argv + ["-floatfile", str(tmp_path / "f.bin"), "-intfile", str(tmp_path / f"{name}.{ext}"),
                           "-nonoise"], out=io.StringIO(), cwd=str(tmp_path)) == 0
    results = {}
    for ext in ("img", "cbf", "nxs"):
        st, prep = _setup_with("-img", tmp_path / f"i.{ext}", convention)
        g, d = prep.geometry, st.detector
        results[ext] = dict(fpixels=d.fpixels, spixels=d.spixels, pixel=float(d.pixel_size),
                            wavelength=float(st.beam.wavelength), phi0=float(st.crystal.phi0),
                            osc=float(st.crystal.osc), Fbeam=float(g.Fbeam), Sbeam=float(g.Sbeam),
                            distance=float(g.distance), pix0=g.pix0.numpy().copy())
    for ext in ("cbf", "nxs"):
        for key, ref in results["img"].items():
            got = results[ext][key]
            tol = {"Fbeam": 1e-8, "Sbeam": 1e-8, "pix0": 1e-8, "distance": 1e-9}.get(key, 1e-9)
            assert np.allclose(got, ref, rtol=0, atol=tol * max(1.0, float(np.max(np.abs(ref))))), (ext, key, got, ref)
    # the ROI left zeros around the image: those pixels are switched off by -mask
    masks = {}
    for ext in ("img", "cbf", "nxs"):
        st, prep = _setup_with("-mask", tmp_path / f"i.{ext}", convention)
        masks[ext] = np.asarray(st.detector.mask).reshape(st.detector.spixels, st.detector.fpixels) == 0
        assert st.detector.fpixels == 48 and st.detector.spixels == 32
    assert masks["img"].sum() == 48 * 32 - 36 * 26
    assert np.array_equal(masks["cbf"], masks["img"]) and np.array_equal(masks["nxs"], masks["img"])


def test_nexus_pixel_mask_switches_pixels_off_for_mask(tmp_path):
    import nanobragg_torch.io as nio
    meta = dict(_meta())
    m = np.zeros((32, 48), bool)
    m[3:5, 7:9] = True
    meta["mask"] = m
    nio.write_nexus(str(tmp_path / "m.nxs"), np.ones((32, 48), np.int32), meta)
    st, _ = _setup_with("-mask", tmp_path / "m.nxs")
    off = np.asarray(st.detector.mask).reshape(32, 48) == 0
    assert np.array_equal(off, m)
