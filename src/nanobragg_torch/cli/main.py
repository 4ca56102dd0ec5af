"""``nanoBragg`` command line: the reference program's flags, outputs and report.

Flow: flags -> set-up (:mod:`.resolve`) -> models -> engine -> statistics and
files.  Every problem with the input is reported on one line
(``nanoBragg: error: ...``) with exit status 2 and no traceback; nothing is
written before the image has been rendered, and files are replaced atomically.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import List, Optional

import numpy as np
import torch

from ..config import R_E_SQR
from ..io.hkl import InputFileError, write_fdump
from .flags import RTD, FlagError, parse_flags
from .resolve import SetupError, build_setup
from .usage import usage_text

EXIT_USAGE = 2


def _g(x) -> str:
    return "%g" % float(x)


def image_statistics(img: np.ndarray, rendered: np.ndarray, roi):
    """The C program's statistics: (max_I, max index, mean, rms, rmsd).

    ``img`` is the float32 image; mean and rms are over the rendered pixels
    (inside the ROI and unmasked), the rmsd over the ROI ignoring the mask.
    """
    flat = img.reshape(-1).astype(np.float64)
    vals = flat[rendered]
    n = len(vals)
    if n:
        imax = int(rendered[int(np.argmax(vals))])
        max_I = float(vals.max())
        if max_I <= 0.0:
            imax, max_I = None, 0.0
    else:
        imax, max_I = None, 0.0
    sumn = n if n > 0 else 1
    avg = float(vals.sum()) / sumn
    if sumn <= 1:
        sumn = 2
    rms = math.sqrt(float((vals * vals).sum()) / (sumn - 1))
    S, F = img.shape
    x0, x1, y0, y1 = roi
    roi_vals = img[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1].astype(np.float64).reshape(-1)
    m = len(roi_vals)
    if m <= 1:
        m = 2
    rmsd = math.sqrt(float(((roi_vals - avg) ** 2).sum()) / (m - 1))
    return max_I, imax, avg, rms, rmsd


def _print_setup(out, st, prep, res=None):
    f = st.flags
    det, xt, bm = st.detector, st.crystal, st.beam
    geo = prep.geometry
    lat = prep.lattice
    p = lambda s="": print(s, file=out)
    p("%s convention selected." % det.convention)
    p("pivoting detector around %s" % ("sample" if det.pivot == "sample" else "direct beam spot"))
    bvec = geo.beam_vector
    p("XDS incident beam: %g %g %g" % (float(bvec @ geo.fdet), float(bvec @ geo.sdet), float(bvec @ geo.odet)))
    if st.interpolate_auto:
        p(st.interpolate_auto)
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
        p("         recommend -oversample %d to work around this" % prep.recommended_oversample)
    for line in st.report:
        p(line)
    if st.hkl is not None and st.flags.hklfilename is None:
        p("reading Fs from %s" % st.flags.dumpfilename)
    for t in range(det.thicksteps):
        p("thick%d = %g um" % (t, det.thickstep * t * 1e6))
    for i in range(xt.phisteps):
        p("phi%d = %g" % (i, (xt.phi0 + xt.phistep * i) * RTD))
    src = prep.sources
    p("  created a total of %d sources:" % src.incident.shape[0])
    for i in range(src.incident.shape[0]):
        x, y, z = (float(v) for v in src.position[i])
        p("%g %g %g   %g %g" % (x, y, z, float(src.weight[i]), float(src.wavelength[i])))
    domains = 1 if xt.mosaic_umats is None else len(xt.mosaic_umats)
    p("  created a total of %d mosaic domains" % domains)
    p("  %d initialized hkls (all others =%g)" % (st.structure_factors.hkls, st.structure_factors.default_F))
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
    p("  %d divergence steps" % src.divsteps)
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


def run(argv: List[str], out=None, cwd: str = ".") -> int:
    """Run the command line; returns the exit status."""
    out = out or sys.stdout
    if not argv or any(a in ("-h", "--help", "-help") for a in argv):
        print(usage_text(), file=out)
        return 0 if argv else EXIT_USAGE
    flags = parse_flags(argv)
    st = build_setup(flags, cwd=cwd)
    f = st.flags
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[f.dtype]
    if f.device.startswith("cuda") and not torch.cuda.is_available():
        raise SetupError(f"-device {f.device}: CUDA is not available on this machine")

    from ..simulator import build_problem, prepare
    from ..engine import render
    print("nanoBragg nanocrystal diffraction simulator (nanobragg-torch)", file=out)
    prep = prepare(st.crystal, st.detector, st.beam, device=f.device, dtype=torch.float64)
    _print_setup(out, st, prep)
    out.flush()

    def path(p):
        return p if os.path.isabs(p) else os.path.join(cwd, p)

    if st.write_dump:
        write_fdump(path(f.dumpfilename), st.hkl)

    progress = None
    if f.progress_meter and hasattr(out, "isatty") and out.isatty():
        from ..tools.progress import ProgressBar
        progress = ProgressBar(out)
    pb = build_problem(prep, st.crystal, st.detector, st.beam, st.structure_factors, st.options)
    if f.trace_pixel is not None:
        from ..tools.trace import trace_pixel
        trace_pixel(st, prep, pb, out, json_path=(path(f.trace_json) if f.trace_json else None))
    with torch.no_grad():
        res = render(pb, st.options.max_chunk_elements, progress=progress)
    if progress is not None:
        progress.close()
    if res.state.oob_warning is not None:
        h, k, l = res.state.oob_warning
        print("WARNING: out of range for three point interpolation: h,k,l,h0,k0,l0: %g,%g,%g,%d,%d,%d "
              % (h, k, l, math.ceil(h - 0.5), math.ceil(k - 0.5), math.ceil(l - 0.5)), file=out)
        print("WARNING: further warnings will not be printed! ", file=out)
    img32 = res.image.detach().to("cpu", torch.float64).numpy().astype(np.float32)
    print("", file=out)
    omega_sum = float(res.omega_sum)
    print("solid angle subtended by detector = %g steradian ( %g%% sphere)"
          % (omega_sum / prep.steps, 100 * omega_sum / prep.steps / 4 / math.pi), file=out)
    det = st.detector
    rendered = prep.pixels.cpu().numpy()
    max_I, imax, avg, rms, rmsd = image_statistics(img32, rendered, det.roi)
    write_outputs(st, prep, img32, max_I, imax, avg, rms, rmsd, out, path)
    return 0


def write_outputs(st, prep, img32, max_I, imax, avg, rms, rmsd, out, path):
    from ..io.atomic import atomic_write_bytes
    from ..io.pgm import pgm_image, write_pgm
    from ..io.smv import int_image, smv_header_values, write_smv
    f = st.flags
    det = st.detector
    geo = prep.geometry
    S, F = img32.shape
    print("writing %s as %d 4-byte floats" % (f.floatfilename, S * F), file=out)
    atomic_write_bytes(path(f.floatfilename), img32.astype("<f4").tobytes())
    if imax is not None:
        O = prep.oversample
        sub = det.pixel_size / O
        fp, sp = imax % F, imax // F
        mx = sub * (fp * O + O - 1) + sub / 2.0
        my = sub * (sp * O + O - 1) + sub / 2.0
    else:
        mx = my = 0.0
    print("max_I = %g  at %g %g" % (max_I, mx, my), file=out)
    print("mean= %g rms= %g rmsd= %g" % (avg, rms, rmsd), file=out)
    orgx, orgy = geo.orgx_orgy(det.pixel_size)
    header_args = dict(
        fpixels=F, spixels=S, pixel_size_m=det.pixel_size, distance_m=float(geo.distance),
        wavelength_m=st.beam.wavelength, Xbeam_m=det.Xbeam, Ybeam_m=det.Ybeam,
        Fbeam_m=float(geo.Fbeam), Sbeam_m=float(geo.Sbeam), detsize_s_m=det.size_s(),
        dials_origin_mm=[float(v) for v in geo.dials_origin_mm()], orgx=float(orgx), orgy=float(orgy),
        close_distance_m=float(geo.close_distance), phi0_rad=st.crystal.phi0, osc_rad=st.crystal.osc,
        twotheta_rad=det.twotheta)
    header = smv_header_values(**header_args)
    intimg, scale = int_image(img32, f.intfile_scale, f.adc_offset, det.roi, max_I=max_I)
    print("intfile_scale = %g" % scale, file=out)
    print("writing %s as 2-byte integers" % f.intfilename, file=out)
    write_smv(path(f.intfilename), intimg, header)
    if f.write_pgm:
        pgm, pscale = pgm_image(img32, f.pgm_scale, scale, rmsd, det.roi)
        print("pgm_scale = %g" % pscale, file=out)
        print("writing %s as 1-byte integers" % f.pgmfilename, file=out)
        write_pgm(path(f.pgmfilename), pgm, pscale)
    if f.calculate_noise:
        from ..rng import SeedStream
        noise, photons, overloads = st.rng.noise_image(img32, SeedStream(st.noise_seed), det.roi, f.adc_offset)
        print("%.0f photons on noise image (%d overloads)" % (photons, overloads), file=out)
        print("writing %s as 2-byte integers" % f.noisefilename, file=out)
        write_smv(path(f.noisefilename), noise, smv_header_values(**header_args, noise_file=True))


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rc = run(argv)
    except (FlagError, SetupError, InputFileError) as e:
        print(f"nanoBragg: error: {e}", file=sys.stderr)
        rc = EXIT_USAGE
    except KeyboardInterrupt:
        print("nanoBragg: interrupted; no output was written after the interruption", file=sys.stderr)
        rc = 130
    except OSError as e:
        name = e.filename if e.filename else ""
        print(f"nanoBragg: error: {name}: {e.strerror or e}", file=sys.stderr)
        rc = 1
    return rc


def console_main():
    sys.exit(main())


if __name__ == "__main__":
    console_main()
