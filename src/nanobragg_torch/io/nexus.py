"""HDF5 images in the NeXus NXmx layout (through h5py), readable by DIALS/dxtbx.

Layout (one frame; lengths in metres, angles in degrees, each with ``units``)::

    /entry                                NXentry, definition = "NXmx"
      data/data  -> instrument/detector/data      NXdata (signal = "data")
      instrument                          NXinstrument
        beam/incident_wavelength          NXbeam (angstrom)
        detector                          NXdetector
          data (1, slow, fast)            int32 counts or float32 photons (gzip)
          depends_on -> transformations/origin
          transformations/origin          translation to the outer corner of the first pixel
          module                          NXdetector_module
            data_origin, data_size, data_stride
            module_offset                 translation 0, depends on .../origin
            fast_pixel_direction          pixel size along the fast axis, depends on module_offset
            slow_pixel_direction          pixel size along the slow axis, depends on module_offset
          distance, beam_center_x/y (pixels), x/y_pixel_size, sensor_material/thickness,
          pixel_mask (bit 8 = pixel switched off by -mask), saturation_value, count_time
      sample                              NXsample, depends_on -> transformations/phi
        transformations/phi               rotation about the spindle axis: start angle;
                                          phi_increment_set, phi_end: the oscillation
        beam -> instrument/beam
      source                              NXsource
      nanobragg                           NXcollection: the geometry in nanoBragg's own lab frame

All vectors are written in the McStas frame NeXus uses (beam along +z, y up):
:func:`~.formats.lab_to_mcstas` rotates nanoBragg's lab frame into it, so the
detector's position and axes relative to the beam and the spindle are exactly
those of the simulation.  dxtbx turns McStas into its imgCIF frame with
diag(-1, 1, -1); for the default MOSFLM-style beam (+x) the panel origin it
reads is the C program's ``DIALS_ORIGIN``.
"""
from __future__ import annotations

import datetime

import numpy as np

__all__ = ["write_nexus", "read_nexus", "nexus_geometry", "stack_nexus", "DETECTOR", "MODULE", "NO_THICKNESS_M"]

DETECTOR = "/entry/instrument/detector"
MODULE = DETECTOR + "/module"
USER_MASK_BIT = 1 << 8
#: sensor thickness written when the simulation has none (1 nm: the largest parallax shift dxtbx
#: computes from it, thickness * tan(angle), is below 1e-5 pixel of 100 um at 60 deg)
NO_THICKNESS_M = 1e-9


def _str(group, name, value):
    group.create_dataset(name, data=np.bytes_(value.encode("utf-8")))


def _num(group, name, value, units=None, dtype="f8"):
    ds = group.create_dataset(name, data=np.asarray(value, dtype=dtype))
    if units:
        ds.attrs["units"] = units
    return ds


def _axis(group, name, value, ttype, vector, depends_on, units, offset=(0.0, 0.0, 0.0)):
    ds = group.create_dataset(name, data=np.asarray(value, dtype="f8"))
    ds.attrs["transformation_type"] = ttype
    ds.attrs["vector"] = np.asarray(vector, dtype="f8")
    ds.attrs["offset"] = np.asarray(offset, dtype="f8")
    ds.attrs["offset_units"] = "m"
    ds.attrs["units"] = units
    ds.attrs["depends_on"] = depends_on
    return ds


def _group(parent, name, nx_class):
    g = parent.create_group(name)
    g.attrs["NX_class"] = nx_class
    return g


def _need(meta: dict, *keys):
    missing = [k for k in keys if k not in meta]
    if missing:
        from .formats import FormatError
        raise FormatError(f"NeXus writer needs the geometry keys {missing} (see frame_metadata)")


def write_nexus(path: str, image: np.ndarray, meta: dict) -> None:
    """Write ``image`` (slow, fast) as a one-frame NXmx file, or a stack (frames, slow, fast) as a
    rotation sweep in one file, atomically.

    Integer images are stored as int32 (counts), others as float32.
    ``meta`` is a :func:`~.formats.frame_metadata` dictionary; frame ``i`` of
    a stack starts at ``phi_start_deg + i * osc_range_deg``.
    """
    import h5py

    from .formats import atomic_path, lab_to_mcstas

    _need(meta, "pixel_size_m", "wavelength_m", "fdet", "sdet", "pix0_m", "beam_vector")
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or 0 in img.shape:
        from .formats import FormatError
        raise FormatError(f"NeXus image must be (slow, fast) or (frames, slow, fast), got shape {img.shape}")
    N, S, F = img.shape
    is_int = np.issubdtype(img.dtype, np.integer)
    if is_int:
        from .cbf import cbf_counts
        data = cbf_counts(img)
    else:
        data = np.asarray(img, dtype=np.float32)
    R = lab_to_mcstas(meta["beam_vector"])
    px = float(meta["pixel_size_m"])
    fast = R @ np.asarray(meta["fdet"], dtype=float)
    slow = R @ np.asarray(meta["sdet"], dtype=float)
    pix0 = R @ np.asarray(meta["pix0_m"], dtype=float)
    spindle = R @ np.asarray(meta.get("spindle_axis", (0.0, 0.0, 1.0)), dtype=float)
    sn = np.linalg.norm(spindle)
    spindle = spindle / sn if sn > 0 else np.array([1.0, 0.0, 0.0])
    origin_len = float(np.linalg.norm(pix0))
    origin_dir = pix0 / origin_len if origin_len > 0 else np.array([0.0, 0.0, 1.0])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as fh:
        fh.attrs["default"] = "entry"
        fh.attrs["creator"] = "nanobragg-torch"
        fh.attrs["file_time"] = now
        fh.attrs["NX_class"] = "NXroot"
        entry = _group(fh, "entry", "NXentry")
        entry.attrs["default"] = "data"
        _str(entry, "definition", "NXmx")
        _str(entry, "start_time", now)
        _str(entry, "end_time_estimated", now)
        _str(entry, "title", "nanoBragg simulated diffraction image")

        inst = _group(entry, "instrument", "NXinstrument")
        name = inst.create_dataset("name", data=np.bytes_(b"nanoBragg simulation"))
        name.attrs["short_name"] = "nanoBragg"
        beam = _group(inst, "beam", "NXbeam")
        _num(beam, "incident_wavelength", float(meta["wavelength_m"]) * 1e10, "angstrom")

        det = _group(inst, "detector", "NXdetector")
        dset = det.create_dataset("data", data=data.reshape(N, S, F), chunks=(1, S, F),
                                  compression="gzip", compression_opts=4, shuffle=True)
        if is_int:
            dset.attrs["units"] = "counts"
        else:
            dset.attrs["units"] = "photons"
        _str(det, "depends_on", DETECTOR + "/transformations/origin")
        _str(det, "description", "nanoBragg simulated pixel-array detector")
        _str(det, "type", "pixel")
        # NXmx: distance from the sample to the beam centre (where the beam meets the detector)
        _num(det, "distance", float(meta.get("distance_m", origin_len)), "m")
        det.create_dataset("distance_derived", data=np.bool_(True))   # computed from the axes below
        _num(det, "beam_center_x", float(meta.get("beam_center_fast_m", 0.0)) / px, "pixel")
        _num(det, "beam_center_y", float(meta.get("beam_center_slow_m", 0.0)) / px, "pixel")
        _num(det, "x_pixel_size", px, "m")
        _num(det, "y_pixel_size", px, "m")
        _str(det, "sensor_material", "Silicon")
        # dxtbx always models parallax from sensor_thickness and asserts it is > 0; a simulation
        # without a sensor thickness writes NO_THICKNESS_M, far too thin to shift any spot
        thick = float(meta.get("sensor_thickness_m", 0.0))
        _num(det, "sensor_thickness", thick if thick > 0 else NO_THICKNESS_M, "m")
        _num(det, "count_time", float(meta.get("exposure_s", 1.0)), "s")
        if is_int:
            _num(det, "saturation_value", 65535 if img.dtype.itemsize <= 2 and
                 np.issubdtype(img.dtype, np.unsignedinteger) else 2147483647, None, dtype="i8")
        mask = np.zeros((S, F), dtype=np.int32)
        m = meta.get("mask")
        if m is not None and np.shape(m) == (S, F):
            mask[np.asarray(m, dtype=bool)] = USER_MASK_BIT
        det.create_dataset("pixel_mask", data=mask, compression="gzip", compression_opts=4)
        det["pixel_mask_applied"] = False

        trans = _group(det, "transformations", "NXtransformations")
        _axis(trans, "origin", origin_len, "translation", origin_dir, ".", "m")
        module = _group(det, "module", "NXdetector_module")
        _num(module, "data_origin", [0, 0], None, dtype="i8")
        _num(module, "data_size", [S, F], None, dtype="i8")
        _num(module, "data_stride", [1, 1], None, dtype="i8")
        _axis(module, "module_offset", 0.0, "translation", [1.0, 0.0, 0.0],
              DETECTOR + "/transformations/origin", "m")
        _axis(module, "fast_pixel_direction", px, "translation", fast, MODULE + "/module_offset", "m")
        _axis(module, "slow_pixel_direction", px, "translation", slow, MODULE + "/module_offset", "m")

        sample = _group(entry, "sample", "NXsample")
        _str(sample, "name", "nanoBragg crystal")
        _str(sample, "depends_on", "/entry/sample/transformations/phi")
        strans = _group(sample, "transformations", "NXtransformations")
        phi0 = float(meta.get("phi_start_deg", 0.0))
        osc = float(meta.get("osc_range_deg", 0.0))
        starts = [phi0 + i * osc for i in range(N)]
        _axis(strans, "phi", starts, "rotation", spindle, ".", "deg")
        _num(strans, "phi_increment_set", osc, "deg")
        _num(strans, "phi_end", [x + osc for x in starts], "deg")
        sample["beam"] = beam                 # NXmx 2020+: the beam also under the sample

        data_group = _group(entry, "data", "NXdata")
        data_group.attrs["signal"] = "data"
        data_group["data"] = dset             # hard link to the detector's data

        source = _group(entry, "source", "NXsource")
        _str(source, "name", "nanoBragg simulated X-ray source")

        coll = _group(entry, "nanobragg", "NXcollection")
        coll.attrs["description"] = "geometry in nanoBragg's lab frame (metres, unit vectors)"
        for key in ("fdet", "sdet", "odet", "pix0_m", "beam_vector", "spindle_axis", "dials_origin_mm"):
            if key in meta:
                _num(coll, key, [float(v) for v in meta[key]], None)
        for key in ("pixel_size_m", "distance_m", "close_distance_m", "wavelength_m",
                    "beam_center_fast_m", "beam_center_slow_m", "phi_start_deg", "osc_range_deg",
                    "twotheta_deg", "orgx", "orgy", "fluence", "polarization", "sensor_thickness_m"):
            if key in meta:
                _num(coll, key, float(meta[key]), None)
        if "convention" in meta:
            _str(coll, "convention", str(meta["convention"]))
        _num(coll, "lab_to_mcstas", R, None)


def _scalar(node):
    v = node[()]
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    arr = np.asarray(v)
    return arr.reshape(-1)[0].item() if arr.size else None


def _in_metres(ds) -> float:
    """A length dataset's value in metres (its ``units`` m, mm, um or nm)."""
    units = ds.attrs.get("units", b"m")
    units = units.decode() if isinstance(units, bytes) else str(units)
    scale = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "micron": 1e-6, "microns": 1e-6, "nm": 1e-9}.get(units.strip())
    if scale is None:
        raise ValueError(f"{ds.file.filename}: {ds.name} has units {units!r} (expected a length)")
    return float(_scalar(ds)) * scale


def nexus_geometry(path: str) -> dict:
    """The NXmx fields of a file written by :func:`write_nexus` (or any one-module NXmx file).

    Keys: ``fpixels``, ``spixels``, ``pixel_size_m``, ``distance_m``,
    ``beam_center_fast_m``/``beam_center_slow_m`` (from ``beam_center_x/y``
    in pixels), ``wavelength_m``, ``phi_start_deg``, ``osc_range_deg``,
    ``sensor_thickness_m`` and, when the file has them, the nanoBragg-frame
    vectors of ``/entry/nanobragg``.  Raises ValueError naming the file and
    the missing field.
    """
    import h5py
    out: dict = {}
    with h5py.File(path, "r") as fh:
        def need(name):
            if name not in fh:
                raise ValueError(f"{path}: NeXus file has no {name}")
            return fh[name]
        data = need(DETECTOR + "/data")
        if data.ndim not in (2, 3):
            raise ValueError(f"{path}: {DETECTOR}/data is not an image stack (shape {data.shape})")
        out["spixels"], out["fpixels"] = (int(x) for x in data.shape[-2:])
        px = _in_metres(need(DETECTOR + "/x_pixel_size"))
        out["pixel_size_m"] = px
        if DETECTOR + "/y_pixel_size" in fh:
            out["pixel_size_slow_m"] = _in_metres(fh[DETECTOR + "/y_pixel_size"])
        if DETECTOR + "/distance" in fh:
            out["distance_m"] = _in_metres(fh[DETECTOR + "/distance"])
        for key, name in (("beam_center_fast_m", "beam_center_x"), ("beam_center_slow_m", "beam_center_y")):
            if DETECTOR + "/" + name in fh:
                out[key] = float(_scalar(fh[DETECTOR + "/" + name])) * px
        wl = need("/entry/instrument/beam/incident_wavelength")
        units = wl.attrs.get("units", b"angstrom")
        units = units.decode() if isinstance(units, bytes) else str(units)
        scale = {"angstrom": 1e-10, "A": 1e-10, "nm": 1e-9, "m": 1.0}.get(units.strip())
        if scale is None:
            raise ValueError(f"{path}: incident_wavelength has units {units!r}")
        out["wavelength_m"] = float(_scalar(wl)) * scale
        if "/entry/sample/transformations/phi" in fh:
            out["phi_start_deg"] = float(np.asarray(fh["/entry/sample/transformations/phi"][()]).reshape(-1)[0])
        if "/entry/sample/transformations/phi_increment_set" in fh:
            out["osc_range_deg"] = float(_scalar(fh["/entry/sample/transformations/phi_increment_set"]))
        if DETECTOR + "/sensor_thickness" in fh:
            out["sensor_thickness_m"] = _in_metres(fh[DETECTOR + "/sensor_thickness"])
        if "/entry/nanobragg" in fh:
            for key, ds in fh["/entry/nanobragg"].items():
                v = ds[()]
                out["nanobragg_" + key] = v.decode() if isinstance(v, bytes) else np.asarray(v).tolist()
            if "sensor_thickness_m" in fh["/entry/nanobragg"]:
                out["sensor_thickness_m"] = float(_scalar(fh["/entry/nanobragg/sensor_thickness_m"]))
        elif out.get("sensor_thickness_m", 0.0) <= NO_THICKNESS_M:
            out["sensor_thickness_m"] = 0.0
    return out


def read_nexus(path: str, frame: int = 0):
    """Read one frame of an NXmx file: ``(geometry dict, image (slow, fast), mask or None)``.

    The image keeps its stored type (int32 counts or float32 photons); the
    mask is a bool (slow, fast) array of the pixels ``pixel_mask`` marks
    (any bit set), or None when the file has no ``pixel_mask``.  The
    geometry is :func:`nexus_geometry`.  Raises ValueError naming the file
    when it is not an NXmx image file.
    """
    import h5py
    try:
        fh = h5py.File(path, "r")
    except OSError as e:
        if not __import__("os").path.exists(path):
            raise
        raise ValueError(f"{path}: not an HDF5/NeXus file ({e})") from None
    with fh:
        if DETECTOR + "/data" not in fh:
            raise ValueError(f"{path}: NeXus file has no {DETECTOR}/data")
        data = fh[DETECTOR + "/data"]
        if data.ndim == 3:
            if not 0 <= frame < data.shape[0]:
                raise ValueError(f"{path}: frame {frame} out of range (the file has {data.shape[0]})")
            image = np.asarray(data[frame])
        elif data.ndim == 2:
            image = np.asarray(data[()])
        else:
            raise ValueError(f"{path}: {DETECTOR}/data is not an image (shape {data.shape})")
        mask = None
        if DETECTOR + "/pixel_mask" in fh:
            m = np.asarray(fh[DETECTOR + "/pixel_mask"][()])
            if m.shape == image.shape:
                mask = m != 0
    return nexus_geometry(path), image, mask


def stack_nexus(paths, out: str) -> None:
    """Join one-frame NXmx files of the same detector into one rotation-sweep file ``out``, atomically.

    The files must have the same image shape and consecutive spindle angles
    ``phi_i = phi_0 + i * osc`` (``osc`` the first file's increment); the
    geometry, mask and everything else come from the first file.  Raises
    ValueError naming the file that does not fit.
    """
    import h5py

    from .formats import atomic_path
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("stack_nexus: no input files")
    frames, starts = [], []
    geo0 = None
    for p in paths:
        geo, image, _ = read_nexus(p)
        if geo0 is None:
            geo0 = geo
        elif image.shape != frames[0].shape:
            raise ValueError(f"{p}: image shape {image.shape} differs from {paths[0]}'s {frames[0].shape}")
        frames.append(image)
        starts.append(float(geo.get("phi_start_deg", 0.0)))
    osc = float(geo0.get("osc_range_deg", 0.0))
    for i, (p, phi) in enumerate(zip(paths, starts)):
        if abs(phi - (starts[0] + i * osc)) > 1e-6:
            raise ValueError(f"{p}: spindle angle {phi:g} deg is not {starts[0] + i * osc:g} "
                             f"(frames must follow each other by {osc:g} deg)")
    stack = np.stack(frames)
    with atomic_path(out) as tmp:
        with h5py.File(paths[0], "r") as src, h5py.File(tmp, "w") as dst:
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            for name in src:
                src.copy(src[name], dst, name=name, expand_soft=False)
            det = dst[DETECTOR]
            attrs = dict(det["data"].attrs)
            del dst["/entry/data/data"]
            del det["data"]
            dset = det.create_dataset("data", data=stack, chunks=(1,) + stack.shape[1:],
                                      compression="gzip", compression_opts=4, shuffle=True)
            for key, value in attrs.items():
                dset.attrs[key] = value
            dst["/entry/data/data"] = dset
            strans = dst["/entry/sample/transformations"]
            phi_attrs = dict(strans["phi"].attrs)
            del strans["phi"], strans["phi_end"]
            phi = strans.create_dataset("phi", data=np.asarray(starts, dtype="f8"))
            for key, value in phi_attrs.items():
                phi.attrs[key] = value
            _num(strans, "phi_end", [x + osc for x in starts], "deg")
