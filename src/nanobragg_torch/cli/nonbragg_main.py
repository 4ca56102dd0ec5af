"""The ``nonBragg`` program: scattering of an amorphous sample from a table of F against sin(theta)/lambda.

Drop-in for the reference ``nonBragg`` (bl831/nanoBragg ``nonBragg.c``).  Its
beam and detector flags are ``nanoBragg``'s rules (:data:`nanobragg_torch.cli.flags.RULES`,
the same ``Rule`` objects acting on the same ``RawFlags``), its geometry is the
:class:`~nanobragg_torch.models.Detector` and :class:`~nanobragg_torch.models.Beam`
models with nonBragg's defaults (one convention: beam along +x, fast = +z,
slow = -y; near point (size - pixel)/2, (size + pixel)/2; pixel counts
``ceil(size/pixel)``), and the physics is :mod:`nanobragg_torch.models.amorphous`.
Outputs as the C: ``floatimage.bin``, ``intimage.img``, ``image.pgm`` and
``noiseimage.img`` (the C generator, ``-seed``).
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from ..cutil import c_atof
from . import flags as F
from .companion import apply_rules, check_argv, run_main, usage_lines
from .flags import FlagError, RawFlags, Rule, _has, _has_len

mm = 1e-3


@dataclass
class NonBraggFlags(RawFlags):
    """nanoBragg's parsed variables plus nonBragg's own."""
    molecules: float = 0.0
    quantum_gain: float = 1.0
    source_distance: float = 10.0
    fmap: bool = False
    ignore_values: List[float] = field(default_factory=list)
    img: Optional["FitImage"] = None
    ignored: Optional[str] = None


def _pick(*names: str) -> List[Rule]:
    out = []
    for name in names:
        hit = [r for r in F.RULES if name in r.names]
        if not hit:
            raise KeyError(name)
        out.append(hit[0])
    return out


def _set(attr, scale=1.0):
    return lambda f, v: setattr(f, attr, c_atof(v[0]) * scale)


def _flag(attr, val):
    return lambda f, v: setattr(f, attr, val)


def _ignored(name):
    def act(f, v):
        f.ignored = name
    return act


def _both_size(f, v):
    f.detsize_f = f.detsize_s = c_atof(v[0]) * mm


#: nonBragg's parser: nanoBragg's rules where the C programs agree, its own where they differ
RULES: List[Rule] = (
    _pick("-samplesize", "-sample_thick")
    + [Rule(_has("-thick"), 1, _set("sample_x", mm), ("-thickness", "-thick"), "f", "sample thickness along the beam (mm)")]
    + _pick("-sample_width", "-sample_height", "-density")
    + [Rule(_has("-molecules", "-sample_molecules"), 1, _set("molecules"), ("-molecules", "-sample_molecules"), "f",
            "number of molecules in the beam (overrides -density)"),
       Rule(lambda a: a == "-MW" or "-molecular" in a, 1, _set("molecular_weight"), ("-MW", "-molecular_weight"), "f",
            "molecular weight (g/mol, default 18)")]
    + _pick("-Xbeam", "-Ybeam", "-Xclose", "-Yclose", "-ORGX", "-ORGY", "-pivot", "-fdet_vector", "-sdet_vector",
            "-odet_vector", "-beam_vector", "-polar_vector", "-spindle_axis", "-twotheta_axis", "-pix0_vector",
            "-distance", "-close_distance")
    + [Rule(_has("-source_distance"), 1, _set("source_distance", mm), ("-source_distance",), "f",
            "distance of the generated sources (mm)")]
    + _pick("-twotheta", "-detector_rotx", "-detector_roty", "-detector_rotz", "-detsize")
    + [Rule(_has("-detsize_x"), 1, _set("detsize_f", mm), ("-detsize_x",), "f", "detector size along fast (mm)"),
       Rule(_has("-detsize_y"), 1, _set("detsize_s", mm), ("-detsize_y",), "f", "detector size along slow (mm)")]
    + _pick("-detpixels", "-detpixels_f", "-detpixels_s", "-curved_det", "-pixel", "-point_pixel")
    + [Rule(_has("-Fmap"), 0, _flag("fmap", True), ("-Fmap",), "", "write F instead of photons (masks)")]
    + _pick("-polar", "-nopolar", "-oversample", "-roi", "-lambda", "-energy", "-fluence", "-flux", "-exposure",
            "-beamsize", "-dispersion", "-dispsteps", "-divergence", "-hdivrange", "-vdivrange", "-hdivstep",
            "-hdivsteps", "-vdivstep", "-vdivsteps", "-divsteps", "-round_div", "-square_div", "-adc")
    + [Rule(_has("-gain"), 1, _set("quantum_gain"), ("-gain",), "f", "ADU per photon (only for -img)")]
    + _pick("-phi", "-osc", "-phistep", "-phisteps")
    + [Rule(_has("-img"), 1, lambda f, v: setattr(f, "imginfilename", v[0]), ("-img",), "s",
            "image (SMV; .cbf, .h5/.nxs) to derive F against stol from; its header sets the detector"),
       Rule(_has("-ignore"), 1, lambda f, v: f.ignore_values.append(c_atof(v[0])), ("-ignore",), "f",
            "with -img: pixels of this value are left out (repeatable)"),
       Rule(lambda a: "-stolout" in a and len(a) > 7, 1, lambda f, v: setattr(f, "stoloutfilename", v[0]),
            ("-stolout",), "s", "with -img: the table written (default output.stol)")]
    + _pick("-stol", "-4stol", "-Q", "-sourcefile", "-floatfile", "-intfile")
    + [Rule(_has("-pgmfile", "-pgmimage"), 1, lambda f, v: setattr(f, "pgmfilename", v[0]), ("-pgmfile", "-pgmimage"),
            "s", "PGM output (default image.pgm)")]
    + _pick("-noisefile", "-nonoise", "-nopgm")
    + [Rule(lambda a: a == "-c_legacy", 0, _flag("c_legacy", True), ("-c_legacy",), "",
            "with -img: the C's F scale (sqrt(sources x oversample^2) too large when that is not 1)"),
       Rule(_has("-noreject"), 0, lambda f, v: None, ("-noreject",), "",
            "with -img: no outlier rejection (the C's only setting: accepted, no effect)")]
    + _pick("-scale")
    + [Rule(_has("-pgmscale"), 1, _set("pgm_scale"), ("-pgmscale",), "f", "PGM scale (default 250/(5 rmsd))")]
    + _pick("-coherent", "-printout", "-noprogress", "-progress", "-printout_pixel", "-seed")
    # nanoBragg's convention flags mean nothing to nonBragg (the C ignores them); accepted with a note
    + [Rule(_has(n), 0, _ignored(n), (n,), "", "ignored (nonBragg has one detector convention)")
       for n in ("-mosflm", "-xds", "-adxv", "-denzo", "-dials")]
)


#: nonBragg's meaning of the shared rules (their nanoBragg help texts speak of crystals)
HELP = {
    "-samplesize": "sample size along all three axes (mm, default 0.1)",
    "-sample_thick": "sample thickness along the beam (mm)",
    "-sample_width": "sample width (mm; clipped to -beamsize)",
    "-sample_height": "sample height (mm; clipped to -beamsize)",
    "-density": "sample density (g/cm^3, default 1)",
    "-stol": "F vs sin(theta)/lambda table (1/A); # and blank lines skipped",
    "-4stol": "the table's first column is 4 sin(theta)/lambda",
    "-Q": "the table's first column is Q = 4 pi sin(theta)/lambda",
    "-sourcefile": "sources: X Y Z (m) I lambda (m) per line",
    "-floatfile": "float image output (default floatimage.bin)",
    "-intfile": "SMV output scaled to 55000 at max (default intimage.img)",
    "-noisefile": "SMV output with Poisson noise (default noiseimage.img)",
    "-scale": "scale of the SMV image (default 55000/max)",
    "-seed": "noise seed (default: the clock)",
    "-adc": "ADC offset of the SMV images (default 40)",
    "-oversample": "sub-pixels per pixel side",
    "-roi": "render only xmin xmax ymin ymax (pixels)",
    "-polar": "Kahn polarization factor (default 0: unpolarized)",
}


def usage_text() -> str:
    lines = ["usage: nonBragg -stol water.stol [options]",
             "Renders the scattering of an amorphous sample (lengths in mm, angles in deg, divergence in mrad).",
             "options:"]
    from dataclasses import replace
    rules = [replace(r, help=HELP[r.names[0]]) if r.names and r.names[0] in HELP else r for r in RULES]
    return "\n".join(lines + usage_lines(rules))


@dataclass
class FitImage:
    """An -img image: its pixels (float32 (S, F)), the pixels its format marks invalid, the format."""
    path: str
    pixels: np.ndarray
    invalid: Optional[np.ndarray]
    fmt: str


def read_fit_image(path: str, f: NonBraggFlags) -> FitImage:
    """Read ``-img FILE`` and apply its header to ``f`` as the C does (before the other flags).

    SMV, as the C: SIZE1/SIZE2 (the detector's pixel counts), PIXEL_SIZE,
    DISTANCE and CLOSE_DISTANCE (the C's keyword search: the last occurrence of
    each name, so DISTANCE finds CLOSE_DISTANCE when that comes later),
    WAVELENGTH, BEAM_CENTER_X, BEAM_CENTER_Y (from the far edge: Ybeam =
    size - value), ORGX, ORGY, PHI, OSC_RANGE.  CBF and NeXus (by extension):
    the geometry their headers state (pixel, distance, wavelength, beam centre,
    phi), and NeXus's pixel mask marks invalid pixels.
    """
    from ..io.formats import format_from_extension
    fmt = format_from_extension(path, "smv")
    if fmt not in ("smv", "cbf", "h5", "nxs"):
        raise FlagError(f"-img {path}: the image must be SMV, CBF or NeXus (.img, .cbf, .h5/.nxs)")
    rtd = F.RTD
    invalid = None
    try:
        if fmt == "smv":
            from ..io.smv import header_value, read_smv, read_smv_header
            text = read_smv_header(path)
            _, data = read_smv(path)
        else:
            from ..io.formats import read_image
            data, info = read_image(path, fmt)
            invalid = info.get("mask")
    except OSError as e:
        raise FlagError(f"-img {path}: cannot read the image ({e.strerror or e})") from None
    except ValueError as e:
        raise FlagError(f"-img {e}") from None
    except Exception as e:   # a missing reader package (fabio, h5py)
        raise FlagError(f"-img {path}: {' '.join(str(e).split())}") from None
    data = np.asarray(data)
    if data.ndim != 2 or data.size == 0:
        raise FlagError(f"-img {path}: not a 2-D image")
    S, Fp = data.shape
    f.fpixels, f.spixels = Fp, S
    if fmt == "smv":
        def val(key):
            return header_value(text, key)
        v = val("PIXEL_SIZE")
        if not math.isnan(v):
            f.pixel_size = v / 1000.0
        f.detsize_f, f.detsize_s = f.pixel_size * Fp, f.pixel_size * S
        for key, attr, div in (("DISTANCE", "distance", 1000.0), ("CLOSE_DISTANCE", "close_distance", 1000.0),
                               ("WAVELENGTH", "lambda0", 1e10), ("BEAM_CENTER_X", "Xbeam", 1000.0)):
            v = val(key)
            if not math.isnan(v):
                setattr(f, attr, v / div)
        v = val("BEAM_CENTER_Y")
        if not math.isnan(v):
            f.Ybeam = f.detsize_s - v / 1000.0
        for key in ("ORGX", "ORGY"):
            v = val(key)
            if not math.isnan(v):
                setattr(f, key, v)
        v = val("PHI")
        if not math.isnan(v):
            f.phi0 = v / rtd
        v = val("OSC_RANGE")
        if not math.isnan(v):
            f.osc = v / rtd
    else:
        if "pixel_size_m" in info:
            f.pixel_size = info["pixel_size_m"]
        f.detsize_f, f.detsize_s = f.pixel_size * Fp, f.pixel_size * S
        for key, attr in (("distance_m", "distance"), ("wavelength_m", "lambda0"),
                          ("beam_center_fast_m", "Xbeam"), ("beam_center_slow_m", "Ybeam")):
            if key in info:
                setattr(f, attr, float(info[key]))
        if "phi_start_deg" in info:
            f.phi0 = info["phi_start_deg"] / rtd
        if "osc_range_deg" in info:
            f.osc = info["osc_range_deg"] / rtd
    pixels = data.astype(np.float32)
    return FitImage(path=path, pixels=pixels, invalid=None if invalid is None else np.asarray(invalid, bool),
                    fmt=fmt)


def parse(argv: List[str]) -> NonBraggFlags:
    check_argv(RULES, argv)
    f = NonBraggFlags()
    f.given = list(argv)
    f.sample_x = f.sample_y = f.sample_z = 1e-4
    f.twotheta_axis = [0.0, 1.0, 0.0]      # the C: {0,0,1,0}, element 0 is the length
    # the C's pre-pass: -img is found, and its header applied, before every other flag
    argc = len(argv)
    for i, arg in enumerate(argv):
        if arg.startswith("-") and "-img" in arg and argc > i + 1:
            f.imginfilename = argv[i + 1]
    if f.imginfilename is not None:
        f.img = read_fit_image(f.imginfilename, f)
    apply_rules(RULES, argv, f)
    return f


def fit_table(f: NonBraggFlags, m, say) -> bytes:
    """-img/-stolout: the C's table of F against stol from the image (printing its lines); the file's bytes."""
    from ..io.smv import c_cast_unsigned
    from ..models.amorphous import image_stol_profile
    img = f.img
    invalid = img.invalid
    if not np.all(np.isfinite(img.pixels)):        # a float NeXus image's NaN: no F from it
        bad = ~np.isfinite(img.pixels)
        invalid = bad if invalid is None else (invalid | bad)
    if f.ignore_values:
        ign = np.asarray(f.ignore_values, dtype=np.float64)
        if img.fmt == "smv":           # the C keeps them as unsigned shorts
            ign = c_cast_unsigned(ign, 16).astype(np.float64)
        hit = np.isin(img.pixels, ign.astype(np.float32))
        invalid = hit if invalid is None else (invalid | hit)
    prof = image_stol_profile(img.pixels, m["sample"], m["detector"], m["beam"], oversample=max(f.oversample, 1),
                              adc=f.adc_offset, gain=f.quantum_gain, invalid=invalid, roi=m["roi"],
                              source_weights=m["weights"], c_scale=f.c_legacy, backend="numba")
    out = []
    for k in range(len(prof["stol"])):
        stol = prof["stol"][k] * 1e10 / f.stol_file_mult
        n = int(prof["count"][k])
        if n > 100:
            out.append("%s %s %s   0 0  %d\n" % (_g(stol), _g(float(prof["mean"][k])), _g(float(prof["rmsd"][k])), n))
        else:
            say("WARNING: not enough pixels in bin= %d n=%d stol= %s median= 0 avg_arej= %s"
                % (k + 2, n, _g(stol), _g(float(prof["mean"][k]))))
    say("wrote %s as %d lines of text" % (f.stoloutfilename, len(out)))
    return "".join(out).encode("ascii")


def _steps(steps, rng, step):
    from .resolve import _steps_rule
    return _steps_rule(steps, rng, step, 1.0)


def build(f: NonBraggFlags, say):
    """Models and settings from the parsed flags, in the C's order of decisions."""
    import torch
    from ..config import BeamConfig, DetectorConfig
    from ..models import Beam, Detector
    from ..models.amorphous import AmorphousSample, StolTable, StolTableError
    from ..io.textcolumns import read_columns
    from ..io.hkl import InputFileError
    from .resolve import SetupError

    if f.img is None and (f.ignore_values or f.stoloutfilename != "output.stol"):
        print("nonBragg: note: -stolout and -ignore have no effect without -img", file=sys.stderr)
    if f.img is not None:
        d = os.path.dirname(os.path.abspath(f.stoloutfilename))
        if not os.path.isdir(d):
            raise FlagError(f"-stolout {f.stoloutfilename}: directory {d} does not exist")
        if os.path.isdir(f.stoloutfilename):
            raise FlagError(f"-stolout {f.stoloutfilename}: is a directory")
    if f.ignored:
        print(f"nonBragg: note: {f.ignored} has no effect (nonBragg has a single detector convention)",
              file=sys.stderr)
    if f.stolfilename is None:
        raise FlagError("no structure-factor table: give -stol FILE (columns: sin(theta)/lambda F)")
    px = f.pixel_size
    if not px > 0:
        raise FlagError("-pixel: pixel size must be positive")
    for name, v in (("-thickness", f.sample_x), ("-sample_width", f.sample_y), ("-sample_height", f.sample_z),
                    ("-density", f.density), ("-MW", f.molecular_weight)):
        if not (v > 0 and math.isfinite(v)):
            raise FlagError(f"{name}: value must be positive")
    if f.fpixels:
        f.detsize_f = px * f.fpixels
    if f.spixels:
        f.detsize_s = px * f.spixels
    fpixels = int(math.ceil(f.detsize_f / px))
    spixels = int(math.ceil(f.detsize_s / px))
    if f.img is not None:
        S_img, F_img = f.img.pixels.shape
        if (f.fpixels, f.spixels) == (F_img, S_img):
            # the image's own size (the C's ceil(pixel*N/pixel) can round up to N+1 and then
            # reads the image out of step)
            fpixels, spixels = F_img, S_img
        else:
            raise FlagError(f"-img {f.imginfilename}: the image is {F_img}x{S_img} pixels, the detector "
                            f"{fpixels}x{spixels} (-detpixels must match the image or be left out)")
    if fpixels <= 0 or spixels <= 0:
        raise FlagError(f"-detpixels/-detsize: the detector needs at least one pixel (got {fpixels}x{spixels})")
    Xclose = f.ORGX * px if not math.isnan(f.ORGX) else f.Xclose
    Yclose = f.ORGY * px if not math.isnan(f.ORGY) else f.Yclose
    if math.isnan(Xclose):
        Xclose = (f.detsize_f - px) / 2.0
    if math.isnan(Yclose):
        Yclose = (f.detsize_s + px) / 2.0
    Xbeam = Xclose if math.isnan(f.Xbeam) else f.Xbeam
    Ybeam = Yclose if math.isnan(f.Ybeam) else f.Ybeam
    roi = list(f.roi)
    roi = [0 if roi[0] < 0 else roi[0], fpixels if roi[1] < 0 else roi[1],
           0 if roi[2] < 0 else roi[2], spixels if roi[3] < 0 else roi[3]]
    fluence = f.fluence
    if f.flux != 0.0 and f.exposure > 0.0 and f.beamsize >= 0:
        if f.beamsize == 0:
            raise FlagError("-beamsize: must be positive with -flux")
        fluence = f.flux * f.exposure / f.beamsize / f.beamsize
    sy, sz = f.sample_y, f.sample_z
    if f.beamsize >= 0:
        if f.beamsize < sy:
            say("WARNING: clipping sample (%s m high) with beam (%s m)" % (_g(sy), _g(f.beamsize)))
        if f.beamsize < sz:
            say("WARNING: clipping sample (%s m wide) with beam (%s m)" % (_g(sz), _g(f.beamsize)))
    if not (f.lambda0 > 0 and math.isfinite(f.lambda0)):
        raise FlagError("-lambda/-energy: wavelength must be positive and finite")
    hsteps, hrange, hstep = _steps(f.hdivsteps, f.hdivrange, f.hdivstep)
    vsteps, vrange, vstep = _steps(f.vdivsteps, f.vdivrange, f.vdivstep)
    dsteps, disp, dstep = _steps(f.dispsteps, f.dispersion, -1.0)
    if hrange <= 0 or hstep <= 0 or hsteps <= 0:
        hsteps, hrange, hstep = 1, 0.0, 0.0
    if vrange <= 0 or vstep <= 0 or vsteps <= 0:
        vsteps, vrange, vstep = 1, 0.0, 0.0
    if disp <= 0 or dstep <= 0 or dsteps <= 0:
        dsteps, disp, dstep = 1, 0.0, 0.0
    if disp >= 2.0:
        raise FlagError("-dispersion: must be below 200%")
    # phi: only for the header
    phisteps, osc, phistep = f.phisteps, f.osc, f.phistep
    if phisteps < 0 and osc < 0.0:
        osc = 0.0 if phistep <= 0.0 else phistep
    elif phisteps >= 0 and osc < 0.0:
        osc = 1.0 / F.RTD if phistep <= 0.0 else phistep

    def unit(v):
        v = np.asarray(v, dtype=np.float64)
        n = float(np.sqrt((v * v).sum()))
        if n == 0:
            return None
        return v / n
    beam_v, fdet, sdet = unit(f.beam_vector), unit(f.fdet_vector), unit(f.sdet_vector)
    polar_v, tt_axis = unit(f.polar_vector), unit(f.twotheta_axis)
    for name, v in (("-beam_vector", beam_v), ("-fdet_vector", fdet), ("-sdet_vector", sdet),
                    ("-polar_vector", polar_v), ("-twotheta_axis", tt_axis)):
        if v is None:
            raise FlagError(f"{name}: the vector must not be zero")
    odet = np.cross(fdet, sdet)
    if np.linalg.norm(odet) < 1e-9:
        raise FlagError("-fdet_vector/-sdet_vector: the fast and slow axes must not be parallel")
    odet = odet / np.linalg.norm(odet)

    units = {1e10: "stol", 1e10 / 4: "4stol", 1e10 / math.pi / 4: "Q"}[f.stol_file_mult]
    flag = {"stol": "-stol", "4stol": "-4stol", "Q": "-Q"}[units]
    try:
        table = StolTable.read(f.stolfilename, units)
    except StolTableError as e:
        raise FlagError(f"{flag} {e}") from None
    say(f"reading {f.stolfilename}")

    bc = BeamConfig(wavelength=f.lambda0, beam_vector=tuple(beam_v), polar_vector=tuple(polar_v),
                    polarization=f.polarization, nopolar=f.nopolar, fluence=fluence,
                    hdivrange=hrange, hdivstep=hstep, hdivsteps=hsteps, vdivrange=vrange, vdivstep=vstep,
                    vdivsteps=vsteps, round_div=f.round_div, dispersion=disp, dispstep=dstep, dispsteps=dsteps,
                    source_distance=f.source_distance)
    weights = None
    if f.sourcefilename is not None:
        try:
            cols = read_columns(f.sourcefilename, 5)
        except InputFileError as e:
            raise FlagError(f"-sourcefile {e}") from None
        if len(cols) == 0:
            raise FlagError(f"-sourcefile {f.sourcefilename}: no sources in the file")
        if np.any(np.isinf(cols)) or np.any(cols[:, 4] <= 0):
            raise FlagError(f"-sourcefile {f.sourcefilename}: values must be finite, wavelengths positive")
        bc.source_xyz, bc.source_weight, bc.source_lambda = cols[:, :3], cols[:, 3], cols[:, 4]
        weights = np.where(np.isnan(cols[:, 3]), 1.0, cols[:, 3])
    dc = DetectorConfig(fpixels=fpixels, spixels=spixels, pixel_size=px, distance=f.distance,
                        close_distance=None if math.isnan(f.close_distance) else f.close_distance,
                        Fbeam=Xbeam, Sbeam=Ybeam, Fclose=Xclose, Sclose=Yclose, Xbeam=Xbeam, Ybeam=Ybeam,
                        Xclose=Xclose, Yclose=Yclose, convention="custom", pivot=f.pivot,
                        fdet_vector=tuple(fdet), sdet_vector=tuple(sdet), odet_vector=tuple(odet),
                        detector_rotx=f.detector_rotx, detector_roty=f.detector_roty,
                        detector_rotz=f.detector_rotz, twotheta=f.detector_twotheta,
                        twotheta_axis=tuple(tt_axis), curved=f.curved_detector, point_pixel=f.point_pixel,
                        oversample=max(f.oversample, 1), roi=tuple(roi), detsize_f=f.detsize_f,
                        detsize_s=f.detsize_s)
    sample = AmorphousSample(table, thickness=f.sample_x, width=f.sample_y, height=f.sample_z,
                             density=f.density / 1e6, molecular_weight=f.molecular_weight,
                             molecules=f.molecules or None, beamsize=f.beamsize if f.beamsize >= 0 else None)
    return dict(detector=Detector(dc), beam=Beam(bc), sample=sample, weights=weights, roi=roi, osc=osc,
                fpixels=fpixels, spixels=spixels, table=table)


def _g(x) -> str:
    from ..io.smv import c_format_g
    return c_format_g(x)


def _header(f, geo, fpixels, spixels, osc) -> bytes:
    from ..io.smv import build_smv_header
    g = _g
    px = f.pixel_size
    rtd = 180.0 * 0.318309886183790671537767526745028724
    Ybeam = float(geo.Sbeam)
    items = [("HEADER_BYTES", "512"), ("DIM", "2"), ("BYTE_ORDER", "little_endian"), ("TYPE", "unsigned_short"),
             ("SIZE1", "%d" % fpixels), ("SIZE2", "%d" % spixels), ("PIXEL_SIZE", g(px * 1000.0)),
             ("DISTANCE", g(float(geo.distance) * 1000.0)), ("WAVELENGTH", g(f.lambda0 * 1e10)),
             ("BEAM_CENTER_X", g(float(geo.Fbeam) * 1000.0)),
             ("BEAM_CENTER_Y", g((f.detsize_s - Ybeam) * 1000)),
             ("ORGX", g(float(geo.Fclose) / px)), ("ORGY", g(float(geo.Sclose) / px)),
             ("CLOSE_DISTANCE", g(float(geo.close_distance) * 1000.0)),
             ("PHI", g(f.phi0 * rtd)), ("OSC_START", g(f.phi0 * rtd)), ("OSC_RANGE", g(osc * rtd)),
             ("TWOTHETA", g(f.detector_twotheta * rtd)), ("DETECTOR_SN", "000"), ("BEAMLINE", "fake")]
    return build_smv_header(items)


def _body(argv: List[str]) -> int:
    out = sys.stdout
    if any(a in ("-h", "--help", "-help") for a in argv):
        print(usage_text(), file=out)
        return 0
    f = parse(argv)
    say = lambda s="": print(s, file=out)
    if f.img is not None:
        say(f"reading {f.imginfilename}")
    say("nonBragg amorphous material diffraction simulator - James Holton and Ken Frankel 3-19-16")
    if f.stolfilename is None:
        print(usage_text(), file=out)
    m = build(f, say)
    import torch
    from ..io.atomic import atomic_write_bytes
    from ..io.pgm import pgm_header
    from ..models.amorphous import amorphous_image
    seed = f.seed if f.seed is not None else -int(time.time())
    det, beam, sample = m["detector"], m["beam"], m["sample"]
    dtype = torch.float64
    geo = det.geometry(beam.beam_vector_unit(torch.float64), torch.float64)
    src = beam.sources(torch.float64)
    say("  created a total of %d sources:" % src.incident.shape[0])
    for n in range(src.incident.shape[0]):
        p = src.position[n]
        say("%s %s %s   %s %s" % (_g(p[0]), _g(p[1]), _g(p[2]), _g(1.0 if m["weights"] is None else m["weights"][n]),
                                  _g(src.wavelength[n])))
    say("  %d initialized F points (will cubic-spline interpolate between them)" % (len(m["table"]) + 4))
    say("  incident fluence: %s photons/m^2" % _g(float(beam.fluence)))
    x, y, z = sample.clipped_size()
    say("  sample is %s m thick x %s m high x %s m wide, %s g/cm^3 and %s g/mol (%s molecules)"
        % (_g(x), _g(y), _g(z), _g(float(sample.molecules()) / (x * y * z) / 6.02214179e23 * sample.molecular_weight / 1e6),
           _g(sample.molecular_weight), _g(float(sample.molecules()))))
    say("  distance=%s detsize=%sx%s  pixel=%s meters (%dx%d pixels)"
        % (_g(float(geo.distance)), _g(f.pixel_size * m["fpixels"]), _g(f.pixel_size * m["spixels"]),
           _g(f.pixel_size), m["fpixels"], m["spixels"]))
    say("  Xbeam=%s Ybeam=%s" % (_g(float(geo.Fbeam)), _g(float(geo.Sbeam))))
    say("  detector origin: %s %s %s" % tuple(_g(float(v)) for v in geo.pix0))
    w = None if m["weights"] is None else torch.as_tensor(m["weights"], dtype=dtype)
    roi = m["roi"]
    with torch.no_grad():
        img = amorphous_image(sample, det, beam, oversample=max(f.oversample, 1), source_weights=w, fmap=f.fmap,
                              roi=roi, dtype=dtype, backend="auto")
    fimg = img.to(torch.float32).numpy()
    S, Fp = fimg.shape
    from ..physics.amorphous_kernel import image_outputs
    max_I, avg, rms, rmsd, iscale, pscale, intimg, pgm = image_outputs(fimg, roi, f.intfile_scale,
                                                                       f.adc_offset, f.pgm_scale)
    table = fit_table(f, m, say) if f.img is not None else None
    say("writing %s as %d 4-byte floats" % (f.floatfilename, S * Fp))
    say("max_I = %s" % _g(max_I))
    say("mean= %s rms= %s rmsd= %s" % (_g(avg), _g(rms), _g(rmsd)))
    say("intfile_scale = %s" % _g(iscale))
    say("pgm_scale = %s" % _g(pscale))
    header = _header(f, geo, m["fpixels"], m["spixels"], m["osc"])
    noise = None
    if f.calculate_noise:
        from ..rng import CRandom, SeedStream
        noise, photons, overloads = CRandom().noise_image(fimg, SeedStream(seed),
                                                          roi=(roi[0], roi[1], roi[2], roi[3]), adc=f.adc_offset)
        say("%.0f photons on noise image (%d overloads)" % (photons, overloads))
    # all images are ready: write them (each atomically), the -stolout table first
    if table is not None:
        atomic_write_bytes(f.stoloutfilename, table)
    atomic_write_bytes(f.floatfilename, np.ascontiguousarray(fimg, dtype="=f4").tobytes())
    say("writing %s as 2-byte integers" % f.intfilename)
    atomic_write_bytes(f.intfilename, header + np.ascontiguousarray(intimg, dtype="=u2").tobytes())
    if f.write_pgm:
        say("writing %s as 1-byte integers" % f.pgmfilename)
        atomic_write_bytes(f.pgmfilename, pgm_header(Fp, S, pscale) + pgm.tobytes())
    if noise is not None:
        say("writing %s as 2-byte integers" % f.noisefilename)
        atomic_write_bytes(f.noisefilename, header + np.ascontiguousarray(noise, dtype="=u2").tobytes())
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return run_main("nonBragg", _body, argv)


if __name__ == "__main__":
    sys.exit(main())
