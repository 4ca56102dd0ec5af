"""Header geometry (issue 16): the beam centre and distance every format writes are where the direct
beam meets the detector, read back with the readers users have (fabio, h5py, nxmx, pyFAI).

The expected values come from the engine's own pixel positions (the pixel
centres ``pix0 + (f+0.5) px fdet + (s+0.5) px sdet`` of the prepared geometry
the renderer uses), intersected with the beam; the files are read with
independent libraries and the header numbers compared within 0.01 pixel and
1 micrometre.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

fabio = pytest.importorskip("fabio")
h5py = pytest.importorskip("h5py")

GEOMETRIES = {
    # the tilted detector of issue 16: the beam hits at (233.058, 291.198) px, 0.200 m from the sample
    "tilted": "-distance 200 -pixel 0.172 -detpixels_f 487 -detpixels_s 619 -Xbeam 50 -Ybeam 40 "
              "-detector_rotx 5 -twotheta 15",
    "xds_rotated": "-xds -distance 120 -pixel 0.1 -detpixels_f 96 -detpixels_s 64 -ORGX 40 -ORGY 30 "
                   "-detector_rotx 4 -detector_roty -3 -detector_rotz 1 -twotheta 15",
    "centred": "-distance 100 -pixel 0.1 -detpixels_f 96 -detpixels_s 64",
    "offcentre_beam_pivot": "-distance 150 -pixel 0.1 -detpixels_f 96 -detpixels_s 64 -Xbeam 2 -Ybeam 7 "
                            "-detector_roty 6 -pivot beam",
    "custom_vectors": "-distance 90 -pixel 0.1 -detpixels_f 64 -detpixels_s 48 -fdet_vector 0 0.1 1 "
                      "-sdet_vector 0 -1 0.1 -odet_vector 1 0 0 -beam_vector 1 0 0 -Xbeam 3 -Ybeam 2",
}
BASE = "-cell 57 68 79 90 90 90 -default_F 100 -N 2 -lambda 1 -phi 5 -osc 1 -noprogress"


def _setup(geometry: str):
    from nanobragg_torch.cli.flags import parse_flags
    from nanobragg_torch.cli.resolve import build_setup
    from nanobragg_torch.io.formats import frame_metadata
    from nanobragg_torch.simulator import prepare
    st = build_setup(parse_flags((BASE + " " + geometry).split()))
    prep = prepare(st.crystal, st.detector, st.beam)
    return st, prep, frame_metadata(st, prep)


def engine_beam_hit(prep, px):
    """Fractional pixel (fast, slow) and distance (m) of the beam's hit, from the engine's pixel centres."""
    g = prep.geometry
    pix0, f, s, b = (np.asarray(v.detach().numpy(), dtype=float) for v in (g.pix0, g.fdet, g.sdet, g.beam_vector))
    centre = lambda i, j: pix0 + (i + 0.5) * px * f + (j + 0.5) * px * s     # the renderer's pixel centres
    c00, c10, c01 = centre(0, 0), centre(1, 0), centre(0, 1)
    df, ds = c10 - c00, c01 - c00                   # one pixel along fast and slow
    # t b = c00 + u df + v ds, pixel coordinates from the first pixel's corner: (u + 0.5, v + 0.5)
    t, u, v = np.linalg.solve(np.column_stack([b / np.linalg.norm(b), -df, -ds]), c00)
    return u + 0.5, v + 0.5, t


@pytest.fixture(scope="module", params=sorted(GEOMETRIES))
def written(request, tmp_path_factory):
    from nanobragg_torch.io.formats import write_image
    st, prep, meta = _setup(GEOMETRIES[request.param])
    d = tmp_path_factory.mktemp(request.param)
    S, F = meta["spixels"], meta["fpixels"]
    counts = (np.arange(S * F) % 1000).reshape(S, F).astype(np.uint16)
    for name in ("a.img", "a.cbf", "a.nxs"):
        write_image(str(d / name), counts, meta)
    px = meta["pixel_size_m"]
    return request.param, d, meta, engine_beam_hit(prep, px), px


def test_issue_example_numbers():
    st, prep, meta = _setup(GEOMETRIES["tilted"])
    x, y, dist = engine_beam_hit(prep, 172e-6)
    assert (round(x, 3), round(y, 3)) == (233.058, 291.198)
    assert dist == pytest.approx(0.200, abs=1e-9)
    assert meta["beam_center_fast_m"] / 172e-6 == pytest.approx(x, abs=1e-6)
    assert meta["distance_m"] == pytest.approx(dist, abs=1e-9)


def test_smv_header_geometry(written):
    name, d, meta, (x, y, dist), px = written
    h = fabio.open(str(d / "a.img")).header
    pmm = float(h["PIXEL_SIZE"])
    assert float(h["DISTANCE"]) == pytest.approx(dist * 1e3, abs=1e-3)                  # 1 um
    assert float(h["ADXV_CENTER_X"]) / pmm == pytest.approx(x, abs=0.01)
    assert (int(h["SIZE2"]) * pmm - float(h["ADXV_CENTER_Y"])) / pmm == pytest.approx(y, abs=0.01)
    # MOSFLM and DENZO: (slow, fast) in mm, MOSFLM from the first pixel's centre
    assert float(h["MOSFLM_CENTER_X"]) / pmm + 0.5 == pytest.approx(y, abs=0.01)
    assert float(h["MOSFLM_CENTER_Y"]) / pmm + 0.5 == pytest.approx(x, abs=0.01)
    assert float(h["DENZO_X_BEAM"]) / pmm == pytest.approx(y, abs=0.01)
    assert float(h["DENZO_Y_BEAM"]) / pmm == pytest.approx(x, abs=0.01)


def test_cbf_header_geometry(written, capsys):
    name, d, meta, (x, y, dist), px = written
    ph = fabio.open(str(d / "a.cbf")).header["_array_data.header_contents"]
    lines = {l[2:].split()[0]: l[2:] for l in ph.split("\r\n") if l.startswith("# ")}
    bx, by = (float(v) for v in lines["Beam_xy"].split("(")[1].split(")")[0].split(","))
    assert bx == pytest.approx(x, abs=0.01) and by == pytest.approx(y, abs=0.01)
    assert float(lines["Detector_distance"].split()[1]) == pytest.approx(dist, abs=1e-6)
    assert float(lines["Pixel_size"].split()[1]) == pytest.approx(px)


def test_cbf_is_full_imgcif_where_a_mini_cbf_cannot_describe_the_geometry(tmp_path, capfd):
    """Default CBF output: a Pilatus-style mini-CBF for a detector facing the beam, a full imgCIF
    file (no warning: it states every axis) for a tilted or XDS-rotated one; fabio reads both."""
    from nanobragg_torch.io import cbf
    from nanobragg_torch.io.formats import write_image
    for name, tilted in (("tilted", True), ("xds_rotated", True), ("centred", False)):
        meta = _setup(GEOMETRIES[name])[2]
        assert (cbf.mini_cbf_geometry_problem(meta) is not None) == tilted, name
        cbf._warned.clear()
        S, F = meta["spixels"], meta["fpixels"]
        img = (np.arange(S * F) % 1000).reshape(S, F).astype(np.uint16)
        write_image(str(tmp_path / "x.cbf"), img, meta)
        assert capfd.readouterr().err.strip() == "", name
        text = (tmp_path / "x.cbf").read_bytes().split(b"--CIF-BINARY-FORMAT-SECTION--")[0].decode()
        assert ("_diffrn.id" in text and "_axis.id" in text) == tilted, name
        # the convention: PILATUS_1.2 for a whole number of Pilatus modules (the 487 x 619 "tilted"), mini or
        # full (dxtbx then takes a full one as FormatCBFFullPilatus: a pixel-array sensor, gaps masked)
        assert ("_array_data.header_convention PILATUS_1.2" in text
                or "_array_data.header_convention        PILATUS_1.2" in text) == cbf.pilatus_tiles(F, S), name
        assert ("_array_data.header_convention" in text) == (not tilted or cbf.pilatus_tiles(F, S)), name
        assert np.array_equal(fabio.open(str(tmp_path / "x.cbf")).data, img.astype(np.int32)), name


def test_mini_cbf_of_a_tilted_detector_is_opt_in_and_warns_once(tmp_path, capfd):
    from nanobragg_torch.io import cbf
    from nanobragg_torch.io.formats import write_image
    meta = _setup(GEOMETRIES["tilted"])[2]
    cbf._warned.clear()
    img = np.zeros((meta["spixels"], meta["fpixels"]), np.uint16)
    cbf.write_cbf(str(tmp_path / "x.cbf"), img, meta, full=False)
    write_image(str(tmp_path / "y.cbf"), img, dict(meta, cbf_full=False))
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mini-CBF header cannot describe this geometry" in err[0], err
    assert b"_array_data.header_convention" in (tmp_path / "y.cbf").read_bytes()[:4096]


def _cif_loops(text):
    """{category.item: [values]} of an imgCIF header, read with gemmi's CIF parser."""
    gemmi = pytest.importorskip("gemmi")
    block = gemmi.cif.read_string(text).sole_block()
    out = {}
    for item in block:
        if item.loop is not None:
            for j, tag in enumerate(item.loop.tags):
                out[tag] = [item.loop[i, j] for i in range(item.loop.length())]
        elif item.pair is not None:
            out[item.pair[0]] = [item.pair[1]]
    return out


@pytest.mark.parametrize("name", ["tilted", "xds_rotated", "custom_vectors"])
def test_full_cbf_axes_put_every_pixel_where_the_engine_does(tmp_path, name):
    """The _axis chain of the full CBF, read with gemmi's CIF parser and evaluated as imgCIF defines
    it (translations add up along depends_on), puts the corner pixels where the renderer does."""
    from nanobragg_torch.io.cbf_full import lab_to_imgcif
    from nanobragg_torch.io.formats import write_image
    st, prep, meta = _setup(GEOMETRIES[name])
    write_image(str(tmp_path / "a.cbf"), np.zeros((meta["spixels"], meta["fpixels"]), np.uint16), meta)
    raw = (tmp_path / "a.cbf").read_bytes()
    c = _cif_loops(raw[:raw.index(b"\r\n_array_data.data")].decode())
    axes = {i: k for k, i in enumerate(c["_axis.id"])}

    def vec(prefix, k):
        return np.array([0.0 if c[f"{prefix}[{j}]"][k] == "." else float(c[f"{prefix}[{j}]"][k]) for j in (1, 2, 3)])
    setting = dict(zip(c["_diffrn_scan_frame_axis.axis_id"], map(float, c["_diffrn_scan_frame_axis.displacement"])))
    disp = dict(zip(c["_array_structure_list_axis.axis_id"], map(float, c["_array_structure_list_axis.displacement"])))
    inc = dict(zip(c["_array_structure_list_axis.axis_id"],
                   map(float, c["_array_structure_list_axis.displacement_increment"])))

    def position(axis, value):
        k = axes[axis]
        assert c["_axis.type"][k] == "translation"
        p = vec("_axis.offset", k) + value * vec("_axis.vector", k)
        parent = c["_axis.depends_on"][k]
        return p + (position(parent, setting.get(parent, 0.0)) if parent != "." else 0.0)
    fast_axis, slow_axis = (c["_array_structure_list.axis_set_id"][c["_array_structure_list.index"].index(i)]
                            for i in ("1", "2"))
    assert c["_axis.depends_on"][axes[slow_axis]] == fast_axis
    R = lab_to_imgcif(meta["beam_vector"])
    g = prep.geometry
    pix0, f, s = (np.asarray(v.numpy(), dtype=float) for v in (g.pix0, g.fdet, g.sdet))
    px = meta["pixel_size_m"]
    k_slow = axes[slow_axis]
    for i, j in ((0, 0), (meta["fpixels"] - 1, 0), (0, meta["spixels"] - 1), (meta["fpixels"] - 1, meta["spixels"] - 1)):
        # pixel (i, j)'s centre: the fast axis at i + 1/2 increments, the slow axis (on top of it) at j + 1/2
        theirs = (position(fast_axis, disp[fast_axis] + (i + 0.5) * inc[fast_axis])
                  + vec("_axis.offset", k_slow) + (disp[slow_axis] + (j + 0.5) * inc[slow_axis]) * vec("_axis.vector", k_slow))
        ours = R @ (pix0 + (i + 0.5) * px * f + (j + 0.5) * px * s) * 1e3
        assert np.allclose(theirs, ours, atol=1e-6), (i, j, theirs, ours)      # 1 nm
    spindle = vec("_axis.vector", axes[c["_diffrn_measurement_axis.axis_id"][0]])
    assert np.allclose(spindle, R @ meta["spindle_axis"], atol=1e-9)
    assert np.allclose(vec("_axis.vector", axes["SOURCE"]), -(R @ meta["beam_vector"]), atol=1e-9)
    assert float(c["_diffrn_radiation_wavelength.wavelength"][0]) == pytest.approx(meta["wavelength_m"] * 1e10)
    k = c["_diffrn_scan_axis.axis_id"].index("GONIOMETER_PHI")
    assert float(c["_diffrn_scan_axis.angle_start"][k]) == pytest.approx(meta["phi_start_deg"])
    assert float(c["_diffrn_scan_axis.angle_increment"][k]) == pytest.approx(meta["osc_range_deg"])


def test_nexus_fields_and_nxmx_chain(written):
    nxmx = pytest.importorskip("nxmx")
    name, d, meta, (x, y, dist), px = written
    with h5py.File(d / "a.nxs", "r") as fh:
        det = fh["/entry/instrument/detector"]
        assert det["beam_center_x"][()] == pytest.approx(x, abs=0.01)
        assert det["beam_center_y"][()] == pytest.approx(y, abs=0.01)
        assert det["distance"][()] == pytest.approx(dist, abs=1e-6)
        assert det["distance_derived"][()] == np.bool_(True)
        nx = nxmx.NXmx(fh)
        ndet = nx.entries[0].instruments[0].detectors[0]
        assert ndet.distance_derived is True
        module = ndet.modules[0]
        fast, slow = module.fast_pixel_direction, module.slow_pixel_direction
        A = nxmx.get_cumulative_transformation(nxmx.get_dependency_chain(fast.depends_on))
        origin_mm = np.asarray(A).reshape(-1, 4, 4)[0][:3, 3]
        fvec, svec = np.asarray(fast.vector, float), np.asarray(slow.vector, float)
        pmm = float(fast[()][0].to("mm").magnitude)
        # McStas: the beam travels along +z from the sample at the origin
        t, u, v = np.linalg.solve(np.column_stack([[0, 0, 1], -fvec * pmm, -svec * pmm]), origin_mm)
        assert u == pytest.approx(float(ndet.beam_center_x.magnitude), abs=0.01)
        assert v == pytest.approx(float(ndet.beam_center_y.magnitude), abs=0.01)
        assert t == pytest.approx(float(ndet.distance.to("mm").magnitude), abs=1e-3)
        assert u == pytest.approx(x, abs=0.01) and v == pytest.approx(y, abs=0.01)


def test_read_back_geometry_of_every_format(written):
    from nanobragg_torch.io import read_image
    name, d, meta, (x, y, dist), px = written
    for fname in ("a.img", "a.cbf", "a.nxs"):
        image, info = read_image(str(d / fname))
        assert image.shape == (meta["spixels"], meta["fpixels"])
        assert info["beam_center_fast_m"] / px == pytest.approx(x, abs=0.01), fname
        assert info["beam_center_slow_m"] / px == pytest.approx(y, abs=0.01), fname
        assert info["distance_m"] == pytest.approx(dist, abs=1e-6), fname


def test_pyfai_rings_from_the_cbf_header(tmp_path):
    """pyFAI, given only the CBF header's distance, beam centre and pixel size, puts the rings of a
    simulated powder-like image where the engine put them (an untilted detector)."""
    pyFAI = pytest.importorskip("pyFAI")
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    st, prep, meta = _setup("-distance 80 -pixel 0.1 -detpixels_f 200 -detpixels_s 160 -Xbeam 9 -Ybeam 7")
    g = prep.geometry
    pix0, f, s = (np.asarray(v.numpy()) for v in (g.pix0, g.fdet, g.sdet))
    b = np.asarray(g.beam_vector.numpy())
    S, F = meta["spixels"], meta["fpixels"]
    jj, ii = np.mgrid[0:S, 0:F]
    pos = pix0 + ((ii + 0.5) * 1e-4)[..., None] * f + ((jj + 0.5) * 1e-4)[..., None] * s
    tth = np.degrees(np.arccos((pos @ b) / np.linalg.norm(pos, axis=-1)))
    rings = (4.0, 7.0, 10.0)
    img = sum(1000 * np.exp(-0.5 * ((tth - r) / 0.05) ** 2) for r in rings).astype(np.uint16)
    from nanobragg_torch.io.formats import write_image
    write_image(str(tmp_path / "p.cbf"), img, meta)
    ph = fabio.open(str(tmp_path / "p.cbf")).header["_array_data.header_contents"]
    lines = {l[2:].split()[0]: l[2:] for l in ph.split("\r\n") if l.startswith("# ")}
    bx, by = (float(v) for v in lines["Beam_xy"].split("(")[1].split(")")[0].split(","))
    dist = float(lines["Detector_distance"].split()[1])
    ai = AzimuthalIntegrator(detector=pyFAI.detectors.Detector(1e-4, 1e-4, max_shape=(S, F)))
    ai.setFit2D(dist * 1e3, bx, by)
    res = ai.integrate1d(fabio.open(str(tmp_path / "p.cbf")).data.astype(float), 3000, unit="2th_deg")
    found = []
    for r in rings:
        sel = np.abs(res.radial - r) < 0.5
        found.append(res.radial[sel][np.argmax(res.intensity[sel])])
    assert np.allclose(found, rings, atol=0.01), found


def test_c_legacy_writes_the_c_programs_smv_values(tmp_path):
    """-c_legacy: the SMV header carries the C program's printed distance and beam centre (issue 16's
    tilted detector: 193.185 mm and (233.952, 301.413) px), everything else as by default."""
    from nanobragg_torch.io.formats import write_image
    meta = _setup(GEOMETRIES["tilted"] + " -c_legacy")[2]
    default = _setup(GEOMETRIES["tilted"])[2]
    h = dict(meta["smv_header"])
    assert float(h["DISTANCE"]) == pytest.approx(193.185, abs=1e-3)
    assert float(h["ADXV_CENTER_X"]) / 0.172 == pytest.approx(233.952, abs=1e-3)
    assert (619 * 0.172 - float(h["ADXV_CENTER_Y"])) / 0.172 == pytest.approx(301.413, abs=1e-3)
    assert float(dict(default["smv_header"])["DISTANCE"]) == pytest.approx(200.0, abs=1e-3)
    # CBF and NeXus keep the geometric values: the C program writes neither format
    assert meta["beam_center_fast_m"] == default["beam_center_fast_m"]
    write_image(str(tmp_path / "c.img"), np.zeros((619, 487), np.uint16), meta)
    assert float(fabio.open(str(tmp_path / "c.img")).header["DISTANCE"]) == pytest.approx(193.185, abs=1e-3)


@pytest.mark.parametrize("beam", ["-1 0 0", "0 0 1"])
def test_a_beam_that_never_meets_the_detector_still_writes_every_format(tmp_path, beam):
    """A legal set-up whose beam runs away from (or parallel to) the detector has no beam centre:
    the headers carry the C program's numbers, the CBF writer says so, nothing fails."""
    from nanobragg_torch.io.formats import write_image
    st, prep, meta = _setup(f"-distance 5 -pixel 1 -detpixels 2 -beam_vector {beam}")
    assert meta["c_beam"]["no_beam_spot"]
    assert meta["beam_center_fast_m"] == meta["c_beam"]["Fbeam_m"]
    for name in ("a.img", "a.cbf", "a.nxs"):
        write_image(str(tmp_path / name), np.zeros((2, 2), np.uint16), meta)
        assert (tmp_path / name).stat().st_size > 0
