"""The one render pipeline: flags -> set-up -> problem -> render -> images.

Every caller goes through these functions: the ``nanoBragg`` command
(:mod:`.cli.main`, which prints its report between the stages and writes the
files), the dataset runner (:mod:`.dataset.render`, which returns one image's
file bytes), the pixel trace (:mod:`.tools.trace`, which rebuilds the problem in
float64), :func:`.api.from_args`, the benchmarks and the tests.  So a rule about
the set-up, the problem, the statistics or an output image is written once.

Stages, each a function:

* :func:`setup_from_args` -- flags (a list or a string) to a :class:`~.cli.resolve.Setup`;
* :func:`prepare_setup` -- the device check, the float64 geometry
  (:func:`.simulator.prepare`) and the per-pixel work check;
* :func:`make_problem` -- the engine's render problem (any dtype);
* :func:`check_backend` -- the ``-backend`` asked for can take the problem;
* :func:`render_problem` -- the only call of the engine's renderer from a set-up;
* :func:`finish` -- the float32 image and the C program's statistics;
* :class:`OutputImages` -- the images the C program writes (float, scaled
  integer, PGM, noise, PNG) computed from the float image, each once.

:func:`run_setup` chains prepare -> problem -> backend check -> render -> finish, with optional
hooks between the stages (the CLI prints its report there and writes the
structure-factor dump; the trace runs on the problem).  Heavy modules (torch,
the engine) are imported inside the functions, so that importing this module
(and the CLI's ``-h``) stays cheap.
"""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Union

import numpy as np

__all__ = ["ImageStats", "Rendered", "Hooks", "OutputImages", "setup_from_args", "check_device",
           "prepare_setup", "make_problem", "check_backend", "render_problem", "finish", "run_setup", "render_args",
           "image_statistics", "with_image", "count_evaluations", "MAX_WORK_PER_PIXEL", "MAX_DETECTOR_DISTANCE"]

#: one pixel's evaluations beyond which the engine cannot hold a chunk in memory
MAX_WORK_PER_PIXEL = 1 << 25
#: farther than this (m) the geometry overflows 4-byte floats on the way to the image (NaN)
MAX_DETECTOR_DISTANCE = 1e15


# ---------------------------------------------------------------------------
# flags -> set-up
# ---------------------------------------------------------------------------

def setup_from_args(args: Union[str, Sequence[str]], cwd: str = ".", now: Optional[int] = None):
    """The set-up for nanoBragg flags (a string or a list, without the program name).

    ``now``: the clock (s) the C program's default seeds come from (None: the time now).
    """
    from .cli.flags import parse_flags
    argv = shlex.split(args) if isinstance(args, str) else list(args)
    return setup_from_flags(parse_flags(argv), cwd=cwd, now=now)


def setup_from_flags(flags, cwd: str = ".", now: Optional[int] = None):
    """The set-up for parsed flags (:func:`nanobragg_torch.cli.flags.parse_flags`): reads the input files."""
    from .cli.resolve import build_setup
    return build_setup(flags, cwd=cwd, now=now)


# ---------------------------------------------------------------------------
# set-up -> prepared geometry -> render problem
# ---------------------------------------------------------------------------

def check_device(st) -> None:
    """A device that this machine does not have (cuda, xpu, mps) is the user's error (exit 2)."""
    from .devices import device_problem
    device = st.flags.device
    problem = device_problem(device)
    if problem is not None:
        from .cli.resolve import SetupError
        raise SetupError(f"-device {device}: {problem}")


def count_evaluations(st, prep) -> int:
    """Evaluations per pixel: sub-pixels x sensor layers x sources x orientations."""
    xt = st.crystal
    S = int(prep.sources.incident.shape[0])
    M = xt.phisteps * (1 if xt.mosaic_umats is None else len(xt.mosaic_umats))
    return st.detector.thicksteps * prep.oversample ** 2 * S * M


def check_work(st, prep) -> None:
    """Refuse a set-up whose geometry is not finite or whose single pixel would not fit in memory."""
    import torch
    from .cli.resolve import SetupError
    from .models.detector import geometry_problem, precision_problem
    det, xt = st.detector, st.crystal
    geo = prep.geometry
    problem = geometry_problem(geo, curved=det.curved)
    if problem is not None:
        raise SetupError(problem)
    parts = [geo.pix0, geo.fdet, geo.sdet, geo.odet, geo.distance.reshape(1), geo.close_distance.reshape(1)]
    if not all(bool(torch.isfinite(p).all()) for p in parts):
        raise SetupError("the detector geometry is not finite (degenerate detector vectors or rotations)")
    far = max(abs(float(geo.distance)), float(torch.linalg.vector_norm(geo.pix0)))
    if far > MAX_DETECTOR_DISTANCE:
        raise SetupError("the direct beam meets the detector plane %g m from the sample: the beam runs "
                         "(nearly) parallel to the detector; tilt it less, or pivot about the sample "
                         "(-pivot sample, -close_distance)" % far)
    work = count_evaluations(st, prep)
    if work <= MAX_WORK_PER_PIXEL:
        # after the work check: a detector that close also asks for an impossible auto-oversampling,
        # and that message (give -oversample N) comes first
        problem = precision_problem(geo, det.fpixels * det.pixel_size, det.spixels * det.pixel_size,
                                    st.options.dtype, curved=det.curved)
        if problem is not None:
            raise SetupError(problem)
        return
    O, T = prep.oversample, det.thicksteps
    S = int(prep.sources.incident.shape[0])
    M = work // (T * O * O * S)
    how = "auto-selected" if det.oversample <= 0 else "-oversample"
    hint = ("give a smaller -oversample N" if O * O >= max(T, S, M)
            else "reduce -phisteps, -mosaic_dom, the sources or -thicksteps")
    raise SetupError(f"{how} {O}x{O} sub-pixels x {T} layers x {S} sources x {M} orientations = {work:.3g} "
                     f"evaluations per pixel, more than fits in memory; {hint}")


def prepare_setup(st):
    """The device check, the set-up's float64 geometry (:class:`.simulator.Prepared`) and the work check."""
    import torch
    from .simulator import prepare
    check_device(st)
    prep = prepare(st.crystal, st.detector, st.beam, device=st.flags.device, dtype=torch.float64)
    check_work(st, prep)
    return prep


def make_problem(st, prep, dtype: Optional[str] = None):
    """The engine's render problem; ``dtype`` overrides the set-up's (the trace asks for float64)."""
    from dataclasses import replace
    from .simulator import build_problem
    options = st.options if dtype is None else replace(st.options, dtype=dtype)
    return build_problem(prep, st.crystal, st.detector, st.beam, st.structure_factors, options)


def check_backend(st, pb) -> None:
    """A ``-backend`` that cannot take the problem is the user's error (exit 2, before any file)."""
    from .backends import BackendError, select
    from .cli.flags import FlagError
    try:
        select(pb, st.options.backend)
    except BackendError as e:
        raise FlagError(str(e)) from None


def render_problem(st, pb, progress: Optional[Callable[[int, int], None]] = None):
    """Render ``pb`` with the set-up's options (no gradients): the engine's :class:`RenderResult`.

    The backend is ``st.options.backend`` (``-backend``); ``result.backend`` names the one
    that rendered.
    """
    import torch
    from .engine import render
    opts = st.options
    with torch.no_grad():
        return render(pb, opts.max_chunk_elements, progress=progress, compiled=opts.compile,
                      backend=opts.backend)


# ---------------------------------------------------------------------------
# rendered image -> statistics
# ---------------------------------------------------------------------------

@dataclass
class ImageStats:
    """The C program's statistics of the float image (see :func:`image_statistics`)."""
    max_I: float
    imax: Optional[int]
    mean: float
    rms: float
    rmsd: float


def image_statistics(img: np.ndarray, rendered: np.ndarray, roi) -> ImageStats:
    """The C program's statistics: max_I (and its flat index), mean, rms, rmsd.

    ``img`` is the float32 image; ``rendered`` the flat indices of the rendered
    pixels (inside the ROI and unmasked).  Mean and rms are over the rendered
    pixels, the rmsd over the ROI ignoring the mask, all summed in double
    precision as the C does.
    """
    flat = img.reshape(-1)
    everything = len(rendered) == flat.size      # rendered holds each index once, ascending
    x0, x1, y0, y1 = roi
    if everything and (x0, y0) <= (0, 0) and x1 >= img.shape[1] - 1 and y1 >= img.shape[0] - 1:
        from .backends import cio
        fast = cio.image_stats(np.ascontiguousarray(img))   # one C pass in raster order, as the C sums
        if fast is not None:
            return ImageStats(*fast)
    vals = flat.astype(np.float64) if everything else flat[rendered].astype(np.float64)
    n = len(vals)
    imax, max_I = None, 0.0
    if n:
        at = int(np.argmax(vals))
        max_I = float(vals[at])
        imax = int(rendered[at])
        if max_I <= 0.0:
            imax, max_I = None, 0.0
    sumn = n if n > 0 else 1
    avg = float(vals.sum()) / sumn
    if sumn <= 1:
        sumn = 2
    rms = math.sqrt(float((vals * vals).sum()) / (sumn - 1))
    window = img[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1]
    # the same pixels in the same order when the ROI is the whole image and all were rendered
    roi_vals = vals if (everything and window.size == flat.size) else window.astype(np.float64).reshape(-1)
    m = len(roi_vals)
    if m <= 1:
        m = 2
    dev = roi_vals - avg
    np.multiply(dev, dev, out=dev)
    rmsd = math.sqrt(float(dev.sum()) / (m - 1))
    return ImageStats(max_I, imax, avg, rms, rmsd)


@dataclass
class Rendered:
    """One rendered set-up: every stage's product."""
    setup: Any                 # cli.resolve.Setup
    prepared: Any              # simulator.Prepared
    problem: Any               # engine.RenderProblem
    result: Any                # engine.RenderResult
    image: np.ndarray          # float32 (spixels, fpixels), photons per pixel
    stats: ImageStats
    nonfinite: int = 0         # pixels that are NaN or overflow float32

    def max_position(self):
        """(x, y) in m of the brightest pixel's last sub-pixel, as the C program reports it."""
        if self.stats.imax is None:
            return 0.0, 0.0
        det = self.setup.detector
        O = self.prepared.oversample
        sub = det.pixel_size / O
        F = self.image.shape[1]
        fp, sp = self.stats.imax % F, self.stats.imax // F
        return sub * (fp * O + O - 1) + sub / 2.0, sub * (sp * O + O - 1) + sub / 2.0


def finish(st, prep, pb, res) -> Rendered:
    """The float32 image (rounded from the engine's dtype through float64, as before) and its statistics."""
    import torch
    img = res.image.detach()
    if img.device.type != "cpu" or img.dtype != torch.float32:
        img = img.to("cpu", torch.float64)
    img32 = np.ascontiguousarray(img.numpy(), dtype=np.float32)
    bad = int(img32.size - np.count_nonzero(np.isfinite(img32)))
    rendered = prep.pixels.cpu().numpy()
    stats = image_statistics(img32, rendered, st.detector.roi)
    return Rendered(setup=st, prepared=prep, problem=pb, result=res, image=img32, stats=stats, nonfinite=bad)


def with_image(done: Rendered, image: np.ndarray) -> Rendered:
    """``done`` with another float image (e.g. a background added) and that image's statistics."""
    from dataclasses import replace
    img32 = np.ascontiguousarray(image, dtype=np.float32)
    stats = image_statistics(img32, done.prepared.pixels.cpu().numpy(), done.setup.detector.roi)
    bad = int(img32.size - np.count_nonzero(np.isfinite(img32)))
    return replace(done, image=img32, stats=stats, nonfinite=bad)


# ---------------------------------------------------------------------------
# the chain
# ---------------------------------------------------------------------------

@dataclass
class Hooks:
    """Called between the stages of :func:`run_setup` (the CLI's report, the trace)."""
    prepared: Optional[Callable[[Any, Any], None]] = None            # (setup, prepared)
    problem: Optional[Callable[[Any, Any, Any], None]] = None        # (setup, prepared, problem)
    progress: Optional[Callable[[int, int], None]] = None


def run_setup(st, hooks: Optional[Hooks] = None) -> Rendered:
    """prepare -> problem -> backend check -> render -> finish, with ``hooks`` between the stages."""
    hooks = hooks or Hooks()
    prep = prepare_setup(st)
    if hooks.prepared is not None:
        hooks.prepared(st, prep)
    pb = make_problem(st, prep)
    check_backend(st, pb)
    if hooks.problem is not None:
        hooks.problem(st, prep, pb)
    res = render_problem(st, pb, progress=hooks.progress)
    return finish(st, prep, pb, res)


def render_args(args: Union[str, Sequence[str]], cwd: str = ".", now: Optional[int] = None) -> Rendered:
    """Flags to a :class:`Rendered` (no files written): the whole pipeline in one call."""
    return run_setup(setup_from_args(args, cwd=cwd, now=now))


# ---------------------------------------------------------------------------
# rendered image -> the images the C program writes
# ---------------------------------------------------------------------------

@dataclass
class OutputImages:
    """The C program's output images of one :class:`Rendered`, each computed once, on demand.

    ``float`` (photons, float32), ``int`` (scaled, offset and truncated, uint16; and its
    ``int_scale``), ``pgm`` (uint8; and ``pgm_scale``), ``noise`` (Poisson deviates plus the
    ADC offset, uint16; ``photons``, ``overloads``).  ``meta(kind)`` is the metadata the
    writers take for that image (the SMV header of the noise image differs).
    """
    rendered: Rendered
    _cache: Dict[str, Any] = field(default_factory=dict)

    @property
    def float(self) -> np.ndarray:
        return self.rendered.image

    def _int(self):
        if "int" not in self._cache:
            from .io.smv import int_image
            st = self.rendered.setup
            f = st.flags
            self._cache["int"] = int_image(self.rendered.image, f.intfile_scale, f.adc_offset,
                                           st.detector.roi, max_I=self.rendered.stats.max_I)
        return self._cache["int"]

    @property
    def int(self) -> np.ndarray:
        return self._int()[0]

    @property
    def int_scale(self) -> float:
        return self._int()[1]

    def _pgm(self):
        if "pgm" not in self._cache:
            from .io.pgm import pgm_image
            st = self.rendered.setup
            self._cache["pgm"] = pgm_image(self.rendered.image, st.flags.pgm_scale, self.int_scale,
                                           self.rendered.stats.rmsd, st.detector.roi)
        return self._cache["pgm"]

    @property
    def pgm(self) -> np.ndarray:
        return self._pgm()[0]

    @property
    def pgm_scale(self) -> float:
        return self._pgm()[1]

    def _noise(self):
        if "noise" not in self._cache:
            from .rng import SeedStream
            st = self.rendered.setup
            self._cache["noise"] = st.rng.noise_image(self.rendered.image, SeedStream(st.noise_seed),
                                                      st.detector.roi, st.flags.adc_offset)
        return self._cache["noise"]

    def set_noise(self, image: np.ndarray, photons: float, overloads: int) -> None:
        """Use ``image`` as the noise image (the dataset runner's detector response model)."""
        self._cache["noise"] = (image, photons, overloads)

    @property
    def noise(self) -> np.ndarray:
        return self._noise()[0]

    @property
    def photons(self) -> float:
        return float(self._noise()[1])

    @property
    def overloads(self) -> int:
        return int(self._noise()[2])

    def meta(self, kind: str = "float") -> dict:
        if "meta" not in self._cache:
            from .io.formats import frame_metadata
            meta = frame_metadata(self.rendered.setup, self.rendered.prepared)
            meta["png_scale"] = getattr(self.rendered.setup.flags, "png_scale", "asinh")
            self._cache["meta"] = meta
        meta = self._cache["meta"]
        if kind == "noise":
            return dict(meta, smv_header=meta["smv_header_noise"])
        return meta

    def image(self, kind: str) -> np.ndarray:
        """The array of ``kind`` (float | int | pgm | noise | png; png is the float image)."""
        return self.float if kind == "png" else getattr(self, kind)

    def write(self, path: str, kind: str, fmt: str) -> None:
        """Write ``kind`` to ``path`` in ``fmt`` (atomically), with the writer the CLI uses."""
        if kind == "pgm":
            from .io.pgm import write_pgm
            write_pgm(path, self.pgm, self.pgm_scale)
        else:
            from .io.formats import write_image
            write_image(path, self.image(kind), self.meta(kind), fmt)
