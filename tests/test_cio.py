"""The C fast paths of the readers and image writers (backends/cio.c) against their numpy twins."""
from __future__ import annotations

import os

import numpy as np
import pytest

from nanobragg_torch.backends import cio
from nanobragg_torch.io import pgm, smv, text
from nanobragg_torch.io.errors import InputFileError
from nanobragg_torch import pipeline

pytestmark = pytest.mark.skipif(cio.load() is None, reason="no C compiler: the numpy paths are the only ones")


@pytest.fixture
def numpy_only(monkeypatch):
    def run(fn, *a, **k):
        with monkeypatch.context() as m:
            m.setattr(cio, "load", lambda: None)
            return fn(*a, **k)
    return run


def _image(seed=0, shape=(37, 53)):
    rng = np.random.default_rng(seed)
    img = (rng.standard_normal(shape) * 300).astype(np.float32)
    img.flat[::7] = rng.uniform(0, 1e6, img.size // 7 + 1)[: img[:, :].flat[::7].size]
    img.flat[5] = -0.0
    img.flat[11] = 3e9          # beyond int32 after scaling
    img.flat[13] = -3e9
    return img


@pytest.mark.parametrize("roi", [None, (3, 40, 2, 30), (0, 52, 0, 36), (10, 9, 0, 36)])
@pytest.mark.parametrize("scale", [0.0, 1.0, 0.37, 1e-4])
def test_int_and_pgm_images_match_numpy(numpy_only, roi, scale):
    img = _image()
    for max_I in (None, 123.4):
        a = smv.int_image(img, scale, 40.0, roi, max_I=max_I)
        b = numpy_only(smv.int_image, img, scale, 40.0, roi, max_I=max_I)
        assert a[1] == b[1] and a[0].dtype == b[0].dtype and np.array_equal(a[0], b[0])
    for rmsd in (0.0, 17.5):
        a = pgm.pgm_image(img, scale, 2.0, rmsd, roi)
        b = numpy_only(pgm.pgm_image, img, scale, 2.0, rmsd, roi)
        assert a[1] == b[1] and np.array_equal(a[0], b[0])


def test_nan_pixels_cast_as_numpy(numpy_only):
    img = _image(1)
    img.flat[[0, 17, 99]] = np.nan
    assert np.array_equal(smv.int_image(img, 0.5, 40.0)[0], numpy_only(smv.int_image, img, 0.5, 40.0)[0])
    assert np.array_equal(pgm.pgm_image(img, 0.5, 1, 0)[0], numpy_only(pgm.pgm_image, img, 0.5, 1, 0)[0])


@pytest.mark.parametrize("case", ["random", "zeros", "negative", "one", "nan", "inf"])
def test_statistics_match_numpy(numpy_only, case):
    img = {"random": _image(2), "zeros": np.zeros((4, 5), np.float32),
           "negative": -np.abs(_image(3)), "one": np.full((1, 1), 7.0, np.float32),
           "nan": _image(4), "inf": _image(5)}[case]
    if case == "nan":
        img.flat[3] = np.nan
    if case == "inf":
        img.flat[8] = np.inf
    rendered = np.arange(img.size)
    roi = (0, img.shape[1] - 1, 0, img.shape[0] - 1)
    a = pipeline.image_statistics(img, rendered, roi)
    b = numpy_only(pipeline.image_statistics, img, rendered, roi)
    assert a.imax == b.imax and (a.max_I == b.max_I or (np.isnan(a.max_I) and np.isnan(b.max_I)))
    for x, y in ((a.mean, b.mean), (a.rms, b.rms), (a.rmsd, b.rmsd)):
        # the C path sums in raster order (as the C program does), numpy pairwise
        assert x == pytest.approx(y, rel=1e-12, nan_ok=True)


TABLES = {
    "plain": "1 2 3 10.5\n-1 0 2 -3.25\n\n# comment\n  4 5 6 1e3\n7\t8 9 +.5\r\n",
    "comment_after_blank": "   \n\t# x y\n1 2 3 4\n",
    "no_newline": "1 2 3 4",
    "exp": "1 2 3 1.5E-3\n2 3 4 -2e+2\n",
    "hex": "1 2 3 0x10\n",
    "word": "1 2 3 abc\n",
    "short": "1 2 3 4\n1 2 3\n",
    "long": "1 2 3 4 5\n",
    "inf": "1 2 3 inf\n",
    "lone_sign": "1 2 3 -\n",
    "dots": "1 2 3 1.2.3\n",
    "long_digits": "1 2 3 12345678901234567890.123456789\n",
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_tables_match_numpy(numpy_only, tmp_path, name):
    p = tmp_path / "t.hkl"
    p.write_text(TABLES[name])

    def read():
        try:
            t = text.read_table(str(p), 4, min_fields=4, max_fields=4, what="HKL file", layout="h k l F")
            return t.values, t.lines, t.nfields
        except InputFileError as e:
            return str(e)
    a, b = read(), numpy_only(read)
    if isinstance(b, str):
        assert a == b
    else:
        assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))
        assert [x.dtype for x in a] == [y.dtype for y in b]


def test_delimited_source_table(numpy_only, tmp_path):
    p = tmp_path / "src.txt"
    p.write_text("-10,0;0:1!1e-10\n# c\n-10 0.001 0 1\n")

    def read():
        t = text.read_table(str(p), 5, min_fields=1, delimiters=text.C_TABLE_DELIMITERS)
        return t.values, t.lines, t.nfields
    for x, y in zip(read(), numpy_only(read)):
        assert np.array_equal(x, y, equal_nan=True)


def test_random_plain_numbers_parse_as_numpy(numpy_only, tmp_path):
    rng = np.random.default_rng(7)
    rows = ["%d %d %d %s" % (h, k, l, f) for h, k, l, f in zip(
        rng.integers(-60, 60, 3000), rng.integers(-60, 60, 3000), rng.integers(-60, 60, 3000),
        ["%.*f" % (int(d), v) for d, v in zip(rng.integers(0, 9, 3000), rng.uniform(-1e4, 1e4, 3000))])]
    p = tmp_path / "r.hkl"
    p.write_text("\n".join(rows) + "\n")
    a = text.read_table(str(p), 4, min_fields=4, max_fields=4)
    b = numpy_only(text.read_table, str(p), 4, min_fields=4, max_fields=4)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.lines, b.lines)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

FUZZ = int(os.environ.get("NB_FUZZ_EXAMPLES", "0") or 0)     # scripts/fuzz.py's extended random run

_TOKENS = ["1", "-2", "+3.5", "1e3", "2E-2", "1.", ".5", "-.5", "1.2.3", ".", "-", "+", "e", "1e", "1e+",
           "0x10", "inf", "-inf", "nan", "#", "#x", "abc", "1,2", "1;2", "12345678901234567890", "007", "-0",
           "1e400", "1e-400", "3.14159265358979323846"]
_SEPS = [" ", "  ", "\t", "\r", ",", ";", ":", "!", "\v", "\f"]


@settings(max_examples=FUZZ or 300, deadline=None, database=None, derandomize=not FUZZ)
@given(st.lists(st.lists(st.tuples(st.sampled_from(_TOKENS), st.sampled_from(_SEPS)), max_size=6), max_size=8),
       st.sampled_from([(4, 4, 4, b""), (5, 1, None, text.C_TABLE_DELIMITERS), (2, 2, None, b"")]),
       st.booleans())
def test_random_tables_read_as_numpy(lines, fmt, final_newline):
    """The C fast path and the numpy reader agree on every table: the same values, lines and counts,
    or the same one-line error."""
    import tempfile
    ncols, minf, maxf, delims = fmt
    body = "\n".join("".join(t + s for t, s in line) for line in lines) + ("\n" if final_newline else "")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write(body)
    try:
        def read():
            try:
                t = text.read_table(fh.name, ncols, min_fields=minf, max_fields=maxf, delimiters=delims)
                return t.values, t.lines, t.nfields
            except InputFileError as e:
                return str(e)
        a = read()
        real = cio.load
        cio.load = lambda: None
        try:
            b = read()
        finally:
            cio.load = real
        if isinstance(a, str) or isinstance(b, str):
            assert a == b
        else:
            for x, y in zip(a, b):
                assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)
    finally:
        os.unlink(fh.name)
