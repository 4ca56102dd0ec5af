"""SMV (ADSC) images: the reference program's integer/noise image writer and reader.

File layout written by the reference program:

* an ASCII header ``{\\n KEY=VALUE;\\n ... }\\f`` padded with spaces to 512
  bytes (``HEADER_BYTES=512``); numbers use C ``printf("%g")`` and the
  ``DIALS_ORIGIN`` line has no terminating ``;``;
* ``SIZE2`` rows (slow axis) of ``SIZE1`` (fast axis) ``unsigned short``
  pixels in the machine's byte order, named by ``BYTE_ORDER``.

Header lengths are millimetres, the wavelength is in angstrom, angles in
degrees; :func:`smv_header_values` takes SI metres/radians and converts
exactly as the C code does.  The reader reproduces the C ``GetFrame`` /
``ValueOf`` semantics (the *last* occurrence of a keyword is used, the value
is parsed with ``atof`` after the next ``=``).
"""
from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..cutil import c_atof
from .atomic import atomic_write_bytes

__all__ = [
    "HEADER_BYTES",
    "c_format_g",
    "c_cast_unsigned",
    "native_byte_order",
    "smv_header_values",
    "build_smv_header",
    "write_smv",
    "read_smv_header",
    "read_smv",
    "header_value",
    "int_image",
]

HEADER_BYTES = 512
#: keys whose header line the reference program writes without a ``;``
NO_SEMICOLON_KEYS = frozenset({"DIALS_ORIGIN"})
#: 180/pi as the C program computes it (180.0 * M_1_PI)
_RTD = 180.0 * 0.318309886183790671537767526745028724

Roi = Optional[Tuple[int, int, int, int]]
HeaderItems = Union[Mapping, Iterable[Tuple[str, str]], str, bytes]


# --------------------------------------------------------------------------
# C formatting / conversion helpers
# --------------------------------------------------------------------------
def c_format_g(value: float) -> str:
    """``printf("%g", value)`` as glibc prints it (including ``-nan``)."""
    value = float(value)
    if math.isnan(value):
        return "-nan" if math.copysign(1.0, value) < 0 else "nan"
    return "%g" % value


def c_cast_unsigned(values, nbits: int) -> np.ndarray:
    """C cast of doubles to ``unsigned short`` (16) / ``unsigned char`` (8) on x86-64.

    gcc truncates toward zero into a 32-bit int and keeps the low ``nbits``
    bits, so negative values wrap (-60.5 -> 65476) and NaN or values outside
    the int32 range give 0.
    """
    v = np.asarray(values, dtype=np.float64)
    ok = (v > -2147483649.0) & (v < 2147483648.0)  # False for NaN
    # astype truncates toward zero, like trunc; every value left fits an int32, and the
    # integer cast to the unsigned type keeps the low bits (modular), as the C's does
    ints = (v if ok.all() else np.where(ok, v, 0.0)).astype(np.int32)
    dtype = {8: np.uint8, 16: np.uint16}[nbits]
    return ints.astype(dtype)


def native_byte_order() -> str:
    """The ``BYTE_ORDER`` value the C program writes on this machine."""
    return "little_endian" if sys.byteorder == "little" else "big_endian"


def _roi_slices(shape: Tuple[int, int], roi: Roi) -> Tuple[slice, slice]:
    """Slices (slow, fast) of the pixels with xmin<=fast<=xmax, ymin<=slow<=ymax."""
    nslow, nfast = shape
    if roi is None:
        return slice(0, nslow), slice(0, nfast)
    xmin, xmax, ymin, ymax = (int(v) for v in roi)
    x0, x1 = max(xmin, 0), min(xmax, nfast - 1) + 1
    y0, y1 = max(ymin, 0), min(ymax, nslow - 1) + 1
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


# --------------------------------------------------------------------------
# header construction and writing
# --------------------------------------------------------------------------
def smv_header_values(
    fpixels: int,
    spixels: int,
    pixel_size_m: float,
    distance_m: float,
    wavelength_m: float,
    Xbeam_m: float,
    Ybeam_m: float,
    Fbeam_m: float,
    Sbeam_m: float,
    detsize_s_m: float,
    dials_origin_mm: Sequence[float],
    orgx: float,
    orgy: float,
    close_distance_m: float,
    phi0_rad: float,
    osc_rad: float,
    twotheta_rad: float,
    *,
    noise_file: bool = False,
    byte_order: Optional[str] = None,
) -> List[Tuple[str, str]]:
    """The header lines of the reference program's SMV files, as ``(key, text)``.

    Inputs are in metres / radians (``dials_origin_mm`` in mm, ``orgx``/``orgy``
    in pixels); the texts are formatted with C ``%g`` after the same unit
    conversions as the C code (mm, angstrom, degrees).  ``noise_file`` selects
    the noise-image variant, which differs only in computing the DENZO beam
    as ``Sbeam + 0*pixel`` instead of ``Sbeam - 0*pixel`` (visible only as
    the sign of a zero).  ``byte_order`` defaults to this machine's.
    """
    g = c_format_g
    pix = float(pixel_size_m)
    sbeam = float(Sbeam_m)
    fbeam = float(Fbeam_m)
    if noise_file:
        denzo_x, denzo_y = (sbeam + 0.0 * pix) * 1000.0, (fbeam + 0.0 * pix) * 1000.0
    else:
        denzo_x, denzo_y = (sbeam - 0.0 * pix) * 1000.0, (fbeam - 0.0 * pix) * 1000.0
    ox, oy, oz = (float(v) for v in dials_origin_mm)
    phi_deg = float(phi0_rad) * _RTD
    return [
        ("HEADER_BYTES", "%d" % HEADER_BYTES),
        ("DIM", "2"),
        ("BYTE_ORDER", byte_order or native_byte_order()),
        ("TYPE", "unsigned_short"),
        ("SIZE1", "%d" % int(fpixels)),
        ("SIZE2", "%d" % int(spixels)),
        ("PIXEL_SIZE", g(pix * 1000.0)),
        ("DISTANCE", g(float(distance_m) * 1000.0)),
        ("WAVELENGTH", g(float(wavelength_m) * 1e10)),
        ("BEAM_CENTER_X", g(float(Xbeam_m) * 1000.0)),
        ("BEAM_CENTER_Y", g(float(Ybeam_m) * 1000.0)),
        ("ADXV_CENTER_X", g(fbeam * 1000.0)),
        ("ADXV_CENTER_Y", g((float(detsize_s_m) - sbeam) * 1000.0)),
        ("MOSFLM_CENTER_X", g((sbeam - 0.5 * pix) * 1000.0)),
        ("MOSFLM_CENTER_Y", g((fbeam - 0.5 * pix) * 1000.0)),
        ("DENZO_X_BEAM", g(denzo_x)),
        ("DENZO_Y_BEAM", g(denzo_y)),
        ("DIALS_ORIGIN", "%s,%s,%s" % (g(ox), g(oy), g(oz))),
        ("XDS_ORGX", g(orgx)),
        ("XDS_ORGY", g(orgy)),
        ("CLOSE_DISTANCE", g(float(close_distance_m) * 1000.0)),
        ("PHI", g(phi_deg)),
        ("OSC_START", g(phi_deg)),
        ("OSC_RANGE", g(float(osc_rad) * _RTD)),
        ("TWOTHETA", g(float(twotheta_rad) * _RTD)),
        ("DETECTOR_SN", "000"),
        ("BEAMLINE", "fake"),
    ]


def build_smv_header(items: HeaderItems) -> bytes:
    """Header bytes: ``{``, one ``KEY=TEXT;`` line per item, ``}\\f``, spaces to 512.

    ``items`` is a mapping or an iterable of ``(key, text)`` pairs (for
    example from :func:`smv_header_values`; numbers given instead of text are
    formatted with ``%d``/``%g``), or an already formatted header
    (``str``/``bytes``), which is only padded.  Like the C writer, a header
    longer than 512 bytes is not truncated (a warning is issued: the file's
    ``HEADER_BYTES`` then no longer locates the data).
    """
    if isinstance(items, (bytes, bytearray)):
        text = bytes(items)
    elif isinstance(items, str):
        text = items.encode("latin-1")
    else:
        pairs = items.items() if isinstance(items, Mapping) else items
        lines = ["{\n"]
        for key, value in pairs:
            if isinstance(value, (bool, np.bool_)):
                raise TypeError(f"SMV header value for {key} must be text or a number")
            if isinstance(value, (int, np.integer)):
                value = "%d" % value
            elif isinstance(value, (float, np.floating)):
                value = c_format_g(value)
            end = "\n" if key in NO_SEMICOLON_KEYS else ";\n"
            lines.append(f"{key}={value}{end}")
        lines.append("}\f")
        text = "".join(lines).encode("latin-1")
    if len(text) > HEADER_BYTES:
        warnings.warn(
            f"SMV header is {len(text)} bytes, longer than HEADER_BYTES={HEADER_BYTES}",
            RuntimeWarning,
            stacklevel=2,
        )
        return text
    return text + b" " * (HEADER_BYTES - len(text))


def write_smv(path, image_uint16: np.ndarray, header: HeaderItems) -> None:
    """Write an SMV file atomically: the padded header, then the pixels.

    ``image_uint16`` is a (S, F) ``uint16`` array (slow, fast), written in this
    machine's byte order as the C program does.  ``header`` is anything
    :func:`build_smv_header` accepts; where it carries ``SIZE1``/``SIZE2``
    they must match the image shape.
    """
    img = np.asarray(image_uint16)
    if img.dtype != np.uint16:
        raise TypeError(f"SMV image must be uint16, got {img.dtype}")
    if img.ndim != 2:
        raise ValueError(f"SMV image must be 2-D (slow, fast), got shape {img.shape}")
    if not isinstance(header, (str, bytes, bytearray)):
        pairs = list(header.items() if isinstance(header, Mapping) else header)
        sizes = {k: v for k, v in pairs if k in ("SIZE1", "SIZE2")}
        expect = {"SIZE1": img.shape[1], "SIZE2": img.shape[0]}
        for key, text in sizes.items():
            if int(c_atof(str(text))) != expect[key]:
                raise ValueError(
                    f"header {key}={text} does not match image shape {img.shape} (slow, fast)"
                )
        header = pairs
    data = np.ascontiguousarray(img, dtype=np.dtype(np.uint16).newbyteorder("="))
    atomic_write_bytes(path, build_smv_header(header) + data.tobytes())


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------
def header_value(header_text: Union[str, bytes], keyword: str) -> float:
    """Value of ``keyword`` in an SMV header, as the C ``ValueOf`` reads it.

    The *last* occurrence of ``keyword`` anywhere in the text counts (so
    ``"DISTANCE"`` finds ``CLOSE_DISTANCE`` when that comes later, and
    ``"ORGX"`` finds ``XDS_ORGX``); the value is ``atof`` of what follows
    the next ``=`` after it.  Returns NaN when the keyword is absent and
    0.0 when no ``=`` follows it.  The text ends at the first NUL byte.
    """
    if isinstance(header_text, (bytes, bytearray)):
        header_text = bytes(header_text).split(b"\0", 1)[0].decode("latin-1")
    else:
        header_text = header_text.split("\0", 1)[0]
    if not keyword:
        raise ValueError("header_value: empty keyword")
    pos = -1
    start = 0
    while True:
        hit = header_text.find(keyword, start)
        if hit < 0:
            break
        pos = start = hit + len(keyword)
    if pos < 0:
        return math.nan
    eq = header_text.find("=", pos)
    if eq < 0:
        return 0.0
    return c_atof(header_text[eq + 1:])


def _parse_header_dict(text: str) -> Dict[str, str]:
    """``KEY=VALUE`` lines of a header as strings (trailing ``;`` removed, last wins)."""
    out: Dict[str, str] = {}
    for line in text.split("\n"):
        if "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if value.endswith(";"):
            value = value[:-1].rstrip()
        out[key.strip()] = value
    return out


def _read_header_bytes(fh, path) -> Tuple[str, int]:
    """Header text (up to the first NUL) and HEADER_BYTES of an open SMV file."""
    first = fh.read(HEADER_BYTES)
    if len(first) < HEADER_BYTES:
        raise ValueError(
            f"{path}: truncated SMV file ({len(first)} bytes, a header needs {HEADER_BYTES})"
        )
    if not first.startswith(b"{\nHEADER_BYT"):
        raise ValueError(f"{path}: does not look like an SMV (ADSC) image")
    text = first.split(b"\0", 1)[0].decode("latin-1")
    size_value = header_value(text, "HEADER_BYTES")
    if not (size_value >= 1 and size_value < 2**31):
        raise ValueError(f"{path}: invalid SMV HEADER_BYTES={size_value!r}")
    header_size = int(size_value)
    if header_size != HEADER_BYTES:
        file_size = os.fstat(fh.fileno()).st_size
        if header_size > file_size:   # checked before reading: never allocate what is not there
            raise ValueError(
                f"{path}: truncated SMV header ({file_size} of {header_size} bytes)"
            )
        fh.seek(0)
        full = fh.read(header_size)
        if len(full) < header_size:
            raise ValueError(
                f"{path}: truncated SMV header ({len(full)} of {header_size} bytes)"
            )
        text = full.split(b"\0", 1)[0].decode("latin-1")
    return text, header_size


def read_smv_header(path) -> str:
    """The header text of an SMV file (ValueError if not SMV or truncated)."""
    with open(path, "rb") as fh:
        return _read_header_bytes(fh, path)[0]


def read_smv(path) -> Tuple[Dict[str, str], np.ndarray]:
    """Read an SMV image: ``(header dict of str, uint16 array (SIZE2, SIZE1))``.

    Follows the C reader: ``HEADER_BYTES`` locates the data, ``SIZE1``/``SIZE2``
    (or ``DETECTOR_DIMENSIONS`` when ``SIZE1`` is 0 or missing) give the shape.
    Unlike the C reader, which computes but never applies its byte-swap flag,
    pixels are byte-swapped when the last ``BYTE_ORDER`` differs from this
    machine's.  Raises ValueError naming the file when it is not SMV or is
    shorter than its header says.
    """
    with open(path, "rb") as fh:
        text, header_size = _read_header_bytes(fh, path)
        width = header_value(text, "SIZE1")
        height = header_value(text, "SIZE2")
        if not width > 0:  # 0 (C) or missing/NaN: try the other convention
            width = height = header_value(text, "DETECTOR_DIMENSIONS")
        if not (width >= 1 and height >= 1 and width < 2**31 and height < 2**31):
            raise ValueError(f"{path}: SMV header has no valid SIZE1/SIZE2")
        nfast, nslow = int(width), int(height)

        swap = False
        tag = text.rfind("BYTE_ORDER=")
        if tag >= 0:
            written = text[tag + len("BYTE_ORDER="):][:10]
            swap = written != native_byte_order()[:10]
        # the C reader indexes the data as unsigned shorts from the file start
        start = (header_size // 2) * 2
        nbytes = 2 * nfast * nslow
        available = os.fstat(fh.fileno()).st_size - start
        if available < nbytes:        # checked before reading: a bad SIZE1/SIZE2 must not allocate
            raise ValueError(
                f"{path}: truncated SMV data ({max(available, 0)} of {nbytes} bytes for {nfast}x{nslow} pixels)"
            )
        fh.seek(start)
        raw = fh.read(nbytes)
    if len(raw) < nbytes:
        raise ValueError(
            f"{path}: truncated SMV data ({len(raw)} of {nbytes} bytes for {nfast}x{nslow} pixels)"
        )
    data = np.frombuffer(raw, dtype=np.dtype(np.uint16).newbyteorder("="))
    if swap:
        data = data.byteswap()
    return _parse_header_dict(text), data.reshape(nslow, nfast).copy()


# --------------------------------------------------------------------------
# integer image
# --------------------------------------------------------------------------
def int_image(
    float_image: np.ndarray,
    intfile_scale: float,
    adc: float = 40.0,
    roi: Roi = None,
    max_I: Optional[float] = None,
) -> Tuple[np.ndarray, float]:
    """The reference program's integer image of a float image (photons/pixel).

    ``intfile_scale <= 0`` selects the automatic scale: 1.0, or
    ``55000/max_I`` when ``max_I > 0`` (``max_I``: the largest rendered pixel
    value; when None, the largest pixel inside the ROI, at least 0).  Each
    pixel inside ``roi = (xmin, xmax, ymin, ymax)`` (inclusive; None = whole
    image) becomes ``pixel*scale + adc`` in double precision, clipped to
    [0, 65535], and then ``floorf((float)(value + 0.5))``; pixels outside the
    ROI are 0.  Returns ``(uint16 image (S, F), scale used)``.
    """
    img = np.asarray(float_image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"float_image must be 2-D (slow, fast), got shape {img.shape}")
    rows, cols = _roi_slices(img.shape, roi)
    scale = float(intfile_scale)
    if scale <= 0.0:
        scale = 1.0
        if max_I is None:
            sub = img[rows, cols]
            finite = sub[~np.isnan(sub)]
            max_I = max(0.0, float(finite.max())) if finite.size else 0.0
        if max_I > 0.0:
            scale = 55000.0 / float(max_I)
    from ..backends import cio
    fast = cio.int_image(img, rows, cols, scale, adc)      # the same steps in one C pass
    if fast is not None:
        return fast, scale
    sub = img[rows, cols].astype(np.float64)

    # in place: min/max keep NaN as the C's comparisons do (NaN > 65535 and NaN < 0 are false)
    value = sub
    value *= scale
    value += float(adc)
    np.minimum(value, 65535.0, out=value)
    np.maximum(value, 0.0, out=value)
    value += 0.5
    with np.errstate(invalid="ignore"):
        rounded = value.astype(np.float32)
        np.floor(rounded, out=rounded)
    out = np.zeros(img.shape, dtype=np.uint16)
    out[rows, cols] = c_cast_unsigned(rounded, 16)
    return out, scale


def smv_geometry(header: Mapping[str, str]) -> Dict[str, float]:
    """Geometry (SI units) that an SMV header of this program states, by the keys' meanings.

    ``DISTANCE`` (mm: sample to where the beam meets the detector) ->
    ``distance_m``; ``PIXEL_SIZE`` -> ``pixel_size_m``; ``WAVELENGTH`` ->
    ``wavelength_m``; ``ADXV_CENTER_X`` and ``SIZE2*PIXEL_SIZE -
    ADXV_CENTER_Y`` -> ``beam_center_fast_m``/``beam_center_slow_m`` (from the
    outer corner of the first pixel); ``OSC_START``/``OSC_RANGE`` -> degrees.
    Keys that are absent or not numbers are left out.
    """
    def num(key):
        v = header.get(key)
        try:
            x = float(v)
        except (TypeError, ValueError):
            return None
        return x if math.isfinite(x) else None
    out: Dict[str, float] = {}
    px, d, wl = num("PIXEL_SIZE"), num("DISTANCE"), num("WAVELENGTH")
    if px is not None:
        out["pixel_size_m"] = px * 1e-3
    if d is not None:
        out["distance_m"] = d * 1e-3
    if wl is not None:
        out["wavelength_m"] = wl * 1e-10
    ax, ay, n2 = num("ADXV_CENTER_X"), num("ADXV_CENTER_Y"), num("SIZE2")
    if ax is not None and ay is not None and px is not None and n2 is not None:
        out["beam_center_fast_m"] = ax * 1e-3
        out["beam_center_slow_m"] = (n2 * px - ay) * 1e-3
    for key, name in (("OSC_START", "phi_start_deg"), ("OSC_RANGE", "osc_range_deg")):
        v = num(key)
        if v is not None:
            out[name] = v
    return out
