"""The ``noisify`` program: a float image in photons/pixel -> SMV/PGM images with detector effects.

Drop-in for the reference ``noisify`` (bl831/nanoBragg ``noisify.c``): the same
flags (matched as the C matches them), units, defaults, default output names
(``intimage.img``, ``image.pgm``, ``noiseimage.img``), printed statistics and
random numbers (``-seed``, ``-calib_seed``).  Differences: bad input is a
one-line error with exit status 2 and nothing written (the C prints its usage
or reads garbage); the float image must hold exactly the detector's pixels.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from ..cutil import c_atof, c_atoi
from .companion import Writer, apply_rules, check_argv, run_main, usage_lines, write_all
from .flags import FlagError, Rule, _has, _has_len

mm = 1e-3


@dataclass
class NoisifyFlags:
    """noisify's variables after parsing (SI: m; fractions; ADU)."""
    floatfilename: Optional[str] = None
    headerfilename: Optional[str] = None
    intfilename: str = "intimage.img"
    pgmfilename: str = "image.pgm"
    noisefilename: str = "noiseimage.img"
    distance: float = 100.0e-3
    detsize_x: float = 102.4e-3
    detsize_y: float = 102.4e-3
    pixel: float = 0.1e-3
    xpixels: int = 0
    ypixels: int = 0
    Xbeam: float = -1e99
    Ybeam: float = -1e99
    lambda_: float = 1.0
    psf: Optional[str] = None
    psf_word: Optional[str] = None
    psf_fwhm: float = 4.600000102072954e-05     # the C's float psf_fwhm = 46e-6
    psf_radius: int = 0
    fluence: float = 125932015286227086360700780544.0
    bits: int = 16
    noise: bool = True
    write_pgm: bool = True
    readout: float = 0.0
    flicker: float = 0.0
    calibration: float = 0.03
    scale: float = 1.0
    seed: Optional[int] = None
    calib_seed: int = 123456789
    badpix_seed: int = -1234
    hotpix_seed: int = -5678
    adc: float = 40.0
    gain: float = 1.0
    phi0: float = 0.0
    osc: float = 1.0
    psf_edges: str = "c"
    given: List[str] = field(default_factory=list)


def _set(attr, scale=1.0):
    return lambda f, v: setattr(f, attr, c_atof(v[0]) * scale)


def _seti(attr):
    return lambda f, v: setattr(f, attr, c_atoi(v[0]))


def _setf(attr, val):
    return lambda f, v: setattr(f, attr, val)


def _file(attr):
    return lambda f, v: setattr(f, attr, v[0])


def _both(a, b, scale):
    def act(f, v):
        x = c_atof(v[0]) * scale
        setattr(f, a, x)
        setattr(f, b, x)
    return act


def _dims(f, v):
    f.xpixels = f.ypixels = c_atoi(v[0])


def _psf(f, v):
    f.psf_word = v[0]
    f.psf = None
    if "gauss" in v[0]:
        f.psf = "gauss"
    if "fiber" in v[0]:
        f.psf = "fiber"


def _radius(f, v):
    # the C stores atof() in an int
    x = c_atof(v[0])
    f.psf_radius = int(x) if math.isfinite(x) and abs(x) < 2 ** 31 else 0


def _float32(x: float) -> float:
    """x rounded to a C float (the C keeps -psf_fwhm in a float variable)."""
    return float(np.float32(x)) if math.isfinite(x) and abs(x) < 3.4e38 else x


def _fwhm(f, v):
    f.psf_fwhm = _float32(c_atof(v[0]) / 1e6)


def _neg_seed(attr):
    return lambda f, v: setattr(f, attr, -c_atoi(v[0]))


def _edges(f, v):
    f.psf_edges = v[0]


#: noisify's parser, in the C's order (each rule: the C's strstr test, value count, spellings, kinds)
RULES: List[Rule] = [
    Rule(_has("-lambda"), 1, _set("lambda_"), ("-lambda",), "f", "wavelength (A), for the header"),
    Rule(_has("-Xbeam"), 1, _set("Xbeam", mm), ("-Xbeam",), "f", "beam centre X (mm), for the header"),
    Rule(_has("-Ybeam"), 1, _set("Ybeam", mm), ("-Ybeam",), "f", "beam centre Y (mm), for the header"),
    Rule(_has("-distance"), 1, _set("distance", mm), ("-distance",), "f", "detector distance (mm), for the header"),
    Rule(_has_len("-detsize", 8), 1, _both("detsize_x", "detsize_y", mm), ("-detsize",), "f", "detector size (mm)"),
    Rule(_has("-detsize_x"), 1, _set("detsize_x", mm), ("-detsize_x",), "f", "detector size along fast (mm)"),
    Rule(_has("-detsize_y"), 1, _set("detsize_y", mm), ("-detsize_y",), "f", "detector size along slow (mm)"),
    Rule(_has_len("-detpixels", 10), 1, _dims, ("-detpixels",), "i", "pixels along both axes"),
    Rule(_has("-detpixels_x"), 1, _seti("xpixels"), ("-detpixels_x",), "i", "pixels along fast"),
    Rule(_has("-detpixels_y"), 1, _seti("ypixels"), ("-detpixels_y",), "i", "pixels along slow"),
    Rule(_has("-pixel"), 1, _set("pixel", mm), ("-pixel",), "f", "pixel size (mm)"),
    Rule(_has_len("-psf", 4), 1, _psf, ("-psf",), "S", "point-spread function: gauss | fiber"),
    Rule(_has("-psf_rad"), 1, _radius, ("-psf_radius",), "i", "PSF rendering radius (pixels, 0 = automatic)"),
    Rule(_has("-psf_si", "-psf_fw", "-psf_wi"), 1, _fwhm, ("-psf_fwhm", "-psf_size", "-psf_width"),
         "f", "PSF full width at half maximum (um, default 46)"),
    Rule(_has("-fluence"), 1, _set("fluence"), ("-fluence",), "f", "fluence (photons/m^2) scaling the input"),
    Rule(_has("-floatfile", "-floatimage", "-bin"), 1, _file("floatfilename"), ("-floatfile", "-floatimage", "-bin"),
         "s", "input: 4-byte floats in photons/pixel (what nanoBragg -floatfile writes)"),
    Rule(_has("-header"), 1, _file("headerfilename"), ("-header",), "s", "copy the header (and size) of this SMV file"),
    Rule(_has("-pgmfile", "-pgmimage"), 1, _file("pgmfilename"), ("-pgmfile", "-pgmimage"), "s", "PGM output (default image.pgm)"),
    Rule(_has("-intfile", "-intimage"), 1, _file("intfilename"), ("-intfile", "-intimage"), "s",
         "noise-free SMV output (default intimage.img)"),
    Rule(_has("-bits"), 1, _seti("bits"), ("-bits",), "i", "16 or 32-bit integer images"),
    Rule(_has("-noisefile", "-noiseimage"), 1, _file("noisefilename"), ("-noisefile", "-noiseimage"), "s",
         "noisy SMV output (default noiseimage.img)"),
    Rule(_has("-nonoise"), 0, _setf("noise", False), ("-nonoise",), "", "no noise image (and no noise)"),
    Rule(_has("-nopgm"), 0, _setf("write_pgm", False), ("-nopgm",), "", "no PGM image"),
    Rule(_has("-readout", "-readnoi"), 1, _set("readout"), ("-readout_noise", "-readout", "-readnoise"), "f",
         "read-out noise (ADU rms)"),
    Rule(_has("-flicker"), 1, _set("flicker"), ("-flicker",), "f", "source flicker (fraction rms; printed in %)"),
    Rule(_has("-calibration"), 1, _set("calibration"), ("-calibration",), "f",
         "static per-pixel calibration error (fraction rms, default 0.03)"),
    Rule(_has("-scale"), 1, _set("scale"), ("-scale",), "f", "multiplies the input image"),
    Rule(_has("-seed"), 1, _neg_seed("seed"), ("-seed",), "i", "seed of the noise (default: the clock)"),
    Rule(_has("-calib_seed"), 1, _neg_seed("calib_seed"), ("-calib_seed",), "i", "seed of the calibration error (123456789)"),
    Rule(_has("-badpix_seed"), 1, _neg_seed("badpix_seed"), ("-badpix_seed",), "i", "read and ignored, as the C"),
    Rule(_has("-hotpix_seed"), 1, _neg_seed("hotpix_seed"), ("-hotpix_seed",), "i", "read and ignored, as the C"),
    Rule(_has("-adc"), 1, _set("adc"), ("-adc",), "f", "ADC offset (ADU, default 40)"),
    Rule(_has("-gain"), 1, _set("gain"), ("-gain",), "f", "quantum gain (ADU/photon, default 1)"),
    Rule(_has("-phi"), 1, _set("phi0"), ("-phi",), "f", "spindle start (deg), for the header"),
    Rule(_has("-osc"), 1, _set("osc"), ("-osc",), "f", "oscillation (deg), for the header"),
]
EXTRA_RULES: List[Rule] = [
    Rule(lambda a: a == "-psf_edges", 1, _edges, ("-psf_edges",), "S",
         "c (default: the C's edge test, photons one column past the right edge land in column 0 "
         "of the next row) | clip (photons off the detector are dropped)"),
]


def usage_text() -> str:
    lines = ["usage: noisify -floatfile floatimage.bin [options]",
             "Adds detector effects to a float image in photons/pixel (nanoBragg -floatfile).", "options:"]
    lines += usage_lines(RULES + EXTRA_RULES)
    return "\n".join(lines)


def parse(argv: List[str]) -> NoisifyFlags:
    def positional(a):
        return "floatimage.bin" in a
    check_argv(RULES + EXTRA_RULES, argv, positional)
    f = NoisifyFlags(given=list(argv))
    extra = {n for r in EXTRA_RULES for n in r.names}
    for i, a in enumerate(argv):
        if "floatimage.bin" in a and not a.startswith("-"):
            f.floatfilename = a
    apply_rules(RULES, [a if a not in extra else "" for a in argv], f)
    apply_rules(EXTRA_RULES, argv, f)
    # the positional rule also applies to arguments that contain floatimage.bin and start with '-'
    return f


def _validate(f: NoisifyFlags) -> None:
    if f.psf_word is not None and f.psf is None:
        raise FlagError(f"-psf: unknown PSF type {f.psf_word!r} (expected gauss or fiber)")
    if f.bits not in (16, 32):
        raise FlagError(f"-bits: expected 16 or 32, got {f.bits}")
    if f.psf_edges not in ("c", "clip"):
        raise FlagError(f"-psf_edges: expected c or clip, got {f.psf_edges!r}")
    for name, val in (("-pixel", f.pixel), ("-psf_fwhm", f.psf_fwhm if f.psf else 1.0)):
        if not (val > 0 and math.isfinite(val)):
            raise FlagError(f"{name}: value must be positive, got {val * (1e3 if name == '-pixel' else 1e6):g}")
    if f.psf_radius < 0:
        raise FlagError(f"-psf_radius: value must be zero (automatic) or positive, got {f.psf_radius}")
    for name, val in (("-readout_noise", f.readout), ("-flicker", f.flicker), ("-calibration", f.calibration)):
        if val < 0 or not math.isfinite(val):
            raise FlagError(f"{name}: value must be zero or positive, got {val:g}")
    if f.xpixels < 0 or f.ypixels < 0:
        raise FlagError("-detpixels: pixel counts must be positive")


def _read_header(path: str):
    from ..io.smv import header_value, _read_header_bytes
    try:
        with open(path, "rb") as fh:
            text, size = _read_header_bytes(fh, path)
            fh.seek(0)
            raw = fh.read(size)
    except OSError as e:
        raise FlagError(f"-header {path}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise FlagError(f"-header {e}") from None
    w, h = header_value(text, "SIZE1"), header_value(text, "SIZE2")
    if not (w >= 1) or not (h >= 1):
        raise FlagError(f"-header {path}: no SIZE1/SIZE2 in the SMV header")
    return text, raw, int(w), int(h)


def _body(argv: List[str]) -> int:
    out = sys.stdout
    if any(a in ("-h", "--help", "-help") for a in argv):
        print(usage_text(), file=out)
        return 0
    f = parse(argv)
    _validate(f)
    say = lambda s="": print(s, file=out)
    if f.floatfilename is None:
        print(usage_text(), file=out)
        raise FlagError("no input image: give -floatfile FILE (4-byte floats in photons/pixel)")
    path = f.floatfilename
    try:
        nbytes = os.path.getsize(path)
    except OSError as e:
        raise FlagError(f"-floatfile {path}: cannot read ({e.strerror})") from None
    if nbytes % 4:
        raise FlagError(f"-floatfile {path}: {nbytes} bytes is not a whole number of 4-byte floats")
    pixels = nbytes // 4
    seed = f.seed if f.seed is not None else -int(time.time())
    xpixels, ypixels = f.xpixels, f.ypixels
    pixel, distance, lam = f.pixel, f.distance, f.lambda_
    detsize_x, detsize_y, Xbeam, Ybeam = f.detsize_x, f.detsize_y, f.Xbeam, f.Ybeam
    say("noisify - add noise to pixels - James Holton 3-19-16")
    header_raw = None
    if f.headerfilename is not None:
        from ..io.smv import header_value
        say(f"taking header from {f.headerfilename}")
        text, header_raw, xpixels, ypixels = _read_header(f.headerfilename)
        v = header_value(text, "PIXEL_SIZE")
        if not math.isnan(v):
            pixel = v / 1000.0
        detsize_x, detsize_y = pixel * xpixels, pixel * ypixels
        v = header_value(text, "DISTANCE")
        if not math.isnan(v):
            distance = v / 1000.0
        v = header_value(text, "WAVELENGTH")
        if not math.isnan(v):
            lam = v / 1e10
        v = header_value(text, "BEAM_CENTER_X")
        if not math.isnan(v):
            Xbeam = v / 1000.0
        v = header_value(text, "BEAM_CENTER_Y")
        if not math.isnan(v):
            Ybeam = detsize_y - v / 1000.0
        if not pixel > 0:
            raise FlagError(f"-header {f.headerfilename}: PIXEL_SIZE must be positive")
    if not xpixels and not ypixels:
        say("WARNING: guessing xy pixel dimensions.")
        xpixels = int(math.sqrt(pixels))
        ypixels = pixels // xpixels if xpixels else 0
        while xpixels > 0 and pixels != xpixels * ypixels:
            xpixels -= 1
            ypixels = pixels // xpixels if xpixels else 0
        if pixels != xpixels * ypixels:
            xpixels, ypixels = pixels, 1
    if xpixels and not ypixels:
        ypixels = pixels // xpixels
    if not xpixels and ypixels:
        xpixels = pixels // ypixels
    detsize_x, detsize_y = pixel * xpixels, pixel * ypixels
    if xpixels * ypixels != pixels or pixels == 0:
        raise FlagError(f"-floatfile {path}: {pixels} floats do not fill a {xpixels}x{ypixels} detector "
                        f"({xpixels * ypixels} pixels)")
    if Xbeam <= -1e99:
        Xbeam = detsize_x / 2.0
    if Ybeam <= -1e99:
        Ybeam = detsize_y / 2.0
    calibration, readout, flicker = f.calibration, f.readout, f.flicker
    if not f.noise:
        calibration = readout = flicker = 0.0
    if f.psf and f.psf_radius > max(xpixels, ypixels):
        raise FlagError(f"-psf_radius {f.psf_radius}: wider than the {xpixels}x{ypixels} detector")
    from ..io.smv import c_format_g as g
    say(f"importing {pixels} pixel intensites: {path}")
    say("  distance=%s detsize=%sx%s  pixel=%s meters (%dx%d pixels)"
        % (g(distance), g(detsize_x), g(detsize_y), g(pixel), xpixels, ypixels))
    say("  Xbeam=%s Ybeam=%s" % (g(Xbeam), g(Ybeam)))
    if f.psf:
        line = "  %s PSF fwhm = %s um " % ("Gaussian" if f.psf == "gauss" else "fiber", g(f.psf_fwhm * 1e6))
        # the C ends the line only after "automatic rendering radius" (radius 0) or the radius
        if f.psf_radius == 0:
            say(line + "  with automatic rendering radius")
            line = ""
        say(line + "  with rendering radius: %d" % f.psf_radius)
    say("  seed: %d" % seed)
    say("  calibration noise seed: %d" % f.calib_seed)
    say("  calibration_noise = %s %%" % g(calibration * 100))
    say("  input file scale = %s" % g(f.scale))
    say("  readout_noise = %s ADU" % g(readout))
    say("  flicker_noise = %s %%" % g(flicker * 100))
    say("  quantum_gain = %s ADU/photon" % g(f.gain))
    say("  adc_offset = %s ADU" % g(f.adc))
    say()
    try:
        image = np.fromfile(path, dtype=np.float32)
    except OSError as e:
        raise FlagError(f"-floatfile {path}: cannot read ({e.strerror})") from None
    if not np.all(np.isfinite(image)):
        raise FlagError(f"-floatfile {path}: {int((~np.isfinite(image)).sum())} pixels are NaN or infinite")
    from ..noisify_program import NoisifyParams, noisify_c
    p = NoisifyParams(xpixels=xpixels, ypixels=ypixels, pixel_size=pixel, psf=f.psf, psf_fwhm=f.psf_fwhm,
                      psf_radius=f.psf_radius, scale=f.scale, fluence=f.fluence, gain=f.gain, adc=f.adc,
                      readout=readout, flicker=flicker, calibration=calibration, seed=seed,
                      calib_seed=f.calib_seed, noise=f.noise, bits=f.bits, psf_edges=f.psf_edges)
    from ..io.pgm import pgm_header
    from ..io.smv import build_smv_header, native_byte_order

    def header():
        if header_raw is not None:
            return header_raw
        items = [("HEADER_BYTES", "512"), ("DIM", "2"), ("BYTE_ORDER", native_byte_order()),
                 ("TYPE", "unsigned_short" if f.bits == 16 else "long_integer"),
                 ("SIZE1", "%d" % xpixels), ("SIZE2", "%d" % ypixels), ("PIXEL_SIZE", g(pixel * 1000.0)),
                 ("DISTANCE", g(distance * 1000.0)), ("WAVELENGTH", g(lam)), ("BEAM_CENTER_X", g(Xbeam * 1000.0)),
                 ("BEAM_CENTER_Y", g((detsize_y - Ybeam) * 1000)), ("PHI", g(f.phi0)), ("OSC_START", g(f.phi0)),
                 ("OSC_RANGE", g(f.osc)), ("DETECTOR_SN", "000"), ("BEAMLINE", "fake")]
        return build_smv_header(items)

    hdr = header()
    writer = []

    def on_ideal(int_adu, pgm):
        # the noise-free images are final: write them on a thread while the noise is drawn (in C,
        # without the GIL), as the C writes them before it draws the noise
        writes = [(f.intfilename, [hdr, int_adu])]
        if f.write_pgm:
            writes.append((f.pgmfilename, [pgm_header(xpixels, ypixels, 1.0), pgm]))
        writer.append(Writer(writes))

    try:
        res = noisify_c(image.reshape(ypixels, xpixels), p, on_ideal=on_ideal)
    finally:
        for w in writer:
            w.join()
    for line in res.report[:res.ideal_lines]:
        say(line)
    say(f"writing {f.intfilename} as {pixels} {2 if f.bits == 16 else 4}-byte integers")
    if f.write_pgm:
        say(f"writing {f.pgmfilename} as 1-byte integers")
    for line in res.report[res.ideal_lines:]:
        say(line)
    if not f.noise:
        return 0
    say(f"writing {f.noisefilename} as {2 if f.bits == 16 else 4}-byte integers")
    write_all([(f.noisefilename, [hdr, res.noise_adu])])
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return run_main("noisify", _body, argv)


def console_main():
    sys.exit(main())


if __name__ == "__main__":
    console_main()
