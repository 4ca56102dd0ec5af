"""Full imgCIF (CBF) images: the whole geometry as imgCIF axes, for detectors a mini-CBF cannot describe.

A mini-CBF (:mod:`.cbf`) says only a beam centre and a distance, and every
reader (dxtbx's ``FormatCBFMini``, XDS, adxv) builds from it a detector that
faces the beam with its fast axis along the spindle.  A tilted or swung
detector, custom axes or a spindle not along the fast axis need the imgCIF
categories that describe every axis instead; dxtbx reads them through cbflib
(``FormatCBFFull`` / ``FormatCBFFullByteOffset``: ``construct_detector``,
``construct_goniometer``).

What the file holds (all vectors in the imgCIF laboratory frame: the beam
travels along -Z, so the source is at +Z, Y is up, X completes a right-handed
set; nanoBragg's lab frame is turned into it with
``diag(-1, 1, -1) @ lab_to_mcstas(beam)``, the rotation the NeXus writer
uses, followed by McStas -> imgCIF):

* ``_diffrn``, ``_diffrn_source``, ``_diffrn_radiation`` (flux in photons/s),
  ``_diffrn_radiation_wavelength`` (A);
* ``_diffrn_detector``, ``_diffrn_detector_axis``, ``_diffrn_detector_element``,
  ``_diffrn_data_frame``; ``_diffrn_measurement`` and ``_diffrn_measurement_axis``
  (the spindle ``GONIOMETER_PHI``);
* ``_diffrn_scan``, ``_diffrn_scan_axis`` (the spindle's start, range and
  increment: the oscillation; the detector distance), ``_diffrn_scan_frame``
  (exposure time, timestamp), ``_diffrn_scan_frame_axis`` (each axis' setting);
* ``_axis``: ``SOURCE`` (sample to source), ``GRAVITY``, ``GONIOMETER_PHI``
  (rotation), ``DETECTOR_Z`` (translation along the detector normal, set to
  the close distance), ``ELEMENT_X`` (translation along the fast axis,
  depending on ``DETECTOR_Z``, its offset the in-plane position of the first
  pixel's outer corner) and ``ELEMENT_Y`` (along the slow axis, depending on
  ``ELEMENT_X``);
* ``_array_structure_list`` (fast = index 1, precedence 1, along ``ELEMENT_X``;
  slow = index 2, along ``ELEMENT_Y``), ``_array_structure_list_axis``
  (displacement 0, increment one pixel, mm: cbflib's pixel coordinate (0, 0),
  which dxtbx takes as the panel origin, is then the first pixel's outer corner,
  as in dxtbx's own ``FullCBFWriter``), ``_array_element_size`` (m), ``_array_intensities`` (gain 1,
  overload, undefined value), ``_array_structure`` (signed 32-bit integers,
  byte offset) and ``_array_data``: the Pilatus-style header lines of
  :func:`.cbf.pilatus_header` as ``header_contents`` (so :func:`.cbf.read_cbf`
  reads the file back like a mini-CBF), and the pixels, byte-offset
  compressed, with the MIME header every CBF reader (fabio, dxtbx, cbflib) reads.

The pixel positions are exact: pixel (f, s) has its centre at
``DETECTOR_Z + ELEMENT_X offset + (f + 0.5) px fast + (s + 0.5) px slow``,
the renderer's ``pix0 + (f + 0.5) px fdet + (s + 0.5) px sdet``
(tests/test_dials.py checks the corner pixels through ``dials.import``).
For an image of whole Pilatus modules ``_array_data.header_convention`` is
``PILATUS_1.2``, and dxtbx reads the file with ``FormatCBFFullPilatus`` (a
pixel-array sensor, thickness from the ``# Silicon sensor`` line, the module
gaps masked); any other size goes to ``FormatCBFFullByteOffset``, which reads
the sensor as "unknown" (no parallax correction, no thickness) whatever the
file says.
"""
from __future__ import annotations

import base64
import hashlib

import numpy as np

__all__ = ["lab_to_imgcif", "full_cbf_text", "write_full_cbf"]

#: McStas (NeXus) to imgCIF: a half turn about y
IMGCIF_FROM_MCSTAS = np.diag([-1.0, 1.0, -1.0])


def lab_to_imgcif(beam_vector) -> np.ndarray:
    """Rotation taking nanoBragg's lab frame to the imgCIF frame (beam along -Z, Y up)."""
    from .formats import lab_to_mcstas
    return IMGCIF_FROM_MCSTAS @ lab_to_mcstas(beam_vector)


def _v(x) -> str:
    return "%.12g" % (0.0 if abs(float(x)) < 1e-15 else float(x))


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def _loop(name: str, columns, rows) -> str:
    lines = ["", "loop_"] + [f"_{name}.{c}" for c in columns]
    for row in rows:
        lines.append(" ".join(str(x) for x in row))
    return "\r\n".join(lines)


def _items(name: str, pairs) -> str:
    width = max(len(k) for k, _ in pairs) + len(name) + 2
    return "\r\n".join([""] + [f"_{name}.{k}".ljust(width) + f" {v}" for k, v in pairs])


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "") + "'"


def full_cbf_text(meta: dict, count_cutoff: int, name: str = "image_1") -> str:
    """The imgCIF text of a full CBF for ``meta`` (:func:`..formats.frame_metadata`), up to the binary data."""
    from .cbf import _timestamp, pilatus_header, pilatus_tiles
    R = lab_to_imgcif(meta["beam_vector"])
    px_m = float(meta["pixel_size_m"])
    px = px_m * 1e3                                           # mm
    F, S = int(meta["fpixels"]), int(meta["spixels"])
    f = R @ _unit(meta["fdet"])
    s = R @ _unit(meta["sdet"])
    pix0 = R @ np.asarray(meta["pix0_m"], dtype=np.float64) * 1e3      # mm, the first pixel's outer corner
    src = -(R @ _unit(meta["beam_vector"]))                   # sample to source: +Z
    spin = np.asarray(meta.get("spindle_axis", (0.0, 0.0, 1.0)), dtype=np.float64)
    spin = R @ _unit(spin) if np.linalg.norm(spin) > 0 else np.array([1.0, 0.0, 0.0])
    n = np.cross(f, s)
    n /= np.linalg.norm(n)
    close = float(pix0 @ n)
    if close < 0:                                              # the normal from the sample to the plane
        n, close = -n, -close
    in_plane = pix0 - close * n                                # DETECTOR_Z's displacement puts the rest there
    phi0 = float(meta.get("phi_start_deg", 0.0))
    osc = float(meta.get("osc_range_deg", 0.0))
    exposure = float(meta.get("exposure_s", 1.0))
    wavelength = float(meta["wavelength_m"]) * 1e10
    when = _timestamp(meta)
    diffrn = "DS1"
    flux = float(meta.get("flux_photons_per_s", 0.0))

    parts = [f"###CBF: VERSION 1.5, nanoBragg-torch full imgCIF (tilted or custom detector)\r\n\r\ndata_{name}"]
    parts.append(_items("diffrn", [("id", diffrn)]))
    parts.append(_items("diffrn_source", [("diffrn_id", diffrn), ("source", "simulation"),
                                          ("type", _quoted("nanoBragg simulated beam"))]))
    # no polarizn_source_ratio/_norm: dxtbx reads the ratio as its polarization fraction, which the
    # imgCIF definition ((Ip - In) / (Ip + In)) is not; as for the mini-CBF and NeXus, the Kahn
    # factor is in the header lines (# Polarization) and dxtbx keeps its default
    radiation = [("diffrn_id", diffrn), ("wavelength_id", "WAVELENGTH1"), ("probe", "x-ray")]
    if flux > 0 and np.isfinite(flux):
        radiation.append(("beam_flux", "%.6g" % flux))
    parts.append(_items("diffrn_radiation", radiation))
    parts.append(_items("diffrn_radiation_wavelength", [("id", "WAVELENGTH1"), ("wavelength", _v(wavelength)),
                                                        ("wt", "1.0")]))
    parts.append(_items("diffrn_detector", [("diffrn_id", diffrn), ("id", "DETECTOR"),
                                            ("type", _quoted("nanoBragg simulation")),
                                            ("details", _quoted("simulated pixel-array detector")),
                                            ("number_of_axes", "1")]))
    parts.append(_items("diffrn_detector_axis", [("detector_id", "DETECTOR"), ("axis_id", "DETECTOR_Z")]))
    parts.append(_items("diffrn_detector_element", [("id", "ELEMENT1"), ("detector_id", "DETECTOR")]))
    parts.append(_items("diffrn_data_frame", [("id", "FRAME1"), ("detector_element_id", "ELEMENT1"),
                                              ("array_id", "ARRAY1"), ("binary_id", "1")]))
    parts.append(_items("diffrn_measurement", [("diffrn_id", diffrn), ("id", "GONIOMETER"),
                                               ("number_of_axes", "1"), ("method", "rotation"),
                                               ("sample_detector_distance", _v(close))]))
    parts.append(_items("diffrn_measurement_axis", [("measurement_id", "GONIOMETER"),
                                                    ("axis_id", "GONIOMETER_PHI")]))
    parts.append(_items("diffrn_scan", [("id", "SCAN1"), ("frame_id_start", "FRAME1"),
                                        ("frame_id_end", "FRAME1"), ("frames", "1")]))
    parts.append(_loop("diffrn_scan_axis",
                       ["axis_id", "scan_id", "angle_start", "angle_range", "angle_increment",
                        "displacement_start", "displacement_range", "displacement_increment"],
                       [["GONIOMETER_PHI", "SCAN1", _v(phi0), _v(osc), _v(osc), "0", "0", "0"],
                        ["DETECTOR_Z", "SCAN1", "0", "0", "0", _v(close), "0", "0"],
                        ["ELEMENT_X", "SCAN1", "0", "0", "0", "0", "0", "0"],
                        ["ELEMENT_Y", "SCAN1", "0", "0", "0", "0", "0", "0"]]))
    parts.append(_items("diffrn_scan_frame", [("frame_id", "FRAME1"), ("frame_number", "1"),
                                              ("integration_time", _v(exposure)), ("scan_id", "SCAN1"),
                                              ("date", when)]))
    parts.append(_loop("diffrn_scan_frame_axis", ["frame_id", "axis_id", "angle", "displacement"],
                       [["FRAME1", "GONIOMETER_PHI", _v(phi0), "0"],
                        ["FRAME1", "DETECTOR_Z", "0", _v(close)],
                        ["FRAME1", "ELEMENT_X", "0", "0"],
                        ["FRAME1", "ELEMENT_Y", "0", "0"]]))
    parts.append(_loop("axis", ["id", "type", "equipment", "depends_on", "vector[1]", "vector[2]", "vector[3]",
                                "offset[1]", "offset[2]", "offset[3]"],
                       [["SOURCE", "general", "source", ".", *map(_v, src), ".", ".", "."],
                        ["GRAVITY", "general", "gravity", ".", "0", "-1", "0", ".", ".", "."],
                        ["GONIOMETER_PHI", "rotation", "goniometer", ".", *map(_v, spin), ".", ".", "."],
                        ["DETECTOR_Z", "translation", "detector", ".", *map(_v, n), "0", "0", "0"],
                        ["ELEMENT_X", "translation", "detector", "DETECTOR_Z", *map(_v, f), *map(_v, in_plane)],
                        ["ELEMENT_Y", "translation", "detector", "ELEMENT_X", *map(_v, s), "0", "0", "0"]]))
    parts.append(_loop("array_structure_list",
                       ["array_id", "index", "dimension", "precedence", "direction", "axis_set_id"],
                       [["ARRAY1", "1", str(F), "1", "increasing", "ELEMENT_X"],
                        ["ARRAY1", "2", str(S), "2", "increasing", "ELEMENT_Y"]]))
    parts.append(_loop("array_structure_list_axis",
                       ["axis_set_id", "axis_id", "displacement", "displacement_increment"],
                       [["ELEMENT_X", "ELEMENT_X", "0", _v(px)],
                        ["ELEMENT_Y", "ELEMENT_Y", "0", _v(px)]]))
    parts.append(_loop("array_element_size", ["array_id", "index", "size"],
                       [["ARRAY1", "1", "%.6e" % px_m], ["ARRAY1", "2", "%.6e" % px_m]]))
    parts.append(_items("array_intensities", [("array_id", "ARRAY1"), ("binary_id", "1"), ("linearity", "linear"),
                                              ("gain", "1.0"), ("gain_esd", "0.0"),
                                              ("overload", str(count_cutoff)), ("undefined_value", "-1")]))
    parts.append(_items("array_structure", [("id", "ARRAY1"), ("encoding_type", _quoted("signed 32-bit integer")),
                                            ("compression_type", "byte_offset"), ("byte_order", "little_endian")]))
    header = pilatus_header(meta, count_cutoff).replace("\r\n", "\n").replace("\n", "\r\n")
    data = ["", "_array_data.array_id ARRAY1", "_array_data.binary_id 1"]
    if pilatus_tiles(F, S):
        # a whole number of Pilatus modules: dxtbx's FormatCBFFullPilatus reads the file (a pixel-array
        # sensor with its thickness from the header lines, the module gaps masked, as for a mini-CBF
        # of this size); other sizes go to FormatCBFFullByteOffset, whose sensor is "unknown"
        data.append("_array_data.header_convention PILATUS_1.2")
    data += ["_array_data.header_contents", ";", header, ";", "_array_data.data", ""]
    parts.append("\r\n".join(data))
    return "\r\n".join(parts)


def _binary_section(counts: np.ndarray) -> bytes:
    """``_array_data.data``'s value: the MIME-headed, byte-offset compressed pixels between ';' lines."""
    from fabio.compression import compByteOffset
    S, F = counts.shape
    blob = compByteOffset(counts)
    if isinstance(blob, np.ndarray):
        blob = blob.tobytes()
    digest = base64.b64encode(hashlib.md5(blob).digest())
    return b"\r\n".join([
        b";",
        b"--CIF-BINARY-FORMAT-SECTION--",
        b"Content-Type: application/octet-stream;",
        b'     conversions="x-CBF_BYTE_OFFSET"',
        b"Content-Transfer-Encoding: BINARY",
        b"X-Binary-Size: %d" % len(blob),
        b"X-Binary-ID: 1",
        b'X-Binary-Element-Type: "signed 32-bit integer"',
        b"X-Binary-Element-Byte-Order: LITTLE_ENDIAN",
        b"Content-MD5: " + digest,
        b"X-Binary-Number-of-Elements: %d" % (S * F),
        b"X-Binary-Size-Fastest-Dimension: %d" % F,
        b"X-Binary-Size-Second-Dimension: %d" % S,
        b"X-Binary-Size-Padding: 4095",
        b"",
        b"\x0c\x1a\x04\xd5" + blob + b"\x00" * 4095,
        b"--CIF-BINARY-FORMAT-SECTION----",
        b";",
        b"",
    ])


def write_full_cbf(path: str, counts: np.ndarray, meta: dict, count_cutoff: int) -> None:
    """Write int32 ``counts`` (slow, fast) as a full imgCIF file with byte-offset pixels, atomically."""
    from .formats import atomic_path
    counts = np.ascontiguousarray(counts, dtype=np.int32)
    text = full_cbf_text(meta, count_cutoff).encode("ascii")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(text)
        fh.write(_binary_section(counts))
