"""nonBragg -img/-stolout: F against sin(theta)/lambda derived from an image.

The expected tables are derived here independently (flat detector, numpy in
double precision, the pixel geometry written out by hand); the C program is
not needed.  What the C computes, and the cases compared with it, are in
docs/suite.md.
"""
from __future__ import annotations

import contextlib
import io
import math
import os

import numpy as np
import pytest

R_E_SQR = 7.94079248018965e-30
AVOGADRO = 6.02214179e23
TABLE = "# stol F\n0 2.5\n0.02 2.6\n0.04 2.9\n0.06 3.4\n0.08 3.1\n0.10 2.7\n0.2 2.0\n"


def _run(args, cwd):
    from nanobragg_torch.cli import nonbragg_main
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = nonbragg_main.main(list(args))
    finally:
        os.chdir(old)
    return rc, out.getvalue(), err.getvalue()


def _smv(path, data, pixel_mm, distance_mm, bcx_mm, bcy_mm, wavelength=1.0):
    from nanobragg_torch.io.smv import build_smv_header
    S, F = data.shape
    items = [("HEADER_BYTES", "512"), ("DIM", "2"), ("BYTE_ORDER", "little_endian"), ("TYPE", "unsigned_short"),
             ("SIZE1", str(F)), ("SIZE2", str(S)), ("PIXEL_SIZE", repr(pixel_mm)), ("DISTANCE", repr(distance_mm)),
             ("WAVELENGTH", repr(wavelength)), ("BEAM_CENTER_X", repr(bcx_mm)), ("BEAM_CENTER_Y", repr(bcy_mm))]
    path.write_bytes(build_smv_header(items) + np.ascontiguousarray(data, dtype="<u2").tobytes())


def _flat_terms(S, F, px, dist, xbeam, ybeam, lam, at=0.5):
    """stol (1/A), unpolarized polarization factor and solid angle of pixel centres, by hand.

    nonBragg's frame: beam along +x, fast axis +z, slow axis -y, detector
    origin (dist, Ybeam, -Xbeam) for the beam pivot.  ``at``: where in the
    pixel (0.75: the last sub-pixel of two).
    """
    fc = (np.arange(F) + at) * px
    sc = (np.arange(S) + at) * px
    y = ybeam - sc[:, None] + 0 * fc[None, :]
    z = fc[None, :] - xbeam + 0 * sc[:, None]
    r = np.sqrt(dist ** 2 + y ** 2 + z ** 2)
    cos2t = dist / r
    stol = np.sin(np.arccos(cos2t) / 2) / lam
    polar = 0.5 * (1 + cos2t ** 2)
    omega = px * px * dist / r ** 3
    return stol, polar, omega


def _expected_table(pixels, stol, polar, omega, knots, fluence, molecules, adc=40.0, gain=1.0, valid=None):
    D = (pixels.astype(np.float64) - adc) / gain
    Fp = np.sign(D) * np.sqrt(np.abs(D) / polar / omega / fluence / R_E_SQR / molecules)
    # nearest table point (beyond the ends: the end points)
    row = np.abs(stol[..., None] - knots).argmin(-1)
    if valid is not None:
        row = np.where(valid, row, -1)
    out = []
    for k in range(knots.size):
        v = Fp[row == k]
        out.append((v.size, v.mean() if v.size else 0.0, v.std() if v.size else 0.0))
    return out


def _read_table(path):
    rows = []
    for line in path.read_text().splitlines():
        t = line.split()
        assert len(t) == 6 and t[3] == "0" and t[4] == "0", line   # median and MAD: never computed by the C
        rows.append((float(t[0]), float(t[1]), float(t[2]), int(t[5])))
    return rows


S_, F_, PX, DIST = 40, 48, 0.5e-3, 0.05
XB, YB = 12.3e-3, 9.7e-3        # beam centre (m) from the first pixel's outer corner


@pytest.fixture
def fitdir(tmp_path):
    (tmp_path / "t.stol").write_text(TABLE)
    rng = np.random.default_rng(5)
    data = rng.integers(200, 3000, size=(S_, F_)).astype(np.uint16)
    data[3, 4] = 7                          # below the adc offset: a negative F
    _smv(tmp_path / "in.img", data, PX * 1e3, DIST * 1e3, XB * 1e3, (S_ * PX - YB) * 1e3)
    return tmp_path, data


def test_table_matches_independent_derivation(fitdir):
    d, data = fitdir
    rc, out, err = _run(["-stol", "t.stol", "-img", "in.img", "-stolout", "fit.stol", "-fluence", "1e20",
                         "-nonoise", "-nopgm"], d)
    assert rc == 0, err
    stol, polar, omega = _flat_terms(S_, F_, PX, DIST, XB, YB, 1.0)
    knots = np.array([0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.2])
    molecules = 1e-4 ** 3 * 1e6 * AVOGADRO / 18.0
    exp = _expected_table(data, stol, polar, omega, knots, 1e20, molecules)
    got = _read_table(d / "fit.stol")
    rows = [(k, e) for k, e in zip(knots, exp) if e[0] > 100]
    assert len(got) == len(rows) >= 3
    for (s, mean, rmsd, n), (k, (ne, me, re)) in zip(got, rows):
        assert s == pytest.approx(k, abs=1e-12)
        assert n == ne
        assert mean == pytest.approx(me, rel=2e-5)
        assert rmsd == pytest.approx(re, rel=2e-4)
    # the points with too few pixels get the C's warning line, in table order
    warned = [ln for ln in out.splitlines() if ln.startswith("WARNING: not enough pixels")]
    assert len(warned) == sum(1 for e in exp if e[0] <= 100)
    k0 = [i for i, e in enumerate(exp) if e[0] <= 100][0]
    assert warned[0].startswith(f"WARNING: not enough pixels in bin= {k0 + 2} n={exp[k0][0]} stol= ")
    assert f"wrote fit.stol as {len(got)} lines of text" in out
    # read first: its name comes before the banner, as in the C
    assert out.splitlines()[0] == "reading in.img"
    # the detector is the image's (its header's pixel size and size)
    img = np.fromfile(d / "floatimage.bin", np.float32)
    assert img.size == S_ * F_


def test_round_trip_recovers_the_table(tmp_path):
    """An image nonBragg renders from a table gives that table back (to the bins' spread of stol)."""
    (tmp_path / "t.stol").write_text(TABLE)
    flags = ["-stol", "t.stol", "-detpixels", "96", "-pixel", "0.4", "-distance", "60", "-fluence", "5e19",
             "-polar", "0.8", "-oversample", "2", "-nopgm"]
    rc, out, err = _run(flags + ["-nonoise", "-scale", "1"], tmp_path)
    assert rc == 0, err
    # intimage.img holds photons + 40 (rounded): give the same sample, beam and polarization back
    rc, out, err = _run(flags + ["-nonoise", "-img", "intimage.img", "-floatfile", "again.bin",
                                 "-intfile", "again.img"], tmp_path)
    assert rc == 0, err
    rows = _read_table(tmp_path / "output.stol")          # the C's default name
    assert len(rows) >= 4
    from nanobragg_torch.models.amorphous import StolTable
    import torch
    tab = StolTable.read(str(tmp_path / "t.stol"))
    # each row: the table's F averaged over the stol of the row's pixels (their last sub-pixel's)
    stol, _, _ = _flat_terms(96, 96, 4e-4, 0.06, 0.0192, 0.0194, 1.0, at=0.75)
    knots = np.array([0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.2])
    row = np.abs(stol[..., None] - knots).argmin(-1)
    Fs = tab.interpolate(torch.from_numpy(stol)).numpy()
    for s, mean, rmsd, n in rows:
        k = int(np.argmin(abs(knots - s)))
        assert n == int((row == k).sum())
        assert mean == pytest.approx(float(Fs[row == k].mean()), rel=0.01), (s, mean)
    # -c_legacy: the C's scale, sqrt(oversample^2) = 2 times larger
    rc, out, err = _run(flags + ["-nonoise", "-img", "intimage.img", "-floatfile", "again.bin",
                                 "-intfile", "again.img", "-stolout", "c.stol", "-c_legacy"], tmp_path)
    assert rc == 0, err
    for a, b in zip(rows, _read_table(tmp_path / "c.stol")):
        assert b[1] == pytest.approx(2 * a[1], rel=2e-5)     # both printed to 6 digits


def test_ignore_values_and_roi_leave_pixels_out(fitdir):
    d, data = fitdir
    base = ["-stol", "t.stol", "-img", "in.img", "-fluence", "1e20", "-nonoise", "-nopgm"]
    _run(base + ["-stolout", "all.stol"], d)
    data2 = data.copy()
    data2[::2, :] = 65535
    _smv(d / "in2.img", data2, PX * 1e3, DIST * 1e3, XB * 1e3, (S_ * PX - YB) * 1e3)
    rc, out, err = _run(["-stol", "t.stol", "-img", "in2.img", "-fluence", "1e20", "-nonoise", "-nopgm",
                         "-ignore", "-1", "-stolout", "ign.stol"], d)       # -1 is 65535 as an unsigned short
    assert rc == 0, err
    stol, polar, omega = _flat_terms(S_, F_, PX, DIST, XB, YB, 1.0)
    knots = np.array([0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.2])
    row = np.abs(stol[..., None] - knots).argmin(-1)
    counts = {float(r[0]): r[3] for r in _read_table(d / "ign.stol")}
    for s, n in counts.items():
        k = int(np.argmin(abs(knots - s)))
        assert n == int((row[1::2, :] == k).sum())
    rc, out, err = _run(base + ["-roi", "5", "30", "2", "35", "-stolout", "roi.stol"], d)
    assert rc == 0, err
    inside = np.zeros((S_, F_), bool)
    inside[2:36, 5:31] = True
    for s, mean, rmsd, n in _read_table(d / "roi.stol"):
        k = int(np.argmin(abs(knots - s)))
        assert n == int(((row == k) & inside).sum())


def test_header_geometry_and_flags_after_it(fitdir):
    d, data = fitdir
    rc, out, err = _run(["-stol", "t.stol", "-img", "in.img", "-fluence", "1e20", "-nonoise", "-nopgm",
                         "-pixel", "0.25", "-stolout", "p.stol"], d)
    assert rc == 0, err
    # the header sets 48x40 pixels at 0.5 mm and a 50 mm distance; -pixel then overrides the pixel size
    assert "distance=0.05 detsize=0.012x0.01  pixel=0.00025 meters (48x40 pixels)" in out
    from nanobragg_torch.io.smv import read_smv
    hdr, img = read_smv(d / "intimage.img")
    assert img.shape == (S_, F_) and hdr["PIXEL_SIZE"] == "0.25" and hdr["BEAM_CENTER_X"] == "12.3"


@pytest.mark.parametrize("ext", ["cbf", "h5"])
def test_cbf_and_nexus_images(fitdir, ext):
    pytest.importorskip("fabio" if ext == "cbf" else "h5py")
    d, data = fitdir
    from nanobragg_torch.io.formats import write_image
    meta = dict(pixel_size_m=PX, distance_m=DIST, wavelength_m=1e-10, beam_center_fast_m=XB, beam_center_slow_m=YB,
                phi_start_deg=0.0, osc_range_deg=0.0, convention="custom", polarization=0.0, twotheta_deg=0.0,
                fdet=[0.0, 0.0, 1.0], sdet=[0.0, -1.0, 0.0], beam_vector=[1.0, 0.0, 0.0], pix0_m=[DIST, YB, -XB])
    write_image(str(d / f"in.{ext}"), data.astype(np.float32), meta)
    args = ["-stol", "t.stol", "-fluence", "1e20", "-nonoise", "-nopgm"]
    assert _run(args + ["-img", "in.img", "-stolout", "smv.stol"], d)[0] == 0
    rc, out, err = _run(args + ["-img", f"in.{ext}", "-stolout", f"{ext}.stol"], d)
    assert rc == 0, err
    a, b = _read_table(d / "smv.stol"), _read_table(d / f"{ext}.stol")
    assert len(a) == len(b) >= 3
    for ra, rb in zip(a, b):
        assert ra[3] == rb[3] and ra[1] == pytest.approx(rb[1], rel=1e-5)


OUTPUTS = ("floatimage.bin", "intimage.img", "image.pgm", "noiseimage.img", "output.stol", "x.stol")


@pytest.mark.parametrize("args,needle", [
    (["-img", "in.img", "-detpixels", "30"], "-img in.img: the image is 48x40 pixels"),
    (["-img", "missing.img"], "-img missing.img: cannot read"),
    (["-img", "t.stol"], "-img t.stol"),
    (["-img", "short.img"], "-img short.img"),
    (["-img", "in.img", "-stolout"], "-stolout: missing value"),
    (["-img", "in.img", "-stolout", "nodir/x.stol"], "-stolout nodir/x.stol: directory"),
    (["-img", "in.img", "-ignore", "abc"], "-ignore"),
])
def test_bad_input_one_line_nothing_written(fitdir, args, needle):
    d, data = fitdir
    raw = (d / "in.img").read_bytes()
    (d / "short.img").write_bytes(raw[:2000])
    rc, out, err = _run(["-stol", "t.stol"] + args, d)
    assert rc == 2, (rc, out[-300:], err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], err
    assert not any((d / n).exists() for n in OUTPUTS)


def test_bin_statistics_are_the_c_float32_sums():
    from nanobragg_torch.physics.amorphous_kernel import bin_mean_rmsd
    rng = np.random.default_rng(2)
    v = (rng.random(5000) * 3 + 1).astype(np.float32)
    rows = rng.integers(-1, 4, size=v.size)
    mean, rmsd, count = bin_mean_rmsd(v, rows, 5)
    for r in range(5):
        x = v[rows == r]
        assert count[r] == x.size
        if x.size == 0:
            assert mean[r] == 0 and rmsd[r] == 0
            continue
        s = np.float32(0)
        for a in x:                           # the C's loop: a float accumulator
            s = np.float32(s + a)
        m = np.float32(s / np.float32(x.size))
        sd = np.float32(0)
        for a in x:
            dv = np.float32(abs(np.float32(a - m)))
            sd = np.float32(sd + np.float32(dv * dv))
        assert mean[r] == m
        assert rmsd[r] == np.float32(math.sqrt(float(np.float32(sd / np.float32(x.size)))))
        assert mean[r] == pytest.approx(float(x.astype(np.float64).mean()), rel=1e-5)


@pytest.mark.parametrize("curved,point_pixel,nopolar", [(False, False, False), (True, False, False),
                                                        (False, True, True)])
def test_numba_fit_matches_torch_reference(curved, point_pixel, nopolar):
    import torch
    from nanobragg_torch.config import BeamConfig, DetectorConfig
    from nanobragg_torch.models import Beam, Detector
    from nanobragg_torch.models.amorphous import AmorphousSample, StolTable, image_stol_profile
    tab = StolTable([0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.2], [2.5, 2.6, 2.9, 3.4, 3.1, 2.7, 2.0])
    det = Detector(DetectorConfig(fpixels=37, spixels=29, pixel_size=1e-3, convention="custom", pivot="sample",
                                  Fbeam=14e-3, Sbeam=11e-3, Fclose=14e-3, Sclose=11e-3, twotheta=0.15,
                                  detector_rotx=0.05, detector_roty=-0.03, detector_rotz=0.02,
                                  twotheta_axis=(0.0, 1.0, 0.0), curved=curved, point_pixel=point_pixel),
                   distance=0.05)
    beam = Beam(BeamConfig(fluence=1e21, polarization=0.7, nopolar=nopolar, hdivrange=1e-3, hdivstep=5e-4,
                           hdivsteps=3, dispersion=0.02, dispstep=0.01, dispsteps=3))
    sample = AmorphousSample(tab, thickness=2e-4)
    img = np.random.default_rng(3).integers(0, 4000, size=(29, 37)).astype(np.float32)
    invalid = np.zeros((29, 37), bool)
    invalid[5, :] = True
    for c_scale in (False, True):
        kw = dict(oversample=2, adc=40.0, gain=1.5, invalid=invalid, roi=(2, 33, 1, 27), c_scale=c_scale,
                  source_weights=np.linspace(1, 2, 9))
        a = image_stol_profile(img, sample, det, beam, backend="torch", **kw)
        b = image_stol_profile(img, sample, det, beam, backend="numba", **kw)
        assert np.array_equal(a["row"], b["row"])
        assert np.allclose(a["F"], b["F"], rtol=1e-6, atol=0)
        assert np.array_equal(a["count"], b["count"]) and a["count"].sum() == 32 * 27 - 32    # the ROI less row 5
        assert np.allclose(a["mean"], b["mean"], rtol=1e-6) and np.allclose(a["rmsd"], b["rmsd"], rtol=1e-4)
