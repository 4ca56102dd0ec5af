"""CBF (mini-CBF) images through fabio, with a Pilatus-style header (``PILATUS_1.2``).

The pixels are stored as signed 32-bit integers with the byte-offset
compression every CBF reader understands (fabio, DIALS/dxtbx, XDS, adxv,
ALBULA).  A float image is rounded to the nearest integer (clipped to the
int32 range, NaN becomes 0): CBF holds counts.

The header carries what the mini-CBF convention can say: pixel size,
wavelength, the sample-to-detector distance (along the detector normal), the
direct-beam position in pixels from the outer corner of the first pixel
(``Beam_xy``), the spindle start and increment, the exposure time and sensor
thickness.  The convention assumes the detector faces the beam; tilted or
rotated detectors are described exactly only by the NeXus writer
(:mod:`.nexus`).  The full nanoBragg geometry is appended as
``# nanoBragg_...`` comment lines so nothing is lost.
"""
from __future__ import annotations

import numpy as np

__all__ = ["cbf_counts", "pilatus_header", "write_cbf"]

INT32_MAX = 2147483647


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


def _g(x, fmt="%.6g") -> str:
    return fmt % float(x)


def pilatus_header(meta: dict, count_cutoff: int) -> str:
    """The ``_array_data.header_contents`` text for ``meta`` (see :func:`..formats.frame_metadata`)."""
    lines = ["# Detector: nanoBragg simulation, S/N 000"]
    if "pixel_size_m" in meta:
        px = float(meta["pixel_size_m"])
        lines.append(f"# Pixel_size {_g(px)} m x {_g(px)} m")
    thick = float(meta.get("sensor_thickness_m", 0.0))
    lines.append(f"# Silicon sensor, thickness {thick:.6f} m")
    exposure = float(meta.get("exposure_s", 1.0))
    lines.append(f"# Exposure_time {_g(exposure)} s")
    lines.append(f"# Exposure_period {_g(exposure)} s")
    lines.append(f"# Count_cutoff {count_cutoff} counts")
    if "wavelength_m" in meta:
        lines.append(f"# Wavelength {float(meta['wavelength_m']) * 1e10:.6f} A")
    if "close_distance_m" in meta:
        lines.append(f"# Detector_distance {float(meta['close_distance_m']):.6f} m")
    if "beam_center_fast_m" in meta and "pixel_size_m" in meta:
        px = float(meta["pixel_size_m"])
        bx = float(meta["beam_center_fast_m"]) / px
        by = float(meta["beam_center_slow_m"]) / px
        lines.append(f"# Beam_xy ({bx:.3f}, {by:.3f}) pixels")
    if "phi_start_deg" in meta:
        lines.append(f"# Start_angle {float(meta['phi_start_deg']):.4f} deg.")
        lines.append(f"# Angle_increment {float(meta.get('osc_range_deg', 0.0)):.4f} deg.")
        lines.append(f"# Phi {float(meta['phi_start_deg']):.4f} deg.")
        lines.append("# Oscillation_axis PHI")
        lines.append("# N_oscillations 1")
    if "twotheta_deg" in meta:
        lines.append(f"# Detector_2theta {float(meta['twotheta_deg']):.4f} deg.")
    if "polarization" in meta:
        lines.append(f"# Polarization {float(meta['polarization']):.4f}")
    if "fluence" in meta:
        lines.append(f"# Flux {float(meta['fluence']):.6g}")
    for key in ("fdet", "sdet", "odet", "pix0_m", "beam_vector", "spindle_axis"):
        if key in meta:
            lines.append("# nanoBragg_%s %s" % (key, " ".join("%.9g" % float(v) for v in meta[key])))
    for key in ("distance_m", "close_distance_m", "orgx", "orgy"):
        if key in meta:
            lines.append("# nanoBragg_%s %.9g" % (key, float(meta[key])))
    if "convention" in meta:
        lines.append(f"# nanoBragg_convention {meta['convention']}")
    return "\r\n".join(lines)


def write_cbf(path: str, image: np.ndarray, meta: dict) -> None:
    """Write ``image`` (slow, fast) as a byte-offset mini-CBF file, atomically."""
    from fabio.cbfimage import CbfImage

    from .formats import atomic_path

    counts = np.ascontiguousarray(cbf_counts(image))
    cutoff = 65535 if np.issubdtype(np.asarray(image).dtype, np.unsignedinteger) and \
        np.asarray(image).dtype.itemsize <= 2 else INT32_MAX
    header = {
        "_array_data.header_convention": "PILATUS_1.2",
        "_array_data.header_contents": pilatus_header(meta, cutoff),
    }
    with atomic_path(path) as tmp:
        CbfImage(data=counts, header=header).write(tmp)
