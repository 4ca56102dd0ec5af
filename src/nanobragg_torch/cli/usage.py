"""The ``-h`` listing: every flag with its units and default."""
from __future__ import annotations

# (flags, value, units/default, description)
FLAG_TABLE = [
    ("Crystal", None, None, None),
    ("-cell", "a b c al be ga", "A, deg", "unit cell (alternative to -mat)"),
    ("-mat", "FILE", "", "MOSFLM A matrix (reciprocal vectors x wavelength)"),
    ("-misset", "rx ry rz | random", "deg; none", "misset rotations about x, y, z, or a random orientation"),
    ("-misset_seed", "N", "time", "seed of the random orientation"),
    ("-hkl", "FILE", "", "h k l F text file (P1, no symmetry applied), or .mtz / .cif structure factors "
                         "(expanded to P1, needs gemmi); writes the -dump cache"),
    ("-mtz_column", "LABEL", "FC, FP, F, ...", "amplitude column of an MTZ (or _refln item of an mmCIF) -hkl file"),
    ("-pdb", "FILE", "", "atomic model (PDB or mmCIF): F computed with gemmi, electrons, F000 included, "
                         "to -dmin or the detector's corner"),
    ("-dump", "FILE", "Fdump.bin", "binary structure-factor cache, read when -hkl is absent"),
    ("-default_F", "F", "0", "structure factor of every reflection not in the file"),
    ("-N / -Na -Nb -Nc", "n", "1", "unit cells along each axis"),
    ("-samplesize / -sample_size / -xtalsize / -xtal_size", "mm", "0", "crystal size (sets N)"),
    ("-sample_thick -sample_width -sample_height", "mm", "0", "crystal size along x, y, z; also -sample_x -sample_y "
     "-sample_z, -xtal_thick -xtal_width -xtal_height, -xtal_x -xtal_y -xtal_z, -width -height"),
    ("-square_xtal", "", "default", "parallelepiped crystal (sinc lattice transform)"),
    ("-round_xtal", "", "", "ellipsoidal crystal"),
    ("-gauss_xtal", "", "", "Gaussian spots, no inter-Bragg maxima"),
    ("-tophat_spots / -binary_spots", "", "", "flat-top spots clipped at the FWHM"),
    ("-fudge", "f", "1", "scale of the spot radius for round/gauss/tophat shapes"),
    ("-mosaic / -mosaicity / -mosaic_spread", "deg", "0", "isotropic mosaic spread"),
    ("-mosaic_dom / -mosaic_domains", "n", "10 if spread>0", "mosaic domains"),
    ("-mosaic_seed", "N", "12345678", "seed of the mosaic domains"),
    ("-phi", "deg", "0", "spindle angle at the start"),
    ("-osc", "deg", "0", "oscillation range"),
    ("-phistep", "deg", "osc/phisteps", "spindle step"),
    ("-phisteps", "n", "1", "spindle steps"),
    ("-spindle_axis", "x y z", "convention", "spindle rotation axis (selects the CUSTOM convention)"),
    ("-interpolate / -nointerpolate", "", "auto (on if any N<=2)", "tricubic interpolation of structure factors"),
    ("-water", "um", "0", "thickness of water around the crystal (background)"),
    ("-density / -sample_density, -MW / -molecular_weight / -molecules", "g/cm^3; g/mol", "1; 18", "read and reported only"),
    ("Beam", None, None, None),
    ("-lambda / -wavelength / -wave", "A", "1", "wavelength"),
    ("-energy", "eV", "", "photon energy (alternative to -lambda)"),
    ("-dispersion", "%", "0", "spectral dispersion (delta lambda / lambda)"),
    ("-dispsteps", "n", "auto", "wavelengths across the dispersion"),
    ("-divergence", "mrad", "0", "horizontal and vertical divergence range"),
    ("-hdivrange / -vdivrange", "mrad", "0", "divergence range"),
    ("-hdivstep / -vdivstep", "mrad", "range", "divergence step"),
    ("-hdivsteps / -vdivsteps / -divsteps", "n", "auto", "divergence steps"),
    ("-round_div / -square_div", "", "round", "trim the divergence grid to an ellipse, or not"),
    ("-sourcefile", "FILE", "", "sources: X Y Z (m, sample to source) weight lambda (m) per line"),
    ("-polar", "K", "0", "Kahn polarization factor"),
    ("-nopolar", "", "", "no polarization correction"),
    ("-polar_vector", "x y z", "convention", "E-vector of the beam (selects CUSTOM)"),
    ("-beam_vector", "x y z", "convention", "beam direction (selects CUSTOM)"),
    ("-fluence", "photons/m^2", "1.25932e29", "integrated incident fluence"),
    ("-flux", "photons/s", "0", "flux (with -exposure and -beamsize, sets the fluence)"),
    ("-exposure", "s", "1", "exposure time"),
    ("-beamsize", "mm", "0.1", "beam size (also clips the sample)"),
    ("-coherent", "", "", "read and ignored, as in the C program"),
    ("Detector", None, None, None),
    ("-distance", "mm", "100", "sample to beam spot (pivot: beam)"),
    ("-close_distance", "mm", "", "sample to detector plane (pivot: sample)"),
    ("-pixel", "mm", "0.1", "pixel size"),
    ("-detpixels / -detpixels_f -detpixels_s / -detpixels_x -detpixels_y", "n", "1024", "pixels"),
    ("-detsize / -detsize_f -detsize_s", "mm", "102.4", "detector size"),
    ("-Xbeam -Ybeam", "mm", "centre", "beam centre (pivot: beam)"),
    ("-Xclose -Yclose", "mm", "centre", "near point (pivot: sample)"),
    ("-ORGX -ORGY", "pixels", "centre", "XDS origin (pivot: sample)"),
    ("-mosflm -denzo -adxv -xds -dials", "", "mosflm", "beam-centre and axis conventions"),
    ("-pivot", "beam|sample", "by convention", "detector pivot (kept only in the CUSTOM convention)"),
    ("-detector_rotx -detector_roty -detector_rotz", "deg", "0", "detector rotations about x, y, z"),
    ("-twotheta", "deg", "0", "detector swing about the two-theta axis"),
    ("-twotheta_axis", "x y z", "convention", "two-theta axis (selects CUSTOM)"),
    ("-fdet_vector -sdet_vector -odet_vector", "x y z", "convention", "detector axes (select CUSTOM)"),
    ("-pix0_vector", "x y z", "", "selects CUSTOM; the origin is recomputed, as in the C program"),
    ("-curved_det", "", "", "all pixels at the same distance from the sample"),
    ("-point_pixel", "", "", "solid angle 1/R^2 (no obliquity)"),
    ("-detector_abs / -detector_absorb", "um | inf", "inf", "sensor attenuation depth"),
    ("-detector_thick", "um", "0", "sensor thickness"),
    ("-detector_thicksteps / -thicksteps", "n", "auto", "sensor layers"),
    ("-oversample", "n", "auto", "sub-pixels per pixel edge"),
    ("-oversample_thick -oversample_polar -oversample_omega", "", "off", "recompute that factor at every step; it weights its own term (the C compounds it: -c_legacy)"),
    ("-roi", "xmin xmax ymin ymax", "all", "render only this region (pixels, inclusive)"),
    ("-mask", "FILE.img", "", "SMV image; zero pixels are skipped (also sets geometry from its header)"),
    ("-img", "FILE.img", "", "take the detector geometry from an SMV header"),
    ("-dmin", "A", "0", "skip scattering beyond this resolution"),
    ("Output", None, None, None),
    ("-floatfile / -floatimage", "FILE", "floatimage.bin", "raw 4-byte float image; .h5/.nxs: NeXus"),
    ("-intfile / -intimage", "FILE", "intimage.img", "SMV image, scaled (always written); .cbf: CBF, .h5/.nxs: NeXus"),
    ("-scale", "s", "auto (55000/max)", "scale of the SMV image"),
    ("-adc", "counts", "40", "offset added to SMV pixels"),
    ("-noisefile / -noiseimage", "FILE", "noiseimage.img", "SMV image with Poisson noise; .cbf/.h5/.nxs as -intfile"),
    ("-format", "smv|cbf|h5|nxs", "by extension", "format of the -intfile and -noisefile images"),
    ("-nonoise", "", "", "do not write the noise image"),
    ("-seed", "N", "time", "seed of the noise"),
    ("-pgmfile / -pgmimage", "FILE", "image.pgm", "8-bit PGM preview"),
    ("-pgmscale", "s", "auto", "scale of the PGM"),
    ("-nopgm", "", "", "do not write the PGM"),
    ("-pngfile", "FILE", "", "8-bit PNG preview (needs pillow)"),
    ("-pngscale", "asinh|log|linear", "asinh", "brightness scale of the PNG preview (asinh: spots over a dark background)"),
    ("-printout", "", "", "print pixel values"),
    ("-printout_pixel", "f s", "", "print one pixel's values"),
    ("-noprogress / -progress", "", "progress on a terminal", "progress bar"),
    ("-stol / -4stol / -Q / -stolout", "FILE", "", "read and reported, as in the C program"),
    ("This project", None, None, None),
    ("-dtype", "float32|float64", "float32", "compute precision"),
    ("-device", "cpu|cuda[:n]|xpu[:n]|mps", "cpu", "compute device (checked before rendering)"),
    ("-backend", "auto|torch|fused|compile", "auto", "renderer: auto = the fused CPU kernel (compiled once per machine, cached) where it takes the problem, else torch (the reference; gradients)"),
    ("-compile", "", "off", "fused kernels (torch.compile): faster renders after a one-time compilation of tens of seconds; for many renders in one process"),
    ("-c_legacy", "", "off", "the unmodified C program's image: its phi=0 carry-over and compounding -oversample_* factors; "
                                  "its SMV header distance and beam centres"),
    ("-phi_carryover", "fixed|c", "fixed", "c: reproduce the C program's phi=0 carry-over bug alone"),
    ("-trace_pixel", "s f", "", "print every intermediate quantity of one pixel"),
    ("--trace-json / -trace_json", "FILE", "", "with -trace_pixel: also write the trace as JSON, per phi step"),
    ("-h / --help", "", "", "this listing"),
    ("Exit status: 0 done, 2 bad input, 1 an output cannot be written, 3 internal error "
     "(NB_DEBUG=1 shows the traceback), 141 the reader of the output went away (a pipe closed).", None, None, None),
]


WIDTH = 100        # columns of the -h listing
LEFT = 44          # width of its flag column


def usage_text() -> str:
    """The -h listing: every flag, lines of at most WIDTH columns."""
    import textwrap
    lines = ["usage: nanoBragg -cell a b c al be ga (or -mat A.mat) -hkl Fs.hkl (or -default_F F) [options]",
             "PyTorch reimplementation of nanoBragg; flags, units and defaults as the C program.", ""]
    indent = " " * (LEFT + 1)
    for flags, val, units, desc in FLAG_TABLE:
        if val is None:
            if flags.startswith("Exit status"):
                lines.append("")
                lines.extend(textwrap.wrap(flags, WIDTH))
            else:
                lines.append(f"{flags}:")
            continue
        left = f"  {flags} {val}".rstrip()
        right = f"{desc}" + (f" [{units}]" if units else "")
        if len(left) > LEFT:
            lines.extend(textwrap.wrap(left, WIDTH, subsequent_indent="    "))
            lines.extend(textwrap.wrap(right, WIDTH, initial_indent=indent, subsequent_indent=indent))
        else:
            body = textwrap.wrap(right, WIDTH - LEFT - 1) or [""]
            lines.append(f"{left:<{LEFT}s} {body[0]}".rstrip())
            lines.extend(indent + b for b in body[1:])
    return "\n".join(lines)


def markdown_tables() -> str:
    """The README's flag tables (one per group), from the same FLAG_TABLE."""
    out = []
    esc = lambda x: (x or "").replace("|", "\\|")            # noqa: E731
    for flags, val, units, desc in FLAG_TABLE:
        if val is None:
            if flags.startswith("Exit status"):
                out += ["", flags]
            else:
                out += ["" if out else None, f"**{flags}**", "", "| flag | value | units; default | meaning |",
                        "|---|---|---|---|"]
            continue
        out.append(f"| `{flags}` | {esc(val)} | {esc(units)} | {esc(desc)} |")
    return "\n".join(x for x in out if x is not None)


if __name__ == "__main__":      # python -m nanobragg_torch.cli.usage: the README's tables
    print(markdown_tables())
