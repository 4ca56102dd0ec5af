"""Property-based tests (hypothesis): legal input renders finite images, bad input fails cleanly.

* random *legal* parameter sets (tiny detectors, explicit oversampling so each
  example is cheap) through the command line: exit 0 and no NaN/Inf pixel;
* random argument lists (documented flags, junk flags, numbers, words, file
  names, random text) through ``main``: exit 0, 1 or 2, and either nothing or
  exactly one ``nanoBragg: error:`` line on stderr -- never an internal error;
* random bytes and mutated files through the HKL, Fdump, MOSFLM matrix, SMV and
  text-column readers: success or their documented error class
  (:class:`InputFileError`; ``ValueError`` for the SMV reader).

Three modes:

* ``CI=true``: the examples are derandomized (the same every run) and the test
  functions run more than 1000 examples in all;
* by default: fewer, random examples (a quick local check);
* ``NB_FUZZ_EXAMPLES=N``: the extended random run, N examples per property
  (``scripts/fuzz.py`` runs it property by property and reports the counts).
  A failure prints the example and a ``@reproduce_failure`` blob; the exact
  example then goes into ``tests/test_degenerate.py`` as a regression test.
"""
from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CI = os.environ.get("CI") == "true"
FUZZ = int(os.environ.get("NB_FUZZ_EXAMPLES", "0") or 0)


def cfg(n):
    return settings(max_examples=FUZZ or n, deadline=None, database=None, derandomize=CI and not FUZZ,
                    print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


WORK = Path(tempfile.mkdtemp(prefix="nb-property-"))
atexit.register(shutil.rmtree, WORK, True)   # hypothesis examples share it; removed at exit


def g(x: float) -> str:
    return "%.6g" % x


def fl(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False).map(g)


def ints(lo, hi):
    return st.integers(lo, hi).map(str)


def vec():
    return st.tuples(st.floats(-1, 1), st.floats(-1, 1), st.floats(-1, 1)).filter(
        lambda v: sum(x * x for x in v) > 0.01).map(lambda v: [g(x) for x in v])


def _not_parallel(u, v):
    u, v = np.array(u, dtype=float), np.array(v, dtype=float)
    return np.linalg.norm(np.cross(u / np.linalg.norm(u), v / np.linalg.norm(v))) > 0.05


def maybe(strategy):
    return st.one_of(st.just([]), strategy)


@st.composite
def legal_args(draw):
    a = ["-cell"] + [draw(fl(20, 200)) for _ in range(3)] + [draw(fl(70, 110)) for _ in range(3)]
    a += draw(maybe(st.tuples(fl(-180, 180), fl(-180, 180), fl(-180, 180)).map(lambda t: ["-misset", *t])))
    a += draw(st.one_of(ints(0, 4).map(lambda n: ["-N", n]),
                        st.tuples(ints(0, 4), ints(0, 4), ints(0, 4)).map(
                            lambda t: ["-Na", t[0], "-Nb", t[1], "-Nc", t[2]])))
    if draw(st.booleans()):
        a += ["-default_F", draw(fl(0.1, 1000))]
    else:
        a += ["-hkl", "legal.hkl"] + draw(maybe(fl(0, 100).map(lambda x: ["-default_F", x])))
        a += draw(st.sampled_from([[], ["-interpolate"], ["-nointerpolate"]]))
    a += draw(st.sampled_from([[], ["-round_xtal"], ["-gauss_xtal"], ["-tophat_spots"], ["-square_xtal"]]))
    a += draw(maybe(fl(0, 3).map(lambda x: ["-fudge", x])))
    a += draw(maybe(st.tuples(fl(0, 3), ints(1, 3)).map(lambda t: ["-mosaic", t[0], "-mosaic_dom", t[1]])))
    a += draw(maybe(st.tuples(fl(-360, 360), fl(0, 5), ints(1, 3)).map(
        lambda t: ["-phi", t[0], "-osc", t[1], "-phisteps", t[2]])))
    a += draw(maybe(vec().map(lambda v: ["-spindle_axis", *v])))
    a += draw(st.one_of(fl(0.5, 8).map(lambda x: ["-lambda", x]), fl(2000, 25000).map(lambda x: ["-energy", x])))
    a += draw(maybe(st.tuples(fl(0, 30), ints(1, 3)).map(lambda t: ["-dispersion", t[0], "-dispsteps", t[1]])))
    a += draw(maybe(st.tuples(fl(0, 2), ints(1, 2)).map(lambda t: ["-divergence", t[0], "-divsteps", t[1]])))
    a += draw(st.sampled_from([[], ["-square_div"], ["-round_div"]]))
    a += draw(st.one_of(st.just([]), st.just(["-nopolar"]), fl(-1, 1).map(lambda x: ["-polar", x])))
    nf, ns = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    a += ["-detpixels_f", str(nf), "-detpixels_s", str(ns), "-pixel", draw(fl(0.02, 1))]
    a += draw(st.one_of(fl(5, 1000).map(lambda x: ["-distance", x]), fl(5, 1000).map(lambda x: ["-close_distance", x]),
                        st.sampled_from(["1e-9", "1e-4", "0.01", "1e6", "1e9"]).map(lambda x: ["-distance", x])))
    a += draw(st.sampled_from([[], ["-mosflm"], ["-xds"], ["-dials"], ["-adxv"], ["-denzo"]]))
    a += draw(maybe(st.tuples(fl(-2, 8), fl(-2, 8)).map(lambda t: ["-Xbeam", t[0], "-Ybeam", t[1]])))
    a += draw(maybe(st.tuples(fl(-89, 89), fl(-89, 89), fl(-89, 89)).map(
        lambda t: ["-detector_rotx", t[0], "-detector_roty", t[1], "-detector_rotz", t[2]])))
    a += draw(maybe(fl(-89, 89).map(lambda x: ["-twotheta", x])))
    a += draw(maybe(st.tuples(vec(), vec(), st.booleans()).filter(lambda t: _not_parallel(t[0], t[1])).map(
        lambda t: ["-fdet_vector", *t[0], "-sdet_vector", *t[1], "-beam_vector", "1", "0", "0"] if t[2]
        else ["-beam_vector", *t[0]])))
    # exact degeneracies random vectors never hit: a beam along an axis (the spindle, a detector axis)
    a += draw(maybe(st.sampled_from(["1 0 0", "-1 0 0", "0 1 0", "0 0 1", "0 0 -1"]).map(
        lambda v: ["-beam_vector", *v.split()])))
    a += draw(maybe(st.tuples(fl(0, 500), st.one_of(fl(1, 1000), st.just("inf")), ints(1, 3)).map(
        lambda t: ["-detector_thick", t[0], "-detector_abs", t[1], "-thicksteps", t[2]])))
    for flag in ("-curved_det", "-point_pixel", "-oversample_thick", "-oversample_polar", "-oversample_omega"):
        if draw(st.booleans()):
            a.append(flag)
    if "-point_pixel" in a and "-oversample_omega" in a:
        # the C multiplies the running sum by the solid angle after every term; with -point_pixel
        # that factor is 1/R^2 (> 1), so the image overflows 4-byte floats: faithful, not useful
        a.remove("-oversample_omega")
    a += draw(maybe(fl(0, 100).map(lambda x: ["-water", x])))
    a += draw(maybe(fl(0, 10).map(lambda x: ["-dmin", x])))
    if draw(st.booleans()):
        x0, y0 = draw(st.integers(0, nf - 1)), draw(st.integers(0, ns - 1))
        a += ["-roi", str(x0), str(draw(st.integers(x0, nf))), str(y0), str(draw(st.integers(y0, ns)))]
    a += ["-oversample", draw(ints(1, 2)), "-dtype", draw(st.sampled_from(["float32", "float64"]))]
    a += ["-seed", draw(ints(-1000, 1000)), "-mosaic_seed", draw(ints(-1000, 1000))]
    # auto (the fused kernel where it is built) and the torch reference: both meet every example
    a += draw(st.sampled_from([[], ["-backend", "torch"]]))
    return a, nf, ns


def _write_inputs(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = ["%d %d %d %.3f" % (h, k, l, rng.random() * 100)
             for h in range(-3, 4) for k in range(-3, 4) for l in range(-3, 4)]
    (folder / "legal.hkl").write_text("\n".join(lines) + "\n")
    (folder / "bad.hkl").write_text("1 2 3\n")
    (folder / "A.mat").write_text("0.01 0.001 0\n0 0.012 0.001\n0.001 0 0.013\n")
    (folder / "src.txt").write_text("-10 0 0 1 1e-10\n-10 0.001 0 1\n")


_write_inputs(WORK)


REFUSED_GEOMETRY = ("parallel to the detector", "sample lies in the detector plane", "too far to render",
                    "exceed the range of the 4-byte float image", "axes are parallel",
                    "closer than -dtype float32 resolves", "closer than -dtype float64 resolves")


@cfg(100 if CI else 50)
@given(legal_args())
def test_legal_parameters_render_finite_images(args):
    from nanobragg_torch.cli.main import run
    from nanobragg_torch.cli.resolve import SetupError
    argv, nf, ns = args
    out = io.StringIO()
    for name in ("f.bin", "i.img", "Fdump.bin"):     # no structure factors left over from another example
        if (WORK / name).exists():
            (WORK / name).unlink()
    try:
        rc = run(argv + ["-floatfile", "f.bin", "-intfile", "i.img", "-nonoise", "-nopgm", "-noprogress"],
                 out=out, cwd=str(WORK), err=io.StringIO())
    except SetupError as e:
        # the geometries refused on purpose (one line each; tests/test_degenerate.py): a beam that
        # never meets the detector, a detector plane through the sample, a detector too far away
        assume(not any(w in str(e) for w in REFUSED_GEOMETRY))
        raise
    assert rc == 0
    img = np.fromfile(WORK / "f.bin", dtype="<f4")
    assert img.size == nf * ns
    bad = ~np.isfinite(img)
    assert not bad.any(), f"{bad.sum()} non-finite pixels for: nanoBragg {' '.join(argv)}"
    from nanobragg_torch.io.smv import read_smv
    assert read_smv(WORK / "i.img")[1].shape == (ns, nf)


# ---------------------------------------------------------------------------
# random argument lists
# ---------------------------------------------------------------------------

def _flag_names():
    from nanobragg_torch.cli.flags import _NAME_ARITY
    # the detector size and the header images are kept out so that every run stays tiny
    skip = ("-detsize", "-detpixels", "-img", "-mask", "-h", "-help", "--help")
    return sorted(n for n in _NAME_ARITY if not n.startswith(skip))


VALUES = ["0", "1", "2", "3", "-1", "0.5", "2.5", "-0.5", "90", "abc", "", "nan", "inf", "-inf", "1e-300",
          "random", "beam", "sample", "float32", "float64", "cpu", "cbf", "h5", "smv", "log", "linear", "c",
          "legal.hkl", "bad.hkl", "A.mat", "src.txt", "nosuch", "out.cbf", "out.h5", "out.png", "sub/x.img",
          "-", "--", "-x", "-detpixels_foo", "0x10", "1,2"]
_SAFE_TEXT = st.text(alphabet=st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)),
                     max_size=6)


def argv_tokens():
    return st.lists(st.one_of(st.sampled_from(_flag_names()), st.sampled_from(VALUES), _SAFE_TEXT),
                    max_size=14)


BASE = ["-cell", "100", "100", "100", "90", "90", "90", "-default_F", "10", "-lambda", "1", "-detpixels", "2",
        "-distance", "100", "-oversample", "1", "-floatfile", "f.bin", "-intfile", "i.img", "-noisefile",
        "n.img", "-nopgm", "-noprogress"]


@cfg(150 if CI else 60)
@given(argv_tokens(), st.booleans())
def test_random_argument_lists_fail_cleanly(tokens, with_base):
    from nanobragg_torch.cli.main import main
    argv = (BASE + tokens) if with_base else tokens
    err, out = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(WORK)
    try:
        with redirect_stderr(err), redirect_stdout(out):
            rc = main(argv)
    finally:
        os.chdir(old)
    text = err.getvalue()
    assert "Traceback" not in text and "internal error" not in text, f"{argv!r}: {text}"
    assert rc in (0, 1, 2), f"{argv!r}: exit {rc}: {text}"
    if rc == 0:
        assert text == ""
    else:
        lines = text.splitlines()
        assert len(lines) == 1 and lines[0].startswith("nanoBragg: error: "), f"{argv!r}: {text!r}"


# ---------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------

def _file(data) -> str:
    fd, name = tempfile.mkstemp(dir=WORK, prefix="fuzz-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return name


def _number_token():
    return st.one_of(st.integers(-50, 50).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.sampled_from(["1e400", "-0", "0x1p3", "nan", "1.", ".5", "+3", "1e-400"]))


def _text_lines(ncols_max=6):
    token = st.one_of(_number_token(), _number_token(), st.sampled_from(["abc", "#", "h", ";", "1,2"]))
    line = st.lists(token, max_size=ncols_max).map(" ".join)
    return st.lists(st.one_of(line, st.just("")), max_size=12).map("\n".join)


@cfg(250 if CI else 80)
@given(st.one_of(st.binary(max_size=400), _text_lines()))
def test_hkl_reader(data):
    from nanobragg_torch.io.hkl import InputFileError, read_hkl
    p = _file(data)
    try:
        res = read_hkl(p, default_F=1.0)
        assert np.all(np.isfinite(res.grid)) and res.count > 0
        assert res.grid.shape == tuple(r + 1 for r in res.ranges)
    except InputFileError as e:
        assert p in str(e)
    finally:
        os.unlink(p)


@cfg(100 if CI else 40)
@given(st.one_of(st.binary(max_size=300),
                 st.tuples(st.lists(st.integers(-5, 5), min_size=6, max_size=6), st.binary(max_size=200)).map(
                     lambda t: (" ".join(map(str, t[0])) + "\n\f").encode() + t[1])))
def test_fdump_reader(data):
    from nanobragg_torch.io.hkl import InputFileError, read_fdump
    p = _file(data)
    try:
        res = read_fdump(p)
        assert res.grid.shape == tuple(r + 1 for r in res.ranges)
    except InputFileError as e:
        assert p in str(e)
    finally:
        os.unlink(p)


@cfg(200 if CI else 80)
@given(st.one_of(st.binary(max_size=200), _text_lines(4)))
def test_matrix_reader(data):
    from nanobragg_torch.io.hkl import InputFileError
    from nanobragg_torch.io.mosflm import read_mosflm_matrix
    p = _file(data)
    try:
        m = read_mosflm_matrix(p, 1e-10)
        assert m.shape == (3, 3) and np.all(np.isfinite(m)) and abs(np.linalg.det(m)) > 0
    except InputFileError as e:
        assert p in str(e)
    finally:
        os.unlink(p)


@st.composite
def smv_files(draw):
    """An SMV header with random (often wrong) sizes, followed by random data."""
    from nanobragg_torch.io.smv import build_smv_header
    items = [("HEADER_BYTES", draw(st.sampled_from(["512", "1024", "0", "-5", "3", "abc", "2147483647", "1e30"]))),
             ("DIM", "2"), ("BYTE_ORDER", draw(st.sampled_from(["little_endian", "big_endian", "middle"]))),
             ("TYPE", "unsigned_short"),
             ("SIZE1", draw(st.one_of(st.integers(-3, 40).map(str), st.sampled_from(["2147483647", "1e12", "x"])))),
             ("SIZE2", draw(st.one_of(st.integers(-3, 40).map(str), st.sampled_from(["2147483647", "nan"]))))]
    rest = draw(st.permutations(items[1:])) if draw(st.booleans()) else items[1:]
    return build_smv_header([items[0]] + list(rest)) + draw(st.binary(max_size=2000))


@cfg(200 if CI else 80)
@given(st.one_of(st.binary(max_size=1200), smv_files()))
def test_smv_reader(data):
    from nanobragg_torch.io.smv import read_smv
    p = _file(data)
    try:
        header, img = read_smv(p)
        assert img.dtype == np.uint16 and img.ndim == 2
        assert img.shape[1] >= 1 and img.shape[0] >= 1
    except ValueError as e:
        assert p in str(e)
    finally:
        os.unlink(p)


@cfg(60 if CI else 30)
@given(st.one_of(st.binary(max_size=300), _text_lines(7)))
def test_source_and_stol_reader(data):
    from nanobragg_torch.io.hkl import InputFileError
    from nanobragg_torch.io.textcolumns import read_columns
    p = _file(data)
    try:
        cols = read_columns(p, 5)
        assert cols.ndim == 2 and cols.shape[1] == 5
    except InputFileError as e:
        assert p in str(e)
    finally:
        os.unlink(p)


@cfg(40 if CI else 20)
@given(st.one_of(st.binary(max_size=1200), smv_files()), st.sampled_from(["-mask", "-img"]))
def test_header_images_through_the_cli(data, flag):
    """An arbitrary file given as -mask or -img: a clean error or a (tiny) render."""
    from nanobragg_torch.cli.main import main
    (WORK / "hdr.img").write_bytes(data)
    err = io.StringIO()
    old = os.getcwd()
    os.chdir(WORK)
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            rc = main(BASE[:11] + ["-distance", "100", flag, "hdr.img", "-oversample", "1", "-floatfile", "f.bin", "-intfile",
                                   "i.img", "-nonoise", "-nopgm", "-noprogress"])
    finally:
        os.chdir(old)
    text = err.getvalue()
    assert rc in (0, 2) and "Traceback" not in text, text
    assert rc == 0 or (text.count("\n") == 1 and "hdr.img" in text), text
