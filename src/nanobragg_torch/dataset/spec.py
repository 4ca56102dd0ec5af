"""Experiment files: the common set-up, the series, noise and output, as frames.

An experiment file is TOML (see ``docs/dataset.md``)::

    [setup]                      # the common set-up, in the CLI's own terms
    cell = [70, 80, 90, 75, 85, 95]
    default_F = 100
    N = 5
    detpixels = 128
    # or/and:  flags = "-cell 70 80 90 75 85 95 -default_F 100"

    [rotation]                   # a rotation sweep ...
    start = 0.0                  # deg, phi of the first frame
    osc = 0.1                    # deg per frame
    frames = 100
    phisteps = 1                 # phi steps within a frame

    [serial]                     # ... or serial-crystallography shots
    shots = 1000
    seed = 42
    orientation = "random"       # uniform random rotations ("fixed": the set-up's)
    N = {dist = "uniform", low = 3, high = 8}
    mosaic = {dist = "normal", mean = 0.2, sd = 0.05, min = 0}
    lambda = {dist = "normal", mean = 1.0, sd = 0.002}
    beam_jitter = 0.05           # mm, normal sd of Xbeam/Ybeam about the set-up's centre

    [noise]
    enabled = true
    seed = 1                     # frame i uses seed + i

    [output]
    format = "smv"               # smv | float | cbf | h5 | nxs | pgm | png
    name = "frame_{number:05d}"
    first = 1

    [run]
    retries = 2
    batch = 1
    device = "auto"

Every frame becomes a plain ``nanoBragg`` argument list (:class:`Frame`):
the common flags followed by the frame's own (``-phi``/``-osc``/``-phisteps``
for a rotation frame; ``-misset``, ``-N``..., ``-mosaic``, ``-lambda``,
``-Xbeam``/``-Ybeam``, ``-mosaic_seed`` for a serial shot) and ``-seed``
last.  Later flags overwrite earlier ones in the CLI grammar, so a frame's
own values win over the common set-up.  Random draws of frame ``i`` come from
``numpy.random.SeedSequence([seed, i, key])``: a frame's values do not depend
on the number of frames or on which other keys are present, and the manifest
records the resulting arguments verbatim.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

__all__ = ["SpecError", "Frame", "DatasetSpec", "load_spec", "spec_from_dict", "FORMATS", "fmt_num"]


class SpecError(ValueError):
    """A problem with the experiment file; the message names the key."""


#: output format -> file extension
FORMATS = {"smv": "img", "float": "bin", "cbf": "cbf", "h5": "h5", "nxs": "nxs", "pgm": "pgm", "png": "png"}

#: flags the dataset controls itself (outputs, the noise seed)
_RESERVED = {
    "-floatfile": "[output] format", "-floatimage": "[output] format",
    "-intfile": "[output] format", "-intimage": "[output] format",
    "-noisefile": "[output] format", "-noiseimage": "[output] format",
    "-pgmfile": "[output] format", "-pgmimage": "[output] format", "-pngfile": "[output] format",
    "-format": "[output] format",
    "-nonoise": "[noise] enabled = false", "-seed": "[noise] seed",
    "-device": "[run] device", "-progress": None, "-noprogress": None,
    "-printout": None, "-printout_pixel": None, "-trace_pixel": None, "-trace_json": None,
    "--trace-json": None, "-stolout": None,
}

_SERIAL_INT_KEYS = ("N", "Na", "Nb", "Nc")
_SERIAL_FLOAT_KEYS = ("samplesize", "mosaic", "lambda", "Xbeam", "Ybeam")
_SERIAL_KEYS = set(_SERIAL_INT_KEYS + _SERIAL_FLOAT_KEYS) | {
    "shots", "seed", "orientation", "beam_jitter", "mosaic_domains"}
_ROTATION_KEYS = {"start", "osc", "frames", "phisteps"}
_NOISE_KEYS = {"enabled", "seed"}
_OUTPUT_KEYS = {"format", "name", "first"}
_RUN_KEYS = {"retries", "batch", "device"}
_TOP_KEYS = {"setup", "rotation", "serial", "noise", "output", "run", "description", "background", "detector"}


def fmt_num(x: float) -> str:
    """A number as it goes on a command line: ``%.12g`` (integers without a point)."""
    x = float(x)
    if x == 0.0:
        return "0"
    return "%.12g" % x


def _key_id(key: str) -> int:
    return zlib.crc32(key.encode("ascii"))


def frame_rng(seed: int, index: int, key: str) -> np.random.Generator:
    """The generator of frame ``index``'s draws for ``key`` (independent streams)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index), _key_id(key)])))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix uniformly distributed over SO(3) (Shoemake's unit quaternion)."""
    u1, u2, u3 = rng.random(3)
    a, b = math.sqrt(1.0 - u1), math.sqrt(u1)
    x, y = a * math.sin(2 * math.pi * u2), a * math.cos(2 * math.pi * u2)
    z, w = b * math.sin(2 * math.pi * u3), b * math.cos(2 * math.pi * u3)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def misset_angles(umat: np.ndarray):
    """Misset angles (deg) for the C's convention: rotate about x, then y, then z.

    ``umat`` (3x3, acting on column vectors) equals ``Rz(rz) @ Ry(ry) @ Rx(rx)``.
    """
    from ..rng import umat2misset
    return tuple(math.degrees(v) for v in umat2misset(umat))


# ---------------------------------------------------------------------------
# distributions
# ---------------------------------------------------------------------------

def _check_dist(where: str, d) -> None:
    if isinstance(d, bool) or not isinstance(d, (int, float, dict)):
        raise SpecError(f"{where}: expected a number or a distribution table, got {d!r}")
    if isinstance(d, dict):
        kind = d.get("dist")
        need = {"uniform": {"low", "high"}, "normal": {"mean", "sd"}, "lognormal": {"median", "sigma"},
                "choice": {"values"}}
        allowed = {"uniform": {"low", "high"}, "normal": {"mean", "sd", "min", "max"},
                   "lognormal": {"median", "sigma", "min", "max"}, "choice": {"values", "weights"}}
        if kind not in need:
            raise SpecError(f"{where}: 'dist' must be one of {sorted(need)}, got {kind!r}")
        keys = set(d) - {"dist"}
        if not need[kind] <= keys:
            raise SpecError(f"{where}: a {kind} distribution needs {sorted(need[kind])}")
        extra = keys - allowed[kind]
        if extra:
            raise SpecError(f"{where}: unknown keys {sorted(extra)} for a {kind} distribution")
        if kind == "choice":
            vals = d["values"]
            if not isinstance(vals, list) or not vals:
                raise SpecError(f"{where}: 'values' must be a non-empty list")
            if "weights" in d and len(d["weights"]) != len(vals):
                raise SpecError(f"{where}: 'weights' must have as many entries as 'values'")
        if kind == "uniform" and not d["high"] >= d["low"]:
            raise SpecError(f"{where}: uniform needs high >= low")
        if kind in ("normal",) and d["sd"] < 0 or kind == "lognormal" and d["sigma"] < 0:
            raise SpecError(f"{where}: the spread must not be negative")


def _draw(d, rng: np.random.Generator, integer: bool):
    if not isinstance(d, dict):
        return int(round(d)) if integer else float(d)
    kind = d["dist"]
    if kind == "uniform":
        if integer:
            return int(rng.integers(int(math.ceil(d["low"])), int(math.floor(d["high"])) + 1))
        v = float(rng.uniform(d["low"], d["high"]))
    elif kind == "normal":
        v = float(rng.normal(d["mean"], d["sd"]))
    elif kind == "lognormal":
        v = float(d["median"] * math.exp(rng.normal(0.0, d["sigma"])))
    else:
        vals = d["values"]
        w = d.get("weights")
        p = None if w is None else np.asarray(w, float) / float(np.sum(w))
        v = vals[int(rng.choice(len(vals), p=p))]
    if "min" in d:
        v = max(v, d["min"])
    if "max" in d:
        v = min(v, d["max"])
    return int(round(v)) if integer else float(v)


# ---------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------

@dataclass
class Frame:
    """One frame: its file, its plain CLI arguments and the values behind them."""
    index: int
    file: str                 # file name inside the dataset folder
    args: List[str]           # nanoBragg arguments (common set-up + the frame's own), no outputs
    params: Dict[str, Any]    # the frame's own values, exactly as they appear in ``args``
    seed: Optional[int]       # -seed (noise seed)

    def output_args(self, fmt: str, noise: bool) -> List[str]:
        """The output flags that make the plain CLI write this frame's file.

        The CLI picks the format from the file name's extension; see
        :func:`nanobragg_torch.dataset.render.output_kind` for which image it is.
        """
        from .render import output_kind
        kind = output_kind(fmt, noise)
        if kind == "noise":
            return ["-nopgm", "-noisefile", self.file]
        if kind == "int":
            return ["-nopgm", "-nonoise", "-intfile", self.file]
        if kind == "float":
            return ["-nopgm", "-nonoise", "-floatfile", self.file]
        if kind == "pgm":
            return ["-nonoise", "-pgmfile", self.file]
        return ["-nopgm", "-nonoise", "-pngfile", self.file]


@dataclass
class DatasetSpec:
    kind: str                              # "rotation" | "serial"
    common: List[str]                      # common CLI flags
    series: Dict[str, Any]                 # the [rotation] or [serial] table
    noise: bool = False
    noise_seed: int = 1
    format: str = "smv"
    name: str = "frame_{number:05d}"
    first: int = 1
    retries: int = 2
    batch: int = 1
    device: str = "auto"
    input_dir: str = "."                   # relative input files (-hkl ...) are read from here
    source: Dict[str, Any] = field(default_factory=dict)   # the file's tables, as read
    description: str = ""
    realism: Dict[str, Any] = field(default_factory=dict)   # [background] / [detector] (dataset/realism.py)
    _beam_centre: Optional[tuple] = None

    # -- derived ---------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self.series["frames"] if self.kind == "rotation" else self.series["shots"])

    @property
    def extension(self) -> str:
        return FORMATS[self.format]

    def identity(self) -> Dict[str, Any]:
        """What defines the frames (not how they are run, nor how many): compared on resume.

        The frame count is left out: frame ``i`` does not depend on it, so a
        series can be extended by rerunning with more frames or shots.
        """
        series = {k: v for k, v in self.series.items() if k not in ("frames", "shots")}
        ident = {"kind": self.kind, "common": self.common, "series": series, "noise": self.noise,
                 "noise_seed": self.noise_seed, "format": self.format, "name": self.name, "first": self.first}
        if self.realism:
            ident["realism"] = self.realism
        return ident

    def identity_sha256(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def file_name(self, index: int) -> str:
        number = self.first + index
        try:
            stem = self.name.format(number=number, index=index)
        except (KeyError, IndexError, ValueError) as e:
            raise SpecError(f"[output] name {self.name!r}: {e} (use {{number}} or {{index}})") from None
        return f"{stem}.{self.extension}"

    def beam_centre_mm(self) -> tuple:
        """The common set-up's beam centre (Xbeam, Ybeam) in mm, as the CLI resolves it."""
        if self._beam_centre is None:
            st = self.validate_common()
            self._beam_centre = (st.detector.Xbeam * 1e3, st.detector.Ybeam * 1e3)
        return self._beam_centre

    def validate_common(self):
        """Parse and set up the common flags exactly as the CLI does (raises on bad input)."""
        from ..cli.flags import FlagError, parse_flags
        from ..cli.resolve import SetupError, build_setup
        from ..io.hkl import InputFileError
        try:
            flags = parse_flags(list(self.common) + ["-seed", "1"])
            return build_setup(flags, cwd=self.input_dir, now=0)
        except (FlagError, SetupError, InputFileError) as e:
            raise SpecError(f"[setup]: {e}") from None

    # -- frames ------------------------------------------------------------------
    def frame(self, index: int) -> Frame:
        if not 0 <= index < self.count:
            raise IndexError(index)
        own: List[str] = []
        params: Dict[str, Any] = {}
        if self.kind == "rotation":
            s = self.series
            phi = fmt_num(s.get("start", 0.0) + index * s["osc"])
            osc = fmt_num(s["osc"])
            steps = int(s.get("phisteps", 1))
            own += ["-phi", phi, "-osc", osc, "-phisteps", str(steps)]
            params.update(phi=float(phi), osc=float(osc), phisteps=steps)
        else:
            own, params = self._serial_args(index)
        seed = self.noise_seed + index
        params["seed"] = seed
        args = list(self.common) + own + ["-seed", str(seed)]
        return Frame(index=index, file=self.file_name(index), args=args, params=params, seed=seed)

    def frames(self) -> List[Frame]:
        return [self.frame(i) for i in range(self.count)]

    def _serial_args(self, index: int):
        s = self.series
        seed = int(s.get("seed", 0))
        own: List[str] = []
        params: Dict[str, Any] = {}
        if s.get("orientation", "random") == "random":
            ang = misset_angles(random_rotation(frame_rng(seed, index, "orientation")))
            txt = [fmt_num(a) for a in ang]
            own += ["-misset", *txt]
            params["misset"] = [float(t) for t in txt]
        for key in _SERIAL_INT_KEYS:
            if key in s:
                v = _draw(s[key], frame_rng(seed, index, key), integer=True)
                own += [f"-{key}", str(v)]
                params[key] = v
        if "samplesize" in s:
            v = fmt_num(_draw(s["samplesize"], frame_rng(seed, index, "samplesize"), False))
            own += ["-samplesize", v]
            params["samplesize"] = float(v)
        if "mosaic" in s:
            v = fmt_num(_draw(s["mosaic"], frame_rng(seed, index, "mosaic"), False))
            own += ["-mosaic", v]
            params["mosaic"] = float(v)
        if "mosaic_domains" in s:
            own += ["-mosaic_dom", str(int(s["mosaic_domains"]))]
            params["mosaic_domains"] = int(s["mosaic_domains"])
        if "lambda" in s:
            v = fmt_num(_draw(s["lambda"], frame_rng(seed, index, "lambda"), False))
            own += ["-lambda", v]
            params["lambda"] = float(v)
        jitter = s.get("beam_jitter")
        if "Xbeam" in s or "Ybeam" in s or jitter is not None:
            x0, y0 = self.beam_centre_mm()
            sx, sy = (0.0, 0.0) if jitter is None else (
                (float(jitter), float(jitter)) if not isinstance(jitter, list) else (float(jitter[0]), float(jitter[1])))
            xb = _draw(s["Xbeam"], frame_rng(seed, index, "Xbeam"), False) if "Xbeam" in s else x0
            yb = _draw(s["Ybeam"], frame_rng(seed, index, "Ybeam"), False) if "Ybeam" in s else y0
            if jitter is not None:
                jx, jy = frame_rng(seed, index, "beam_jitter").normal(0.0, 1.0, 2)
                xb, yb = xb + sx * jx, yb + sy * jy
            xt, yt = fmt_num(xb), fmt_num(yb)
            own += ["-Xbeam", xt, "-Ybeam", yt]
            params.update(Xbeam=float(xt), Ybeam=float(yt))
        ms = int(frame_rng(seed, index, "mosaic_seed").integers(1, 2**31 - 1))
        own += ["-mosaic_seed", str(ms)]
        params["mosaic_seed"] = ms
        return own, params


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------

def _toml_loads(text: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib  # type: ignore
        except ImportError:
            raise SpecError("reading TOML needs Python 3.11 or the 'tomli' package") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"TOML: {e}") from None


def _setup_flags(table: Dict[str, Any]) -> List[str]:
    """[setup] -> CLI flags, in the table's order (``flags`` string first)."""
    args: List[str] = []
    if "flags" in table:
        if not isinstance(table["flags"], str):
            raise SpecError("[setup] flags: expected a string of command-line flags")
        args += shlex.split(table["flags"])
    for key, val in table.items():
        if key == "flags":
            continue
        flag = key if key.startswith("-") else "-" + key
        if isinstance(val, bool):
            if val:
                args.append(flag)
        elif isinstance(val, (int, float)):
            args += [flag, fmt_num(val) if isinstance(val, float) else str(val)]
        elif isinstance(val, str):
            args += [flag, val]
        elif isinstance(val, list) and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in val):
            args += [flag] + [fmt_num(v) if isinstance(v, float) else str(v) for v in val]
        else:
            raise SpecError(f"[setup] {key}: expected a number, string, boolean or list, got {val!r}")
    return args


def _int(where: str, v, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise SpecError(f"{where}: expected an integer >= {minimum}, got {v!r}")
    return v


def _num(where: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(f"{where}: expected a number, got {v!r}")
    return float(v)


def spec_from_dict(doc: Dict[str, Any], input_dir: str = ".") -> DatasetSpec:
    """Build and check a spec from the experiment file's tables."""
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise SpecError(f"unknown table(s) {sorted(unknown)}; expected {sorted(_TOP_KEYS)}")
    setup = doc.get("setup", {})
    if not isinstance(setup, dict):
        raise SpecError("[setup] must be a table")
    common = _setup_flags(setup)
    for a in common:
        if a in _RESERVED:
            why = _RESERVED[a]
            raise SpecError(f"[setup] {a}: set by the dataset" + (f" (use {why})" if why else " (not allowed)"))
    has_rot, has_ser = "rotation" in doc, "serial" in doc
    if has_rot == has_ser:
        raise SpecError("give exactly one of [rotation] or [serial]")
    kind = "rotation" if has_rot else "serial"
    series = dict(doc[kind])
    if kind == "rotation":
        extra = set(series) - _ROTATION_KEYS
        if extra:
            raise SpecError(f"[rotation]: unknown keys {sorted(extra)}; expected {sorted(_ROTATION_KEYS)}")
        if "osc" not in series or "frames" not in series:
            raise SpecError("[rotation]: 'osc' (deg per frame) and 'frames' are required")
        _num("[rotation] osc", series["osc"])
        _num("[rotation] start", series.get("start", 0.0))
        _int("[rotation] frames", series["frames"], 1)
        _int("[rotation] phisteps", series.get("phisteps", 1), 1)
    else:
        extra = set(series) - _SERIAL_KEYS
        if extra:
            raise SpecError(f"[serial]: unknown keys {sorted(extra)}; expected {sorted(_SERIAL_KEYS)}")
        if "shots" not in series:
            raise SpecError("[serial]: 'shots' is required")
        _int("[serial] shots", series["shots"], 1)
        _int("[serial] seed", series.get("seed", 0), 0)
        if series.get("orientation", "random") not in ("random", "fixed"):
            raise SpecError("[serial] orientation: expected 'random' or 'fixed'")
        for key in _SERIAL_INT_KEYS + _SERIAL_FLOAT_KEYS:
            if key in series:
                _check_dist(f"[serial] {key}", series[key])
        if "mosaic_domains" in series:
            _int("[serial] mosaic_domains", series["mosaic_domains"], 1)
        j = series.get("beam_jitter")
        if j is not None:
            vals = j if isinstance(j, list) else [j]
            if len(vals) not in (1, 2):
                raise SpecError("[serial] beam_jitter: a number or [x, y] (mm)")
            for v in vals:
                if _num("[serial] beam_jitter", v) < 0:
                    raise SpecError("[serial] beam_jitter: must not be negative")
        if series.get("orientation", "random") == "random" and any("-misset" in a for a in common):
            raise SpecError("[setup] -misset: serial shots draw their orientation; "
                            "set [serial] orientation = \"fixed\" to keep the set-up's")
    if any(a == "-misset" for a in common):
        i = common.index("-misset")
        if i + 1 < len(common) and "rand" in common[i + 1] and not any("-misset_seed" in a for a in common):
            raise SpecError("[setup] -misset random: give -misset_seed too, or the frames are not reproducible")
    noise = doc.get("noise", {})
    extra = set(noise) - _NOISE_KEYS
    if extra:
        raise SpecError(f"[noise]: unknown keys {sorted(extra)}; expected {sorted(_NOISE_KEYS)}")
    out = doc.get("output", {})
    extra = set(out) - _OUTPUT_KEYS
    if extra:
        raise SpecError(f"[output]: unknown keys {sorted(extra)}; expected {sorted(_OUTPUT_KEYS)}")
    run = doc.get("run", {})
    extra = set(run) - _RUN_KEYS
    if extra:
        raise SpecError(f"[run]: unknown keys {sorted(extra)}; expected {sorted(_RUN_KEYS)}")
    fmt = out.get("format", "smv")
    if fmt not in FORMATS:
        raise SpecError(f"[output] format: expected one of {sorted(FORMATS)}, got {fmt!r}")
    enabled = noise.get("enabled", bool(noise))
    if not isinstance(enabled, bool):
        raise SpecError("[noise] enabled: expected true or false")
    if enabled and fmt in ("float", "pgm", "png"):
        raise SpecError(f"[noise]: {fmt} frames show the noiseless photon image; use format smv, cbf, h5 "
                        "or nxs for noise")
    realism: Dict[str, Any] = {}
    if "background" in doc or "detector" in doc:
        from .realism import parse_background, parse_detector
        if "background" in doc:
            if not isinstance(doc["background"], dict):
                raise SpecError("[background] must be a table")
            realism["background"] = parse_background(doc["background"], os.path.abspath(input_dir))
        if "detector" in doc:
            if not isinstance(doc["detector"], dict):
                raise SpecError("[detector] must be a table")
            if not enabled:
                raise SpecError("[detector]: the detector response makes the noise frames; enable [noise]")
            realism["detector"] = parse_detector(doc["detector"])
    device = run.get("device", "auto")
    if not isinstance(device, str):
        raise SpecError("[run] device: expected 'auto', 'cpu' or 'cuda[:n]'")
    spec = DatasetSpec(
        kind=kind, common=common, series=series, noise=enabled,
        noise_seed=_int("[noise] seed", noise.get("seed", 1), 1),
        format=fmt, name=str(out.get("name", "frame_{number:05d}")),
        first=_int("[output] first", out.get("first", 1), 0),
        retries=_int("[run] retries", run.get("retries", 2), 0),
        batch=_int("[run] batch", run.get("batch", 1), 1),
        device=device, input_dir=os.path.abspath(input_dir),
        source={k: v for k, v in doc.items()}, description=str(doc.get("description", "")), realism=realism)
    names = {spec.file_name(i) for i in range(spec.count)}
    if len(names) != spec.count:
        raise SpecError(f"[output] name {spec.name!r}: frames must get distinct file names")
    if any(os.sep in n or n.startswith(".") for n in names):
        raise SpecError(f"[output] name {spec.name!r}: a plain file name is expected")
    return spec


def load_spec(path: str, overrides: Optional[Dict[str, Dict[str, Any]]] = None) -> DatasetSpec:
    """Read an experiment file; ``overrides`` ({table: {key: value}}) replace its values."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except OSError as e:
        raise SpecError(f"{path}: {e.strerror}") from None
    doc = _toml_loads(text)
    for table, vals in (overrides or {}).items():
        doc.setdefault(table, {}).update(vals)
    return spec_from_dict(doc, input_dir=os.path.dirname(os.path.abspath(path)))
