"""The reference program's flag grammar, reproduced rule for rule.

nanoBragg recognises a flag when the argument *contains* the flag's text
(``strstr``), tries every rule on every argument that starts with ``-``, in a
fixed order, and lets later rules (and later arguments) overwrite earlier ones.
A few rules stop the scan of the current argument (``continue`` in the C),
a few insist on an exact length.  This module reproduces that grammar so that
any argument list means here what it means to the C program, quirks included
(``-twotheta_axis`` also sets ``-twotheta``; ``-misset_seed`` also reads three
misset angles).

``parse_flags(argv)`` returns :class:`RawFlags`, the program's variables right
after parsing, in SI units, exactly as the C stores them.  Turning them into
the simulation's configuration (the defaults and conventions applied after
parsing) is :mod:`nanobragg_torch.cli.resolve`'s job.

Strictness (issue: bad input must be reported) is layered on top: when an
argument *is* one of the documented flag names, its values are checked
(present, numeric); an argument that no rule recognises is an unknown flag.
Values read through an incidental substring match are read the C way, silently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from ..cutil import c_atof, c_atoi, is_integer, is_number

RTD = 180.0 / math.pi


class FlagError(ValueError):
    """A command-line problem; its message names the flag."""


@dataclass
class RawFlags:
    """The C program's variables after argument parsing (SI units: m, rad, m^-1)."""
    # crystal
    Na: float = 1.0
    Nb: float = 1.0
    Nc: float = 1.0
    user_cell: bool = False
    cell: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # Angstrom
    cell_angles: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # rad
    misset: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # flag, rotx, roty, rotz (rad)
    sample_x: float = 0.0
    sample_y: float = 0.0
    sample_z: float = 0.0
    density: float = 1.0e6
    molecular_weight: float = 18.0
    xtal_shape: str = "square"
    fudge: float = 1.0
    mosaic_spread: float = -1.0
    mosaic_domains: int = -1
    matfilename: Optional[str] = None
    hklfilename: Optional[str] = None
    mtz_column: Optional[str] = None      # -mtz_column: amplitude column of an MTZ / mmCIF -hkl file
    pdbfilename: Optional[str] = None     # -pdb: atomic model (PDB or mmCIF) to compute F from
    default_F: float = 0.0
    dumpfilename: str = "Fdump.bin"
    interpolate: int = 2
    # spindle
    phi0: float = 0.0
    osc: float = -1.0
    phistep: float = -1.0
    phisteps: int = -1
    spindle_vector: List[float] = field(default_factory=lambda: [0.0, 0.0, 1.0])
    # beam
    beam_vector: List[float] = field(default_factory=lambda: [1.0, 0.0, 0.0])
    polar_vector: List[float] = field(default_factory=lambda: [0.0, 0.0, 1.0])
    lambda0: float = 1.0e-10
    dispersion: float = 0.0
    dispstep: float = -1.0
    dispsteps: int = -1
    hdivrange: float = -1.0
    vdivrange: float = -1.0
    hdivstep: float = -1.0
    vdivstep: float = -1.0
    hdivsteps: int = -1
    vdivsteps: int = -1
    round_div: bool = True
    sourcefilename: Optional[str] = None
    polarization: float = 0.0
    nopolar: bool = False
    fluence: float = 125932015286227086360700780544.0
    flux: float = 0.0
    exposure: float = 1.0
    beamsize: float = 1e-4
    coherent: bool = False
    water_size: float = 0.0
    # detector
    pixel_size: float = 0.1e-3
    fpixels: int = 0
    spixels: int = 0
    distance: float = 100.0e-3
    close_distance: float = math.nan
    detsize_f: float = 102.4e-3
    detsize_s: float = 102.4e-3
    detector_mu: float = -1.0
    detector_thick: float = 0.0
    detector_thicksteps: int = -1
    fdet_vector: List[float] = field(default_factory=lambda: [0.0, 0.0, 1.0])
    sdet_vector: List[float] = field(default_factory=lambda: [0.0, -1.0, 0.0])
    odet_vector: List[float] = field(default_factory=lambda: [1.0, 0.0, 0.0])
    pix0_vector: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    pix0_given: bool = False
    detector_rotx: float = 0.0
    detector_roty: float = 0.0
    detector_rotz: float = 0.0
    twotheta_axis: List[float] = field(default_factory=lambda: [0.0, 0.0, 1.0])
    detector_twotheta: float = 0.0
    pivot: str = "beam"
    convention: str = "mosflm"
    curved_detector: bool = False
    point_pixel: bool = False
    Xbeam: float = math.nan
    Ybeam: float = math.nan
    Xclose: float = math.nan
    Yclose: float = math.nan
    ORGX: float = math.nan
    ORGY: float = math.nan
    # sampling
    oversample: int = -1
    oversample_thick: bool = False
    oversample_polar: bool = False
    oversample_omega: bool = False
    roi: List[int] = field(default_factory=lambda: [-1, -1, -1, -1])
    dmin: float = 0.0
    # files and outputs
    imginfilename: Optional[str] = None
    maskfilename: Optional[str] = None
    stolfilename: Optional[str] = None
    stol_file_mult: float = 1.0e10
    stoloutfilename: str = "output.stol"
    floatfilename: str = "floatimage.bin"
    intfilename: str = "intimage.img"
    pgmfilename: str = "image.pgm"
    noisefilename: str = "noiseimage.img"
    write_pgm: bool = True
    calculate_noise: bool = True
    intfile_scale: float = 0.0
    pgm_scale: float = 0.0
    adc_offset: float = 40.0
    # console
    printout: bool = False
    printout_fpixel: int = -1
    printout_spixel: int = -1
    progress_meter: bool = True
    # random seeds, stored negated as the C does; None = wall clock
    seed: Optional[int] = None
    mosaic_seed: int = -12345678
    misset_seed: Optional[int] = None
    # this project's own flags
    dtype: str = "float32"
    device: str = "cpu"
    compile: bool = False                   # -compile: fused kernels (torch.compile)
    backend: str = "auto"                   # -backend: auto|torch|fused|compile (nanobragg_torch.backends)
    phi_carryover: str = "fixed"
    c_legacy: bool = False
    trace_pixel: Optional[List[int]] = None
    trace_json: Optional[str] = None
    image_format: Optional[str] = None      # -format: smv|cbf|h5|nxs for the integer and noise images
    pngfilename: Optional[str] = None       # -pngfile: 8-bit PNG preview
    png_scale: str = "asinh"                # -pngscale: asinh|log|linear
    # which files the user named explicitly (for messages)
    given: List[str] = field(default_factory=list)


# ---------------------------------------------------------------------------
# rule table
# ---------------------------------------------------------------------------

def _has(*needles: str) -> Callable[[str], bool]:
    return lambda a: any(n in a for n in needles)


def _has_len(needle: str, length: int) -> Callable[[str], bool]:
    return lambda a: needle in a and len(a) == length


@dataclass
class Rule:
    """One ``if(strstr(argv[i], ...))`` block of the C parser.

    ``need``: the block runs only when that many values follow (argc > i+need).
    ``action(flags, values)`` applies it; returning True means ``continue``
    (the remaining rules are not tried on this argument).
    ``names``: the documented spellings; an argument equal to one of them is
    validated strictly with ``kinds`` (one letter per value: f float, i int,
    s string, v "numeric or inf" ...).
    """
    match: Callable[[str], bool]
    need: int
    action: Callable[[RawFlags, List[str]], Optional[bool]]
    names: tuple = ()
    kinds: str = ""
    help: str = ""


def _set(attr, conv=c_atof, scale=1.0):
    def act(f: RawFlags, v: List[str]):
        setattr(f, attr, conv(v[0]) * scale if conv is c_atof else conv(v[0]))
    return act


def _vec(attr, convention_custom=True):
    def act(f: RawFlags, v: List[str]):
        if convention_custom:
            f.convention = "custom"
        setattr(f, attr, [c_atof(v[0]), c_atof(v[1]), c_atof(v[2])])
    return act


def _cell(f: RawFlags, v: List[str]):
    # reads up to six values, stopping at the first that starts with '-'
    f.user_cell = True
    for k, val in enumerate(v[:6]):
        if val.startswith("-"):
            return True  # the C 'continue's out of the rule scan here
        if k < 3:
            f.cell[k] = c_atof(val)
        else:
            f.cell_angles[k - 3] = c_atof(val) / RTD
    if len(v) < 6:
        return True
    return None


def _misset_random(f: RawFlags, v: List[str]):
    if "rand" in v[0]:
        f.misset[0] = -1.0
        return True
    return None


def _misset_angles(f: RawFlags, v: List[str]):
    f.misset = [1.0, c_atof(v[0]) / RTD, c_atof(v[1]) / RTD, c_atof(v[2]) / RTD]


def _sample_all(f, v):
    f.sample_x = f.sample_y = f.sample_z = c_atof(v[0]) / 1000


def _pivot(f, v):
    if "sample" in v[0]:
        f.pivot = "sample"
    if "beam" in v[0]:
        f.pivot = "beam"


def _convention(name, pivot):
    def act(f, v):
        f.convention = name
        f.pivot = pivot
    return act


def _pix0(f, v):
    f.convention = "custom"
    f.pix0_given = True
    f.pix0_vector = [c_atof(v[0]), c_atof(v[1]), c_atof(v[2])]


def _detector_abs(f, v):
    if "inf" in v[0] or c_atof(v[0]) == 0.0:
        f.detector_thick = 0.0
        f.detector_mu = 0.0
    else:
        f.detector_mu = 1.0 / (c_atof(v[0]) * 1e-6)


def _setmany(**assign):
    def act(f, v):
        for k, val in assign.items():
            setattr(f, k, val)
    return act


def _with_pivot(attr, scale, pivot):
    def act(f, v):
        setattr(f, attr, c_atof(v[0]) * scale)
        f.pivot = pivot
    return act


def _roi(f, v):
    f.roi = [c_atoi(x) for x in v[:4]]


def _energy(f, v):
    e = c_atof(v[0])
    f.lambda0 = (12398.42 / e) / 1.0e10 if e != 0 else math.inf


def _both(attr1, attr2, conv=c_atof, scale=1.0):
    def act(f, v):
        val = conv(v[0]) * scale if conv is c_atof else conv(v[0])
        setattr(f, attr1, val)
        setattr(f, attr2, val)
    return act


def _seed(attr):
    def act(f, v):
        setattr(f, attr, -c_atoi(v[0]))
    return act


def _stol(mult):
    def act(f, v):
        f.stolfilename = v[0]
        f.stol_file_mult = mult
    return act


def _dims(f, v):
    f.fpixels = f.spixels = c_atoi(v[0])


def _file(attr, **extra):
    def act(f, v):
        setattr(f, attr, v[0])
        for k, val in extra.items():
            setattr(f, k, val)
    return act


def _printout_pixel(f, v):
    f.printout_fpixel = c_atoi(v[0])
    f.printout_spixel = c_atoi(v[1])
    f.printout = True


def _int(attr):
    return lambda f, v: setattr(f, attr, c_atoi(v[0]))


def _cont(action):
    def act(f, v):
        action(f, v)
        return True
    return act


def _dtype(f, v):
    f.dtype = v[0]


def _backend(f, v):
    f.backend = v[0]


def _device(f, v):
    f.device = v[0]


def _carry(f, v):
    f.phi_carryover = v[0]


def _trace_pixel(f, v):
    f.trace_pixel = [c_atoi(v[0]), c_atoi(v[1])]


def _image_format(f, v):
    f.image_format = v[0].lower()


def _png_scale(f, v):
    f.png_scale = v[0].lower()


#: values of -format (the integer and noise images) and -pngscale
IMAGE_FORMATS = ("smv", "cbf", "h5", "nxs")
PNG_SCALES = ("asinh", "log", "linear")


mm = 1.0 / 1000.0
RULES: List[Rule] = [
    Rule(_has("-Na"), 1, _cont(_int("Na")), ("-Na",), "i", "unit cells along a"),
    Rule(_has("-Nb"), 1, _cont(_int("Nb")), ("-Nb",), "i", "unit cells along b"),
    Rule(_has("-Nc"), 1, _cont(_int("Nc")), ("-Nc",), "i", "unit cells along c"),
    Rule(lambda a: a == "-N", 1, _cont(lambda f, v: _setmany(Na=c_atoi(v[0]), Nb=c_atoi(v[0]), Nc=c_atoi(v[0]))(f, v)),
         ("-N",), "i", "unit cells along a, b and c"),
    Rule(_has("-cell"), 1, _cell, ("-cell",), "C", "unit cell a b c (A) alpha beta gamma (deg)"),
    Rule(_has("-misset"), 1, _misset_random, (), ""),
    Rule(_has("-misset"), 3, _misset_angles, ("-misset",), "M", "crystal misset rotations about x,y,z (deg), or 'random'"),
    Rule(_has("-samplesize", "-sample_size"), 1, _sample_all, ("-samplesize", "-sample_size"), "f", "crystal size (mm), sets N"),
    Rule(_has("-sample_thick", "-sample_x"), 1, _set("sample_x", scale=mm), ("-sample_thick", "-sample_x"), "f"),
    Rule(_has("-sample_width", "-sample_y", "-width"), 1, _set("sample_y", scale=mm), ("-sample_width", "-sample_y", "-width"), "f"),
    Rule(_has("-sample_heigh", "-sample_z", "-heigh"), 1, _set("sample_z", scale=mm), ("-sample_height", "-sample_z", "-height"), "f"),
    Rule(_has("-xtalsize", "-xtal_size"), 1, _sample_all, ("-xtalsize", "-xtal_size"), "f", "crystal size (mm), sets N"),
    Rule(_has("-xtal_thick", "-xtal_x"), 1, _set("sample_x", scale=mm), ("-xtal_thick", "-xtal_x"), "f"),
    Rule(_has("-xtal_width", "-xtal_y", "-width"), 1, _set("sample_y", scale=mm), ("-xtal_width", "-xtal_y"), "f"),
    Rule(_has("-xtal_heigh", "-xtal_z", "-heigh"), 1, _set("sample_z", scale=mm), ("-xtal_height", "-xtal_z"), "f"),
    Rule(_has("-density", "-sample_den"), 1, _set("density", scale=1e6), ("-density", "-sample_density"), "f", "sample density (g/cm^3), reported only"),
    Rule(lambda a: a == "-MW" or "-molec" in a, 1, _set("molecular_weight"), ("-MW", "-molecular_weight", "-molecules"), "f", "molecular weight, reported only"),
    Rule(_has("-Xbeam"), 1, _with_pivot("Xbeam", mm, "beam"), ("-Xbeam",), "f", "beam centre (mm)"),
    Rule(_has("-Ybeam"), 1, _with_pivot("Ybeam", mm, "beam"), ("-Ybeam",), "f", "beam centre (mm)"),
    Rule(_has("-Xclose"), 1, _with_pivot("Xclose", mm, "sample"), ("-Xclose",), "f", "near point (mm)"),
    Rule(_has("-Yclose"), 1, _with_pivot("Yclose", mm, "sample"), ("-Yclose",), "f", "near point (mm)"),
    Rule(_has("-ORGX"), 1, _with_pivot("ORGX", 1.0, "sample"), ("-ORGX",), "f", "XDS origin (pixels)"),
    Rule(_has("-ORGY"), 1, _with_pivot("ORGY", 1.0, "sample"), ("-ORGY",), "f", "XDS origin (pixels)"),
    Rule(_has("-pivot"), 1, _pivot, ("-pivot",), "P", "detector pivot: beam|sample"),
    Rule(_has("-mosflm"), 0, _convention("mosflm", "beam"), ("-mosflm",), ""),
    Rule(_has("-xds"), 0, _convention("xds", "sample"), ("-xds",), ""),
    Rule(_has("-adxv"), 0, _convention("adxv", "beam"), ("-adxv",), ""),
    Rule(_has("-denzo"), 0, _convention("denzo", "beam"), ("-denzo",), ""),
    Rule(_has("-dials"), 0, _convention("dials", "beam"), ("-dials",), ""),
    Rule(_has("-fdet_vector"), 3, _vec("fdet_vector"), ("-fdet_vector",), "fff"),
    Rule(_has("-sdet_vector"), 3, _vec("sdet_vector"), ("-sdet_vector",), "fff"),
    Rule(_has("-odet_vector"), 3, _vec("odet_vector"), ("-odet_vector",), "fff"),
    Rule(_has("-beam_vector"), 3, _vec("beam_vector"), ("-beam_vector",), "fff"),
    Rule(_has("-polar_vector"), 3, _vec("polar_vector"), ("-polar_vector",), "fff"),
    Rule(_has("-spindle_axis"), 3, _vec("spindle_vector"), ("-spindle_axis",), "fff"),
    Rule(_has("-twotheta_axis"), 3, _vec("twotheta_axis"), ("-twotheta_axis",), "fff"),
    Rule(_has("-pix0_vector"), 3, _pix0, ("-pix0_vector",), "fff"),
    Rule(_has("-distance"), 1, _with_pivot("distance", mm, "beam"), ("-distance",), "f"),
    Rule(_has("-close_distance"), 1, _with_pivot("close_distance", mm, "sample"), ("-close_distance",), "f"),
    Rule(_has("-detector_abs"), 1, _detector_abs, ("-detector_abs", "-detector_absorb"), "A"),
    Rule(_has_len("-detector_thick", 15), 1, _set("detector_thick", scale=1e-6), ("-detector_thick",), "f"),
    Rule(_has("-detector_thicksteps"), 1, _int("detector_thicksteps"), ("-detector_thicksteps",), "i"),
    Rule(_has("-thicksteps"), 1, _int("detector_thicksteps"), ("-thicksteps",), "i"),
    Rule(_has("-twotheta"), 1, _with_pivot("detector_twotheta", 1 / RTD, "sample"), ("-twotheta",), "f"),
    Rule(_has("-detector_rotx"), 1, _set("detector_rotx", scale=1 / RTD), ("-detector_rotx",), "f"),
    Rule(_has("-detector_roty"), 1, _set("detector_roty", scale=1 / RTD), ("-detector_roty",), "f"),
    Rule(_has("-detector_rotz"), 1, _set("detector_rotz", scale=1 / RTD), ("-detector_rotz",), "f"),
    Rule(_has_len("-detsize", 8), 1, _both("detsize_f", "detsize_s", scale=mm), ("-detsize",), "f"),
    Rule(_has("-detsize_f"), 1, _set("detsize_f", scale=mm), ("-detsize_f",), "f"),
    Rule(_has("-detsize_s"), 1, _set("detsize_s", scale=mm), ("-detsize_s",), "f"),
    Rule(_has_len("-detpixels", 10), 1, _dims, ("-detpixels",), "i"),
    Rule(_has("-detpixels_f", "-detpixels_x"), 1, _int("fpixels"), ("-detpixels_f", "-detpixels_x"), "i"),
    Rule(_has("-detpixels_s", "-detpixels_y"), 1, _int("spixels"), ("-detpixels_s", "-detpixels_y"), "i"),
    # the C insists on a following argument before it turns the curved detector on
    Rule(_has("-curved_det"), 1, _setmany(curved_detector=True), ("-curved_det",), ""),
    Rule(_has("-pixel"), 1, _set("pixel_size", scale=mm), ("-pixel",), "f"),
    Rule(_has("-point_pixel"), 0, _setmany(point_pixel=True), ("-point_pixel",), ""),
    Rule(_has_len("-polar", 6), 1, lambda f, v: _setmany(polarization=c_atof(v[0]), nopolar=False)(f, v), ("-polar",), "f"),
    Rule(_has("-nopolar"), 0, _setmany(nopolar=True), ("-nopolar",), ""),
    Rule(_has("-oversample_thick"), 0, _cont(_setmany(oversample_thick=True)), ("-oversample_thick",), ""),
    Rule(_has("-oversample_polar"), 0, _cont(_setmany(oversample_polar=True)), ("-oversample_polar",), ""),
    Rule(_has("-oversample_omega"), 0, _cont(_setmany(oversample_omega=True)), ("-oversample_omega",), ""),
    Rule(_has("-oversample"), 1, _int("oversample"), ("-oversample",), "i"),
    Rule(_has("-roi"), 4, _roi, ("-roi",), "iiii"),
    Rule(_has("-lambda", "-wave"), 1, _set("lambda0", scale=1e-10), ("-lambda", "-wave", "-wavelength"), "f"),
    Rule(_has("-energy"), 1, _energy, ("-energy",), "f"),
    Rule(_has("-fluence"), 1, _set("fluence"), ("-fluence",), "f"),
    Rule(_has("-flux"), 1, _set("flux"), ("-flux",), "f"),
    Rule(_has("-exposure"), 1, _set("exposure"), ("-exposure",), "f"),
    Rule(_has("-beamsize"), 1, _set("beamsize", scale=mm), ("-beamsize",), "f"),
    Rule(lambda a: ("-mosaic" in a and len(a) == 7) or "-mosaici" in a or "-mosaic_spr" in a, 1,
         _set("mosaic_spread", scale=1 / RTD), ("-mosaic", "-mosaicity", "-mosaic_spread"), "f"),
    Rule(_has("-mosaic_dom"), 1, _int("mosaic_domains"), ("-mosaic_dom", "-mosaic_domains"), "i"),
    Rule(_has("-dispersion"), 1, _set("dispersion", scale=1 / 100.0), ("-dispersion",), "f"),
    Rule(_has("-dispsteps"), 1, _int("dispsteps"), ("-dispsteps",), "i"),
    Rule(_has("-divergence"), 1, _both("hdivrange", "vdivrange", scale=1 / 1000.0), ("-divergence",), "f"),
    Rule(_has("-hdivrange"), 1, _set("hdivrange", scale=1 / 1000.0), ("-hdivrange",), "f"),
    Rule(_has("-vdivrange"), 1, _set("vdivrange", scale=1 / 1000.0), ("-vdivrange",), "f"),
    Rule(_has_len("-hdivstep", 9), 1, _set("hdivstep", scale=1 / 1000.0), ("-hdivstep",), "f"),
    Rule(_has("-hdivsteps"), 1, _int("hdivsteps"), ("-hdivsteps",), "i"),
    Rule(_has_len("-vdivstep", 9), 1, _set("vdivstep", scale=1 / 1000.0), ("-vdivstep",), "f"),
    Rule(_has("-vdivsteps"), 1, _int("vdivsteps"), ("-vdivsteps",), "i"),
    Rule(_has("-divsteps"), 1, _both("hdivsteps", "vdivsteps", conv=c_atoi), ("-divsteps",), "i"),
    Rule(_has("-round_div"), 0, _setmany(round_div=True), ("-round_div",), ""),
    Rule(_has("-square_div"), 0, _setmany(round_div=False), ("-square_div",), ""),
    Rule(_has("-adc"), 1, _set("adc_offset"), ("-adc",), "f"),
    Rule(_has_len("-phi", 4), 1, _set("phi0", scale=1 / RTD), ("-phi",), "f"),
    Rule(_has("-osc"), 1, _set("osc", scale=1 / RTD), ("-osc",), "f"),
    Rule(_has_len("-phistep", 8), 1, _set("phistep", scale=1 / RTD), ("-phistep",), "f"),
    Rule(_has("-phisteps"), 1, _int("phisteps"), ("-phisteps",), "i"),
    Rule(_has("-dmin"), 1, _set("dmin", scale=1e-10), ("-dmin",), "f"),
    Rule(_has("-mat"), 1, _file("matfilename"), ("-mat",), "s"),
    Rule(_has("-hkl"), 1, _file("hklfilename"), ("-hkl",), "s"),
    Rule(_has("-default_F"), 1, _set("default_F"), ("-default_F",), "f"),
    Rule(_has("-dump"), 1, _file("dumpfilename"), ("-dump",), "s"),
    Rule(_has("-img"), 1, _file("imginfilename"), ("-img",), "s"),
    # -mask is only read in the C's pre-pass; listed here so that it is a known flag
    Rule(_has("-mask"), 1, lambda f, v: None, ("-mask",), "s"),
    Rule(lambda a: "-stolout" in a and len(a) > 7, 1, _file("stoloutfilename"), ("-stolout",), "s"),
    Rule(_has_len("-stol", 5), 1, _stol(1e10), ("-stol",), "s"),
    Rule(_has_len("-4stol", 6), 1, _stol(1e10 / 4), ("-4stol",), "s"),
    Rule(_has_len("-Q", 2), 1, _stol(1e10 / math.pi / 4), ("-Q",), "s"),
    Rule(_has("-sourcefile"), 1, _file("sourcefilename"), ("-sourcefile",), "s"),
    Rule(_has("-floatfile", "-floatimage"), 1, _file("floatfilename"), ("-floatfile", "-floatimage"), "s"),
    Rule(_has("-intfile", "-intimage"), 1, _file("intfilename"), ("-intfile", "-intimage"), "s"),
    Rule(_has("-pgmfile", "-pgmimage"), 1, _file("pgmfilename", write_pgm=True), ("-pgmfile", "-pgmimage"), "s"),
    Rule(_has("-noisefile", "-noiseimage"), 1, _file("noisefilename", calculate_noise=True), ("-noisefile", "-noiseimage"), "s"),
    Rule(_has("-nonoise"), 0, _setmany(calculate_noise=False), ("-nonoise",), ""),
    Rule(_has("-nopgm"), 0, _setmany(write_pgm=False), ("-nopgm",), ""),
    Rule(_has("-scale"), 1, _set("intfile_scale"), ("-scale",), "f"),
    Rule(_has("-pgmscale"), 1, lambda f, v: _setmany(pgm_scale=c_atof(v[0]), write_pgm=True)(f, v), ("-pgmscale",), "f"),
    Rule(_has("-coherent"), 0, _setmany(coherent=True), ("-coherent",), ""),
    Rule(_has("-printout"), 0, _setmany(printout=True), ("-printout",), ""),
    Rule(_has("-noprogress"), 0, _setmany(progress_meter=False), ("-noprogress",), ""),
    Rule(_has("-progress"), 0, _setmany(progress_meter=True), ("-progress",), ""),
    Rule(_has("-interpolate"), 0, _setmany(interpolate=1), ("-interpolate",), ""),
    Rule(_has("-nointerpolate"), 0, _setmany(interpolate=0), ("-nointerpolate",), ""),
    Rule(_has("-round_xtal"), 0, _setmany(xtal_shape="round"), ("-round_xtal",), ""),
    Rule(_has("-square_xtal"), 0, _setmany(xtal_shape="square"), ("-square_xtal",), ""),
    Rule(_has("-gauss_xtal"), 0, _setmany(xtal_shape="gauss"), ("-gauss_xtal",), ""),
    Rule(_has("-binary_spots", "-tophat_spots"), 0, _setmany(xtal_shape="tophat"), ("-binary_spots", "-tophat_spots"), ""),
    Rule(_has("-fudge"), 1, _set("fudge"), ("-fudge",), "f"),
    Rule(_has("-printout_pixel"), 2, _printout_pixel, ("-printout_pixel",), "ii"),
    Rule(_has("-seed"), 1, _seed("seed"), ("-seed",), "i"),
    Rule(_has("-mosaic_seed"), 1, _seed("mosaic_seed"), ("-mosaic_seed",), "i"),
    Rule(_has("-misset_seed"), 1, _seed("misset_seed"), ("-misset_seed",), "i"),
    Rule(_has("-water"), 1, _set("water_size", scale=1e-6), ("-water",), "f"),
]

# this project's own flags: exact names only, so they cannot collide with the C grammar
EXTRA_RULES: List[Rule] = [
    Rule(lambda a: a == "-dtype", 1, _dtype, ("-dtype",), "D"),
    Rule(lambda a: a == "-device", 1, _device, ("-device",), "V"),
    Rule(lambda a: a == "-compile", 0, _setmany(compile=True), ("-compile",), ""),
    Rule(lambda a: a == "-backend", 1, _backend, ("-backend",), "B"),
    Rule(lambda a: a == "-phi_carryover", 1, _carry, ("-phi_carryover",), "K"),
    Rule(lambda a: a == "-c_legacy", 0, _setmany(c_legacy=True), ("-c_legacy",), ""),
    Rule(lambda a: a == "-trace_pixel", 2, _trace_pixel, ("-trace_pixel",), "ii"),
    Rule(lambda a: a in ("--trace-json", "-trace_json"), 1, _file("trace_json"), ("--trace-json", "-trace_json"), "s"),
    # output formats (issue 6); exact names, and the C rules are not applied to them
    # (the C's substring rule for -scale would otherwise also read -pngscale)
    Rule(lambda a: a == "-format", 1, _image_format, ("-format",), "F"),
    Rule(lambda a: a == "-pngfile", 1, _file("pngfilename"), ("-pngfile",), "s"),
    Rule(lambda a: a == "-pngscale", 1, _png_scale, ("-pngscale",), "G"),
    # structure factors through gemmi (issue 16)
    Rule(lambda a: a == "-mtz_column", 1, _file("mtz_column"), ("-mtz_column",), "s"),
    Rule(lambda a: a == "-pdb", 1, _file("pdbfilename"), ("-pdb",), "s"),
]
_EXTRA_NAMES = frozenset(n for r in EXTRA_RULES for n in r.names)

ALL_RULES = RULES + EXTRA_RULES

# value counts of the documented names (for telling values from flags)
_NAME_ARITY = {}
for _r in ALL_RULES:
    for _n in _r.names:
        _NAME_ARITY[_n] = _r


def _check_values(name: str, rule: Rule, values: List[str]) -> int:
    """Strictly validate the values of a documented flag; returns how many it takes."""
    kinds = rule.kinds
    if kinds == "C":  # -cell: 1 to 6 numbers
        n = 0
        while n < 6 and n < len(values) and is_number(values[n]) and not values[n].startswith("-"):
            n += 1
        if n == 0:
            raise FlagError(f"{name}: expected 1 to 6 numbers (a b c alpha beta gamma), got "
                            f"{values[0]!r}" if values else f"{name}: missing value (a b c alpha beta gamma)")
        if n < len(values) and n < 6 and is_number(values[n]) and values[n].startswith("-"):
            raise FlagError(f"{name}: negative cell parameter {values[n]!r}")
        for val in values[:n]:
            if not math.isfinite(c_atof(val)):
                raise FlagError(f"{name}: expected finite cell parameters, got {val!r}")
        return n
    if kinds == "M":  # -misset random | 3 angles
        if values and "rand" in values[0]:
            return 1
        kinds = "fff"
    if kinds == "A":  # -detector_abs: number or inf
        if not values:
            raise FlagError(f"{name}: missing value (attenuation depth in um, or 'inf')")
        if "inf" in values[0]:
            return 1
        if is_number(values[0]):
            if not math.isfinite(c_atof(values[0])):
                raise FlagError(f"{name}: expected a number or 'inf', got {values[0]!r}")
            _check_range(name, values[0])
            return 1
        raise FlagError(f"{name}: expected a number or 'inf', got {values[0]!r}")
    if kinds == "P":
        if not values:
            raise FlagError(f"{name}: missing value (beam or sample)")
        if values[0] not in ("beam", "sample"):
            raise FlagError(f"{name}: expected 'beam' or 'sample', got {values[0]!r}")
        return 1
    if kinds == "D":
        if not values or values[0] not in ("float32", "float64"):
            raise FlagError(f"{name}: expected float32 or float64" + (f", got {values[0]!r}" if values else ""))
        return 1
    if kinds == "K":
        if not values or values[0] not in ("c", "fixed", "off"):
            raise FlagError(f"{name}: expected 'c' (reproduce the C program) or 'fixed'"
                            + (f", got {values[0]!r}" if values else ""))
        return 1
    if kinds == "B":
        choices = ("auto", "torch", "fused", "compile")
        if not values or values[0] not in choices:
            raise FlagError(f"{name}: expected one of {'|'.join(choices)}"
                            + (f", got {values[0]!r}" if values else ""))
        return 1
    if kinds == "V":
        import re
        if not values or not re.fullmatch(r"cpu|(cuda|xpu)(:[0-9]+)?|mps", values[0]):
            raise FlagError(f"{name}: expected cpu, cuda, cuda:N, xpu[:N] or mps"
                            + (f", got {values[0]!r}" if values else ""))
        return 1
    if kinds in ("F", "G"):
        choices = IMAGE_FORMATS if kinds == "F" else PNG_SCALES
        if not values or values[0].lower() not in choices:
            raise FlagError(f"{name}: expected one of {'|'.join(choices)}"
                            + (f", got {values[0]!r}" if values else ""))
        return 1
    for k, kind in enumerate(kinds):
        if k >= len(values):
            what = {"f": "a number", "i": "an integer", "s": "a file name"}.get(kind, "a value")
            raise FlagError(f"{name}: missing value ({what} expected)")
        val = values[k]
        if kind == "f" and not is_number(val):
            raise FlagError(f"{name}: expected a number, got {val!r}")
        if kind == "f" and not math.isfinite(c_atof(val)):
            raise FlagError(f"{name}: expected a finite number, got {val!r}")
        if kind == "i" and not is_integer(val):
            raise FlagError(f"{name}: expected an integer, got {val!r}")
        if kind == "s" and (val == "" or (val.startswith("-") and (val in _NAME_ARITY or _matches_any(val)))):
            raise FlagError(f"{name}: missing file name (got flag {val!r})")
        if kind in "fi":
            _check_range(name, val)
    return len(kinds)


# Value ranges of the documented names (issue 6: fail safe on bad input).  Only what the
# user types as that exact flag is checked; the C grammar's incidental matches and
# values taken from an SMV header are not.  Where the C treats a zero as "not given"
# (-N 0, -oversample 0, -phisteps 0 ...) zero stays legal.
_POSITIVE = ("-detpixels", "-detpixels_f", "-detpixels_s", "-detpixels_x", "-detpixels_y", "-pixel",
             "-detsize", "-detsize_f", "-detsize_s", "-distance", "-close_distance",
             "-lambda", "-wave", "-wavelength", "-energy")
_NON_NEGATIVE = ("-N", "-Na", "-Nb", "-Nc", "-oversample", "-phisteps", "-mosaic_dom", "-mosaic_domains",
                 "-detector_thicksteps", "-thicksteps", "-dispsteps", "-hdivsteps", "-vdivsteps", "-divsteps",
                 "-fluence", "-flux", "-exposure", "-beamsize", "-mosaic", "-mosaicity", "-mosaic_spread",
                 "-dispersion", "-divergence", "-hdivrange", "-vdivrange", "-hdivstep", "-vdivstep",
                 "-phistep", "-osc", "-detector_thick", "-water", "-samplesize", "-sample_size",
                 "-sample_thick", "-sample_x", "-sample_width", "-sample_y", "-width", "-sample_height",
                 "-sample_z", "-height", "-xtalsize", "-xtal_size", "-xtal_thick", "-xtal_x", "-xtal_width",
                 "-xtal_y", "-xtal_height", "-xtal_z", "-dmin", "-scale", "-pgmscale", "-density",
                 "-sample_density", "-MW", "-molecular_weight", "-molecules", "-roi", "-printout_pixel",
                 "-fudge", "-detector_abs", "-detector_absorb")
_RANGES = {n: (0.0, False) for n in _NON_NEGATIVE}
_RANGES.update({n: (0.0, True) for n in _POSITIVE})


def _check_range(name: str, val: str) -> None:
    x = c_atof(val)
    if name == "-polar":
        if not -1.0 <= x <= 1.0:
            raise FlagError(f"{name}: the Kahn polarization factor must lie between -1 and 1, got {val!r}")
        return
    lim = _RANGES.get(name)
    if lim is None:
        return
    low, strict = lim
    if (strict and x <= low) or (not strict and x < low):
        what = "positive" if strict else "zero or positive"
        raise FlagError(f"{name}: value must be {what}, got {val!r}")


def _matches_any(arg: str) -> bool:
    return any(r.match(arg) for r in ALL_RULES)


def check_rules(rules, names, argv: List[str], positional=lambda arg: False) -> None:
    """Strict pass over ``argv`` for a program's ``rules`` (``names``: documented name -> rule):
    unknown flags, malformed values of documented names, stray words (unless ``positional``)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        rule = names.get(arg)
        if rule is not None:
            i += 1 + _check_values(arg, rule, argv[i + 1:])
            continue
        if arg.startswith("-") and len(arg) > 1:
            matched = [r for r in rules if r.match(arg)]
            if not matched:
                raise FlagError(f"unknown flag {arg!r} (see -h for the list of flags)")
            i += 1 + max(r.need for r in matched)
            continue
        if positional(arg):
            i += 1
            continue
        raise FlagError(f"unexpected argument {arg!r} (values must follow their flag)")


def check_argv(argv: List[str]) -> None:
    """Strict pass: unknown flags and malformed values of documented flags."""
    check_rules(ALL_RULES, _NAME_ARITY, argv)


def parse_flags(argv: List[str], strict: bool = True, base: Optional[RawFlags] = None) -> RawFlags:
    """Apply the C program's parser to ``argv`` (without the program name).

    ``base`` holds values set before the flags are read (an SMV header given
    with ``-img``/``-mask``); the flags then overwrite them.
    """
    if strict:
        check_argv(argv)
    f = base if base is not None else RawFlags()
    argc = len(argv)
    # the pre-pass: -img and -mask are located before anything else
    for i, arg in enumerate(argv):
        if arg.startswith("-"):
            if "-img" in arg and argc > i + 1:
                f.imginfilename = argv[i + 1]
            if "-mask" in arg and argc > i + 1:
                f.maskfilename = argv[i + 1]
    f.given = list(argv)
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            continue
        rules = EXTRA_RULES if arg in _EXTRA_NAMES else ALL_RULES
        for rule in rules:
            if not rule.match(arg):
                continue
            if argc <= i + rule.need:
                continue
            if rule.action(f, argv[i + 1:]):
                break
    return f
