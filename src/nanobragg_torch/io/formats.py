"""Image formats: one entry point, :func:`write_image`, and the frame metadata the writers share.

=========  =============================================  ==========================================
format     written by                                     image it takes
=========  =============================================  ==========================================
``smv``    :mod:`.smv` (ADSC/SMV, the C program's)         uint16 (integers 0..65535)
``cbf``    :mod:`.cbf` (mini-CBF, or full imgCIF)          integers, or float32 (rounded to int32)
``h5``     :mod:`.nexus` (NeXus NXmx via h5py)             integers (int32) or float32
``nxs``    same as ``h5``                                  same as ``h5``
``float``  raw little-endian float32 (the C program's)     float32 (any real array is converted)
``pgm``    :mod:`.pgm` (8-bit P5, the C program's)         uint8, or a float image (auto-scaled)
``png``    :mod:`.png` (8-bit greyscale preview, Pillow)  any real image (log or linear scale)
=========  =============================================  ==========================================

``fmt=None`` picks the format from the file name's extension (:data:`EXTENSIONS`).
Every write is atomic: the data go to a temporary file beside the target,
which replaces the target only once it is complete, so a failed write never
leaves a truncated file or destroys an existing one.

``meta`` is the dictionary :func:`frame_metadata` builds from the command
line's set-up (geometry in metres, in nanoBragg's lab frame); the SMV writer
takes its header from ``meta["smv_header"]``, CBF and NeXus take the
geometry keys, the raw float and PGM/PNG writers need none of it.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from typing import Iterator, List, Optional

import numpy as np

__all__ = ["FORMATS", "EXTENSIONS", "FormatError", "format_from_extension", "write_image",
           "frame_metadata", "check_available", "atomic_path"]

FORMATS = ("smv", "cbf", "h5", "nxs", "float", "pgm", "png")

#: file name extensions (lower case) and the format each selects
EXTENSIONS = {
    ".img": "smv", ".smv": "smv",
    ".cbf": "cbf",
    ".h5": "h5", ".hdf5": "h5", ".hdf": "h5",
    ".nxs": "nxs", ".nx5": "nxs", ".nexus": "nxs",
    ".bin": "float", ".raw": "float", ".float": "float",
    ".pgm": "pgm",
    ".png": "png",
}

#: the package each format needs beyond numpy, and how to get it
_NEEDS = {"cbf": ("fabio", "fabio"), "h5": ("h5py", "h5py"), "nxs": ("h5py", "h5py"), "png": ("PIL", "pillow")}


class FormatError(ValueError):
    """An image that a format cannot hold, an unknown format, or a missing writer package."""


def format_from_extension(path: str, default: Optional[str] = None) -> Optional[str]:
    """The format that ``path``'s extension selects, else ``default``."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    return EXTENSIONS.get(ext, default)


def check_available(fmt: str) -> None:
    """Raise :class:`FormatError` when ``fmt`` is unknown or its writer package is not installed."""
    if fmt not in FORMATS:
        raise FormatError(f"unknown image format {fmt!r} (one of {', '.join(FORMATS)})")
    need = _NEEDS.get(fmt)
    if need is None:
        return
    module, package = need
    import importlib.util
    if importlib.util.find_spec(module) is None:
        raise FormatError(f"writing {fmt.upper()} files needs the '{package}' package "
                          f"(pip install 'nanobragg-torch[formats]')")


def missing_packages(fmts) -> List[str]:
    """The writer packages (pip names, in order, once each) that the formats ``fmts`` need and
    that are not installed."""
    import importlib.util
    out = []
    for fmt in fmts:
        need = _NEEDS.get(fmt)
        if need is not None and need[1] not in out and importlib.util.find_spec(need[0]) is None:
            out.append(need[1])
    return out


def missing_packages_message(what: List[str], packages: List[str]) -> str:
    """One line naming every output that cannot be written and every package missing."""
    pk = " and ".join("'%s'" % p for p in packages) if len(packages) < 3 else \
        ", ".join("'%s'" % p for p in packages[:-1]) + " and '%s'" % packages[-1]
    return (f"{', '.join(what)}: {'this needs' if len(what) == 1 else 'these need'} "
            f"the {pk} package{'s' if len(packages) > 1 else ''} (pip install 'nanobragg-torch[formats]')")


@contextlib.contextmanager
def atomic_path(target: str) -> Iterator[str]:
    """A path, with ``target``'s base name, that a library may write; it then replaces ``target``.

    The file is created in a private temporary folder next to ``target`` (same
    filesystem, so the final :func:`os.replace` is an atomic rename); some
    writers (fabio's CBF) put the base name into the file, hence the folder.
    On any error the temporary folder is removed and ``target`` is untouched.
    """
    target = os.fspath(target)
    directory = os.path.dirname(os.path.abspath(target))
    tmpdir = tempfile.mkdtemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=directory)
    tmp = os.path.join(tmpdir, os.path.basename(target))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _as_2d(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 2:
        raise FormatError(f"image must be 2-D (slow, fast), got shape {img.shape}")
    if img.size == 0:
        raise FormatError("image has no pixels")
    if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise FormatError(f"image must hold integers or floats, got {img.dtype}")
    return img


def _smv_header_from_meta(img: np.ndarray, meta: dict):
    """A minimal SMV header when ``meta`` has no ``smv_header``."""
    from .smv import HEADER_BYTES, c_format_g, native_byte_order
    S, F = img.shape
    items = [("HEADER_BYTES", "%d" % HEADER_BYTES), ("DIM", "2"), ("BYTE_ORDER", native_byte_order()),
             ("TYPE", "unsigned_short"), ("SIZE1", "%d" % F), ("SIZE2", "%d" % S)]
    for key, name, scale in (("PIXEL_SIZE", "pixel_size_m", 1e3), ("DISTANCE", "distance_m", 1e3),
                             ("WAVELENGTH", "wavelength_m", 1e10)):
        if name in meta:
            items.append((key, c_format_g(float(meta[name]) * scale)))
    return items


def _smv_header_that_fits(items, img: np.ndarray):
    """The header items, or -- when they do not fit in 512 bytes -- padded header bytes
    that declare a larger ``HEADER_BYTES`` (a multiple of 512), so that every reader finds the
    pixels (the C program would write a longer header and still claim 512 bytes)."""
    import warnings

    from .smv import HEADER_BYTES, build_smv_header
    if isinstance(items, (bytes, bytearray, str)):
        return items
    items = list(items.items() if isinstance(items, dict) else items)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        text = build_smv_header(items)
        if len(text) <= HEADER_BYTES:
            return items
        size = HEADER_BYTES * (len(text) // HEADER_BYTES + 1)
        for _ in range(2):   # the new HEADER_BYTES value may itself be longer
            items = [(k, str(size) if k == "HEADER_BYTES" else v) for k, v in items]
            text = build_smv_header(items)
            if len(text) <= size:
                break
            size = HEADER_BYTES * (len(text) // HEADER_BYTES + 1)
    S, F = img.shape
    sizes = dict((k, v) for k, v in items if k in ("SIZE1", "SIZE2"))
    if sizes and (int(float(sizes.get("SIZE1", F))) != F or int(float(sizes.get("SIZE2", S))) != S):
        raise FormatError(f"SMV header SIZE1/SIZE2 {sizes} do not match the image shape {img.shape}")
    return text + b" " * (size - len(text))


def write_image(path: str, image: np.ndarray, meta: dict, fmt: Optional[str] = None) -> None:
    """Write ``image`` (slow, fast) to ``path`` in ``fmt`` (None: by extension), atomically.

    ``fmt`` is one of :data:`FORMATS`.  ``smv`` takes uint16 (other integer
    arrays inside 0..65535 are converted), ``float`` float32, ``cbf`` and
    ``h5``/``nxs`` float32 or integers, ``pgm`` uint8 or a float image (scaled
    as the C program scales its PGM), ``png`` any real image.  ``meta`` is a
    :func:`frame_metadata` dictionary (may be empty for float, pgm and png).
    Raises :class:`FormatError` for an unknown format, an extension that
    selects none, an image the format cannot hold or a missing writer
    package, and :class:`OSError` when the file cannot be written.
    """
    path = os.fspath(path)
    meta = dict(meta or {})
    if fmt is None:
        fmt = format_from_extension(path)
        if fmt is None:
            raise FormatError(f"{path}: cannot tell the image format from the extension "
                              f"(known: {', '.join(sorted(EXTENSIONS))}); pass fmt=")
    fmt = fmt.lower()
    check_available(fmt)
    img = _as_2d(image)

    if fmt == "smv":
        from .smv import write_smv
        if img.dtype != np.uint16:
            if not np.issubdtype(img.dtype, np.integer) or img.min() < 0 or img.max() > 65535:
                raise FormatError(f"{path}: SMV holds 16-bit unsigned integers; got {img.dtype} "
                                  f"values {img.min()}..{img.max()}")
            img = img.astype(np.uint16)
        header = meta.get("smv_header") or _smv_header_from_meta(img, meta)
        header = _smv_header_that_fits(header, img)
        import warnings
        with warnings.catch_warnings():     # a longer header is padded and declared (see above)
            warnings.simplefilter("ignore", RuntimeWarning)
            write_smv(path, img, header)
    elif fmt == "float":
        from .atomic import atomic_write_bytes
        if not np.issubdtype(img.dtype, np.floating) and not np.issubdtype(img.dtype, np.integer):
            raise FormatError(f"{path}: raw float image needs real values, got {img.dtype}")
        atomic_write_bytes(path, np.ascontiguousarray(img, dtype="<f4").tobytes())
    elif fmt == "pgm":
        from .pgm import pgm_image, write_pgm
        if img.dtype == np.uint8:
            write_pgm(path, img, float(meta.get("pgm_scale", 1.0)))
        else:
            f = img.astype(np.float64)
            finite = f[np.isfinite(f)]
            rmsd = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
            pgm, scale = pgm_image(np.where(np.isfinite(f), f, 0.0).astype(np.float32),
                                   float(meta.get("pgm_scale", 0.0)), 1.0, rmsd)
            write_pgm(path, pgm, scale)
    elif fmt == "png":
        from .png import write_png
        write_png(path, img, scale=meta.get("png_scale", "asinh"))
    elif fmt == "cbf":
        from .cbf import write_cbf
        write_cbf(path, img, meta)
    else:  # h5 / nxs
        from .nexus import write_nexus
        write_nexus(path, img, meta)


def _vec(t) -> list:
    return [float(x) for x in (t.tolist() if hasattr(t, "tolist") else t)]


def _flux(beam, flags) -> float:
    """Photons per second: the fluence times the beam area over the exposure (0 when unknown)."""
    if flags is None:
        return 0.0
    size, exposure = float(flags.beamsize), float(flags.exposure)
    if float(flags.flux) > 0.0:
        return float(flags.flux)
    if size > 0.0 and exposure > 0.0 and math.isfinite(float(beam.fluence)):
        return float(beam.fluence) * size * size / exposure
    return 0.0


def frame_metadata(setup, prepared) -> dict:
    """Geometry and beam of a command-line set-up, for the writers (SI units, nanoBragg lab frame).

    ``setup`` is the command line's set-up record (``cli.resolve.Setup``: its
    ``detector``, ``beam``, ``crystal``, ``options`` and ``flags``), ``prepared``
    the :class:`nanobragg_torch.simulator.Prepared` of the same run.  Keys:

    ``pixel_size_m``, ``fpixels``, ``spixels``, ``distance_m`` (sample to the
    point where the direct beam meets the detector plane), ``close_distance_m``
    (sample to the detector plane along its normal), ``wavelength_m``,
    ``beam_center_fast_m`` / ``beam_center_slow_m`` (that point, from the
    outer corner of the first pixel along the fast/slow axes), ``fdet``,
    ``sdet``, ``odet`` (unit axes), ``pix0_m`` (outer corner of the first
    pixel), ``beam_vector`` (direction of travel), ``spindle_axis``,
    ``phi_start_deg``, ``osc_range_deg``, ``twotheta_deg``, ``polarization``,
    ``fluence`` (photons/m^2), ``flux_photons_per_s``, ``exposure_s``, ``sensor_thickness_m``, ``convention``,
    ``orgx``/``orgy`` (XDS origin, pixels), ``dials_origin_mm``, ``mask``
    (bool (slow, fast) of the pixels the -mask file switches off, or None),
    ``smv_header`` (the integer image's SMV header items) and
    ``smv_header_noise`` (the noise image's), ``c_beam`` (the C program's
    printed ``Fbeam``/``Sbeam``/``distance``, which differ from the geometric
    values when the detector is swung by ``-twotheta``; where the beam never
    meets the detector in front of the sample, the headers carry these and
    ``c_beam["no_beam_spot"]`` says why).

    The beam centre and distance come from :func:`.geometry.beam_on_detector`
    (the rotated axes, ``pix0`` and the beam direction); with
    ``setup.options.c_legacy`` the SMV header carries the C program's printed
    values instead, byte for byte as the C writes them.
    """
    from .geometry import beam_on_detector
    from .smv import smv_header_values
    det, bm, xt = setup.detector, setup.beam, setup.crystal
    geo = prepared.geometry
    pixel = float(det.pixel_size)
    orgx, orgy = geo.orgx_orgy(pixel)
    legacy = bool(getattr(getattr(setup, "options", None), "c_legacy", False))
    c_beam = {"Fbeam_m": float(geo.Fbeam), "Sbeam_m": float(geo.Sbeam), "distance_m": float(geo.distance)}
    try:
        spot = beam_on_detector(_vec(geo.pix0), _vec(geo.fdet), _vec(geo.sdet), _vec(geo.beam_vector))
    except ValueError as e:
        # the direct beam never meets the detector in front of the sample: there is no beam
        # centre; the headers carry the C program's numbers (as it would write them)
        from .geometry import BeamSpot
        c_beam["no_beam_spot"] = str(e)
        spot = BeamSpot(fast_m=c_beam["Fbeam_m"], slow_m=c_beam["Sbeam_m"], distance_m=c_beam["distance_m"],
                        close_distance_m=abs(float(geo.close_distance)), normal_angle_deg=float("nan"),
                        point_m=(float("nan"),) * 3)
    header_args = dict(
        fpixels=det.fpixels, spixels=det.spixels, pixel_size_m=pixel,
        distance_m=c_beam["distance_m"] if legacy else spot.distance_m,
        wavelength_m=float(bm.wavelength), Xbeam_m=float(det.Xbeam), Ybeam_m=float(det.Ybeam),
        Fbeam_m=c_beam["Fbeam_m"] if legacy else spot.fast_m,
        Sbeam_m=c_beam["Sbeam_m"] if legacy else spot.slow_m, detsize_s_m=float(det.size_s()),
        dials_origin_mm=_vec(geo.dials_origin_mm()), orgx=float(orgx), orgy=float(orgy),
        close_distance_m=float(geo.close_distance), phi0_rad=float(xt.phi0), osc_rad=float(xt.osc),
        twotheta_rad=float(det.twotheta))
    mask = None
    if det.mask is not None:
        mask = np.asarray(det.mask).reshape(det.spixels, det.fpixels) == 0
    flags = getattr(setup, "flags", None)
    return {
        "pixel_size_m": pixel,
        "fpixels": int(det.fpixels),
        "spixels": int(det.spixels),
        "distance_m": spot.distance_m,
        "close_distance_m": spot.close_distance_m,
        "wavelength_m": float(bm.wavelength),
        "beam_center_fast_m": spot.fast_m,
        "beam_center_slow_m": spot.slow_m,
        "fdet": _vec(geo.fdet),
        "sdet": _vec(geo.sdet),
        "odet": _vec(geo.odet),
        "pix0_m": _vec(geo.pix0),
        "beam_vector": _vec(geo.beam_vector),
        "spindle_axis": _vec(xt.spindle_axis),
        "phi_start_deg": math.degrees(float(xt.phi0)),
        "osc_range_deg": math.degrees(float(xt.osc)),
        "twotheta_deg": math.degrees(float(det.twotheta)),
        "polarization": float(bm.polarization),
        "fluence": float(bm.fluence),
        "flux_photons_per_s": _flux(bm, flags),
        "exposure_s": float(flags.exposure) if flags is not None else 1.0,
        "sensor_thickness_m": float(det.thickness),
        "convention": str(det.convention),
        "orgx": float(orgx),
        "orgy": float(orgy),
        "dials_origin_mm": _vec(geo.dials_origin_mm()),
        "mask": mask,
        "c_beam": c_beam,
        "smv_header": smv_header_values(**header_args),
        "smv_header_noise": smv_header_values(**header_args, noise_file=True),
    }


def lab_to_mcstas(beam_vector) -> np.ndarray:
    """Rotation taking nanoBragg's lab frame to NeXus' McStas frame (beam along +z, y up).

    For the default beam (+x) this is (x, y, z) -> (-z, y, x), the frame in
    which the C program's ``DIALS_ORIGIN`` (imgCIF = McStas rotated 180 deg
    about y) is written.
    """
    ez = np.asarray(beam_vector, dtype=np.float64)
    n = np.linalg.norm(ez)
    ez = ez / n if n > 0 else np.array([1.0, 0.0, 0.0])
    up = np.array([0.0, 1.0, 0.0])
    if abs(ez @ up) > 0.999999:
        up = np.array([0.0, 0.0, 1.0])
    ey = up - (up @ ez) * ez
    ey /= np.linalg.norm(ey)
    ex = np.cross(ey, ez)
    return np.vstack([ex, ey, ez])


def read_image(path: str, fmt: Optional[str] = None, shape=None):
    """Read an image file of any format this package writes: ``(image (slow, fast), info)``.

    ``fmt`` is one of :data:`FORMATS` (None: by extension; an unknown
    extension is tried as SMV).  ``shape`` (slow, fast) is needed only for a
    raw float file that is not square.  ``info`` holds ``format`` and, where
    the file says it, the geometry in SI units: ``fpixels``, ``spixels``,
    ``pixel_size_m``, ``distance_m`` (sample to where the beam meets the
    detector), ``wavelength_m``, ``beam_center_fast_m``/``beam_center_slow_m``
    (from the outer corner of the first pixel), ``phi_start_deg``,
    ``osc_range_deg``; ``header`` (SMV and CBF: the header dictionary) and
    ``mask`` (NeXus: bool (slow, fast) of the pixels ``pixel_mask`` marks).
    Raises ValueError (the file is not of that format or is damaged) naming
    the file, OSError when it cannot be read, FormatError for PNG or a
    missing reader package.
    """
    path = os.fspath(path)
    fmt = (fmt or format_from_extension(path, "smv")).lower()
    if fmt not in FORMATS:
        raise FormatError(f"unknown image format {fmt!r} (one of {', '.join(FORMATS)})")
    if fmt == "png":
        raise FormatError(f"{path}: PNG is a preview; read the float, SMV, CBF or NeXus image")
    check_available(fmt)
    info: dict = {"format": fmt}
    if fmt == "smv":
        from .smv import read_smv, smv_geometry
        header, image = read_smv(path)
        info.update(smv_geometry(header))
        info["header"] = header
    elif fmt == "cbf":
        from .cbf import cbf_geometry, read_cbf
        header, image = read_cbf(path)
        info.update(cbf_geometry(header, path))
        info["header"] = header
    elif fmt in ("h5", "nxs"):
        from .nexus import read_nexus
        geo, image, mask = read_nexus(path)
        info.update(geo)
        info["mask"] = mask
    elif fmt == "float":
        from .raw import read_float
        image = read_float(path, shape)
    else:
        from .pgm import read_pgm
        image, comment = read_pgm(path)
        info["comment"] = comment
    info.setdefault("spixels", int(image.shape[0]))
    info.setdefault("fpixels", int(image.shape[1]))
    return image, info
