"""The companions' C kernels (backends/cnoise.c, backends/camorphous.c) against their numba /
plain-Python twins: the same images bit for bit, and the command lines' imports."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from nanobragg_torch.backends import camorphous, cnoise

needs_c = pytest.mark.skipif(cnoise.load() is None or camorphous.load() is None,
                             reason="no C compiler: the kernels fall back to numba")


def _image(S=37, F=29, seed=3):
    """Photon counts over every branch of poidev: zeros, < 12, 12 .. 1e6, > 1e6."""
    r = np.random.default_rng(seed)
    img = np.exp(r.uniform(-3, 15, size=(S, F))).astype(np.float32)
    img[r.uniform(size=(S, F)) < 0.1] = 0.0
    img[0, :5] = [0.5, 3.0, 11.99, 12.0, 2e6]
    img[1, :4] = [5.0, 5.0, 5e4, 5e4]            # repeated means (poidev's cached set-up)
    return img


def _noise_c_and_numba(frames, roi, seed, nthreads, lib=None):
    """nonBragg's noise images of ``frames`` in a row (one generator) by the C kernel (``lib``, or
    the machine's build) and by the numba twin: for each, a list of (image, photons, overloads,
    ist, fst, seed) per frame."""
    from nanobragg_torch import rng
    S, F = frames[0].shape
    x0, x1, y0, y1 = roi
    outs = []
    for use_c in (True, False):
        st = rng.CRandom()
        sd = np.array([seed], dtype=np.int64)
        res = []
        for frame in frames:
            out = np.zeros((S, F), np.uint16)
            if use_c:
                got = cnoise.noise(lib or cnoise.load(), frame, x0, x1, y0, y1, 40.0, st._ist, st._fst, sd, out,
                                   nthreads=nthreads)
            else:
                rng.enable_jit()
                got = rng._noise_k(frame, x0, x1, y0, y1, 40.0, st._ist, st._fst, sd, out)
            res.append((out, float(got[0]), int(got[1]), st._ist.copy(), st._fst.copy(), int(sd[0])))
        outs.append(res)
    return outs


def _assert_same_noise(outs):
    for (a, *ra), (b, *rb) in zip(*outs):
        assert np.array_equal(a, b)
        assert ra[0] == rb[0] and ra[1] == rb[1] and ra[4] == rb[4]
        # the generator's state after
        assert np.array_equal(ra[2], rb[2]) and np.array_equal(ra[3], rb[3], equal_nan=True)


@needs_c
@pytest.mark.parametrize("roi", [None, (3, 20, 2, 30)])
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("shape", [(37, 29), (151, 131)])
def test_cnoise_noise_image_matches_numba_kernel(roi, nthreads, shape):
    """The same images and, after two images in a row, the same generator state (a large image
    with 2 threads: the per-mean set-up on the producer thread)."""
    img = _image(*shape)
    S, F = img.shape
    _assert_same_noise(_noise_c_and_numba([img, img[::-1].copy()], roi if roi else (0, F - 1, 0, S - 1), -7,
                                          nthreads))


@needs_c
@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"), reason="x86 vector-width flags")
@pytest.mark.parametrize("extra,lanes", [(("-mno-avx512f",), 4), (("-mno-avx",), 2)])
def test_kernel_built_for_narrower_lanes_gives_the_same_images(extra, lanes, tmp_path, monkeypatch):
    """The noise kernel built for 4-double lanes (AVX2) and for 2 (no AVX: the draw loop calls
    libm's tan and exp) draws the images of the numba twins, as the machine's own build does."""
    from nanobragg_torch import rng
    from nanobragg_torch.backends import cbuild
    from nanobragg_torch.noisify_program import _photon_noise_k
    monkeypatch.setenv("NANOBRAGG_TORCH_CACHE", str(tmp_path))
    lib = cbuild.Library("cnoise_test", cnoise._SOURCES, cnoise.FLAGS + extra, cnoise.ABI_VERSION, "noise kernel",
                         "NANOBRAGG_TORCH_NO_CNOISE", "nb_noise_abi", cnoise._declare).load()
    if lib is None:
        pytest.skip("the compiler does not build for these lanes")
    if lanes == 4 and lib.nb_noise_lanes() != 4:
        pytest.skip("no AVX on this machine's compiler target")
    assert lib.nb_noise_lanes() == lanes
    img = _image(151, 131)
    S, F = img.shape
    for nthreads in (1, 2):
        _assert_same_noise(_noise_c_and_numba([img], (0, F - 1, 0, S - 1), -7, nthreads, lib))
        flat = img.reshape(-1)
        res = []
        for use_c in (True, False):
            st = rng.CRandom()
            seed, cseed = np.array([-5], np.int64), np.array([-123456789], np.int64)
            if use_c:
                counts, total = cnoise.photon_noise(lib, flat, 0.0, 0.03, st._ist, st._fst, seed, cseed,
                                                    nthreads=nthreads)
            else:
                drawn = np.empty(flat.shape[0], dtype=np.float64)
                total = _photon_noise_k(flat, 0.0, 0.03, st._ist, st._fst, seed, cseed, drawn)
                counts = drawn.astype(np.float32)
            res.append((counts, float(total), int(seed[0]), int(cseed[0])))
        assert np.array_equal(res[0][0], res[1][0]) and res[0][1:] == res[1][1:]
    assert cnoise.lanes_check(lib, "tan", (1 << 30) - (1 << 16), 1 << 17)[0] == 0


# ran1's LCG values where tan(PI u) is hardest: u near 0 (x near 0), near 1/4, 1/2 (the pole, where
# fl(PI u) lies within 1e-16 of pi/2), 3/4 and 1, and random blocks; every float mean near the
# ends of the set-up's range and around powers of two
_IM = 2147483647
_TAN_RANGES = [(1, 1 << 20), ((1 << 29) - (1 << 19), 1 << 20), ((1 << 30) - (1 << 19), 1 << 20),
               (3 * (1 << 29) - (1 << 19), 1 << 20), (_IM - (1 << 20), (1 << 20) - 1)]


def _f32_bits(x):
    import struct
    return struct.unpack("<I", struct.pack("<f", x))[0]


@needs_c
def test_fast_tan_and_logs_give_libms_floats():
    """Every draw's tan(PI u) as float equals libm's on the hard ranges and random blocks (the
    whole range: scripts/check_fast_functions.py), the fast tan is within a few ulp, the logs
    of poidev's acceptance test far inside its margin."""
    lib = cnoise.load()
    r = np.random.default_rng(5)
    ranges = _TAN_RANGES + [(int(v), 1 << 18) for v in r.integers(1, _IM - (1 << 18), size=8)]
    for start, count in ranges:
        bad, st = cnoise.lanes_check(lib, "tan", start, count)
        assert bad == 0, (start, st)
        assert st["tan_ulps"] <= 8 and st["c_error"] < 1e-13 and st["L_error"] < 1e-13, (start, st)


@needs_c
def test_fast_poidev_setup_gives_the_scalars_floats():
    lib = cnoise.load()
    starts = [_f32_bits(12.0) - 1000, _f32_bits(1.0e6) - (1 << 20)] + \
             [_f32_bits(float(2 ** k)) - (1 << 16) for k in range(4, 20)]
    r = np.random.default_rng(6)
    starts += [int(v) for v in r.integers(_f32_bits(12.0), _f32_bits(1.0e6), size=8)]
    for start in starts:
        bad, st = cnoise.lanes_check(lib, "setup", start, 1 << 17)
        assert bad == 0, (start, st)
        bad, st = cnoise.lanes_check(lib, "gammln", start, 1 << 17)
        assert bad == 0 and st["series_error"] < 1e-8, (start, st)
    with pytest.raises(ValueError):
        cnoise.lanes_check(lib, "tan", 0, 8)


@needs_c
@pytest.mark.parametrize("nthreads", [1, 2])
def test_acceptance_test_in_logs_decides_as_the_exact_test(nthreads):
    """poidev's acceptance test decided in logs (within its margin, exactly) draws the images the
    exact test draws, on every branch: the same noise image with the margin infinite (the exact
    test always) and with the default one, and noisify's calibrated loop likewise."""
    from nanobragg_torch import rng
    from nanobragg_torch.noisify_program import NoisifyParams, noisify_c
    lib = cnoise.load()
    img = _image(151, 131)
    S, F = img.shape
    outs = []
    old = cnoise.acc_eps(lib)
    try:
        for eps in (old, float("inf")):
            cnoise.acc_eps(lib, eps)
            st = rng.CRandom()
            seed = np.array([-3], dtype=np.int64)
            out = np.zeros((S, F), np.uint16)
            got = cnoise.noise(lib, img, 0, F - 1, 0, S - 1, 40.0, st._ist, st._fst, seed, out, nthreads=nthreads)
            p = NoisifyParams(xpixels=F, ypixels=S, pixel_size=0.1e-3, seed=-5)
            outs.append((out, got, st._ist.copy(), int(seed[0]), noisify_c(img, p, impl="c").noise_adu))
    finally:
        cnoise.acc_eps(lib, old)
    (a, ga, ia, sa, na), (b, gb, ib, sb, nb) = outs
    assert np.array_equal(a, b) and ga == gb and np.array_equal(ia, ib) and sa == sb
    assert np.array_equal(na, nb)


_CASES = [
    dict(),
    dict(flicker=0.05, calibration=0.04, readout=3.0, gain=2.0, adc=10.0),
    dict(calibration=0.0, psf="gauss", psf_fwhm=150e-6),
    dict(psf="gauss", psf_fwhm=150e-6, psf_edges="clip", bits=32),
    dict(psf="fiber", psf_fwhm=120e-6, psf_radius=4),
    dict(psf="fiber", psf_fwhm=80e-6, noise=False),
    dict(psf="gauss", psf_fwhm=300e-6, psf_radius=3, scale=1e-3),
    dict(scale=1e3, bits=32, readout=1.0),
    dict(psf="gauss", psf_fwhm=150e-6, scale=1e-4),           # counts below half the pixel count: tabled radii
    dict(psf="fiber", psf_fwhm=100e-6, scale=3e-5, flicker=0.1),
]


@needs_c
@pytest.mark.parametrize("kw", _CASES)
def test_noisify_c_kernels_match_numba_kernels(kw):
    from nanobragg_torch.noisify_program import NoisifyParams, noisify_c
    img = _image()
    S, F = img.shape
    p = NoisifyParams(xpixels=F, ypixels=S, pixel_size=0.1e-3, seed=-11, **kw)
    a = noisify_c(img, p, impl="c")
    b = noisify_c(img, p, impl="numba")
    assert np.array_equal(a.photons, b.photons)
    assert np.array_equal(a.int_adu, b.int_adu) and a.int_adu.dtype == b.int_adu.dtype
    assert np.array_equal(a.pgm, b.pgm)
    if p.noise:
        assert np.array_equal(a.noise_adu, b.noise_adu) and a.noise_adu.dtype == b.noise_adu.dtype
    # the printed statistics; the lost-photon total is summed in pixel order in C, pairwise in numpy
    strip = lambda r: [x for x in r if not x.startswith("adding back")]      # noqa: E731
    assert strip(a.report) == strip(b.report)


@needs_c
@pytest.mark.parametrize("kind,fwhm,user,wrap", [("gauss", 1.5, 0, True), ("gauss", 0.87, 0, False),
                                                 ("fiber", 0.6, 0, True), ("fiber", 1.2, 4, True)])
def test_noise_with_psf_behind_it_matches_the_two_passes(kind, fwhm, user, wrap):
    """nb_photon_noise_psf (the PSF made row by row behind the draws, with a kernel larger than
    the counts need) gives the counts, generator state, blurred image and lost photons of
    nb_photon_noise followed by nb_psf with the counts' own radius."""
    from nanobragg_torch import rng
    from nanobragg_torch.physics import psf_common
    lib = cnoise.load()
    img = _image(151, 131).reshape(-1) * np.float32(0.01)
    ny, nx = 151, 131
    g = fwhm * psf_common.FIBER_G_PER_FWHM
    res = []
    for fused in (False, True):
        st = rng.CRandom()
        seed, cseed = np.array([-9], np.int64), np.array([-123456789], np.int64)
        if fused:
            r = user or min(psf_common.auto_radius(kind, fwhm, 5e6) + 2, max(nx, ny))
            kern = cnoise.psf_kernel(lib, kind == "gauss", fwhm, g, r)
            counts, total, out, lost = cnoise.photon_noise_psf(lib, img, nx, ny, 0.0, 0.03, st._ist, st._fst, seed,
                                                              cseed, kind == "gauss", fwhm, g, user, r, wrap, kern,
                                                              2e5, nthreads=2)
        else:
            counts, total = cnoise.photon_noise(lib, img, 0.0, 0.03, st._ist, st._fst, seed, cseed)
            r = user or min(psf_common.auto_radius(kind, fwhm, float(counts.max())), max(nx, ny))
            kern = cnoise.psf_kernel(lib, kind == "gauss", fwhm, g, r)
            out, lost = cnoise.psf(lib, counts, nx, ny, kind == "gauss", fwhm, g, user, r, wrap, kern)
        res.append((counts, total, out, lost, st._ist.copy(), int(seed[0]), int(cseed[0])))
    (a, *ra), (b, *rb) = res
    assert np.array_equal(a, b) and np.array_equal(ra[1], rb[1]) and np.array_equal(ra[3], rb[3])
    assert ra[0] == rb[0] and ra[2] == rb[2] and ra[4:] == rb[4:]


@needs_c
def test_noisify_psf_radius_above_the_bound_is_made_again(monkeypatch):
    """Counts that need a larger PSF radius than the one chosen for their bound: the PSF is made
    again with theirs, and the images are those of the plain Python kernels."""
    from nanobragg_torch import noisify_program
    from nanobragg_torch.noisify_program import NoisifyParams, noisify_c
    img = _image()
    S, F = img.shape
    p = NoisifyParams(xpixels=F, ypixels=S, pixel_size=0.1e-3, seed=-11, psf="gauss", psf_fwhm=150e-6)
    want = noisify_c(img, p, impl="numba")
    monkeypatch.setattr(noisify_program, "_count_bound", lambda photons, p: 1.0)
    got = noisify_c(img, p, impl="c")
    assert np.array_equal(got.noise_adu, want.noise_adu)
    strip = lambda r: [x for x in r if not x.startswith("adding back")]      # noqa: E731
    assert strip(got.report) == strip(want.report)


@needs_c
def test_psf_kernel_in_c_matches_torch_kernel():
    import torch
    from nanobragg_torch.physics import psf
    lib = cnoise.load()
    for kind, fwhm, r in (("gauss", 1.5, 3), ("gauss", 0.4, 5), ("fiber", 2.0, 6)):
        c = cnoise.psf_kernel(lib, kind == "gauss", fwhm, fwhm * psf.FIBER_G_PER_FWHM, r)
        t = psf.psf_kernel(kind, torch.tensor(fwhm, dtype=torch.float64), r).numpy().reshape(-1)
        assert np.allclose(c, t, rtol=1e-12, atol=1e-16)


@needs_c
def test_amorphous_c_kernel_matches_numba_and_torch():
    import torch
    from nanobragg_torch.config import BeamConfig, DetectorConfig
    from nanobragg_torch.models import Beam, Detector
    from nanobragg_torch.models.amorphous import AmorphousSample, StolTable, amorphous_image
    tab = StolTable([0.0, 0.1, 0.2, 0.3, 0.5, 1.0], [2.57, 2.0, -1.8, 2.2, 1.5, 1.0])
    for curved, fmap, pol in ((True, False, 0.7), (False, True, 0.0), (False, False, 0.0)):
        det = Detector(DetectorConfig(fpixels=9, spixels=7, pixel_size=2e-3, convention="custom", pivot="sample",
                                      Fbeam=4e-3, Sbeam=5e-3, Fclose=4e-3, Sclose=5e-3, twotheta=0.3,
                                      detector_rotx=0.1, curved=curved), distance=0.03)
        beam = Beam(BeamConfig(fluence=1e22, polarization=pol, hdivrange=1e-3, hdivstep=5e-4, hdivsteps=3,
                               dispersion=0.02, dispstep=0.01, dispsteps=3))
        sample = AmorphousSample(tab, thickness=1e-4)
        kw = dict(oversample=2, fmap=fmap, roi=(1, 7, 0, 5))
        c = amorphous_image(sample, det, beam, backend="c", **kw).numpy()
        n = amorphous_image(sample, det, beam, backend="numba", **kw).numpy()
        t = amorphous_image(sample, det, beam, backend="torch", **kw).to(torch.float32).numpy()
        assert np.array_equal(c, n)
        assert np.allclose(c, t, rtol=1e-6, atol=0)
        assert amorphous_image(sample, det, beam, backend="auto", **kw).numpy().tobytes() == c.tobytes()



@needs_c
def test_amorphous_c_kernel_finds_the_intervals_of_a_fine_irregular_table():
    # the C kernel finds a stol value's interval from a bucket's count (the numba kernel walks from
    # the last pixel's): on a table of 4000 knots, dense in one part and sparse in another, that the
    # image's stol values run below and above, the two images are the same bytes
    from nanobragg_torch.config import BeamConfig, DetectorConfig
    from nanobragg_torch.models import Beam, Detector
    from nanobragg_torch.models.amorphous import AmorphousSample, StolTable, amorphous_image
    rng = np.random.default_rng(7)
    stol = np.unique(np.concatenate([rng.uniform(0.05, 0.08, 3000), rng.uniform(0.08, 0.3, 1000)]))
    tab = StolTable(stol, 2.0 + np.sin(40 * stol) + rng.normal(0, 0.05, stol.size))
    det = Detector(DetectorConfig(fpixels=61, spixels=47, pixel_size=1e-3, convention="custom", pivot="sample",
                                  Fbeam=20e-3, Sbeam=10e-3, Fclose=20e-3, Sclose=10e-3), distance=0.03)
    beam = Beam(BeamConfig(fluence=1e22, wavelength=1e-10))
    sample = AmorphousSample(tab, thickness=1e-4)
    for kw in (dict(oversample=3), dict(oversample=1, fmap=True), dict(oversample=2, roi=(3, 50, 2, 40))):
        c = amorphous_image(sample, det, beam, backend="c", **kw).numpy()
        n = amorphous_image(sample, det, beam, backend="numba", **kw).numpy()
        assert c.tobytes() == n.tobytes()
        assert np.count_nonzero(c) > c.size // 2

@needs_c
def test_amorphous_outputs_c_matches_numba():
    from nanobragg_torch.physics import amorphous_kernel as ak
    img = _image(S=23, F=31) / 100
    for roi, iscale, pscale in (((0, 30, 0, 22), 0.0, 0.0), ((2, 25, 3, 19), 3.0, 0.5), ((5, 4, 0, 22), 0.0, 0.0)):
        a = ak.image_outputs(img, roi, iscale, 40.0, pscale, impl="c")
        b = ak.image_outputs(img, roi, iscale, 40.0, pscale, impl="numba")
        assert a[:6] == b[:6]
        assert np.array_equal(a[6], b[6]) and np.array_equal(a[7], b[7])


def _run(code, env_extra=None, cwd=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd)


def test_noisify_command_imports_neither_torch_nor_numba(tmp_path):
    img = _image(S=16, F=16)
    img.tofile(tmp_path / "in.bin")
    code = ("import sys\nfrom nanobragg_torch.cli import noisify_main\n"
            "rc = noisify_main.main(['-floatfile', 'in.bin', '-detpixels', '16', '-psf', 'gauss', '-seed', '3'])\n"
            "assert rc == 0, rc\n"
            "print(sorted(m for m in ('torch', 'numba', 'scipy') if m in sys.modules))\n")
    p = _run(code, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    want = "['numba', 'torch']" if cnoise.load() is None else "[]"
    assert p.stdout.strip().splitlines()[-1] == want


def test_noisify_without_the_c_kernel_gives_the_same_files(tmp_path):
    img = _image(S=20, F=24)
    img.tofile(tmp_path / "in.bin")
    args = ["-floatfile", "in.bin", "-detpixels_x", "24", "-detpixels_y", "20", "-psf", "fiber", "-psf_fwhm", "90",
            "-flicker", "0.02", "-seed", "5"]
    outs = {}
    for tag, env in (("c", {}), ("fallback", {"NANOBRAGG_TORCH_NO_CNOISE": "1"})):
        names = ["-intfile", f"{tag}.img", "-noisefile", f"{tag}_noise.img", "-pgmfile", f"{tag}.pgm"]
        code = f"from nanobragg_torch.cli import noisify_main; raise SystemExit(noisify_main.main({args + names!r}))"
        p = _run(code, env, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        outs[tag] = [(tmp_path / n).read_bytes() for n in names[1::2]]
    assert outs["c"] == outs["fallback"]


def test_nonbragg_without_the_c_kernels_gives_the_same_files_and_says_so(tmp_path):
    _write_table(tmp_path / "t.stol")
    args = ["-stol", "t.stol", "-detpixels", "24", "-pixel", "0.2", "-distance", "60", "-oversample", "2",
            "-polar", "0.8", "-seed", "9", "-noprogress"]
    outs, errs = {}, {}
    envs = (("c", {}), ("off", {"NANOBRAGG_TORCH_NO_CNOISE": "1", "NANOBRAGG_TORCH_NO_CAMORPHOUS": "1"}),
            ("nocc", {"CC": "no-such-compiler-here", "NANOBRAGG_TORCH_CACHE": str(tmp_path / "empty_cache")}))
    for tag, env in envs:
        names = ["-floatfile", f"{tag}.bin", "-intfile", f"{tag}.img", "-pgmfile", f"{tag}.pgm",
                 "-noisefile", f"{tag}_noise.img"]
        code = f"from nanobragg_torch.cli import nonbragg_main; raise SystemExit(nonbragg_main.main({args + names!r}))"
        p = _run(code, env, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        outs[tag] = [(tmp_path / n).read_bytes() for n in names[1::2]]
        errs[tag] = p.stderr
    assert outs["c"] == outs["off"] == outs["nocc"]
    assert "note:" not in errs["off"]                       # switched off on purpose: silent
    assert "C amorphous kernel is not available" in errs["nocc"] and "C noise kernel is not available" in errs["nocc"]


def _write_table(path):
    path.write_text("# stol F\n0 2.57\n0.1 2.2\n0.2 1.9\n0.3 2.3\n0.4 1.6\n0.6 1.2\n1.0 1.0\n")
    return str(path)


# ---- a differential property: the C kernels against the numba twins on random input ----------
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FUZZ = int(os.environ.get("NB_FUZZ_EXAMPLES", "0") or 0)     # scripts/fuzz.py's extended random run


@st.composite
def _noise_inputs(draw):
    """A small image of means from every poidev branch (zeros, negatives, below 12, 12 .. 1e6 in
    several decades, above 1e6, repeated values), its seed and ROI, noisify's parameters."""
    S, F = draw(st.integers(1, 23)), draw(st.integers(1, 23))
    r = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    kind = r.integers(0, 7, size=(S, F))
    lo = np.array([0.0, -5.0, 0.01, 12.0, 1e3, 1e5, 1e6])
    hi = np.array([0.0, 0.0, 12.0, 1e3, 1e5, 1e6, 5e7])
    img = np.exp(np.log(np.maximum(lo[kind], 1e-3)) + r.uniform(size=(S, F)) *
                 (np.log(np.maximum(hi[kind], 1e-3)) - np.log(np.maximum(lo[kind], 1e-3))))
    img[kind == 0] = 0.0
    img[kind == 1] = -r.uniform(0, 5, size=int((kind == 1).sum()))
    if draw(st.booleans()):
        img.flat[:: max(1, img.size // 3)] = img.flat[0]           # repeated means (poidev's cached set-up)
    img = img.astype(np.float32)
    x0, x1 = sorted(draw(st.lists(st.integers(-2, F + 1), min_size=2, max_size=2)))
    y0, y1 = sorted(draw(st.lists(st.integers(-2, S + 1), min_size=2, max_size=2)))
    kw = dict(seed=-draw(st.integers(1, 2 ** 31 - 2)),
              calibration=draw(st.sampled_from([0.0, 0.03, 0.2])),
              flicker=draw(st.sampled_from([0.0, 0.05])),
              readout=draw(st.sampled_from([0.0, 2.0])),
              psf=draw(st.sampled_from([None, "gauss", "fiber"])),
              psf_fwhm=draw(st.sampled_from([40e-6, 150e-6, 400e-6])),
              psf_radius=draw(st.sampled_from([0, 0, 2])),
              psf_edges=draw(st.sampled_from(["c", "clip"])),
              bits=draw(st.sampled_from([16, 32])))
    return img, (x0, x1, y0, y1), kw, draw(st.sampled_from([1, 2, 3]))


@needs_c
@settings(max_examples=_FUZZ or 40, deadline=None, database=None, derandomize=not _FUZZ)
@given(_noise_inputs())
def test_random_noise_inputs_match_numba(case):
    """nonBragg's noise image (with its ROI, 1-3 threads) and noisify's whole pipeline: the C
    kernel's images, statistics and generator state are the numba twins' on random input."""
    from nanobragg_torch.noisify_program import NoisifyParams, noisify_c
    img, roi, kw, nthreads = case
    S, F = img.shape
    _assert_same_noise(_noise_c_and_numba([img], roi, kw["seed"], nthreads))
    p = NoisifyParams(xpixels=F, ypixels=S, pixel_size=0.1e-3, **kw)
    c = noisify_c(img, p, impl="c")
    n = noisify_c(img, p, impl="numba")
    assert np.array_equal(c.noise_adu, n.noise_adu) and np.array_equal(c.int_adu, n.int_adu)
    strip = lambda r: [x for x in r if not x.startswith("adding back")]      # noqa: E731
    assert strip(c.report) == strip(n.report)



@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="no idle scheduling policy on this OS")
def test_background_threads_run_at_idle_priority_and_reraise():
    # the threads that make the final images while the noise is drawn run at the idle policy,
    # so that the draw threads never wait for a core one of them holds; the caller's is unchanged
    from nanobragg_torch._thread import Background
    from nanobragg_torch.cli.companion import Writer
    assert Background(lambda: os.sched_getscheduler(0), idle=True).join() == os.SCHED_IDLE
    assert Writer(lambda: os.sched_getscheduler(0)).join() == os.SCHED_IDLE
    assert Background(lambda: os.sched_getscheduler(0)).join() == os.SCHED_OTHER
    assert os.sched_getscheduler(0) == os.SCHED_OTHER

    def full():
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        Writer(full).join()
