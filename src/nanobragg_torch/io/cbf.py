"""CBF images: mini-CBF through fabio with a Pilatus-style header (full imgCIF: :mod:`.cbf_full`); writer and reader.

The pixels are stored as signed 32-bit integers with the byte-offset
compression every CBF reader understands (fabio, DIALS/dxtbx, XDS, adxv,
ALBULA).  A float image is rounded to the nearest integer (clipped to the
int32 range, NaN becomes 0): CBF holds counts.

The header (``_array_data.header_contents``) carries every line that dxtbx's
``FormatCBFMini`` and ``FormatCBFMiniPilatus`` read -- the ``# Detector:``
line, a timestamp line, ``Pixel_size``, the sensor line, ``Exposure_time``,
``Exposure_period``, ``Count_cutoff``, ``Wavelength``, ``Flux`` (photons/s),
``Detector_distance``, ``Beam_xy``, ``Start_angle``, ``Angle_increment`` --
plus the full nanoBragg geometry as ``# nanoBragg_...`` lines.  docs/formats.md
lists each line and its meaning.

Geometry: ``Beam_xy`` is where the direct beam meets the detector plane, in
pixels from the outer corner of the first pixel (fast, slow);
``Detector_distance`` is the sample-to-detector distance along the beam to
that point.  A mini-CBF describes a detector facing the beam, its fast axis
along the spindle and (fast x slow) along the beam (the frame dxtbx builds
from it); for any other geometry :func:`write_cbf` writes a full imgCIF file
instead (:mod:`.cbf_full`, every axis stated).  A mini-CBF forced on such a
geometry keeps these nearest faithful values, :func:`write_cbf` prints a
one-line warning on stderr, and the exact geometry is in the
``# nanoBragg_...`` lines (and in a NeXus file).

Sensor thickness: ``# Silicon sensor, thickness T m`` holds the simulation's
``-detector_thick`` (fixed-point, no exponent).  With no thickness in the
simulation (the default) it holds 0.000000001 m (:data:`.nexus.NO_THICKNESS_M`):
dxtbx then reads a pixel-array sensor (as the NeXus file says), and the parallax correction it always applies
to silicon (which asserts a thickness > 0) moves no spot by more than 1e-5
pixel.  The reader (:func:`cbf_geometry`) gives that value back as 0.
"""
from __future__ import annotations

import datetime
import os
import sys
from typing import Dict, Optional, Tuple

import numpy as np

__all__ = ["cbf_counts", "pilatus_header", "write_cbf", "read_cbf", "read_cbf_header",
           "cbf_geometry", "mini_cbf_geometry_problem", "pilatus_tiles"]

INT32_MAX = 2147483647

#: Pilatus module size (fast, slow) and the gaps between modules, as dxtbx assumes them
PILATUS_MODULE = (487, 195)
PILATUS_GAP = (7, 17)

_warned = set()


def cbf_counts(image: np.ndarray) -> np.ndarray:
    """The int32 pixels a CBF file holds for ``image`` (floats rounded and clipped)."""
    img = np.asarray(image)
    if np.issubdtype(img.dtype, np.integer):
        if img.size and (int(img.min()) < -INT32_MAX - 1 or int(img.max()) > INT32_MAX):
            return np.clip(img, -INT32_MAX - 1, INT32_MAX).astype(np.int32)
        return img.astype(np.int32)
    f = np.asarray(img, dtype=np.float64)
    f = np.where(np.isnan(f), 0.0, f)
    f = np.clip(np.rint(f), -INT32_MAX - 1, INT32_MAX)
    return f.astype(np.int32)


def pilatus_tiles(fpixels: int, spixels: int) -> bool:
    """True when the image is a whole number of Pilatus modules with their gaps.

    dxtbx's ``FormatCBFMiniPilatus`` (header convention ``PILATUS_1.2``) masks
    the module gaps and asserts this tiling; other sizes are written with the
    convention ``GENERIC_MINI``, which dxtbx reads with ``FormatCBFMini``.
    """
    for n, module, gap in ((fpixels, PILATUS_MODULE[0], PILATUS_GAP[0]),
                           (spixels, PILATUS_MODULE[1], PILATUS_GAP[1])):
        count, rest = divmod(int(n), module)
        if count < 1 or (count - 1) * gap != rest:
            return False
    return True


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def mini_cbf_geometry_problem(meta: dict, tol: float = 1e-6) -> Optional[str]:
    """Why a mini-CBF header cannot describe ``meta``'s geometry, or None when it can.

    dxtbx builds a mini-CBF's detector facing the beam, with the fast axis
    along the rotation axis and the slow axis completing a right-handed
    (fast, slow, beam) set; these are the conditions checked.
    """
    if not all(k in meta for k in ("fdet", "sdet", "beam_vector")):
        return None
    if meta.get("c_beam", {}).get("no_beam_spot"):
        return "the direct beam never meets the detector in front of the sample"
    f, s, b = _unit(meta["fdet"]), _unit(meta["sdet"]), _unit(meta["beam_vector"])
    problems = []
    if abs(f @ b) > tol or abs(s @ b) > tol or abs(f @ s) > tol:
        n = np.cross(f, s)
        angle = np.degrees(np.arccos(min(1.0, abs(n @ b) / np.linalg.norm(n))))
        problems.append("the detector does not face the beam (normal %.4g deg from it)" % angle)
    elif np.cross(f, s) @ b < 0:
        problems.append("the image is mirrored (fast x slow points against the beam)")
    if "spindle_axis" in meta and np.linalg.norm(meta["spindle_axis"]) > 0:
        if _unit(meta["spindle_axis"]) @ f < 1 - tol:
            problems.append("the spindle axis is not along the fast axis")
    return "; ".join(problems) or None


def _g(x, fmt="%.6g") -> str:
    return fmt % float(x)


def _timestamp(meta: dict) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmm`` (UTC): meta's ``timestamp``, else $SOURCE_DATE_EPOCH, else the
    Unix epoch -- a simulated frame has no acquisition time, and the same run must write the same
    file (dxtbx reads the epoch 0 it reads when the line is absent)."""
    when = meta.get("timestamp")
    if when is None:
        epoch = os.environ.get("SOURCE_DATE_EPOCH", "0")
        when = datetime.datetime.fromtimestamp(int(epoch) if epoch.isdigit() else 0, datetime.timezone.utc)
    if isinstance(when, datetime.datetime):
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + "%03d" % (when.microsecond // 1000)
    return str(when)


def pilatus_header(meta: dict, count_cutoff: int) -> str:
    """The ``_array_data.header_contents`` text for ``meta`` (see :func:`..formats.frame_metadata`)."""
    lines = ["# Detector: nanoBragg simulation, S/N 000", "# " + _timestamp(meta)]
    if "pixel_size_m" in meta:
        px = float(meta["pixel_size_m"])
        lines.append(f"# Pixel_size {_g(px)} m x {_g(px)} m")
    from .nexus import NO_THICKNESS_M
    thick = float(meta.get("sensor_thickness_m", 0.0))
    # fixed-point, never an exponent: dxtbx's FormatCBFFullPilatus reads the number with [0-9.]+
    thick_text = ("%.12f" % (thick if thick > 0.0 else NO_THICKNESS_M)).rstrip("0").rstrip(".")
    lines.append(f"# Silicon sensor, thickness {thick_text} m")
    exposure = float(meta.get("exposure_s", 1.0))
    lines.append(f"# Exposure_time {_g(exposure)} s")
    lines.append(f"# Exposure_period {_g(exposure)} s")
    lines.append(f"# Count_cutoff {count_cutoff} counts")
    if "wavelength_m" in meta:
        lines.append(f"# Wavelength {float(meta['wavelength_m']) * 1e10:.7g} A")
    flux = float(meta.get("flux_photons_per_s", 0.0))
    if flux > 0.0 and np.isfinite(flux):
        lines.append(f"# Flux {flux:.6g} ph/s")
    if "distance_m" in meta:
        lines.append(f"# Detector_distance {float(meta['distance_m']):.9f} m")
    if "beam_center_fast_m" in meta and "pixel_size_m" in meta:
        px = float(meta["pixel_size_m"])
        bx = float(meta["beam_center_fast_m"]) / px
        by = float(meta["beam_center_slow_m"]) / px
        lines.append(f"# Beam_xy ({bx:.4f}, {by:.4f}) pixels")
    if "phi_start_deg" in meta:
        lines.append(f"# Start_angle {float(meta['phi_start_deg']):.6f} deg.")
        lines.append(f"# Angle_increment {float(meta.get('osc_range_deg', 0.0)):.6f} deg.")
        lines.append(f"# Phi {float(meta['phi_start_deg']):.6f} deg.")
        lines.append("# Oscillation_axis PHI")
        lines.append("# N_oscillations 1")
    if "twotheta_deg" in meta:
        lines.append(f"# Detector_2theta {float(meta['twotheta_deg']):.6f} deg.")
    if "polarization" in meta:
        lines.append(f"# Polarization {float(meta['polarization']):.4f}")
    for key in ("fdet", "sdet", "odet", "pix0_m", "beam_vector", "spindle_axis"):
        if key in meta:
            lines.append("# nanoBragg_%s %s" % (key, " ".join("%.12g" % float(v) for v in meta[key])))
    for key in ("distance_m", "close_distance_m", "orgx", "orgy", "fluence"):
        if key in meta:
            lines.append("# nanoBragg_%s %.12g" % (key, float(meta[key])))
    if "convention" in meta:
        lines.append(f"# nanoBragg_convention {meta['convention']}")
    return "\r\n".join(lines)


def write_cbf(path: str, image: np.ndarray, meta: dict, full: Optional[bool] = None) -> None:
    """Write ``image`` (slow, fast) as a byte-offset CBF file, atomically.

    ``full=None`` (the default) writes a Pilatus-style mini-CBF where its header
    describes the geometry (a detector facing the beam, fast axis along the
    spindle: see :func:`mini_cbf_geometry_problem`), and a full imgCIF file
    (:mod:`.cbf_full`: every axis stated) for any other detector.  ``full=True``
    or ``False`` (or ``meta["cbf_full"]``, which :func:`..formats.write_image`
    passes on) forces one kind.  A mini-CBF of a geometry it cannot describe
    prints one line on stderr (once per distinct reason).
    """
    from .formats import atomic_path

    img = np.asarray(image)
    counts = np.ascontiguousarray(cbf_counts(img))
    cutoff = 65535 if np.issubdtype(img.dtype, np.unsignedinteger) and img.dtype.itemsize <= 2 \
        else INT32_MAX
    S, F = counts.shape
    problem = mini_cbf_geometry_problem(meta)
    describable = all(k in meta for k in ("fdet", "sdet", "beam_vector", "pix0_m", "pixel_size_m",
                                          "wavelength_m", "fpixels", "spixels"))
    if full is None:
        full = meta.get("cbf_full")
    if full is None:
        full = bool(problem) and describable
    if full:
        if not describable:
            raise ValueError(f"{path}: a full CBF needs the detector vectors, pixel size and wavelength")
        from .cbf_full import write_full_cbf
        write_full_cbf(path, counts, meta, cutoff)
        return
    from fabio.cbfimage import CbfImage
    if problem and problem not in _warned:
        _warned.add(problem)
        where = ("hold the C program's beam centre and distance" if meta.get("c_beam", {}).get("no_beam_spot")
                 else "give where the beam meets the detector")
        print(f"warning: {path}: a mini-CBF header cannot describe this geometry ({problem}); "
              f"Beam_xy and Detector_distance {where}, the exact "
              f"geometry is in the '# nanoBragg_' lines and in NeXus output", file=sys.stderr)
    header = {
        "_array_data.header_convention": "PILATUS_1.2" if pilatus_tiles(F, S) else "GENERIC_MINI",
        "_array_data.header_contents": pilatus_header(meta, cutoff),
    }
    with atomic_path(path) as tmp:
        CbfImage(data=counts, header=header).write(tmp)


def _parse_contents(text: str) -> Dict[str, str]:
    """``# Key value`` lines of a Pilatus header: {Key: value text}; the date line as ``timestamp``."""
    out: Dict[str, str] = {}
    for line in text.replace("\r", "\n").split("\n"):
        line = line.strip()
        if not line.startswith("#"):
            continue
        body = line[1:].strip()
        if not body:
            continue
        if len(body.split()) <= 2 and body.count(":") == 2:
            out["timestamp"] = body
            continue
        key, _, value = body.partition(" ")
        out[key.rstrip(":,")] = value.strip()
    return out


def read_cbf_header(path: str) -> Dict[str, str]:
    """The Pilatus header lines of a mini-CBF file as {key: text} (see :func:`read_cbf`)."""
    return read_cbf(path)[0]


def read_cbf(path: str) -> Tuple[Dict[str, str], np.ndarray]:
    """Read a CBF image: ``(header {key: text}, int32 array (slow, fast))``.

    The header dictionary holds the ``# Key value`` lines of
    ``_array_data.header_contents`` (``Silicon`` for the sensor line,
    ``timestamp`` for the date line) and the CIF items fabio reports.
    Raises ValueError naming the file when it is not a readable CBF.
    """
    import fabio
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic != b"###CBF":
        raise ValueError(f"{path}: not a CBF file (it does not start with '###CBF')")
    try:
        im = fabio.open(os.fspath(path))
    except OSError as e:
        if not os.path.exists(path):
            raise
        raise ValueError(f"{path}: not a readable CBF file ({e})") from None
    except Exception as e:   # fabio raises many kinds for a corrupt file
        raise ValueError(f"{path}: not a readable CBF file ({type(e).__name__}: {e})") from None
    if type(im).__name__ != "CbfImage" or im.data is None:
        raise ValueError(f"{path}: not a CBF file")
    header = {str(k): str(v) for k, v in im.header.items()}
    contents = header.get("_array_data.header_contents", "")
    header.update(_parse_contents(contents))
    data = np.asarray(im.data)
    if data.ndim != 2:
        raise ValueError(f"{path}: CBF image is not 2-D (shape {data.shape})")
    return header, data.astype(np.int32, copy=False)


def _first_float(text: str, what: str, path) -> float:
    for tok in text.replace("(", " ").replace(")", " ").replace(",", " ").split():
        try:
            return float(tok)
        except ValueError:
            continue
    raise ValueError(f"{path}: CBF header {what} has no number ({text!r})")


def cbf_geometry(header: Dict[str, str], path="CBF") -> dict:
    """Geometry from a Pilatus header, in SI units, from the header lines alone.

    Keys (each only when its line is present): ``pixel_size_m``,
    ``distance_m``, ``wavelength_m``, ``beam_center_fast_m``,
    ``beam_center_slow_m``, ``phi_start_deg``, ``osc_range_deg``,
    ``sensor_thickness_m``, ``exposure_s``.
    """
    out = {}
    if "Pixel_size" in header:
        out["pixel_size_m"] = _first_float(header["Pixel_size"], "Pixel_size", path)
    if "Detector_distance" in header:
        out["distance_m"] = _first_float(header["Detector_distance"], "Detector_distance", path)
    if "Wavelength" in header:
        out["wavelength_m"] = _first_float(header["Wavelength"], "Wavelength", path) * 1e-10
    if "Beam_xy" in header and "pixel_size_m" in out:
        toks = header["Beam_xy"].replace("(", " ").replace(")", " ").replace(",", " ").split()
        try:
            bx, by = float(toks[0]), float(toks[1])
        except (IndexError, ValueError):
            raise ValueError(f"{path}: CBF header Beam_xy is not '(x, y)' ({header['Beam_xy']!r})") from None
        out["beam_center_fast_m"] = bx * out["pixel_size_m"]
        out["beam_center_slow_m"] = by * out["pixel_size_m"]
    if "Start_angle" in header:
        out["phi_start_deg"] = _first_float(header["Start_angle"], "Start_angle", path)
    if "Angle_increment" in header:
        out["osc_range_deg"] = _first_float(header["Angle_increment"], "Angle_increment", path)
    if "Silicon" in header:
        from .nexus import NO_THICKNESS_M
        toks = header["Silicon"].split()
        thick = float(toks[2]) if len(toks) > 2 else 0.0
        out["sensor_thickness_m"] = 0.0 if thick <= NO_THICKNESS_M else thick
    if "Exposure_time" in header:
        out["exposure_s"] = _first_float(header["Exposure_time"], "Exposure_time", path)
    return out
