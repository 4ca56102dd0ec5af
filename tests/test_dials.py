"""DIALS as a test client (issue 16): our CBF and NeXus files import with the simulation's beam,
detector, goniometer and scan, and a small rotation sweep indexes to the simulated cell.

DIALS runs as the Debian package's tools (``dials.import``, ``dials.find_spots``,
``dials.index``) on their own python; the experiment files they write are
read here as JSON.  Without DIALS the tests skip, except under ``CI=true``,
where they fail (``.ci/run`` installs DIALS).  The 20-frame acceptance sweeps
are ``scripts/dials_sweeps.py``.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("fabio")
h5py = pytest.importorskip("h5py")

IMGCIF_FROM_MCSTAS = np.diag([-1.0, 1.0, -1.0])
BASE = "-cell 57 68 79 90 90 90 -default_F 100 -N 2 -lambda 1 -phi 5 -osc 1 -noprogress"
GEOMETRIES = {
    "centred": "-distance 100 -pixel 0.172 -detpixels_f 64 -detpixels_s 48",
    "offcentre": "-distance 100 -pixel 0.172 -detpixels_f 64 -detpixels_s 48 -Xbeam 2.5 -Ybeam 8",
    "tilted": "-distance 200 -pixel 0.172 -detpixels_f 487 -detpixels_s 619 -Xbeam 50 -Ybeam 40 "
              "-detector_rotx 5 -twotheta 15",
    "xds_rotated": "-xds -distance 120 -pixel 0.1 -detpixels_f 96 -detpixels_s 64 -ORGX 40 -ORGY 30 "
                   "-detector_rotx 4 -detector_roty -3 -detector_rotz 1 -twotheta 15",
}
#: the geometries a mini-CBF cannot describe: written as full imgCIF
FULL_CBF = {"tilted", "xds_rotated"}


def need_dials():
    if shutil.which("dials.import") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("DIALS is not installed under CI=true (.ci/run installs it: scripts/install_dials.sh)")
        pytest.skip("DIALS is not installed (apt-get install dials)")


def dials(cwd, *args):
    r = subprocess.run(list(args), cwd=str(cwd), capture_output=True, text=True)
    assert r.returncode == 0, f"{args[0]} failed:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}"
    return r.stdout


def _setup(geometry):
    from nanobragg_torch.cli.flags import parse_flags
    from nanobragg_torch.cli.resolve import build_setup
    from nanobragg_torch.io.formats import frame_metadata
    from nanobragg_torch.simulator import prepare
    st = build_setup(parse_flags((BASE + " " + geometry).split()))
    prep = prepare(st.crystal, st.detector, st.beam)
    return prep, frame_metadata(st, prep)


def _expt(path):
    d = json.loads(open(path).read())
    return d["beam"][0], d["detector"][0]["panels"][0], d["goniometer"][0], d["scan"][0]


def _beam_centre_px(beam, panel):
    """Where dxtbx's beam meets dxtbx's panel, in pixels (dxtbx frame, mm)."""
    o, f, s = (np.array(panel[k], float) for k in ("origin", "fast_axis", "slow_axis"))
    b = -np.array(beam["direction"], float)          # direction: sample to source
    t, u, v = np.linalg.solve(np.column_stack([b, -f, -s]), o)
    px, py = panel["pixel_size"]
    return u / px, v / py, t


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Each geometry written as one CBF and one NeXus frame, all imported by one dials.import."""
    need_dials()
    from nanobragg_torch.io.formats import write_image
    d = tmp_path_factory.mktemp("dials_import")
    setups, files = {}, []
    for name, geometry in GEOMETRIES.items():
        prep, meta = _setup(geometry)
        S, F = meta["spixels"], meta["fpixels"]
        img = (np.arange(S * F) % 97).reshape(S, F).astype(np.uint16)
        for fmt in ("cbf", "nxs"):
            write_image(str(d / f"{name}_001.{fmt}"), img, meta)
            files.append(f"{name}_001.{fmt}")
            setups[f"{name}_001.{fmt}"] = (name, fmt, prep, meta)
    dials(d, "dials.import", *files)
    el = json.loads((d / "imported.expt").read_text())
    out = {}
    for e in el["experiment"]:
        iset = el["imageset"][e["imageset"]]
        fname = os.path.basename(iset.get("template") or iset["images"][0]).replace("###", "001")
        name, fmt, prep, meta = setups[fname]
        out[name, fmt] = ((el["beam"][e["beam"]], el["detector"][e["detector"]]["panels"][0],
                           el["goniometer"][e["goniometer"]], el["scan"][e["scan"]]), prep, meta, d)
    assert len(out) == len(files)
    return out


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("fmt", ["cbf", "nxs"])
def test_dials_import_puts_the_beam_where_it_hits(imported, name, fmt):
    (beam, panel, gonio, scan), prep, meta, d = imported[name, fmt]
    px = meta["pixel_size_m"]
    x, y, t = _beam_centre_px(beam, panel)
    assert x == pytest.approx(meta["beam_center_fast_m"] / px, abs=0.01)
    assert y == pytest.approx(meta["beam_center_slow_m"] / px, abs=0.01)
    assert t == pytest.approx(meta["distance_m"] * 1e3, abs=1e-3)
    assert panel["image_size"] == [meta["fpixels"], meta["spixels"]]
    assert panel["pixel_size"] == pytest.approx([px * 1e3, px * 1e3])
    assert beam["wavelength"] == pytest.approx(1.0)
    assert scan["oscillation"] == pytest.approx([5.0, 1.0])
    if fmt == "cbf" and name in FULL_CBF and (meta["fpixels"], meta["spixels"]) != (487, 619):
        # a full imgCIF file of no Pilatus size: dxtbx's FormatCBFFullByteOffset reads the sensor as
        # "unknown", no parallax (a Pilatus-sized one, as "tilted", goes to FormatCBFFullPilatus)
        assert panel["px_mm_strategy"]["type"] == "SimplePxMmStrategy" and panel["thickness"] == 0
        assert panel["type"] == "SENSOR_UNKNOWN"
    else:
        assert panel["type"] == "SENSOR_PAD"
        assert panel["px_mm_strategy"]["type"] in ("SimplePxMmStrategy", "ParallaxCorrectedPxMmStrategy")
        assert panel["thickness"] == pytest.approx(1e-6)    # the 1 nm written for "no thickness", in mm


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("fmt", ["cbf", "nxs"])
def test_dials_import_has_the_engine_pixel_positions(imported, name, fmt):
    """The full geometry (tilts, two-theta, XDS axes) of the NeXus file and of the CBF (a mini-CBF for
    the detectors facing the beam, a full imgCIF file for the others): dxtbx's position of every
    corner pixel equals the renderer's, its rotation axis is the spindle and its beam the beam."""
    (beam, panel, gonio, scan), prep, meta, d = imported[name, fmt]
    if fmt == "nxs":
        with h5py.File(d / f"{name}_001.nxs", "r") as fh:
            R = fh["/entry/nanobragg/lab_to_mcstas"][()]
    else:
        from nanobragg_torch.io.formats import lab_to_mcstas
        R = lab_to_mcstas(meta["beam_vector"])
        head = (d / f"{name}_001.cbf").read_bytes()[:4096]
        assert (b"_diffrn.id" in head) == (name in FULL_CBF)
    to_lab = R.T @ IMGCIF_FROM_MCSTAS                   # dxtbx (imgCIF) frame -> nanoBragg lab frame
    g = prep.geometry
    pix0, f, s = (np.asarray(v.numpy()) for v in (g.pix0, g.fdet, g.sdet))
    px = meta["pixel_size_m"]
    o, fa, sa = (np.array(panel[k], float) for k in ("origin", "fast_axis", "slow_axis"))
    pmm = panel["pixel_size"][0]
    for i, j in ((0, 0), (meta["fpixels"] - 1, 0), (0, meta["spixels"] - 1),
                 (meta["fpixels"] - 1, meta["spixels"] - 1)):
        ours = pix0 + (i + 0.5) * px * f + (j + 0.5) * px * s
        theirs = to_lab @ (o + (i + 0.5) * pmm * fa + (j + 0.5) * pmm * sa) * 1e-3
        assert np.allclose(theirs, ours, atol=1e-9), (i, j, theirs, ours)
    # a single-axis goniometer (mini-CBF, NeXus) or imgCIF's multi-axis one with its scan axis (full CBF)
    axis = gonio["rotation_axis"] if "rotation_axis" in gonio else gonio["axes"][gonio["scan_axis"]]
    assert np.allclose(to_lab @ np.array(axis), meta["spindle_axis"], atol=1e-9)
    assert np.allclose(to_lab @ -np.array(beam["direction"]), meta["beam_vector"], atol=1e-9)


def _sweeps_script():
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "dials_sweeps.py")
    spec = importlib.util.spec_from_file_location("dials_sweeps", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_small_sweep_indexes_to_the_cell(tmp_path):
    """Eight 1-degree frames on one Pilatus module (487 x 195 px at 80 mm), as CBF frames and as one
    NeXus sweep file, with the realism of scripts/dials_sweeps.py (Wilson F without F000, 0.2 deg
    mosaic over 10 phi steps, water background, Poisson noise): DIALS's default find_spots + index,
    nothing fixed, recover the cell within 0.3 % and 0.3 deg (the 20-frame acceptance sweeps are
    the script's, docs/dials.md)."""
    need_dials()
    from nanobragg_torch.cli.main import run
    from nanobragg_torch.io import read_nexus, write_image
    from nanobragg_torch.io.formats import frame_metadata
    from nanobragg_torch.io.nexus import stack_nexus
    from nanobragg_torch.cli.flags import parse_flags
    from nanobragg_torch.cli.resolve import build_setup
    from nanobragg_torch.simulator import prepare
    _sweeps_script().write_wilson_hkl(str(tmp_path / "w.hkl"), d_min=1.6)
    args = ("-cell 57 68 79 90 90 90 -misset 10 20 30 -hkl w.hkl -N 10 -gauss_xtal -mosaic 0.2 "
            "-mosaic_domains 10 -lambda 1 -distance 80 -pixel 0.172 -detpixels_f 487 -detpixels_s 195 "
            "-osc 1 -phisteps 10 -oversample 1 -water 0.1 -noprogress -nopgm").split()
    (tmp_path / "cbf").mkdir()
    (tmp_path / "nxs").mkdir()
    singles = []
    for i in range(8):
        frame = args + ["-phi", str(i), "-seed", str(i + 1)]
        nxs = tmp_path / f"f_{i + 1:03d}.nxs"
        assert run(frame + ["-floatfile", str(tmp_path / "f.bin"), "-intfile", str(tmp_path / "i.img"),
                            "-noisefile", str(nxs)], out=io.StringIO(), cwd=str(tmp_path)) == 0
        old = os.getcwd()
        os.chdir(tmp_path)
        try:
            st = build_setup(parse_flags(frame))
            meta = frame_metadata(st, prepare(st.crystal, st.detector, st.beam))
        finally:
            os.chdir(old)
        write_image(str(tmp_path / "cbf" / f"s_{i + 1:03d}.cbf"), read_nexus(str(nxs))[1], meta)
        singles.append(nxs)
    stack_nexus(singles, str(tmp_path / "nxs" / "s_sweep.nxs"))
    for fmt, files in (("cbf", [f"s_{i + 1:03d}.cbf" for i in range(8)]), ("nxs", ["s_sweep.nxs"])):
        d = tmp_path / fmt
        dials(d, "dials.import", *files)
        beam, panel, gonio, scan = _expt(d / "imported.expt")
        assert scan["image_range"] == [1, 8] and scan["oscillation"] == pytest.approx([0.0, 1.0])
        dials(d, "dials.find_spots", "imported.expt", "nproc=1")
        dials(d, "dials.index", "imported.expt", "strong.refl")
        crystal = json.loads((d / "indexed.expt").read_text())["crystal"][0]
        real = np.array([crystal[k] for k in ("real_space_a", "real_space_b", "real_space_c")])
        lengths = np.linalg.norm(real, axis=1)
        cosines = [real[1] @ real[2] / lengths[1] / lengths[2], real[0] @ real[2] / lengths[0] / lengths[2],
                   real[0] @ real[1] / lengths[0] / lengths[1]]
        angles = np.degrees(np.arccos(cosines))
        assert np.allclose(np.sort(lengths), [57, 68, 79], rtol=0.003), (fmt, lengths)
        assert np.allclose(angles, 90, atol=0.3), (fmt, angles)
