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
    file's extension): the same pipeline (:mod:`nanobragg_torch.pipeline`: set-up,
    engine, statistics, output images, metadata) and the same writers.
    ``file_name`` is the file's base name (CBF files carry it).
    """
    from .. import pipeline

    kind = output_kind(fmt, noise)
    device = resolve_device(device)
    argv = list(args) + (["-device", device] if device != "cpu" else [])
    st = pipeline.setup_from_args(argv, cwd=cwd)
    pipeline.check_device(st)
    done = pipeline.run_setup(st)
    realism = realism or {}
    if realism.get("background"):
        from .realism import add_background
        done = pipeline.with_image(done, add_background(done.image, st, realism["background"]))
    images = pipeline.OutputImages(done)
    stats: Dict[str, Any] = {"max_I": done.stats.max_I, "mean": done.stats.mean, "rms": done.stats.rms}
    if kind == "int":
        stats["intfile_scale"] = images.int_scale
    elif kind == "noise":
        if realism.get("detector"):
            from .realism import detector_noise
            image = detector_noise(done.image, st.noise_seed, realism["detector"], st.detector.pixel_size)
            images.set_noise(image, float(done.image.astype(np.float64).sum()), int((image == 65535).sum()))
        stats.update(photons=images.photons, overloads=images.overloads)

    if fmt == "float":
        data = np.ascontiguousarray(images.image(kind), dtype="<f4").tobytes()
    else:
        # through the CLI's writer, in a private folder (the file's base name: CBF records it)
        with tempfile.TemporaryDirectory(prefix="nbds-") as tmp:
            path = os.path.join(tmp, os.path.basename(file_name))
            images.write(path, kind, fmt)
            with open(path, "rb") as fh:
                data = fh.read()

    if fmt == "float":
        data = np.ascontiguousarray(images.image(kind), dtype="<f4").tobytes()
    else:
        # through the CLI's writer, in a private folder (the file's base name: CBF records it)
        with tempfile.TemporaryDirectory(prefix="nbds-") as tmp:
            path = os.path.join(tmp, os.path.basename(file_name))
            images.write(path, kind, fmt)
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
