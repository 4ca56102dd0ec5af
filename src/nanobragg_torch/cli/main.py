"""``nanoBragg`` command line: the reference program's flags, outputs and report.

Flow: flags -> set-up (:mod:`.resolve`) -> output check -> models -> engine ->
statistics and files.  Every problem with the input is reported on one line
(``nanoBragg: error: ...``) with exit status 2 and no traceback; every output
path is checked before rendering (exit status 1 when one cannot be written);
nothing is written before the image has been rendered (but ``Fdump.bin``, as
the C does), and files are replaced atomically.  Formats: docs/formats.md.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from .. import pipeline
from ..io.formats import (FormatError, check_available, format_from_extension, missing_packages,
                          missing_packages_message)
from ..io.hkl import InputFileError, write_fdump
from .flags import RTD, FlagError, parse_flags
from .resolve import SetupError
from .usage import usage_text

# torch is imported where it is used, so that ``-h`` and the flag errors need no PyTorch

EXIT_USAGE = 2
EXIT_IO = 1
EXIT_INTERNAL = 3


def _g(x) -> str:
    return "%g" % float(x)


def image_statistics(img: np.ndarray, rendered: np.ndarray, roi):
    """The C program's statistics as a tuple (max_I, max index, mean, rms, rmsd); see
    :func:`nanobragg_torch.pipeline.image_statistics`."""
    st = pipeline.image_statistics(img, rendered, roi)
    return st.max_I, st.imax, st.mean, st.rms, st.rmsd


def _print_setup(out, st, prep, res=None):
    import torch
    det, xt, bm = st.detector, st.crystal, st.beam
    geo = prep.geometry
    lat = prep.lattice
    p = lambda s="": print(s, file=out)
    for line in st.report:                  # the C prints these while it reads the flags
        if not line.startswith("WARNING: clipping sample"):
            p(line)
    p("%s convention selected." % det.convention)
    p("pivoting detector around %s" % ("sample" if det.pivot == "sample" else "direct beam spot"))
    bvec = geo.beam_vector
    p("XDS incident beam: %g %g %g" % (float(bvec @ geo.fdet), float(bvec @ geo.sdet), float(bvec @ geo.odet)))
    if st.interpolate_auto:
        p(st.interpolate_auto)
    if st.flags.matfilename:
        p("reading %s" % st.flags.matfilename)
    if st.misset_report:
        p(st.misset_report)
    a, b, c = (lat.a * 1e10, lat.b * 1e10, lat.c * 1e10)
    la, lb, lc = (float(torch.linalg.vector_norm(v)) for v in (a, b, c))
    ang = lambda u, v, nu, nv: math.degrees(math.acos(max(-1.0, min(1.0, float(u @ v) / nu / nv))))
    sa, sb, sc = lat.a_star, lat.b_star, lat.c_star
    nsa, nsb, nsc = (float(torch.linalg.vector_norm(v)) for v in (sa, sb, sc))
    p("Unit Cell: %g %g %g %g %g %g" % (la, lb, lc, ang(b, c, lb, lc), ang(a, c, la, lc), ang(a, b, la, lb)))
    p("Recp Cell: %g %g %g %g %g %g" % (nsa, nsb, nsc, ang(sb, sc, nsb, nsc), ang(sa, sc, nsa, nsc), ang(sa, sb, nsa, nsb)))
    p("volume = %g A^3" % float(lat.V_cell))
    p("real-space cell vectors (Angstrom):")
    p("     %-10s  %-10s  %-10s" % ("a", "b", "c"))
    for i, axis in enumerate("XYZ"):
        p("%s: %11.8f %11.8f %11.8f" % (axis, float(a[i]), float(b[i]), float(c[i])))
    p("reciprocal-space cell vectors (Angstrom^-1):")
    p("     %-10s  %-10s  %-10s" % ("a_star", "b_star", "c_star"))
    for i, axis in enumerate("XYZ"):
        p("%s: %11.8f %11.8f %11.8f" % (axis, float(sa[i]), float(sb[i]), float(sc[i])))
    p("crystal is %g x %g x %g microns" % tuple(s * 1e6 for s in prep.xtal_size))
    if det.oversample <= 0:
        p("auto-selected %d-fold oversampling" % prep.oversample)
    if prep.oversample < prep.recommended_oversample:
        p("WARNING: maximum dimension of sample is %g A" % (max(prep.xtal_size) * 1e10))
        p("         but reciprocal pixel size is %g A" % (bm.wavelength * float(geo.distance) / det.pixel_size
                                                          * 1e10))
        p("         intensity may vary significantly across a pixel!")
        p("         recommend -oversample %d to work around this" % prep.recommended_oversample)
    # the C's rough estimate: protein density 1.2 g/cm^3 over the crystal's volume and cells
    cells = float(prep.N[0]) * float(prep.N[1]) * float(prep.N[2])
    if cells > 0:
        volume = prep.xtal_size[0] * prep.xtal_size[1] * prep.xtal_size[2]
        p("approximate MW = %g" % (volume * 1.2e6 * 6.02214179e23 / cells))
    if st.hkl is not None and st.flags.hklfilename is None and st.flags.pdbfilename is None:
        p("reading Fs from %s" % st.flags.dumpfilename)
    elif st.flags.hklfilename is not None:
        p("counting entries in %s" % st.flags.hklfilename)
        if st.structure_factors.default_F != 0.0:
            p("initializing to default_F = %g:" % st.structure_factors.default_F)
            p("done initializing:")
        p("re-reading %s" % st.flags.hklfilename)
        if st.write_dump:
            p("writing dump file for next time: %s" % st.flags.dumpfilename)
    for t in range(det.thicksteps):
        p("thick%d = %g um" % (t, det.thickstep * t * 1e6))
    for i in range(xt.phisteps):
        p("phi%d = %g" % (i, (xt.phi0 + xt.phistep * i) * RTD))
    src = prep.sources
    if bm.source_xyz is None or len(bm.source_xyz) == 0:
        from ..models.beam import divergence_grid
        for hdiv, vdiv in divergence_grid(bm):
            p("divergence deviation: %g %g" % (hdiv, vdiv))
        for d in range(bm.dispsteps):
            p("lambda%d = %.15g" % (d, bm.wavelength * (1.0 + bm.dispstep * d - bm.dispersion / 2.0)))
    p("  created a total of %d sources:" % src.incident.shape[0])
    for i in range(src.incident.shape[0]):
        x, y, z = (float(v) for v in src.position[i])
        p("%g %g %g   %g %g" % (x, y, z, float(src.weight[i]), float(src.wavelength[i])))
    domains = 1 if xt.mosaic_umats is None else len(xt.mosaic_umats)
    p("  created a total of %d mosaic domains" % domains)
    # as the C counts them: reflections read from -hkl, grid cells from a dump file, else 0
    p("  %d initialized hkls (all others =%g)" % (st.hkl.count if st.hkl is not None else 0,
                                                  st.structure_factors.default_F))
    shape_name = {"round": "ellipsoidal", "square": "parallelpiped", "gauss": "gaussian", "tophat": "tophat-spot"}
    p("  %s xtal: %.0fx%.0fx%.0f cells" % (shape_name[xt.shape], *(float(n) for n in prep.N)))
    p("  wave=%g meters +/- %g%% in %d steps" % (bm.wavelength, bm.dispersion * 100, bm.dispsteps))
    if bm.nopolar:
        p("  polarization effect disabled")
    else:
        p("  Kahn polarization factor: %f" % bm.polarization)
    if det.curved:
        p("  curved detector: all pixels same distance from origin")
    if det.point_pixel:
        p("  pixel obliquity effect disabled")
    p("  incident fluence: %g photons/m^2" % bm.fluence)
    p("  distance=%g detsize=%gx%g  pixel=%g meters (%dx%d pixels)" % (
        float(geo.distance), det.size_f(), det.size_s(), det.pixel_size, det.fpixels, det.spixels))
    p("  sensor is %g m thick in %d layers with mu= %g" % (det.thickness, det.thicksteps, det.mu))
    p("  Xbeam=%g Ybeam=%g" % (det.Xbeam, det.Ybeam))
    p("  Fbeam=%g Sbeam=%g" % (float(geo.Fbeam), float(geo.Sbeam)))
    p("  Xclose=%g Yclose=%g" % (det.Xclose, det.Yclose))
    p("  Fclose=%g Sclose=%g" % (float(geo.Fclose), float(geo.Sclose)))
    p("  DIRECTION_OF_DETECTOR_X-AXIS= %g %g %g" % tuple(float(v) for v in geo.fdet))
    p("  DIRECTION_OF_DETECTOR_Y-AXIS= %g %g %g" % tuple(float(v) for v in geo.sdet))
    p("  DIRECTION_OF_DETECTOR_Z-AXIS= %g %g %g" % tuple(float(v) for v in geo.odet))
    p("  INCIDENT_BEAM_DIRECTION= %g %g %g" % tuple(float(v) for v in geo.beam_vector))
    p("  spindle ROTATION_AXIS= %g %g %g" % tuple(float(v) for v in xt.spindle_axis))
    pn = np.cross(np.asarray(bm.beam_vector, float), np.asarray(bm.polar_vector, float))
    p("  POLARIZATION_PLANE_NORMAL= %g %g %g" % tuple(pn))
    p("  dials origin= %g %g %g" % tuple(float(v) for v in geo.dials_origin_mm()))
    p("  roi: %d < x < %d && %d < y < %d" % tuple(det.roi))
    p("  hdivrange=%g hdivstep=%g  radians" % (bm.hdivrange, bm.hdivstep))
    p("  vdivrange=%g vdivstep=%g  radians" % (bm.vdivrange, bm.vdivstep))
    # the C's count is -1 (never set) when the sources come from -sourcefile
    p("  %d divergence steps" % (src.divsteps if bm.source_xyz is None or len(bm.source_xyz) == 0 else -1))
    p("  %d sources" % src.incident.shape[0])
    p("  %d mosaic domains over mosaic spread of %g degrees" % (domains, xt.mosaic_spread * RTD))
    p("  %d phi steps from %g to %g degrees" % (xt.phisteps, xt.phi0 * RTD, (xt.phi0 + xt.osc) * RTD))
    extra = "".join(s for s, on in ((" +thick", det.oversample_thick), (" +polar", det.oversample_polar),
                                   (" +omega", det.oversample_omega)) if on)
    p("  %dx%d pixel oversample steps%s" % (prep.oversample, prep.oversample, extra))
    if det.mask is not None:
        p("  skipping zero-flagged pixels in %s" % st.flags.maskfilename)
    if st.flags.calculate_noise:
        p("")
        p("  noise image paramters:")
        p("  seed: %d" % st.noise_seed)
        p("  water droplet size: %g m" % bm.water_size)


# ---------------------------------------------------------------------------
# outputs: what is written where, checked before any rendering
# ---------------------------------------------------------------------------

class OutputPathError(OSError):
    """An output file that cannot be written; the message names the flag and the file."""


#: the errors that are the user's input (exit status 2)
USAGE_ERRORS = (FlagError, SetupError, InputFileError, FormatError)

_FORMAT_EXT = {"smv": ".img", "cbf": ".cbf", "h5": ".h5", "nxs": ".nxs"}
_DEFAULT_NAMES = {"int": "intimage.img", "noise": "noiseimage.img"}


@dataclass
class Output:
    kind: str        # float | int | noise | pgm | png | dump | trace
    flag: str        # the flag that names it (for messages)
    name: str        # as the user gave it
    fmt: Optional[str] = None


def plan_outputs(st) -> List[Output]:
    """Every file this run will write, with its format (see docs/formats.md)."""
    f = st.flags
    plan = []
    ffmt = format_from_extension(f.floatfilename)
    if ffmt == "cbf":
        raise FormatError(f"-floatfile {f.floatfilename}: CBF holds integer counts, not the float image; "
                          "name the float image .bin (raw), .h5 or .nxs (NeXus), or use -intfile x.cbf")
    plan.append(Output("float", "-floatfile", f.floatfilename, ffmt if ffmt in ("h5", "nxs") else "float"))
    for kind, flag, name, on in (("int", "-intfile", f.intfilename, True),
                                 ("noise", "-noisefile", f.noisefilename, f.calculate_noise)):
        if not on:
            continue
        if f.image_format:
            fmt = f.image_format
            if name == _DEFAULT_NAMES[kind]:
                name = os.path.splitext(name)[0] + _FORMAT_EXT[fmt]
        else:
            fmt = format_from_extension(name)
            fmt = fmt if fmt in ("cbf", "h5", "nxs") else "smv"
        plan.append(Output(kind, flag, name, fmt))
    if f.write_pgm:
        plan.append(Output("pgm", "-pgmfile", f.pgmfilename, "pgm"))
    if f.pngfilename is not None:
        plan.append(Output("png", "-pngfile", f.pngfilename, "png"))
    if st.write_dump:
        plan.append(Output("dump", "-dump", f.dumpfilename))
    if f.trace_pixel is not None and f.trace_json:
        plan.append(Output("trace", "--trace-json", f.trace_json))
    return plan


def check_packages(flags) -> None:
    """One line naming every optional package the run needs and lacks: the writers of the
    output formats and gemmi for -hkl FILE.mtz/.cif and -pdb."""
    import importlib.util
    from types import SimpleNamespace
    from ..io.structure import structure_factor_kind
    plan = plan_outputs(SimpleNamespace(flags=flags, write_dump=False))
    what = [f"{o.flag} {o.name}" for o in plan if o.fmt is not None and missing_packages([o.fmt])]
    packages = missing_packages([o.fmt for o in plan if o.fmt is not None])
    readers = [("-hkl", flags.hklfilename)] if flags.hklfilename and \
        structure_factor_kind(flags.hklfilename) != "text" else []
    if flags.pdbfilename:
        readers.append(("-pdb", flags.pdbfilename))
    if readers and importlib.util.find_spec("gemmi") is None:
        what += [f"{flag} {name}" for flag, name in readers]
        packages.append("gemmi")
    if packages:
        raise FormatError(missing_packages_message(what, packages))


def check_outputs(plan: List[Output], st, path) -> None:
    """Fail before rendering when an output cannot be written (or would clobber an input)."""
    f = st.flags
    inputs = {}
    for flag, name in (("-hkl", f.hklfilename), ("-pdb", f.pdbfilename), ("-mat", f.matfilename),
                       ("-img", f.imginfilename),
                       ("-mask", f.maskfilename), ("-sourcefile", f.sourcefilename),
                       ("-stol", f.stolfilename)):
        if name:
            inputs.setdefault(os.path.realpath(path(name)), (flag, name))
    seen = {}
    probed = {}
    for o in plan:
        if o.fmt is not None:
            try:
                check_available(o.fmt)          # an unknown format (missing packages: check_packages)
            except FormatError as e:
                raise FormatError(f"{o.flag} {o.name}: {e}") from None
    for o in plan:
        if o.name == "":
            raise FlagError(f"{o.flag}: empty file name")
        full = path(o.name)
        real = os.path.realpath(full)
        if real in seen:
            other = seen[real]
            raise FlagError(f"{other.flag} and {o.flag} both write {o.name!r}; give them different names")
        seen[real] = o
        if real in inputs:
            flag, name = inputs[real]
            raise FlagError(f"{o.flag} {o.name}: would overwrite the input file given with {flag}")
        if os.path.isdir(full):
            raise OutputPathError(f"{o.flag} {o.name}: is a directory, not a file name")
        parent = os.path.dirname(os.path.abspath(full))
        shown = os.path.dirname(o.name) or "."
        if not os.path.exists(parent):
            raise OutputPathError(f"{o.flag} {o.name}: folder {shown!r} does not exist")
        if not os.path.isdir(parent):
            raise OutputPathError(f"{o.flag} {o.name}: {shown!r} is not a folder")
        if os.path.exists(full) and not os.access(full, os.W_OK):
            raise OutputPathError(f"{o.flag} {o.name}: file exists and is read-only")
        if parent not in probed:
            try:
                fd, tmp = tempfile.mkstemp(prefix=".nanobragg-probe-", dir=parent)
                os.close(fd)
                os.unlink(tmp)
                probed[parent] = None
            except OSError as e:
                probed[parent] = e.strerror or str(e)
        if probed[parent] is not None:
            raise OutputPathError(f"{o.flag} {o.name}: cannot create files in folder {shown!r} "
                                  f"({probed[parent]})")


MAX_WORK_PER_PIXEL = pipeline.MAX_WORK_PER_PIXEL
MAX_DETECTOR_DISTANCE = pipeline.MAX_DETECTOR_DISTANCE
check_work = pipeline.check_work


class _Writer:
    """Writes the planned outputs; an I/O failure names the flag and the file."""

    def __init__(self, plan, path):
        self.by_kind = {o.kind: o for o in plan}
        self.path = path

    def __contains__(self, kind):
        return kind in self.by_kind

    def __getitem__(self, kind):
        return self.by_kind[kind]

    def write(self, kind, fn, *args):
        o = self.by_kind[kind]
        try:
            fn(self.path(o.name), *args)
        except OSError as e:
            raise OutputPathError(f"{o.flag} {o.name}: cannot write ({e.strerror or e})") from None


def _strip_cwd(msg: str, cwd: str) -> str:
    if cwd in ("", "."):
        return msg
    prefix = os.path.join(cwd, "")
    return msg.replace(prefix, "")


def run(argv: List[str], out=None, cwd: str = ".", err=None) -> int:
    """Run the command line; returns the exit status.

    ``out`` receives the report (default stdout), ``err`` the progress bar
    (default stderr; shown only when it is a terminal).  Errors are raised
    (:data:`USAGE_ERRORS`, :class:`OutputPathError`, ...); :func:`main` turns
    them into one-line messages and exit codes.
    """
    out = out or sys.stdout
    err = err if err is not None else sys.stderr
    if not argv or any(a in ("-h", "--help", "-help") for a in argv):
        print(usage_text(), file=out)
        if not argv:
            raise FlagError("no flags given (the usage is above)")
        return 0
    try:
        return _run(argv, out, cwd, err)
    except USAGE_ERRORS + (OutputPathError,) as e:
        msg = _strip_cwd(str(e), cwd)
        if msg == str(e):
            raise
        raise type(e)(msg) from None


def _preload_noise_kernel() -> None:
    from .. import rng
    try:
        rng.preload_jit()
    except Exception:       # noise_image() compiles (and reports) on its own
        pass


def _run(argv: List[str], out, cwd: str, err) -> int:
    def path(p):
        return p if (os.path.isabs(p) or cwd in ("", ".")) else os.path.join(cwd, p)

    flags = parse_flags(argv)
    check_packages(flags)                   # before any input is read: every missing package at once
    st = pipeline.setup_from_flags(flags, cwd=cwd)
    f = st.flags
    pipeline.check_device(st)
    plan = plan_outputs(st)
    check_outputs(plan, st, path)
    writer = _Writer(plan, path)
    if "noise" in writer:
        # numba's import and kernel load (seconds) overlap the render on a background thread
        threading.Thread(target=_preload_noise_kernel, name="nb-noise-jit", daemon=True).start()

    for name in (f.maskfilename, f.imginfilename):      # the C reads the header images first
        if name:
            print("reading %s" % name, file=out)
    for line in st.report:                  # the C prints these before its banner
        if line.startswith("WARNING: clipping sample"):
            print(line, file=out)
    print("nanoBragg nanocrystal diffraction simulator (nanobragg-torch)", file=out)

    hooks = pipeline.Hooks()

    def prepared(st, prep):
        _print_setup(out, st, prep)
        out.flush()

    def problem(st, prep, pb):
        # after the backend check (a -backend that cannot take the problem is exit 2 before any file)
        if f.progress_meter and hasattr(err, "isatty") and err.isatty():
            from ..tools.progress import ProgressBar
            hooks.progress = ProgressBar(err)
        if st.write_dump:
            writer.write("dump", write_fdump, st.hkl)
        if f.trace_pixel is not None:
            from ..tools.trace import trace_pixel
            trace_pixel(st, prep, pb, out, json_path=(path(f.trace_json) if f.trace_json else None))

    hooks.prepared, hooks.problem = prepared, problem
    try:
        done = pipeline.run_setup(st, hooks)
    finally:
        if hooks.progress is not None:
            hooks.progress.close()
    res, prep = done.result, done.prepared
    if res.state.oob_warning is not None:
        h, k, l = res.state.oob_warning
        print("WARNING: out of range for three point interpolation: h,k,l,h0,k0,l0: %g,%g,%g,%d,%d,%d "
              % (h, k, l, math.ceil(h - 0.5), math.ceil(k - 0.5), math.ceil(l - 0.5)), file=out)
        print("WARNING: further warnings will not be printed! ", file=out)
    if done.nonfinite and not np.isnan(done.image).any():
        # +inf only: the physics overflowed 4-byte floats (an extreme set-up), nothing is written
        raise SetupError("%d pixels exceed the range of the 4-byte float image (more than %.3g photons): "
                         "the set-up is extreme (the detector distance, -point_pixel, -fluence or -water)"
                         % (done.nonfinite, float(np.finfo(np.float32).max)))
    if done.nonfinite:
        print("WARNING: %d pixels are not finite (NaN or overflow of 4-byte floats)" % done.nonfinite, file=out)
    print("", file=out)
    omega_sum = float(res.omega_sum)
    print("solid angle subtended by detector = %g steradian ( %g%% sphere)"
          % (omega_sum / prep.steps, 100 * omega_sum / prep.steps / 4 / math.pi), file=out)
    write_outputs(done, out, writer)
    return 0


_FMT_WORDS = {"cbf": "CBF (32-bit integers)", "h5": "NeXus/HDF5 (NXmx)", "nxs": "NeXus/HDF5 (NXmx)"}


def _writing(o, words_smv: str) -> str:
    if o.fmt in ("smv", "float"):
        return "writing %s as %s" % (o.name, words_smv)
    return "writing %s as %s" % (o.name, _FMT_WORDS[o.fmt])


def write_outputs(done: "pipeline.Rendered", out, writer: "_Writer") -> None:
    """Write every planned image of ``done`` (the C program's order and messages)."""
    f = done.setup.flags
    images = pipeline.OutputImages(done)
    S, F = done.image.shape
    stats = done.stats

    fo = writer["float"]
    if fo.fmt == "float":
        print("writing %s as %d 4-byte floats" % (fo.name, S * F), file=out)
    else:
        print("writing %s as %s, %d 4-byte floats" % (fo.name, _FMT_WORDS[fo.fmt], S * F), file=out)
    writer.write("float", images.write, "float", fo.fmt)
    mx, my = done.max_position()
    print("max_I = %g  at %g %g" % (stats.max_I, mx, my), file=out)
    print("mean= %g rms= %g rmsd= %g" % (stats.mean, stats.rms, stats.rmsd), file=out)
    print("intfile_scale = %g" % images.int_scale, file=out)
    print(_writing(writer["int"], "2-byte integers"), file=out)
    writer.write("int", images.write, "int", writer["int"].fmt)
    if "pgm" in writer:
        print("pgm_scale = %g" % images.pgm_scale, file=out)
        print("writing %s as 1-byte integers" % writer["pgm"].name, file=out)
        writer.write("pgm", images.write, "pgm", "pgm")
    if "png" in writer:
        print("writing %s as 8-bit PNG preview (%s scale)" % (writer["png"].name, f.png_scale), file=out)
        writer.write("png", images.write, "png", "png")
    if "noise" in writer:
        print("%.0f photons on noise image (%d overloads)" % (images.photons, images.overloads), file=out)
        print(_writing(writer["noise"], "2-byte integers"), file=out)
        writer.write("noise", images.write, "noise", writer["noise"].fmt)


# ---------------------------------------------------------------------------
# the program
# ---------------------------------------------------------------------------

def _is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def main(argv: Optional[List[str]] = None) -> int:
    """The ``nanoBragg`` program: returns the exit status, never raises (but SystemExit).

    0 success; 2 bad input (flags, values, input files, inconsistent set-up);
    1 an output cannot be written, or not enough memory; 130 interrupted;
    3 an internal error (one line; ``NB_DEBUG=1`` prints the traceback).
    """
    from .companion import run_main

    def out_of_memory(e):
        if _is_out_of_memory(e):
            return "not enough memory for this image (reduce -oversample, the steps, or the detector size)"
        return None
    return run_main("nanoBragg", run, argv, usage_errors=USAGE_ERRORS, output_errors=(OutputPathError,),
                    interrupted="interrupted; no output was written after the interruption",
                    out_of_memory=out_of_memory)


def console_main():
    sys.exit(main())


if __name__ == "__main__":
    console_main()
