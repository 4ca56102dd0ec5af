"""Rendering one frame in-process: a CLI argument list in, the frame file's bytes out.

The bytes are exactly those the plain ``nanoBragg`` command writes for the
same arguments plus the frame's output flags (:meth:`Frame.output_args`):
the same parser, set-up, engine, statistics, integer scaling, noise
generator and SMV header as :mod:`nanobragg_torch.cli.main`, without the
console report and without the files the frame does not need.

:func:`render_batch` is the unit of work a Dask worker runs; it only returns
bytes (the driver writes the files and the manifest), so workers need no
shared filesystem for the output, only for input files named by the set-up.
"""
from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["RenderedFrame", "FrameJob", "render_frame", "render_batch", "resolve_device", "output_kind",
           "RENDER_COUNT"]

#: frames rendered by this process (tests use it to check that nothing is rendered twice)
RENDER_COUNT = {"n": 0}


@dataclass
class FrameJob:
    index: int
    file: str
    args: List[str]


@dataclass
class RenderedFrame:
    index: int
    file: str
    data: bytes
    sha256: str
    device: str
    seconds: float
    worker: str
    stats: Dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str) -> str:
    """``auto``: the GPU when this process sees one, else the CPU."""
    if device in (None, "", "auto"):
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _worker_name() -> str:
    try:
        from distributed import get_worker
        return get_worker().address
    except Exception:
        return f"{socket.gethostname()}:{os.getpid()}"


def _smv_header_args(st, prep) -> Dict[str, Any]:
    """The SMV header values the CLI writes (used only without io.formats)."""
    det = st.detector
    geo = prep.geometry
    S, F = det.spixels, det.fpixels
    orgx, orgy = geo.orgx_orgy(det.pixel_size)
    return dict(
        fpixels=F, spixels=S, pixel_size_m=det.pixel_size, distance_m=float(geo.distance),
        wavelength_m=st.beam.wavelength, Xbeam_m=det.Xbeam, Ybeam_m=det.Ybeam,
        Fbeam_m=float(geo.Fbeam), Sbeam_m=float(geo.Sbeam), detsize_s_m=det.size_s(),
        dials_origin_mm=[float(v) for v in geo.dials_origin_mm()], orgx=float(orgx), orgy=float(orgy),
        close_distance_m=float(geo.close_distance), phi0_rad=st.crystal.phi0, osc_rad=st.crystal.osc,
        twotheta_rad=det.twotheta)


def _formats():
    """io.formats (the CLI's writers); None in an installation without it."""
    try:
        from ..io import formats
    except ImportError:
        return None
    return formats if hasattr(formats, "write_image") else None


def output_kind(fmt: str, noise: bool) -> str:
    """Which of the CLI's images a frame file holds: noise | int | float | pgm | png.

    With noise: the noise image.  Without: the scaled integer image for SMV and
    CBF, the float image (photons) for float, h5 and nxs; PGM and PNG are the
    CLI's previews of the float image.
    """
    if fmt in ("pgm", "png"):
        return fmt
    if noise:
        return "noise"
    return "int" if fmt in ("smv", "cbf") else "float"


def render_frame(args: Sequence[str], fmt: str = "smv", noise: bool = False, cwd: str = ".",
                 device: str = "cpu", file_name: str = "frame", realism: Optional[Dict[str, Any]] = None):
    """Render one frame; returns ``(file bytes, device used, stats)``.

    The bytes are what ``nanoBragg ARGS`` writes for the image
    :func:`output_kind` names, in ``fmt`` (the CLI picks the format from the
    file's extension): the same set-up, engine, statistics, integer scaling,
    noise generator, metadata and writers.  ``file_name`` is the file's base
    name (CBF files carry it).
    """
    import torch
    from ..cli import main as cli
    from ..cli.flags import parse_flags
    from ..cli.resolve import SetupError, build_setup
    from ..engine import render
    from ..simulator import build_problem, prepare

    kind = output_kind(fmt, noise)
    device = resolve_device(device)
    argv = list(args) + (["-device", device] if device != "cpu" else [])
    flags = parse_flags(argv)
    st = build_setup(flags, cwd=cwd)
    f = st.flags
    from ..devices import device_problem
    problem = device_problem(f.device)
    if problem is not None:
        raise SetupError(f"-device {f.device}: {problem}")
    prep = prepare(st.crystal, st.detector, st.beam, device=f.device, dtype=torch.float64)
    if hasattr(cli, "check_work"):
        cli.check_work(st, prep)
    pb = build_problem(prep, st.crystal, st.detector, st.beam, st.structure_factors, st.options)
    with torch.no_grad():
        res = render(pb, st.options.max_chunk_elements, compiled=st.options.compile, backend=st.options.backend)
    img32 = res.image.detach().to("cpu", torch.float64).numpy().astype(np.float32)
    realism = realism or {}
    if realism.get("background"):
        from .realism import add_background
        img32 = add_background(img32, st, realism["background"])
    det = st.detector
    rendered = prep.pixels.cpu().numpy()
    max_I, imax, avg, rms, rmsd = cli.image_statistics(img32, rendered, det.roi)
    stats: Dict[str, Any] = {"max_I": max_I, "mean": avg, "rms": rms}

    formats = _formats()
    if formats is not None:
        meta = formats.frame_metadata(st, prep)
        meta["png_scale"] = getattr(f, "png_scale", "asinh")
        header, noise_header = meta["smv_header"], meta["smv_header_noise"]
    else:
        from ..io.smv import smv_header_values
        meta = {}
        header_args = _smv_header_args(st, prep)
        header = smv_header_values(**header_args)
        noise_header = smv_header_values(**header_args, noise_file=True)

    from ..io.smv import build_smv_header, int_image
    intimg, scale = int_image(img32, f.intfile_scale, f.adc_offset, det.roi, max_I=max_I)
    if kind == "int":
        stats["intfile_scale"] = scale
    if kind == "noise":
        from ..rng import SeedStream
        if realism.get("detector"):
            from .realism import detector_noise
            image = detector_noise(img32, st.noise_seed, realism["detector"], det.pixel_size)
            stats.update(photons=float(img32.astype(np.float64).sum()), overloads=int((image == 65535).sum()))
        else:
            image, photons, overloads = st.rng.noise_image(img32, SeedStream(st.noise_seed), det.roi, f.adc_offset)
            stats.update(photons=float(photons), overloads=int(overloads))
        meta = dict(meta, smv_header=noise_header)
        header = noise_header
    elif kind == "int":
        image = intimg
    elif kind == "pgm":
        from ..io.pgm import pgm_image
        image, pscale = pgm_image(img32, f.pgm_scale, scale, rmsd, det.roi)
    else:
        image = img32

    if fmt == "float":
        data = np.ascontiguousarray(image, dtype="<f4").tobytes()
    elif fmt == "smv":
        body = np.ascontiguousarray(image, dtype=np.dtype(np.uint16).newbyteorder("="))
        data = build_smv_header(header) + body.tobytes()
    else:
        with tempfile.TemporaryDirectory(prefix="nbds-") as tmp:
            path = os.path.join(tmp, os.path.basename(file_name))
            if fmt == "pgm":
                from ..io.pgm import write_pgm
                write_pgm(path, image, pscale)
            elif formats is None:
                raise RuntimeError(f"format {fmt!r} needs nanobragg_torch.io.formats, which this "
                                   "installation lacks")
            else:
                formats.write_image(path, image, meta, fmt)
            with open(path, "rb") as fh:
                data = fh.read()
    RENDER_COUNT["n"] += 1
    return data, device, stats


def render_batch(jobs: Sequence[FrameJob], fmt: str, noise: bool, cwd: str, device: str,
                 realism: Optional[Dict[str, Any]] = None) -> List[RenderedFrame]:
    """Render several frames in this process, one after another (a Dask task).

    Any frame's failure raises (the task is then retried or reported); the
    frames are independent, so a retry re-renders them identically.
    """
    out = []
    worker = _worker_name()
    for job in jobs:
        t0 = time.perf_counter()
        data, dev, stats = render_frame(job.args, fmt, noise, cwd, device, job.file, realism)
        out.append(RenderedFrame(index=job.index, file=job.file, data=data,
                                 sha256=hashlib.sha256(data).hexdigest(), device=dev,
                                 seconds=time.perf_counter() - t0, worker=worker, stats=stats))
    return out
