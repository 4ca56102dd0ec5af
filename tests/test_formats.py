"""Image formats (issue 6): every written file opened with the library its users would use.

SMV and CBF through fabio, NeXus through h5py (checking the NXmx layout and
the geometry DIALS/dxtbx would read from it), PNG through Pillow; plus the
``write_image``/``frame_metadata`` API, atomic writes and the progress bar.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

fabio = pytest.importorskip("fabio")
h5py = pytest.importorskip("h5py")
PIL_Image = pytest.importorskip("PIL.Image")

# a rectangular detector (12 fast x 8 slow) so that a transposition cannot pass,
# tilted and swung so that the geometry is not trivial
ARGS = ("-cell 70 80 90 75 85 95 -default_F 100 -lambda 1 -N 3 -distance 100 -detpixels_f 12 "
        "-detpixels_s 8 -detector_rotx 3 -twotheta 4 -phi 10 -osc 0.5 -seed 7 -noprogress").split()
MCSTAS_TO_IMGCIF = np.diag([-1.0, 1.0, -1.0])


def run_cli(argv, cwd, err=None):
    from nanobragg_torch.cli.main import run
    out = io.StringIO()
    rc = run(list(argv), out=out, cwd=str(cwd), err=err)
    return rc, out.getvalue()


def report_vector(text: str, key: str):
    line = next(l for l in text.splitlines() if l.strip().startswith(key))
    return np.array([float(x) for x in line.split("=")[-1].split()])


def beam_hit_from_report(text: str):
    """(fast, slow) metres from the first pixel's corner, and the distance, of the point where the
    direct beam meets the detector plane, from the report's printed vectors (6 digits)."""
    o = report_vector(text, "dials origin") / 1000.0
    pix0 = np.array([-o[2], o[1], o[0]])             # dials (x, y, z) = nanoBragg (z, y, -x)
    f = report_vector(text, "DIRECTION_OF_DETECTOR_X-AXIS")
    s = report_vector(text, "DIRECTION_OF_DETECTOR_Y-AXIS")
    b = report_vector(text, "INCIDENT_BEAM_DIRECTION")
    # t b = pix0 + x f + y s
    t, x, y = np.linalg.solve(np.column_stack([b, -f, -s]), pix0)
    return x, y, t


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The same image written once in the C program's formats and once in the new ones."""
    d = tmp_path_factory.mktemp("formats")
    rc, text = run_cli(ARGS + ["-floatfile", "f.bin", "-intfile", "i.img", "-noisefile", "n.img",
                               "-pgmfile", "p.pgm", "-pngfile", "p.png"], d)
    assert rc == 0
    rc2, text2 = run_cli(ARGS + ["-floatfile", "f.h5", "-intfile", "i.cbf", "-noisefile", "n.nxs",
                                 "-nopgm", "-pngfile", "lin.png", "-pngscale", "linear"], d)
    assert rc2 == 0
    return d, text, text2


def test_smv_opens_in_fabio(rendered):
    from nanobragg_torch.io.smv import read_smv
    d, text, _ = rendered
    for name in ("i.img", "n.img"):
        img = fabio.open(str(d / name))
        _, ours = read_smv(d / name)
        assert img.data.shape == (8, 12) and img.data.dtype == np.uint16
        assert np.array_equal(img.data, ours)
        h = img.header
        assert int(h["SIZE1"]) == 12 and int(h["SIZE2"]) == 8
        assert float(h["PIXEL_SIZE"]) == pytest.approx(0.1)
        assert float(h["WAVELENGTH"]) == pytest.approx(1.0)
        assert float(h["PHI"]) == pytest.approx(10.0) and float(h["OSC_RANGE"]) == pytest.approx(0.5)
        assert float(h["TWOTHETA"]) == pytest.approx(4.0)
        # DISTANCE: sample to where the beam meets the detector (not the C's printed distance,
        # which is the close distance here: the report's ratio is taken before the two-theta swing)
        fbeam, sbeam, dist = beam_hit_from_report(text)
        assert float(h["DISTANCE"]) == pytest.approx(dist * 1000, rel=1e-5)
        assert float(h["ADXV_CENTER_X"]) == pytest.approx(fbeam * 1000, rel=1e-4)
    # the integer image is the float image scaled, plus the ADC offset
    f = np.fromfile(d / "f.bin", dtype="<f4").reshape(8, 12)
    scale = float(next(l for l in text.splitlines() if l.startswith("intfile_scale")).split("=")[1])
    i = fabio.open(str(d / "i.img")).data.astype(np.float64)
    assert np.allclose(i, np.floor(f * scale + 40 + 0.5), atol=1)


def test_cbf_opens_in_fabio(rendered):
    d, text, _ = rendered
    cbf = fabio.open(str(d / "i.cbf"))
    smv = fabio.open(str(d / "i.img"))
    assert cbf.data.shape == (8, 12) and cbf.data.dtype == np.int32
    assert np.array_equal(cbf.data, smv.data.astype(np.int32))       # the same counts as the SMV image
    ph = cbf.header["_array_data.header_contents"]
    assert "# Pixel_size 0.0001 m x 0.0001 m" in ph
    assert "# Wavelength 1 A" in ph
    assert "# Start_angle 10.000000 deg." in ph and "# Angle_increment 0.500000 deg." in ph
    fbeam, sbeam, dist = beam_hit_from_report(text)
    assert f"# Beam_xy ({fbeam / 1e-4:.3f}" in ph and f", {sbeam / 1e-4:.3f}" in ph
    # the detector is tilted (-detector_rotx 3 -twotheta 4), which a mini-CBF cannot describe: a full
    # imgCIF file (dxtbx's FormatCBFFullByteOffset), no Pilatus header convention
    assert "_diffrn.id" in cbf.header and "_array_data.header_convention" not in cbf.header


def _chain(fh, path):
    """The 4x4 transformation of an NXtransformations chain (dxtbx's reading of it), metres."""
    A = np.identity(4)
    while path and path != ".":
        ds = fh[path]
        val = float(np.ravel(ds[()])[0])
        vec = np.asarray(ds.attrs["vector"], dtype=float)
        T = np.identity(4)
        if ds.attrs["transformation_type"] == "translation":
            assert ds.attrs["units"] == "m"
            T[:3, 3] = val * vec + np.asarray(ds.attrs.get("offset", np.zeros(3)))
        else:
            raise AssertionError("the detector chain has no rotations")
        A = T @ A
        path = ds.attrs["depends_on"]
    return A


def test_nexus_layout_and_geometry(rendered):
    d, text, text2 = rendered
    floats = np.fromfile(d / "f.bin", dtype="<f4").reshape(8, 12)
    with h5py.File(d / "f.h5", "r") as fh:
        entry = fh["entry"]
        assert entry.attrs["NX_class"] == "NXentry" and entry["definition"][()] == b"NXmx"
        assert entry["data"].attrs["signal"] == "data"
        data = entry["data/data"]
        assert data.shape == (1, 8, 12) and data.dtype == np.float32
        assert np.array_equal(data[0], floats)
        det = fh["/entry/instrument/detector"]
        assert det.attrs["NX_class"] == "NXdetector"
        assert det["x_pixel_size"][()] == pytest.approx(1e-4) and det["x_pixel_size"].attrs["units"] == "m"
        assert det["sensor_material"][()] == b"Silicon"
        assert det["pixel_mask"].shape == (8, 12)
        assert fh["/entry/instrument/beam/incident_wavelength"][()] == pytest.approx(1.0)
        module = det["module"]
        assert list(module["data_size"][()]) == [8, 12]
        fast = module["fast_pixel_direction"]
        slow = module["slow_pixel_direction"]
        assert fast[()] == pytest.approx(1e-4) and slow[()] == pytest.approx(1e-4)
        # what dxtbx computes: the origin from the module_offset chain, axes from the vectors,
        # both turned from McStas into imgCIF
        origin_mm = MCSTAS_TO_IMGCIF @ _chain(fh, fast.attrs["depends_on"])[:3, 3] * 1000
        assert np.allclose(origin_mm, report_vector(text, "dials origin"), atol=2e-6)
        fdet = report_vector(text, "DIRECTION_OF_DETECTOR_X-AXIS")
        sdet = report_vector(text, "DIRECTION_OF_DETECTOR_Y-AXIS")
        # the C's DIALS frame for a beam along +x: (x, y, z)_dials = (z, y, -x)_nanoBragg
        to_dials = lambda v: np.array([v[2], v[1], -v[0]])
        assert np.allclose(MCSTAS_TO_IMGCIF @ fast.attrs["vector"], to_dials(fdet), atol=1e-5)
        assert np.allclose(MCSTAS_TO_IMGCIF @ slow.attrs["vector"], to_dials(sdet), atol=1e-5)
        # the beam is along +z in McStas; the spindle is the phi rotation with the sweep
        R = fh["/entry/nanobragg/lab_to_mcstas"][()]
        assert np.allclose(R @ report_vector(text, "INCIDENT_BEAM_DIRECTION"), [0, 0, 1])
        phi = fh["/entry/sample/transformations/phi"]
        assert phi.attrs["transformation_type"] == "rotation"
        assert np.allclose(phi[()], [10.0]) and fh["/entry/sample/transformations/phi_increment_set"][()] == 0.5
        assert np.allclose(R.T @ phi.attrs["vector"], report_vector(text, "spindle ROTATION_AXIS"))
        assert fh["/entry/sample/depends_on"][()] == b"/entry/sample/transformations/phi"
        # beam centre in pixels from the corner of the first pixel
        fbeam, sbeam, dist = beam_hit_from_report(text)
        assert det["beam_center_x"][()] == pytest.approx(fbeam / 1e-4, rel=1e-4)
        assert det["beam_center_y"][()] == pytest.approx(sbeam / 1e-4, rel=1e-4)
        assert det["distance"][()] == pytest.approx(dist, rel=1e-5)
        assert det["distance_derived"][()] == np.bool_(True)
    with h5py.File(d / "n.nxs", "r") as fh:
        noise = fh["/entry/data/data"][0]
        assert noise.dtype == np.int32
        assert np.array_equal(noise, fabio.open(str(d / "n.img")).data.astype(np.int32))
        assert fh["/entry/instrument/detector/saturation_value"][()] == 65535


def test_png_and_pgm_previews(rendered):
    from nanobragg_torch.io.pgm import read_pgm
    d, _, _ = rendered
    floats = np.fromfile(d / "f.bin", dtype="<f4").reshape(8, 12)
    for name in ("p.png", "lin.png"):
        im = PIL_Image.open(d / name)
        assert im.size == (12, 8) and im.mode == "L"
        px = np.asarray(im)
        assert px.dtype == np.uint8 and px.max() > 0
    brightest = np.unravel_index(np.argmax(floats), floats.shape)
    assert np.asarray(PIL_Image.open(d / "p.png"))[brightest] == 255      # log: the maximum is white
    lin = np.asarray(PIL_Image.open(d / "lin.png")).astype(float)
    top = floats.mean() + 5 * floats.std()                                 # linear: mean + 5 rmsd is white
    assert np.allclose(lin, np.clip(np.rint(255 * floats / top), 0, 255), atol=1)
    pgm, _ = read_pgm(d / "p.pgm")
    assert pgm.shape == (8, 12)


def test_format_flag_renames_default_outputs(tmp_path):
    rc, text = run_cli(ARGS + ["-format", "cbf", "-nopgm"], tmp_path)
    assert rc == 0
    assert (tmp_path / "intimage.cbf").is_file() and (tmp_path / "noiseimage.cbf").is_file()
    assert not (tmp_path / "intimage.img").exists()
    assert fabio.open(str(tmp_path / "noiseimage.cbf")).data.shape == (8, 12)
    # -format wins over the extension
    rc, _ = run_cli(ARGS + ["-format", "h5", "-intfile", "frame.img", "-nonoise", "-nopgm"], tmp_path)
    assert rc == 0 and h5py.is_hdf5(tmp_path / "frame.img")


# ---------------------------------------------------------------------------
# the API
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def meta():
    from nanobragg_torch import pipeline
    from nanobragg_torch.io.formats import frame_metadata
    st = pipeline.setup_from_args(ARGS + ["-mosflm"])
    return frame_metadata(st, pipeline.prepare_setup(st))


def test_frame_metadata_keys(meta):
    for key in ("pixel_size_m", "fpixels", "spixels", "distance_m", "close_distance_m", "wavelength_m",
                "beam_center_fast_m", "beam_center_slow_m", "fdet", "sdet", "odet", "pix0_m",
                "beam_vector", "spindle_axis", "phi_start_deg", "osc_range_deg", "smv_header"):
        assert key in meta, key
    assert meta["fpixels"] == 12 and meta["spixels"] == 8
    assert meta["wavelength_m"] == pytest.approx(1e-10)
    assert meta["phi_start_deg"] == pytest.approx(10) and meta["osc_range_deg"] == pytest.approx(0.5)
    assert dict(meta["smv_header"])["SIZE1"] == "12"
    assert np.isclose(np.linalg.norm(meta["fdet"]), 1.0)


@pytest.mark.parametrize("fmt,name", [("smv", "a.img"), ("cbf", "a.cbf"), ("h5", "a.h5"), ("nxs", "a.nxs"),
                                      ("float", "a.bin"), ("pgm", "a.pgm"), ("png", "a.png")])
def test_write_image_by_name_and_by_fmt(meta, tmp_path, fmt, name):
    from nanobragg_torch.io.formats import write_image
    rng = np.random.default_rng(1)
    floats = (rng.random((8, 12)) * 100).astype(np.float32)
    ints = (floats * 10).astype(np.uint16)
    image = {"smv": ints, "float": floats}.get(fmt, floats)
    write_image(str(tmp_path / name), image, meta)                  # by extension
    write_image(str(tmp_path / "noext"), image, meta, fmt)          # by fmt
    for p in (tmp_path / name, tmp_path / "noext"):
        if fmt == "smv":
            assert np.array_equal(fabio.open(str(p)).data, ints)
        elif fmt == "cbf":
            assert np.array_equal(fabio.open(str(p)).data, np.rint(floats).astype(np.int32))
        elif fmt in ("h5", "nxs"):
            with h5py.File(p, "r") as fh:
                assert np.array_equal(fh["/entry/data/data"][0], floats)
        elif fmt == "float":
            assert np.array_equal(np.fromfile(p, dtype="<f4").reshape(8, 12), floats)
        elif fmt == "pgm":
            from nanobragg_torch.io.pgm import read_pgm
            assert read_pgm(p)[0].shape == (8, 12)
        else:
            assert PIL_Image.open(p).size == (12, 8)
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted([name, "noext"])


def test_write_image_integer_images_in_cbf_and_nexus(meta, tmp_path):
    from nanobragg_torch.io.formats import write_image
    ints = np.arange(96, dtype=np.uint16).reshape(8, 12) * 600
    write_image(str(tmp_path / "i.cbf"), ints, meta)
    write_image(str(tmp_path / "i.h5"), ints, meta)
    assert np.array_equal(fabio.open(str(tmp_path / "i.cbf")).data, ints.astype(np.int32))
    with h5py.File(tmp_path / "i.h5", "r") as fh:
        assert fh["/entry/data/data"].dtype == np.int32
        assert np.array_equal(fh["/entry/data/data"][0], ints)


def test_write_image_rejects_what_a_format_cannot_hold(meta, tmp_path):
    from nanobragg_torch.io.formats import FormatError, write_image
    with pytest.raises(FormatError):
        write_image(str(tmp_path / "x.img"), np.full((8, 12), -1.5, np.float32), meta)
    with pytest.raises(FormatError):
        write_image(str(tmp_path / "x.unknown"), np.zeros((8, 12), np.float32), meta)
    with pytest.raises(FormatError):
        write_image(str(tmp_path / "x.h5"), np.zeros((2, 8, 12), np.float32), meta)
    with pytest.raises(FormatError):
        write_image(str(tmp_path / "x"), np.zeros((8, 12), np.float32), meta, "tiff")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["old.cbf", "old.h5", "old.png", "old.img"])
def test_failed_write_keeps_the_old_file(meta, tmp_path, monkeypatch, name):
    """A writer that dies half-way leaves the previous file whole and no temporary files."""
    from nanobragg_torch.io import formats
    (tmp_path / name).write_bytes(b"old contents")
    import fabio.cbfimage
    import PIL.Image

    def die(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fabio.cbfimage.CbfImage, "write", lambda self, fname: (open(fname, "wb").write(b"partial"), die()))
    from nanobragg_torch.io import cbf_full          # the full imgCIF writer (this meta's detector is tilted):
    monkeypatch.setattr(cbf_full, "_binary_section", lambda counts: die())   # dies after the text
    monkeypatch.setattr(PIL.Image.Image, "save", lambda self, fh, **k: (fh.write(b"partial"), die()))
    monkeypatch.setattr(h5py.Group, "create_group", die)
    monkeypatch.setattr(os, "fsync", lambda fd: die() if name.endswith(".img") else None)
    with pytest.raises(OSError):
        formats.write_image(str(tmp_path / name), np.ones((8, 12), np.uint16), meta)
    assert (tmp_path / name).read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == [name]


# ---------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------

class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_goes_to_a_terminal_stderr(tmp_path, monkeypatch):
    from nanobragg_torch.tools.progress import ProgressBar
    monkeypatch.setattr(ProgressBar, "DEFAULT_DELAY", 0.0)
    argv = [a for a in ARGS if a != "-noprogress"] + ["-nopgm", "-nonoise"]
    err = FakeTTY()
    rc, text = run_cli(argv, tmp_path, err=err)
    assert rc == 0
    bar = err.getvalue()
    assert bar.startswith("\r[") and "100.0%" in bar and "96/96 px" in bar and bar.endswith("\n")
    assert "\r" not in text and "px" not in text            # the report on stdout stays clean
    # -noprogress, or a stderr that is not a terminal: silent
    err = FakeTTY()
    assert run_cli(argv + ["-noprogress"], tmp_path, err=err)[0] == 0 and err.getvalue() == ""
    err = io.StringIO()
    assert run_cli(argv, tmp_path, err=err)[0] == 0 and err.getvalue() == ""


def test_progress_bar_eta_and_throttle():
    from nanobragg_torch.tools.progress import ProgressBar
    t = [100.0]
    s = FakeTTY()
    bar = ProgressBar(s, width=10, min_interval=1.0, delay=2.0, clock=lambda: t[0])
    bar(10, 100)                      # before the delay: nothing
    assert s.getvalue() == ""
    t[0] = 104.0
    bar(40, 100)                      # 40% in 4 s: 6 s to go
    assert "[####      ]  40.0%" in s.getvalue() and "ETA 00:06" in s.getvalue()
    t[0] = 104.5
    bar(50, 100)                      # throttled
    assert "50.0%" not in s.getvalue()
    t[0] = 105.0
    bar(100, 100)                     # the end is always drawn
    assert "100.0%" in s.getvalue() and "done" in s.getvalue()
    bar.close()
    assert s.getvalue().endswith("\n")
