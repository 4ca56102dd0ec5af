"""From parsed flags to a simulation set-up, applying the C program's post-parse rules.

Everything the reference program decides between reading its flags and
entering the pixel loop happens here, in its order: detector header ingestion
(``-img``/``-mask``), pixel counts from sizes, fluence from flux, beam-centre
defaults per convention, the step-count rules for phi, divergence, dispersion
and sensor layers, mosaic domain counts, the random misset and mosaic domains
from the program's own generator, structure factors (``-hkl``, ``Fdump.bin``
or ``-default_F``) and source lists.  The result is a :class:`Setup` of plain
configuration records plus what the program reports about them.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from ..config import (BeamConfig, CrystalConfig, DetectorConfig, SimulationOptions,
                      StructureFactorConfig)
from ..io.hkl import HKLData, InputFileError, read_fdump, read_hkl
from ..io.mosflm import read_mosflm_matrix
from ..io.textcolumns import read_columns
from ..rng import CRandom, SeedStream, umat2misset
from .flags import RTD, FlagError, RawFlags


class SetupError(ValueError):
    """Inconsistent or missing input discovered while setting up."""


@dataclass
class Setup:
    beam: BeamConfig
    detector: DetectorConfig
    crystal: CrystalConfig
    structure_factors: StructureFactorConfig
    options: SimulationOptions
    flags: RawFlags
    rng: CRandom
    noise_seed: int
    hkl: Optional[HKLData] = None
    write_dump: bool = False
    report: List[str] = field(default_factory=list)
    mask: Optional[np.ndarray] = None
    interpolate_auto: Optional[str] = None
    divsteps: int = 1
    stol_rows: int = 0


def _header_ingest(f: RawFlags, path: str, kind: str):
    """Apply an SMV file's header the way the C does for -img / -mask; return its pixels."""
    from ..io.smv import header_value, read_smv, read_smv_header
    try:
        header_text = read_smv_header(path)
        _, data = read_smv(path)
    except OSError as e:
        raise InputFileError(f"{path}: cannot read -{kind} file ({e.strerror})") from None
    except ValueError as e:
        raise InputFileError(f"-{kind} {e}") from None
    spix, fpix = data.shape
    f.fpixels, f.spixels = fpix, spix
    v = header_value(header_text, "PIXEL_SIZE")
    if not math.isnan(v):
        f.pixel_size = v / 1000.0
    f.detsize_f = f.pixel_size * f.fpixels
    f.detsize_s = f.pixel_size * f.spixels
    for key, attr, scale in (("DISTANCE", "distance", 1e-3), ("CLOSE_DISTANCE", "close_distance", 1e-3),
                             ("WAVELENGTH", "lambda0", 1e-10)):
        v = header_value(header_text, key)
        if not math.isnan(v):
            setattr(f, attr, v * scale)
    v = header_value(header_text, "BEAM_CENTER_X")
    if not math.isnan(v):
        f.Xbeam = v / 1000.0
    v = header_value(header_text, "BEAM_CENTER_Y")
    if not math.isnan(v):
        # the C reads a mask's Y centre from the other edge
        f.Ybeam = (f.detsize_s - v / 1000.0) if kind == "mask" else v / 1000.0
    for key in ("ORGX", "ORGY"):
        v = header_value(header_text, key)
        if not math.isnan(v):
            setattr(f, key, v)
    v = header_value(header_text, "PHI")
    if not math.isnan(v):
        f.phi0 = v / RTD
    v = header_value(header_text, "OSC_RANGE")
    if not math.isnan(v):
        f.osc = v / RTD
    return data


def _steps_rule(steps: int, rng: float, step: float, unit_range: float, range_rule_minus_one: bool = True):
    """The C's shared logic for (range, step, count) of divergence and dispersion."""
    if steps <= 0:
        if rng < 0.0:
            if step <= 0.0:
                return 1, 0.0, 0.0
            return 2, step, step
        if step <= 0.0:
            return 2, rng, rng
        return int(math.ceil(rng / step)), rng, step
    if rng < 0.0:
        if step <= 0.0:
            return steps, unit_range, unit_range / steps
        return 2, step, step
    if step <= 0.0:
        if steps <= 1:
            steps = 2
        return steps, rng, rng / (steps - 1)
    return steps, rng, step


def _check_cell(lengths, angles_rad) -> None:
    """A cell the lattice can be built from: positive lengths, angles that close a volume."""
    a, b, c = (float(x) for x in lengths)
    al, be, ga = (float(x) for x in angles_rad)
    shown = "%g %g %g %g %g %g" % (a, b, c, al * RTD, be * RTD, ga * RTD)
    if not all(math.isfinite(x) and x > 0 for x in (a, b, c)):
        raise SetupError(f"-cell {shown}: cell lengths a b c must be positive")
    if not all(0.0 < x < math.pi for x in (al, be, ga)):
        raise SetupError(f"-cell {shown}: angles alpha beta gamma must lie between 0 and 180 degrees "
                         "(give all six values)")
    ca, cb, cg = math.cos(al), math.cos(be), math.cos(ga)
    if 1.0 - ca * ca - cb * cb - cg * cg + 2.0 * ca * cb * cg <= 1e-12:
        raise SetupError(f"-cell {shown}: these angles do not form a cell (zero volume)")


def _check_sources(name: str, cols: np.ndarray) -> None:
    """Source rows: finite positions (blank = default) and positive wavelengths (blank = -lambda)."""
    for i, row in enumerate(cols, 1):
        if np.any(np.isinf(row)):
            raise SetupError(f"-sourcefile {name}: source {i}: values must be finite")
        lam = row[4]
        if not math.isnan(lam) and lam <= 0.0:
            raise SetupError(f"-sourcefile {name}: source {i}: wavelength {lam:g} m must be positive")


def build_setup(f: RawFlags, cwd: str = ".", now: Optional[int] = None) -> Setup:
    report: List[str] = []
    say = report.append
    if now is None:
        now = int(time.time())
    seed = f.seed if f.seed is not None else -now
    misset_seed = f.misset_seed if f.misset_seed is not None else -now

    def path(p):
        # names stay as the user typed them when running in the current folder (error messages)
        return p if (os.path.isabs(p) or cwd in ("", ".")) else os.path.join(cwd, p)

    mask = None
    # header ingestion happens before the flags in the C; re-apply the flags afterwards
    if f.maskfilename or f.imginfilename:
        from .flags import parse_flags
        g = RawFlags()
        if f.maskfilename:
            m = _header_ingest(g, path(f.maskfilename), "mask")
            mask = m
        if f.imginfilename:
            _header_ingest(g, path(f.imginfilename), "img")
        f2 = parse_flags(f.given, strict=False, base=g)
        f2.given = f.given
        f = f2

    # ---- detector size -------------------------------------------------------
    if f.pixel_size <= 0:
        raise SetupError("-pixel: pixel size must be positive")
    if f.fpixels:
        f.detsize_f = f.pixel_size * f.fpixels
    if f.spixels:
        f.detsize_s = f.pixel_size * f.spixels
    fpixels = int(math.ceil(f.detsize_f / f.pixel_size - 0.5))
    spixels = int(math.ceil(f.detsize_s / f.pixel_size - 0.5))
    if fpixels <= 0 or spixels <= 0:
        raise SetupError(f"-detpixels/-detsize: detector must have at least one pixel (got {fpixels}x{spixels})")
    if mask is not None and mask.shape != (spixels, fpixels):
        raise SetupError(f"-mask {f.maskfilename}: mask is {mask.shape[1]}x{mask.shape[0]} pixels, "
                         f"detector is {fpixels}x{spixels}")

    # ---- fluence -------------------------------------------------------------
    fluence, flux = f.fluence, f.flux
    sample_y, sample_z = f.sample_y, f.sample_z
    if flux != 0.0 and f.exposure > 0.0 and f.beamsize >= 0:
        fluence = flux * f.exposure / f.beamsize / f.beamsize if f.beamsize > 0 else math.inf
    if f.beamsize >= 0:
        if f.beamsize < sample_y:
            say("WARNING: clipping sample (%g m high) with beam (%g m)" % (sample_y, f.beamsize))
            sample_y = f.beamsize
        if f.beamsize < sample_z:
            say("WARNING: clipping sample (%g m wide) with beam (%g m)" % (sample_z, f.beamsize))
            sample_z = f.beamsize

    # ---- beam centre defaults and conventions ---------------------------------
    px = f.pixel_size
    detsize_f, detsize_s = f.detsize_f, f.detsize_s
    Fclose = (f.ORGX - 0.5) * px if not math.isnan(f.ORGX) else math.nan
    Sclose = (f.ORGY - 0.5) * px if not math.isnan(f.ORGY) else math.nan
    if math.isnan(Fclose):
        Fclose = detsize_f / 2.0
    if math.isnan(Sclose):
        Sclose = detsize_s / 2.0
    Xclose = Fclose if math.isnan(f.Xclose) else f.Xclose
    Yclose = Sclose if math.isnan(f.Yclose) else f.Yclose
    Xbeam, Ybeam = f.Xbeam, f.Ybeam
    Fbeam, Sbeam = Fclose, Sclose
    conv, pivot = f.convention, f.pivot
    beam_v, fdet, sdet, odet = list(f.beam_vector), list(f.fdet_vector), list(f.sdet_vector), list(f.odet_vector)
    tt_axis, polar_v, spindle = list(f.twotheta_axis), list(f.polar_vector), list(f.spindle_vector)
    if conv == "adxv":
        if math.isnan(Xbeam): Xbeam = (detsize_f + px) / 2.0
        if math.isnan(Ybeam): Ybeam = (detsize_s - px) / 2.0
        beam_v, fdet, sdet, odet = [0, 0, 1], [1, 0, 0], [0, -1, 0], [0, 0, 1]
        tt_axis, polar_v, spindle = [-1, 0, 0], [1, 0, 0], [1, 0, 0]
        Fbeam, Sbeam, pivot = Xbeam, detsize_s - Ybeam, "beam"
    elif conv in ("mosflm", "denzo"):
        if math.isnan(Xbeam): Xbeam = (detsize_s + px) / 2.0
        if math.isnan(Ybeam): Ybeam = (detsize_f + px) / 2.0
        beam_v, odet, fdet, sdet = [1, 0, 0], [1, 0, 0], [0, 0, 1], [0, -1, 0]
        tt_axis, polar_v, spindle = [0, 0, -1], [0, 0, 1], [0, 0, 1]
        shift = 0.5 * px if conv == "mosflm" else 0.0
        Fbeam, Sbeam, pivot = Ybeam + shift, Xbeam + shift, "beam"
    elif conv in ("xds", "dials"):
        if math.isnan(Xbeam): Xbeam = Xclose
        if math.isnan(Ybeam): Ybeam = Yclose
        beam_v, fdet, sdet, odet = [0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]
        if conv == "xds":
            tt_axis, polar_v, spindle = [1, 0, 0], [1, 0, 0], [1, 0, 0]
        else:
            tt_axis, polar_v, spindle = [0, 1, 0], [0, 1, 0], [0, 1, 0]
        Fbeam, Sbeam, pivot = Xbeam, Ybeam, "sample"
    else:  # custom
        if math.isnan(Xbeam): Xbeam = Xclose
        if math.isnan(Ybeam): Ybeam = Yclose
        Fbeam, Sbeam = Xbeam, Ybeam
        Fclose, Sclose = Xbeam, Ybeam

    def unit(v):
        v = np.array(v, dtype=np.float64)
        n = np.sqrt((v * v).sum())
        return v / n if n != 0 else np.zeros(3)
    beam_u = unit(beam_v)
    polar_u = unit(polar_v)
    spindle_u = unit(spindle)
    if not np.any(beam_u):
        raise SetupError("-beam_vector: the beam direction must not be zero")
    if not np.any(unit(fdet)) or not np.any(unit(sdet)):
        raise SetupError("-fdet_vector/-sdet_vector: detector axes must not be zero")
    # issue 6: degenerate directions give NaN geometry or a silently wrong image
    if np.linalg.norm(np.cross(unit(fdet), unit(sdet))) < 1e-6:
        raise SetupError("-fdet_vector/-sdet_vector: the fast and slow detector axes must not be parallel")
    if not np.any(spindle_u):
        raise SetupError("-spindle_axis: the rotation axis must not be zero")
    if not np.any(unit(tt_axis)):
        raise SetupError("-twotheta_axis: the two-theta axis must not be zero")
    if not np.any(polar_u):
        raise SetupError("-polar_vector: the polarization vector must not be zero")

    # ---- roi -------------------------------------------------------------------
    roi = list(f.roi)
    if roi[0] < 0: roi[0] = 0
    if roi[1] < 0: roi[1] = fpixels
    if roi[2] < 0: roi[2] = 0
    if roi[3] < 0: roi[3] = spixels
    if roi[0] > fpixels - 1 or roi[2] > spixels - 1 or roi[1] < roi[0] or roi[3] < roi[2]:
        raise SetupError(f"-roi {roi[0]} {roi[1]} {roi[2]} {roi[3]}: region is empty or outside the "
                         f"{fpixels}x{spixels} detector")
    # the C's own default end is fpixels/spixels (one past the last pixel), so that is allowed
    if roi[1] > fpixels or roi[3] > spixels:
        raise SetupError(f"-roi {roi[0]} {roi[1]} {roi[2]} {roi[3]}: region extends beyond the "
                         f"{fpixels}x{spixels} detector (pixels 0..{fpixels - 1} x 0..{spixels - 1})")

    # ---- structure factor source check (the C prints usage and exits) --------
    dump_path = path(f.dumpfilename)
    dump_exists = f.hklfilename is None and os.path.isfile(dump_path)
    if f.hklfilename is None and not dump_exists and f.default_F == 0.0:
        raise SetupError("no structure factors: give -hkl FILE or -default_F VALUE (no Fdump.bin to read)")
    if f.user_cell and f.matfilename is None:
        _check_cell(f.cell, f.cell_angles)
    if f.matfilename is None and f.cell[0] == 0.0:
        raise SetupError("no unit cell: give -cell a b c alpha beta gamma or -mat FILE")

    # ---- step-count rules ------------------------------------------------------
    phisteps, osc, phistep = f.phisteps, f.osc, f.phistep
    if phisteps < 0:
        if osc < 0.0:
            if phistep <= 0.0:
                phisteps, osc, phistep = 1, 0.0, 0.0
            else:
                osc, phisteps = phistep, 2
        else:
            if phistep <= 0.0:
                phisteps, phistep = 2, osc / 2.0
            else:
                phisteps = int(math.ceil(osc / phistep))
    else:
        if phisteps == 0:
            phisteps = 1
        if osc < 0.0:
            if phistep <= 0.0:
                osc = 1.0 / RTD
                phistep = osc / phisteps
            else:
                osc, phisteps = phistep, 2
        else:
            if phistep < 0.0:
                phistep = osc / phisteps
    hdivsteps, hdivrange, hdivstep = _steps_rule(f.hdivsteps, f.hdivrange, f.hdivstep, 1.0)
    vdivsteps, vdivrange, vdivstep = _steps_rule(f.vdivsteps, f.vdivrange, f.vdivstep, 1.0)
    dispsteps, dispersion, dispstep = _steps_rule(f.dispsteps, f.dispersion, -1.0, 1.0)  # no flag sets the step
    # detector layers
    tsteps, thick, tstep = f.detector_thicksteps, f.detector_thick, -1.0
    if tsteps <= 0:
        if thick < 0.0:
            tsteps, thick, tstep = 1, 0.0, 0.0
        else:
            tsteps = 2
            tstep = thick / tsteps
    else:
        if thick < 0.0:
            thick = 0.5e-6
            tstep = thick / tsteps
        else:
            if tsteps <= 1:
                tsteps = 2
            tstep = thick / (tsteps - 1)
    mu = f.detector_mu
    if thick > 0.0 and mu < 0.0:
        mu = 1.0 / thick
        say("WARNING: setting detector attenuation depth to %g m" % mu)
    # mosaic domains
    spread, domains = f.mosaic_spread, f.mosaic_domains
    if domains <= 0:
        if spread < 0.0:
            domains, spread = 1, 0.0
        elif spread == 0.0:
            domains = 1
        else:
            say("WARNING: finite mosaicity with only one domain! upping to 10 mosaic domains")
            domains = 10
    else:
        if spread < 0.0:
            say("WARNING: no mosaic spread specified.  setting mosaic_domains = 1")
            spread, domains = 0.0, 1
        elif spread == 0.0:
            say("WARNING: zero mosaic spread specified.  setting mosaic_domains = 1")
            domains = 1
    # sanity checks
    if hdivrange <= 0.0 or hdivstep <= 0.0 or hdivsteps <= 0:
        hdivsteps, hdivrange, hdivstep = 1, 0.0, 0.0
    if vdivrange <= 0.0 or vdivstep <= 0.0 or vdivsteps <= 0:
        vdivsteps, vdivrange, vdivstep = 1, 0.0, 0.0
    if dispersion <= 0.0 or dispstep <= 0.0 or dispsteps <= 0:
        dispsteps, dispersion, dispstep = 1, 0.0, 0.0
    if thick <= 0.0 or tstep <= 0.0 or tsteps <= 0:
        tsteps, thick, tstep = 1, 0.0, 0.0
    if f.lambda0 <= 0 or not math.isfinite(f.lambda0):
        raise SetupError("-lambda/-energy: wavelength must be positive and finite")
    if dispersion >= 2.0:
        raise SetupError("-dispersion %g: must be below 200%% (the shortest wavelength would be zero "
                         "or negative)" % (dispersion * 100))

    interpolate = f.interpolate
    if interpolate > 1:
        if f.Na <= 2 or f.Nb <= 2 or f.Nc <= 2:
            interp_msg = "auto-selected tricubic interpolation of structure factors"
            interpolate = 1
        else:
            interp_msg = "auto-selected no interpolation"
            interpolate = 0
    else:
        interp_msg = None

    rng = CRandom()
    # ---- crystal orientation --------------------------------------------------
    a_star = None
    if f.matfilename is not None:
        a_star = read_mosflm_matrix(path(f.matfilename), f.lambda0)
    misset = None
    misset_report = None
    if f.misset[0] == -1.0:
        stream = SeedStream(misset_seed)
        umat = rng.mosaic_rotation_umat(90.0, stream)
        misset = list(umat2misset(umat))
        misset_report = "random orientation misset angles: %f %f %f deg" % tuple(x * RTD for x in misset)
    elif f.misset[0] > 0.0:
        misset = list(f.misset[1:])
    cell = None
    if f.user_cell:
        cell = list(f.cell) + list(f.cell_angles)

    # ---- mosaic domains (after the misset draw, sharing the generator) ---------
    mstream = SeedStream(f.mosaic_seed)
    umats = np.zeros((domains, 3, 3))
    for d in range(domains):
        umats[d] = rng.mosaic_rotation_umat(spread, mstream)
        if d == 0:
            umats[0] = np.eye(3)
    # NB: the C draws the misset before reading structure factors and draws the
    # mosaic domains after; both only touch the generator, so the order is kept.

    # ---- structure factors -----------------------------------------------------
    hkl = None
    write_dump = False
    if f.hklfilename is not None:
        hkl = read_hkl(path(f.hklfilename), f.default_F)
        write_dump = True
    elif dump_exists:
        hkl = read_fdump(dump_path)
    if hkl is None:
        interpolate = 0

    # ---- sources -----------------------------------------------------------------
    beam = BeamConfig(wavelength=f.lambda0, beam_vector=tuple(beam_u), polar_vector=tuple(polar_u),
                      polarization=f.polarization, nopolar=f.nopolar, fluence=fluence,
                      hdivrange=hdivrange, hdivstep=hdivstep, hdivsteps=hdivsteps,
                      vdivrange=vdivrange, vdivstep=vdivstep, vdivsteps=vdivsteps,
                      round_div=f.round_div, dispersion=dispersion, dispstep=dispstep,
                      dispsteps=dispsteps, water_size=f.water_size)
    stol_rows = 0
    if f.stolfilename is not None:
        try:
            stol = read_columns(path(f.stolfilename), 2, min_fields=2, what="stol table", layout="stol F")
        except InputFileError as e:
            raise InputFileError(f"-stol {e}") from None
        if len(stol) == 0:
            raise SetupError(f"-stol {f.stolfilename}: no data in input file")
        stol_rows = len(stol)
    if f.sourcefilename is not None:
        try:
            # X Y Z weight lambda; the C program gives every missing trailing field a default
            cols = read_columns(path(f.sourcefilename), 5, min_fields=1, what="source file",
                                layout="X Y Z weight lambda")
        except InputFileError as e:
            raise InputFileError(f"-sourcefile {e}") from None
        if len(cols) == 0:
            raise SetupError(f"-sourcefile {f.sourcefilename}: no sources in file")
        _check_sources(f.sourcefilename, cols)
        beam.source_xyz = cols[:, :3]
        beam.source_weight = cols[:, 3]
        beam.source_lambda = cols[:, 4]

    det = DetectorConfig(fpixels=fpixels, spixels=spixels, pixel_size=px, distance=f.distance,
                         close_distance=None if math.isnan(f.close_distance) else f.close_distance,
                         Fbeam=Fbeam, Sbeam=Sbeam, Fclose=Fclose, Sclose=Sclose,
                         Xbeam=Xbeam, Ybeam=Ybeam, Xclose=Xclose, Yclose=Yclose,
                         convention=conv, pivot=pivot,
                         fdet_vector=tuple(float(x) for x in fdet), sdet_vector=tuple(float(x) for x in sdet),
                         odet_vector=tuple(float(x) for x in odet),
                         detector_rotx=f.detector_rotx, detector_roty=f.detector_roty, detector_rotz=f.detector_rotz,
                         twotheta=f.detector_twotheta, twotheta_axis=tuple(float(x) for x in tt_axis),
                         thickness=thick, mu=mu, thicksteps=tsteps, thickstep=tstep,
                         curved=f.curved_detector, point_pixel=f.point_pixel,
                         oversample=f.oversample, oversample_thick=f.oversample_thick,
                         oversample_polar=f.oversample_polar, oversample_omega=f.oversample_omega,
                         roi=tuple(roi), mask=mask, detsize_f=detsize_f, detsize_s=detsize_s)
    xtal = CrystalConfig(cell=cell, a_star=a_star, user_cell=f.user_cell, misset=misset,
                         Na=float(f.Na), Nb=float(f.Nb), Nc=float(f.Nc),
                         sample_size=(f.sample_x, sample_y, sample_z), shape=f.xtal_shape, fudge=f.fudge,
                         mosaic_spread=spread, mosaic_umats=umats, phi0=f.phi0, phistep=phistep,
                         phisteps=phisteps, osc=osc, spindle_axis=tuple(spindle_u),
                         phi_carryover=(f.phi_carryover == "c"))
    sf = StructureFactorConfig(default_F=f.default_F, interpolate=bool(interpolate))
    if hkl is not None:
        sf.grid, sf.hkl_min, sf.hkl_max = hkl.grid, hkl.hkl_min, hkl.hkl_max
    opts = SimulationOptions(dtype=f.dtype, device=f.device, dmin=f.dmin, progress=f.progress_meter,
                             compile=f.compile, backend=f.backend, c_legacy=f.c_legacy)
    st = Setup(beam=beam, detector=det, crystal=xtal, structure_factors=sf, options=opts, flags=f,
               rng=rng, noise_seed=seed, hkl=hkl, write_dump=write_dump, report=report, mask=mask,
               interpolate_auto=interp_msg, stol_rows=stol_rows)
    st.misset_report = misset_report
    st.dump_path = dump_path
    return st
