"""C-parity tests for the random-number emulation and the image writers.

The golden cases (made by the reference C program) provide ``float.bin`` and
the integer, noise and PGM images the C program derived from it; here those
derived images are recomputed from ``float.bin`` and compared pixel by
pixel, and the SMV/PGM headers byte by byte.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nanobragg_torch import rng as rng_mod
from nanobragg_torch.cutil import c_atof, c_atoi
from nanobragg_torch.io.atomic import atomic_open, atomic_write_bytes
from nanobragg_torch.io.pgm import pgm_header, pgm_image, read_pgm, write_pgm
from nanobragg_torch.io.smv import (
    HEADER_BYTES,
    build_smv_header,
    header_value,
    int_image,
    read_smv,
    read_smv_header,
    smv_header_values,
    write_smv,
)
from nanobragg_torch.rng import CRandom, SeedStream, umat2misset

GOLDEN = Path(__file__).parents[1].parent / "shared" / "golden"
IMAGE_CASES = ["noise_high_mean", "outputs_scaled", "simple_cubic_1024"]
RTD = 180.0 / math.pi


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _golden_dir() -> Path:
    if not GOLDEN.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"golden reference folder missing: {GOLDEN}")
        pytest.skip(f"golden reference folder missing: {GOLDEN}")
    return GOLDEN


def _case_args(case: str) -> list:
    cases = json.loads((_golden_dir() / "cases.json").read_text())
    return cases[case]["args"].split()


def _flag(args: list, name: str, default: str | None = None) -> str | None:
    """Value following the exact flag ``name`` in an argument list (last one wins)."""
    value = default
    for i, tok in enumerate(args[:-1]):
        if tok == name:
            value = args[i + 1]
    return value


def _assert_pixels_match(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    """Identical, or at most 0.1% of pixels off by one count."""
    assert got.shape == ref.shape, what
    diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
    n_off = int(np.count_nonzero(diff))
    assert diff.max(initial=0) <= 1, f"{what}: max |diff| = {diff.max()}"
    assert n_off <= 0.001 * diff.size, f"{what}: {n_off} of {diff.size} pixels differ"


def _stdout_value(case_dir: Path, prefix: str) -> str | None:
    for line in (case_dir / "stdout.txt").read_text().splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


def _geometry_from_header(hdr: dict) -> dict:
    """Inputs of smv_header_values recovered from a header's printed numbers."""
    pix = float(hdr["PIXEL_SIZE"]) / 1000.0
    spixels = int(hdr["SIZE2"])
    return dict(
        fpixels=int(hdr["SIZE1"]),
        spixels=spixels,
        pixel_size_m=pix,
        distance_m=float(hdr["DISTANCE"]) / 1000.0,
        wavelength_m=float(hdr["WAVELENGTH"]) / 1e10,
        Xbeam_m=float(hdr["BEAM_CENTER_X"]) / 1000.0,
        Ybeam_m=float(hdr["BEAM_CENTER_Y"]) / 1000.0,
        Fbeam_m=float(hdr["ADXV_CENTER_X"]) / 1000.0,
        Sbeam_m=float(hdr["DENZO_X_BEAM"]) / 1000.0,
        detsize_s_m=spixels * pix,
        dials_origin_mm=[float(v) for v in hdr["DIALS_ORIGIN"].split(",")],
        orgx=float(hdr["XDS_ORGX"]),
        orgy=float(hdr["XDS_ORGY"]),
        close_distance_m=float(hdr["CLOSE_DISTANCE"]) / 1000.0,
        phi0_rad=float(hdr["PHI"]) / RTD,
        osc_rad=float(hdr["OSC_RANGE"]) / RTD,
        twotheta_rad=float(hdr["TWOTHETA"]) / RTD,
    )


def _c_mean_rmsd(img: np.ndarray) -> tuple:
    """The C program's mean and rmsd: sequential double sums in raster order."""
    v = img.astype(np.float64).ravel()
    n = v.size
    avg = float(np.cumsum(v)[-1]) / max(n, 1)
    dev = v - avg
    sumsqr = float(np.cumsum(dev * dev)[-1])
    return avg, math.sqrt(sumsqr / (max(n, 2) - 1))


class _Case:
    def __init__(self, name: str):
        self.dir = _golden_dir() / name
        self.args = _case_args(name)
        self.int_header_text = read_smv_header(self.dir / "int.img")
        self.int_hdr, self.int_ref = read_smv(self.dir / "int.img")
        nslow, nfast = self.int_ref.shape
        self.float_image = np.fromfile(self.dir / "float.bin", dtype="<f4").reshape(nslow, nfast)
        self.adc = c_atof(_flag(self.args, "-adc", "40"))
        self.intfile_scale = c_atof(_flag(self.args, "-scale", "0"))
        self.pgm_scale = c_atof(_flag(self.args, "-pgmscale", "0"))
        self.seed = -c_atoi(_flag(self.args, "-seed", "0"))  # stored negated, as in C


@pytest.fixture(scope="module", params=IMAGE_CASES)
def case(request) -> _Case:
    return _Case(request.param)


# --------------------------------------------------------------------------
# golden images
# --------------------------------------------------------------------------
def test_int_image_matches_golden(case):
    max_I = max(0.0, float(case.float_image.max()))
    got, scale = int_image(case.float_image, case.intfile_scale, case.adc, None, max_I=max_I)
    _assert_pixels_match(got, case.int_ref, "int.img")
    assert "%g" % scale == _stdout_value(case.dir, "intfile_scale = ")
    # automatic max_I (None) gives the same when there is no mask/ROI
    got2, scale2 = int_image(case.float_image, case.intfile_scale, case.adc, None)
    assert scale2 == scale and np.array_equal(got, got2)


def test_noise_image_matches_golden(case):
    noise_hdr, noise_ref = read_smv(case.dir / "noise.img")
    # the mosaic stream runs before the noise in C; a negative seed reloads
    # the shared table, so prior history must not matter: simulate some
    rand = CRandom()
    rand.mosaic_rotation_umat(0.0, SeedStream(-12345678))
    got, photons, overloads = rand.noise_image(case.float_image, SeedStream(case.seed), adc=case.adc)
    _assert_pixels_match(got, noise_ref, "noise.img")
    line = "%.0f photons on noise image (%d overloads)" % (photons, overloads)
    assert line in (case.dir / "stdout.txt").read_text().splitlines()


def test_pgm_matches_golden(case):
    path = case.dir / "image.pgm"
    if not path.exists():
        pytest.skip("case has no image.pgm")
    ref, _comment = read_pgm(path)
    max_I = max(0.0, float(case.float_image.max()))
    _, int_scale = int_image(case.float_image, case.intfile_scale, case.adc, None, max_I=max_I)
    _, rmsd = _c_mean_rmsd(case.float_image)
    got, scale = pgm_image(case.float_image, case.pgm_scale, int_scale, rmsd)
    _assert_pixels_match(got, ref, "image.pgm")
    nslow, nfast = got.shape
    header = pgm_header(nfast, nslow, scale)
    assert path.read_bytes()[: len(header)] == header


def test_smv_headers_round_trip(case, tmp_path):
    geometry = _geometry_from_header(case.int_hdr)
    for fname, noise_file in (("int.img", False), ("noise.img", True)):
        golden = (case.dir / fname).read_bytes()
        items = smv_header_values(**geometry, noise_file=noise_file)
        header = build_smv_header(items)
        assert header == golden[:HEADER_BYTES], fname
        # the dict read back holds the same keys/values
        hdr, ref = read_smv(case.dir / fname)
        assert hdr == {k: v for k, v in items}
        # writing header + golden pixels reproduces the file byte for byte
        out = tmp_path / fname
        write_smv(out, ref, items)
        assert out.read_bytes() == golden
    # header_value reads the numbers like the C ValueOf
    text = case.int_header_text
    assert header_value(text, "SIZE1") == case.float_image.shape[1]
    assert header_value(text, "PIXEL_SIZE") == float(case.int_hdr["PIXEL_SIZE"])


def test_pgm_write_round_trip(case, tmp_path):
    path = case.dir / "image.pgm"
    if not path.exists():
        pytest.skip("case has no image.pgm")
    ref, comment = read_pgm(path)
    scale = c_atof(comment.rsplit(" ", 1)[-1])
    out = tmp_path / "x.pgm"
    write_pgm(out, ref, scale)
    assert out.read_bytes() == path.read_bytes()


# --------------------------------------------------------------------------
# ran1 / gaussdev / poidev / mosaic against the C implementation
# (reference numbers printed by a throwaway C harness linked to the
#  reference functions, "%.9g" so that they round-trip a float exactly)
# --------------------------------------------------------------------------
RAN1_SEED_M1 = [0.415999353, 0.091964893, 0.75641048, 0.52970022, 0.930436492]
RAN1_SEED_M1_IDUM = [530511967, 2110010672, 1551901393, 1617819336, 1399125485]
GAUSS_SEED_M1 = [-0.836853981, -0.172279969, 0.187117606, 1.61543977]
POIDEV_SEED_M42 = {  # 4 draws per mean, means taken in this order on one stream
    0.5: [0, 0, 1, 1],
    11.99: [7, 9, 13, 12],
    12.5: [15, 12, 11, 17],
    133.41: [98, 126, 111, 154],
    2000000.5: [2000852.75, 1998911.5, 1997467.5, 1996926.5],
}
POIDEV_SEED_M42_FINAL_IDUM = 1026379069
UMAT_SEED_M12345678_1DEG = [  # mosaicity = float(pi/180)
    [0.99986449752590911, 0.016451908512331283, -0.00056682763088982736,
     -0.01645463317913215, 0.99985112005937082, -0.005194493523134629,
     0.00048128390941530775, 0.0052031165971526822, 0.99998634787854723],
    [0.99986368592193575, -0.01594877166007503, 0.0042715637810345434,
     0.015952848100370585, 0.99987232016945238, -0.00092195251648568416,
     -0.0042563143783279477, 0.00098997044952826353, 0.99999045182762714],
]
MISSET_OF_UMAT0 = [0.0052031406768851558, -0.00048128392799561204, -0.016455377704508209]


def test_ran1_reference_values():
    rand = CRandom()
    stream = SeedStream(-1)
    for value, idum in zip(RAN1_SEED_M1, RAN1_SEED_M1_IDUM):
        assert np.float32(rand.ran1(stream)) == np.float32(value)
        assert stream.idum == idum
    assert 0.0 < rand.ran1(stream) < 1.0


def test_ran1_first_positive_seed_becomes_one():
    # before the table exists (iy == 0) a positive seed is replaced by 1,
    # which loads the same table as seed -1
    a, b = CRandom(), CRandom()
    sa, sb = SeedStream(5), SeedStream(-1)
    assert [a.ran1(sa) for _ in range(20)] == [b.ran1(sb) for _ in range(20)]


def test_ran1_table_is_shared_between_streams():
    rand = CRandom()
    first = SeedStream(-3)
    rand.ran1(first)
    table = rand.iv
    # a positive seed does not reload the table: the draw is the shuffled
    # entry picked by the previous output, and the new state is stored there
    second = SeedStream(1000)
    value = rand.ran1(second)
    assert not np.array_equal(rand.iv, table)
    assert second.idum == (16807 * 1000) % 2147483647
    assert value == pytest.approx(table[rand.iv.tolist().index(second.idum)] / 2147483647, rel=1e-6)
    # a negative seed reloads it: same as in a fresh process
    fresh = CRandom()
    assert rand.ran1(SeedStream(-9)) == fresh.ran1(SeedStream(-9))
    assert np.array_equal(rand.iv, fresh.iv) and rand.iy == fresh.iy


def test_gaussdev_reference_values():
    rand = CRandom()
    stream = SeedStream(-1)
    got = [rand.gaussdev(stream) for _ in GAUSS_SEED_M1]
    assert np.array_equal(np.float32(got), np.float32(GAUSS_SEED_M1))


def test_poidev_reference_values():
    rand = CRandom()
    stream = SeedStream(-42)
    for mean, expected in POIDEV_SEED_M42.items():
        got = [rand.poidev(mean, stream) for _ in expected]
        assert np.array_equal(np.float32(got), np.float32(expected)), mean
    assert stream.idum == POIDEV_SEED_M42_FINAL_IDUM


def test_mosaic_rotation_umat_reference_and_orthonormal():
    rand = CRandom()
    stream = SeedStream(-12345678)
    mosaicity = float(np.float32(math.pi / 180.0))
    for expected in UMAT_SEED_M12345678_1DEG:
        umat = rand.mosaic_rotation_umat(mosaicity, stream)
        assert umat.shape == (3, 3) and umat.dtype == np.float64
        assert np.array_equal(umat.ravel(), np.array(expected))
    for _ in range(200):
        umat = rand.mosaic_rotation_umat(math.pi / 2, stream)
        assert np.allclose(umat @ umat.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(umat) == pytest.approx(1.0, abs=1e-12)


def test_umat2misset():
    assert umat2misset(UMAT_SEED_M12345678_1DEG[0]) == tuple(MISSET_OF_UMAT0)

    def rot(rx, ry, rz):
        cx, sx, cy, sy, cz, sz = (math.cos(rx), math.sin(rx), math.cos(ry),
                                  math.sin(ry), math.cos(rz), math.sin(rz))
        mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        return mz @ my @ mx

    gen = np.random.default_rng(3)
    for _ in range(50):
        angles = gen.uniform(-1.5, 1.5, 3)
        assert np.allclose(umat2misset(rot(*angles)), angles, atol=1e-12)
    # a missing row is rebuilt from the other two
    u = rot(0.1, 0.2, 0.3)
    damaged = u.copy()
    damaged[2] = 0.0
    assert np.allclose(umat2misset(damaged), (0.1, 0.2, 0.3), atol=1e-12)


# --------------------------------------------------------------------------
# scalar methods, numba kernel and pure-Python fallback agree
# --------------------------------------------------------------------------
_MEANS = np.array(
    [0.0, 1e-3, 0.5, 3.7, 11.99, 12.0, 12.0, 25.5, 133.41, 1e4 + 0.25, 6.5e4,
     2e6 + 0.5, 3e7, 0.7, 0.7, 999.0, 1e6, 1.5e6, -2.0, 40.0] * 7,
    dtype=np.float32,
)


def _noise_reference_scalar(means, seed, adc):
    """Noise values from the scalar CRandom.poidev, following the C loop."""
    rand = CRandom()
    stream = SeedStream(seed)
    out, total, overloads = [], 0.0, 0
    for m in means:
        v = rand.poidev(float(m), stream)
        total += v
        v += adc
        if v > 65535.0:
            v, overloads = 65535.0, overloads + 1
        out.append(int(v))
    return rand, stream, out, total, overloads


def test_scalar_and_kernel_agree():
    adc = 40.0
    rand_s, stream_s, values, total, overloads = _noise_reference_scalar(_MEANS, -77, adc)
    rand_k = CRandom()
    stream_k = SeedStream(-77)
    img, photons, n_over = rand_k.noise_image(_MEANS.reshape(7, -1), stream_k, adc=adc)
    assert img.ravel().tolist() == values
    assert photons == total and n_over == overloads and overloads > 0
    # all static state ends up the same, so later draws agree too
    assert stream_s.idum == stream_k.idum
    assert rand_s.iy == rand_k.iy and np.array_equal(rand_s.iv, rand_k.iv)
    assert [rand_s.gaussdev(stream_s) for _ in range(3)] == [rand_k.gaussdev(stream_k) for _ in range(3)]
    assert [rand_s.poidev(25.5, stream_s) for _ in range(5)] == [rand_k.poidev(25.5, stream_k) for _ in range(5)]


def test_noise_roi():
    gen = np.random.default_rng(1)
    img = gen.gamma(1.0, 5.0, (20, 30)).astype(np.float32)
    roi = (4, 17, 3, 11)  # xmin, xmax, ymin, ymax (inclusive)
    got, photons, _ = CRandom().noise_image(img, SeedStream(-5), roi=roi, adc=10.0)
    crop, photons_crop, _ = CRandom().noise_image(img[3:12, 4:18], SeedStream(-5), adc=10.0)
    assert np.array_equal(got[3:12, 4:18], crop) and photons == photons_crop
    mask = np.ones(img.shape, bool)
    mask[3:12, 4:18] = False
    assert not got[mask].any()


_FALLBACK_SCRIPT = """
import json, sys
import numpy as np
from nanobragg_torch import rng
assert not rng.enable_jit() and not rng._JIT_ACTIVE
means = np.array(json.loads(sys.argv[1]), dtype=np.float32).reshape(7, -1)
r = rng.CRandom()
img, photons, over = r.noise_image(means, rng.SeedStream(-77), adc=40.0)
s = rng.SeedStream(-5)
u = r.mosaic_rotation_umat(0.3, s)
print(json.dumps([img.ravel().tolist(), photons, over, r.iv.tolist(), r.iy, s.idum,
                  u.ravel().tolist(), r.gaussdev(s)]))
"""


def test_pure_python_fallback_agrees():
    """The plain-Python bodies (numba off) give the same results as the kernel."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    src = str(Path(rng_mod.__file__).parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _FALLBACK_SCRIPT, json.dumps(_MEANS.tolist())],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    py = json.loads(proc.stdout)
    r = CRandom()
    img, photons, over = r.noise_image(_MEANS.reshape(7, -1), SeedStream(-77), adc=40.0)
    s = SeedStream(-5)
    u = r.mosaic_rotation_umat(0.3, s)
    assert py == [img.ravel().tolist(), photons, over, r.iv.tolist(), r.iy, s.idum,
                  u.ravel().tolist(), r.gaussdev(s)]


# --------------------------------------------------------------------------
# integer / PGM conversion details
# --------------------------------------------------------------------------
def test_int_image_rounding_clipping_roi():
    img = np.array([[100.0, -5.0, 1e9, np.nan]], dtype=np.float32)
    # 100 + 0.49999999 + 0.5 = 100.99999999 rounds to 101.0f before floorf
    got, scale = int_image(img, 1.0, adc=0.49999999)
    assert scale == 1.0
    assert got.tolist() == [[101, 0, 65535, 0]]
    got, _ = int_image(img, 1.0, adc=0.0, roi=(1, 2, 0, 0))
    assert got.tolist() == [[0, 0, 65535, 0]]
    # automatic scale
    got, scale = int_image(np.array([[0.0, 2.0]], np.float32), 0.0, adc=0.0, max_I=2.0)
    assert scale == 27500.0 and got.tolist() == [[0, 55000]]
    _, scale = int_image(np.zeros((2, 2), np.float32), -1.0, adc=0.0)
    assert scale == 1.0


def test_pgm_image_scale_rules():
    img = np.array([[0.5, 10.0, 200.0, -1.5]], dtype=np.float32)
    got, scale = pgm_image(img, 2.0, 99.0, 3.0)
    assert scale == 2.0 and got.tolist() == [[1, 20, 255, 253]]  # C wraps negatives
    _, scale = pgm_image(img, 0.0, 99.0, 5.0)
    assert scale == 250.0 / 25.0
    _, scale = pgm_image(img, 0.0, 99.0, 0.0)
    assert scale == 99.0
    got, _ = pgm_image(img, 1.0, 1.0, 1.0, roi=(1, 1, 0, 0))
    assert got.tolist() == [[0, 10, 0, 0]]


# --------------------------------------------------------------------------
# SMV reader semantics and errors
# --------------------------------------------------------------------------
def _items(nfast=3, nslow=2, **kw):
    geometry = dict(
        fpixels=nfast, spixels=nslow, pixel_size_m=1e-4, distance_m=0.1,
        wavelength_m=1e-10, Xbeam_m=1e-4, Ybeam_m=1e-4, Fbeam_m=1e-4, Sbeam_m=1e-4,
        detsize_s_m=nslow * 1e-4, dials_origin_mm=(0, 0, -100), orgx=1.5, orgy=1.5,
        close_distance_m=0.1, phi0_rad=0.0, osc_rad=0.0, twotheta_rad=0.0,
    )
    geometry.update(kw)
    return smv_header_values(**geometry)


def test_header_value_semantics():
    text = "{\nDISTANCE=100;\nCLOSE_DISTANCE=95.5;\nXDS_ORGX=12;\nFOO;\n}"
    assert header_value(text, "DISTANCE") == 95.5  # last occurrence wins
    assert header_value(text, "ORGX") == 12.0
    assert math.isnan(header_value(text, "MISSING"))
    assert header_value("{\nFOO", "FOO") == 0.0  # no '=' after it
    assert header_value("A=1;\nA=  2.5e1xyz;", "A") == 25.0
    assert header_value(b"A=1;\0A=2;", "A") == 1.0  # C string ends at NUL


def test_smv_write_read_and_byte_order(tmp_path):
    data = np.arange(6, dtype=np.uint16).reshape(2, 3) * 1000 + 7
    path = tmp_path / "a.img"
    write_smv(path, data, _items())
    hdr, back = read_smv(path)
    assert np.array_equal(back, data) and hdr["SIZE1"] == "3" and hdr["DIALS_ORIGIN"] == "0,0,-100"
    raw = path.read_bytes()
    assert len(raw) == HEADER_BYTES + data.nbytes
    assert raw[:HEADER_BYTES].rstrip(b" ").endswith(b"BEAMLINE=fake;\n}\f")
    # the same file written on a machine of the other byte order
    other = "big_endian" if sys.byteorder == "little" else "little_endian"
    items = [(k, other if k == "BYTE_ORDER" else v) for k, v in _items()]
    path2 = tmp_path / "b.img"
    path2.write_bytes(build_smv_header(items) + data.byteswap().tobytes())
    _, back2 = read_smv(path2)
    assert np.array_equal(back2, data)
    with pytest.raises(ValueError, match="does not match image shape"):
        write_smv(tmp_path / "c.img", data.T.copy(), _items())


def test_smv_header_zero_sign_and_nan():
    items = dict(_items(Sbeam_m=-0.0, Fbeam_m=-0.0, orgx=float("nan")))
    noise = dict(_items(Sbeam_m=-0.0, Fbeam_m=-0.0, noise_file=True))
    assert items["DENZO_X_BEAM"] == "-0" and noise["DENZO_X_BEAM"] == "0"
    assert items["XDS_ORGX"] == "nan"
    assert dict(_items(orgx=-float("nan")))["XDS_ORGX"] == "-nan"


def test_read_smv_errors(tmp_path):
    bad = tmp_path / "not_smv.img"
    bad.write_bytes(b"P5\n" + b"x" * 600)
    with pytest.raises(ValueError, match="not_smv.img"):
        read_smv(bad)
    short = tmp_path / "short.img"
    short.write_bytes(b"{\nHEADER_BYTES=512;\n")
    with pytest.raises(ValueError, match="short.img.*truncated"):
        read_smv(short)
    data = np.ones((2, 3), np.uint16)
    good = tmp_path / "good.img"
    write_smv(good, data, _items())
    cut = tmp_path / "cut.img"
    cut.write_bytes(good.read_bytes()[:-1])
    with pytest.raises(ValueError, match="cut.img.*truncated"):
        read_smv(cut)
    # a longer header is followed, like HEADER_BYTES tells the C reader
    text = build_smv_header(_items()).rstrip(b" ").replace(b"HEADER_BYTES=512", b"HEADER_BYTES=1024")
    longer = tmp_path / "long.img"
    longer.write_bytes(text.ljust(1024, b" ") + data.tobytes())
    assert np.array_equal(read_smv(longer)[1], data)


# --------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------
def test_atomic_writes(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError):
        with atomic_open(target, "wb") as fh:
            fh.write(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with atomic_open(target, "w") as fh:
        fh.write("text")
    assert target.read_bytes() == b"text"
    umask = os.umask(0o022)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_c_noise_kernel_equals_the_numba_kernel():
    """backends/cnoise.c draws the same deviates as rng._noise_k, state included."""
    from nanobragg_torch import rng as R
    from nanobragg_torch.backends import cnoise
    lib = cnoise.load()
    if lib is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the C noise kernel did not build in CI: {cnoise.error()}")
        pytest.skip(f"no C noise kernel: {cnoise.error()}")
    R.enable_jit()
    gen = np.random.default_rng(5)
    img = np.concatenate([gen.uniform(0, 3, 300), gen.uniform(5, 40, 300), gen.uniform(1e3, 1e5, 100),
                          [0.0, 11.999, 12.0, 1e6, 2e6, 7e4, -1.0, 65600.0, 1e9]]).astype(np.float32)
    img = np.resize(img, (37, 29)).copy()
    outs = []
    for kernel in ("c", "numba"):
        ist = np.zeros(R._ISTATE_LEN, dtype=np.int64)
        fst = np.zeros(R._FSTATE_LEN, dtype=np.float64)
        fst[R._F_OLDM] = -1.0
        seed = np.array([-7], dtype=np.int64)
        out = np.zeros(img.shape, dtype=np.uint16)
        if kernel == "c":
            res = cnoise.noise(lib, img, 2, 26, 1, 35, 40.0, ist, fst, seed, out)
        else:
            res = R._noise_k(img, 2, 26, 1, 35, 40.0, ist, fst, seed, out)
        outs.append((out, res, ist.copy(), fst.copy(), int(seed[0])))
    (oc, rc, ic, fc, sc), (on, rn, in_, fn, sn) = outs
    assert np.array_equal(oc, on) and rc[0] == rn[0] and rc[1] == rn[1]
    assert np.array_equal(ic, in_) and np.array_equal(fc, fn) and sc == sn
    assert oc[1:36, 2:27].max() == 65535 and rc[1] >= 1      # the overload path ran
