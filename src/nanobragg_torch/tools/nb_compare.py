"""``nb-compare``: run the reference C nanoBragg and this project on the same flags and compare images.

    nb-compare [options] -- <nanoBragg flags>

Both programs get the same forwarded flags (everything after ``--``), each in
its own temporary working directory (nanoBragg reads and writes ``Fdump.bin``
and other files in its working directory).  Input files named with relative
paths are resolved against the caller's directory: the value of a known input
flag (``-hkl -mat -img -mask -sourcefile -stol -4stol -Q``) and any other
value that names an existing file are passed as absolute paths, and a
``Fdump.bin`` (or ``-dump`` file) the run would read is copied into both working
directories.  ``-floatfile`` is always set (replacing any given) so that both
float images are captured.  Output files the programs write with relative
names are kept under ``<outdir>/c_files`` and ``<outdir>/py_files``.

Writes ``<outdir>`` (default ``comparisons/<timestamp>-<hash of the flags>``):
``c_stdout.txt``, ``c_stderr.txt``, ``py_stdout.txt``, ``py_stderr.txt``,
``c_float.bin``, ``py_float.bin``, ``c.png``, ``py.png`` (shared linear grey
scale, white at the 99.5th percentile of both images, ``--png-scale`` to
change), ``diff.png``/``diff.bin`` with ``--save-diff`` (py - c; red
positive, blue negative) and ``summary.json`` (commands, run times, shapes and
the metrics: correlation, MSE, RMSE, max |diff|, sums and their ratio, over the
full frame or ``--roi xmin xmax ymin ymax``).

``nb-compare [options] --images C_IMAGE PY_IMAGE`` compares two image files
that already exist instead (raw float, SMV, CBF or NeXus, by extension; a raw
float file needs no shape when it is square, else ``--shape FAST SLOW``).

Exit status: 0 success, 1 usage, 2 a runner failed, 3 correlation below
``--threshold`` (default 0.999), 4 image shapes differ (unless ``--resample``),
5 I/O or parse error.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

EXIT_OK, EXIT_USAGE, EXIT_RUNNER, EXIT_CORRELATION, EXIT_SHAPE, EXIT_IO = 0, 1, 2, 3, 4, 5

# flags whose value is an input file (the C program's names)
INPUT_FLAGS = {"-hkl", "-mat", "-img", "-mask", "-sourcefile", "-stol", "-4stol", "-Q"}
# flags whose value is an output file (never made absolute: they must land in the working directory)
OUTPUT_FLAGS = {"-floatfile", "-floatimage", "-intfile", "-intimage", "-pgmfile", "-pgmimage",
                "-noisefile", "-noiseimage", "-stolout", "--trace-json", "-trace_json", "-dump"}
FLOAT_FLAGS = ("-floatfile", "-floatimage")
_SHAPE_RE = re.compile(r"\((\d+)x(\d+) pixels\)")
_NUMBER_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


class CompareError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class RunResult:
    name: str
    cmd: List[str]
    returncode: Optional[int] = None
    runtime_s: Optional[float] = None
    error: Optional[str] = None
    shape: Optional[Tuple[int, int]] = None        # (slow, fast) from the program's report
    float_path: str = ""
    files: List[str] = field(default_factory=list)


def _is_float_flag(tok: str) -> bool:
    # the C matches flags by substring; so does this (e.g. -floatfile, -floatimage)
    return tok.startswith("-") and any(f in tok for f in FLOAT_FLAGS)


def prepare_args(args: Sequence[str], cwd: str) -> Tuple[List[str], List[str]]:
    """Forwarded flags with -floatfile removed and relative input paths made absolute.

    Returns (args, files_to_copy): the second lists relative paths (Fdump files)
    that the run reads from its working directory and that exist in ``cwd``.
    """
    out: List[str] = []
    i = 0
    args = list(args)
    while i < len(args):
        tok = args[i]
        if _is_float_flag(tok):
            i += 2                                   # drop the flag and its value
            continue
        prev = args[i - 1] if i > 0 else ""
        if tok and not os.path.isabs(tok) and not _NUMBER_RE.match(tok):
            cand = os.path.join(cwd, tok)
            if prev in INPUT_FLAGS:
                if os.path.exists(cand):
                    tok = os.path.abspath(cand)
            elif prev not in OUTPUT_FLAGS and not tok.startswith("-") and os.path.isfile(cand):
                tok = os.path.abspath(cand)
        out.append(tok)
        i += 1
    copies: List[str] = []
    if "-hkl" not in args:
        dump = "Fdump.bin"
        for j, tok in enumerate(args[:-1]):
            if tok == "-dump":
                dump = args[j + 1]
        if not os.path.isabs(dump) and os.path.isfile(os.path.join(cwd, dump)):
            copies.append(dump)
    return out, copies


def _resolve_cmd(cmd: List[str], cwd: str) -> List[str]:
    """Make a relative program path (e.g. ./nanoBragg) absolute: it runs from another directory."""
    if cmd and (os.sep in cmd[0]) and not os.path.isabs(cmd[0]):
        p = os.path.join(cwd, cmd[0])
        if os.path.exists(p):
            cmd = [os.path.abspath(p)] + cmd[1:]
    return cmd


def run_program(name: str, cmd: List[str], args: List[str], copies: List[str], cwd: str,
                outdir: str, timeout: Optional[float], env: Optional[Dict[str, str]] = None) -> RunResult:
    """Run one program in a fresh temporary directory; stdout/stderr and float image go to ``outdir``."""
    float_path = os.path.join(outdir, f"{name}_float.bin")
    full = cmd + args + ["-floatfile", float_path]
    res = RunResult(name=name, cmd=full, float_path=float_path)
    work = tempfile.mkdtemp(prefix=f"nb-compare-{name}-")
    try:
        for rel in copies:
            dst = os.path.join(work, rel)
            os.makedirs(os.path.dirname(dst) or work, exist_ok=True)
            shutil.copy2(os.path.join(cwd, rel), dst)
        before = set()
        for root, _, files in os.walk(work):
            before.update(os.path.relpath(os.path.join(root, f), work) for f in files)
        with open(os.path.join(outdir, f"{name}_stdout.txt"), "wb") as so, \
                open(os.path.join(outdir, f"{name}_stderr.txt"), "wb") as se:
            t0 = time.perf_counter()
            try:
                p = subprocess.run(full, cwd=work, stdout=so, stderr=se, timeout=timeout, env=env)
                res.returncode = p.returncode
                if p.returncode != 0:
                    res.error = f"exited with status {p.returncode}"
            except FileNotFoundError as e:
                res.error = f"cannot run {full[0]!r}: {e.strerror or e}"
            except PermissionError as e:
                res.error = f"cannot run {full[0]!r}: {e.strerror or e}"
            except subprocess.TimeoutExpired:
                res.error = f"timed out after {timeout:g} s"
            res.runtime_s = time.perf_counter() - t0
        # keep what the program wrote with relative names
        kept = os.path.join(outdir, f"{name}_files")
        for root, _, files in os.walk(work):
            for f in files:
                rel = os.path.relpath(os.path.join(root, f), work)
                if rel in before:
                    continue
                dst = os.path.join(kept, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.move(os.path.join(root, f), dst)
                res.files.append(os.path.join(f"{name}_files", rel))
        try:
            with open(os.path.join(outdir, f"{name}_stdout.txt"), "r", errors="replace") as fh:
                m = None
                for m in _SHAPE_RE.finditer(fh.read()):
                    pass
                if m is not None:
                    res.shape = (int(m.group(2)), int(m.group(1)))
        except OSError:
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res


def read_float_image(path: str, shape: Optional[Tuple[int, int]]) -> np.ndarray:
    """The float image (slow, fast); the shape comes from the program's report, else a square is assumed."""
    try:
        data = np.fromfile(path, dtype="<f4")
    except (OSError, ValueError) as e:
        raise CompareError(EXIT_IO, f"cannot read float image {path}: {e}")
    n = data.size
    if n == 0:
        raise CompareError(EXIT_IO, f"float image {path} is empty")
    if shape is not None:
        if shape[0] * shape[1] != n:
            raise CompareError(EXIT_IO, f"float image {path} has {n} values, the program reported "
                                        f"{shape[1]}x{shape[0]} pixels")
        return data.reshape(shape)
    side = int(round(math.sqrt(n)))
    if side * side != n:
        raise CompareError(EXIT_IO, f"float image {path}: cannot tell its shape ({n} values, not square, "
                                    f"and no '(FxS pixels)' line in the program's output)")
    return data.reshape(side, side)


def read_any_image(path: str, shape: Optional[Tuple[int, int]]) -> np.ndarray:
    """An image file of any format this package reads (by extension; raw float for .bin), as float64."""
    from ..io.formats import FormatError, format_from_extension, read_image
    fmt = format_from_extension(path, "float")
    if fmt == "float":
        return read_float_image(path, shape).astype(np.float64)
    try:
        image, _ = read_image(path, fmt)
    except FormatError as e:
        raise CompareError(EXIT_IO, str(e))
    except ValueError as e:
        raise CompareError(EXIT_IO, f"cannot read image {path}: {e}")
    return np.asarray(image, dtype=np.float64)


def resample_nearest(img: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    S, F = shape
    rows = np.minimum((np.arange(S) + 0.5) * img.shape[0] / S, img.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(F) + 0.5) * img.shape[1] / F, img.shape[1] - 1).astype(int)
    return img[np.ix_(rows, cols)]


def image_metrics(c: np.ndarray, p: np.ndarray) -> Dict[str, float]:
    """Correlation, MSE, RMSE, max |diff|, sums and their ratio (py / c) of two equal-shape images."""
    a = c.astype(np.float64).ravel()
    b = p.astype(np.float64).ravel()
    d = b - a
    n = a.size
    if n == 0:
        corr = float("nan")
    elif np.array_equal(a, b):
        corr = 1.0
    else:
        sa, sb = a.std(), b.std()
        corr = float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb)) if sa > 0 and sb > 0 else 0.0
    mse = float((d * d).mean()) if n else float("nan")
    sum_c, sum_p = float(a.sum()), float(b.sum())
    return {
        "pixels": int(n),
        "correlation": corr,
        "mse": mse,
        "rmse": math.sqrt(mse) if n else float("nan"),
        "max_abs_diff": float(np.abs(d).max()) if n else float("nan"),
        "mean_abs_diff": float(np.abs(d).mean()) if n else float("nan"),
        "sum_c": sum_c,
        "sum_py": sum_p,
        "sum_ratio_py_over_c": (sum_p / sum_c) if sum_c != 0 else (1.0 if sum_p == 0 else float("inf")),
        "max_c": float(a.max()) if n else float("nan"),
        "max_py": float(b.max()) if n else float("nan"),
    }


def _png_gray(img: np.ndarray, vmax: float, path: str) -> None:
    from PIL import Image
    scaled = np.clip(img.astype(np.float64) / vmax, 0.0, 1.0) * 255.0 if vmax > 0 else np.zeros(img.shape)
    Image.fromarray(np.round(scaled).astype(np.uint8)).save(path)


def _png_diff(diff: np.ndarray, path: str, percentile: float) -> float:
    from PIL import Image
    mag = np.abs(diff)
    s = float(np.percentile(mag, percentile)) if mag.size else 0.0
    if s <= 0:
        s = float(mag.max()) if mag.size else 0.0
    t = np.clip(diff / s, -1.0, 1.0) if s > 0 else np.zeros(diff.shape)
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    rgb = np.empty(diff.shape + (3,), dtype=np.float64)
    rgb[..., 0] = 1.0 - neg
    rgb[..., 1] = 1.0 - pos - neg
    rgb[..., 2] = 1.0 - pos
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(path)
    return s


def _json_clean(x):
    if isinstance(x, dict):
        return {k: _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    return x


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="nb-compare",
        usage="nb-compare [options] -- <nanoBragg flags>",
        description="Run the C nanoBragg and nanobragg-torch on the same flags, time both and compare "
                    "their float images. Exit: 0 ok, 1 usage, 2 a runner failed, 3 correlation below "
                    "--threshold, 4 shapes differ, 5 I/O or parse error.")
    ap.add_argument("--c-bin", help="the C program (command; default: $NB_C_BIN)")
    ap.add_argument("--py-bin", help="this project's command (default: '%s -m nanobragg_torch')"
                    % os.path.basename(sys.executable))
    ap.add_argument("--outdir", help="output folder (default: comparisons/<timestamp>-<hash of flags>)")
    ap.add_argument("--roi", nargs=4, type=int, metavar=("XMIN", "XMAX", "YMIN", "YMAX"),
                    help="compare only fast pixels XMIN..XMAX and slow pixels YMIN..YMAX (inclusive)")
    ap.add_argument("--threshold", type=float, default=0.999,
                    help="lowest acceptable correlation (default 0.999)")
    ap.add_argument("--png-scale", type=float, default=99.5, metavar="PERCENTILE",
                    help="percentile of both images' pixel values shown as white (default 99.5)")
    ap.add_argument("--png-max", type=float, default=None, metavar="VALUE",
                    help="pixel value shown as white (overrides --png-scale)")
    ap.add_argument("--no-png", action="store_true", help="do not write PNG previews")
    ap.add_argument("--save-diff", action="store_true", help="write diff.png (heat map, py - c) and diff.bin")
    ap.add_argument("--resample", action="store_true",
                    help="if the shapes differ, resample the py image to the C image's shape (nearest)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds allowed per program")
    ap.add_argument("--quiet", "-q", action="store_true", help="print only the verdict")
    ap.add_argument("--images", nargs=2, metavar=("C_IMAGE", "PY_IMAGE"),
                    help="compare these two existing image files (raw float, SMV, CBF or NeXus) "
                         "instead of running the programs")
    ap.add_argument("--shape", nargs=2, type=int, metavar=("FAST", "SLOW"),
                    help="with --images: the pixel counts of a raw float file that is not square")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        k = argv.index("--")
        own, forwarded = argv[:k], argv[k + 1:]
    else:
        own, forwarded = argv, []
    ap = build_parser()
    try:
        opts = ap.parse_args(own)
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    err = lambda msg: print(f"nb-compare: error: {msg}", file=sys.stderr)
    if opts.images:
        if forwarded:
            err("--images compares existing files; give no nanoBragg flags after '--'")
            return EXIT_USAGE
        return _compare_files(opts, err)
    if not forwarded:
        err("no nanoBragg flags given; put them after '--'")
        return EXIT_USAGE
    c_bin = opts.c_bin or os.environ.get("NB_C_BIN")
    if not c_bin:
        err("no C program: give --c-bin PATH or set NB_C_BIN")
        return EXIT_USAGE
    if not 0 < opts.png_scale <= 100:
        err("--png-scale must be a percentile in (0, 100]")
        return EXIT_USAGE
    if opts.roi is not None:
        x0, x1, y0, y1 = opts.roi
        if x0 < 0 or y0 < 0 or x1 < x0 or y1 < y0:
            err("--roi: need 0 <= XMIN <= XMAX and 0 <= YMIN <= YMAX")
            return EXIT_USAGE
    cwd = os.getcwd()
    try:
        c_cmd = _resolve_cmd(shlex.split(c_bin), cwd)
        py_cmd = (_resolve_cmd(shlex.split(opts.py_bin), cwd) if opts.py_bin
                  else [sys.executable, "-m", "nanobragg_torch"])
    except ValueError as e:
        err(f"cannot split the program command: {e}")
        return EXIT_USAGE
    if not c_cmd or not py_cmd:
        err("empty program command")
        return EXIT_USAGE

    args, copies = prepare_args(forwarded, cwd)
    if opts.outdir:
        outdir = os.path.abspath(opts.outdir)
    else:
        digest = hashlib.sha1("\0".join(forwarded).encode()).hexdigest()[:8]
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        outdir = os.path.join(cwd, "comparisons", f"{stamp}-{digest}")
        n = 1
        base = outdir
        while os.path.exists(outdir):
            outdir = f"{base}.{n}"
            n += 1
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        err(f"cannot create output folder {outdir}: {e.strerror or e}")
        return EXIT_IO

    summary: Dict = {
        "forwarded_args": forwarded, "args_used": args, "outdir": outdir, "roi": opts.roi,
        "threshold": opts.threshold, "started": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    code = EXIT_OK
    message = ""
    try:
        runs = {}
        py_env = None
        if not opts.py_bin:
            # the default command imports this very package: make sure it can from another directory
            pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            py_env = dict(os.environ)
            py_env["PYTHONPATH"] = os.pathsep.join(
                [pkg_root] + ([py_env["PYTHONPATH"]] if py_env.get("PYTHONPATH") else []))
        for name, cmd, env in (("c", c_cmd, None), ("py", py_cmd, py_env)):
            runs[name] = run_program(name, cmd, args, copies, cwd, outdir, opts.timeout, env=env)
        summary["runs"] = {n: {"cmd": r.cmd, "returncode": r.returncode, "runtime_s": r.runtime_s,
                               "error": r.error, "reported_shape": r.shape, "files": r.files}
                           for n, r in runs.items()}
        rc, rp = runs["c"], runs["py"]
        summary["runtime_s"] = {"c": rc.runtime_s, "py": rp.runtime_s}
        if rc.runtime_s and rp.runtime_s:
            summary["speedup_py_vs_c"] = rc.runtime_s / rp.runtime_s
        failed = [r for r in (rc, rp) if r.error]
        if failed:
            raise CompareError(EXIT_RUNNER, "; ".join(f"{r.name} runner {r.error} (see {r.name}_stderr.txt)"
                                                      for r in failed))
        img_c = read_float_image(rc.float_path, rc.shape)
        img_p = read_float_image(rp.float_path, rp.shape)
        summary["shape"] = {"c": list(img_c.shape), "py": list(img_p.shape)}
        if img_c.shape != img_p.shape:
            if not opts.resample:
                raise CompareError(EXIT_SHAPE, f"image shapes differ: c {img_c.shape[1]}x{img_c.shape[0]}, "
                                               f"py {img_p.shape[1]}x{img_p.shape[0]} (fast x slow); "
                                               f"--resample to compare anyway")
            img_p = resample_nearest(img_p, img_c.shape)
            summary["resampled"] = True
        if opts.roi is not None:
            x0, x1, y0, y1 = opts.roi
            S, F = img_c.shape
            if x1 >= F or y1 >= S:
                raise CompareError(EXIT_USAGE, f"--roi {x0} {x1} {y0} {y1} is outside the {F}x{S} image")
            sl = (slice(y0, y1 + 1), slice(x0, x1 + 1))
        else:
            sl = (slice(None), slice(None))
        metrics = image_metrics(img_c[sl], img_p[sl])
        summary["metrics"] = metrics
        if not opts.no_png:
            try:
                pooled = np.concatenate([img_c.ravel(), img_p.ravel()]).astype(np.float64)
                vmax = opts.png_max if opts.png_max is not None else float(np.percentile(pooled, opts.png_scale))
                if vmax <= 0:
                    vmax = float(pooled.max()) if pooled.size and pooled.max() > 0 else 1.0
                _png_gray(img_c, vmax, os.path.join(outdir, "c.png"))
                _png_gray(img_p, vmax, os.path.join(outdir, "py.png"))
                summary["png_vmax"] = vmax
            except ImportError:
                summary["png_note"] = PNG_NOTE % "c.png and py.png"
        if opts.save_diff:
            diff = img_p.astype(np.float64) - img_c.astype(np.float64)
            diff.astype("<f4").tofile(os.path.join(outdir, "diff.bin"))
            try:
                summary["diff_png_scale"] = _png_diff(diff, os.path.join(outdir, "diff.png"), opts.png_scale)
            except ImportError:
                summary["png_note"] = PNG_NOTE % ("diff.png" if opts.no_png else "c.png, py.png and diff.png")
        corr = metrics["correlation"]
        if not (corr >= opts.threshold):
            raise CompareError(EXIT_CORRELATION, f"correlation {corr:.6f} is below the threshold {opts.threshold:g}")
    except CompareError as e:
        code, message = e.code, str(e)
    except OSError as e:
        code, message = EXIT_IO, f"{e.filename or ''}: {e.strerror or e}"
    summary["exit_code"] = code
    summary["passed"] = code == EXIT_OK
    if message:
        summary["error"] = message
    if not _write_summary(outdir, summary, err):
        code = code or EXIT_IO
    _report(summary, code, message, opts.quiet)
    return code


def _compare_files(opts, err) -> int:
    """--images: compare two existing files (the metrics and the verdict of a normal run)."""
    c_path, p_path = opts.images
    outdir = os.path.abspath(opts.outdir) if opts.outdir else None
    summary: Dict = {"images": {"c": c_path, "py": p_path}, "roi": opts.roi, "threshold": opts.threshold,
                     "outdir": outdir or "-"}
    code, message = EXIT_OK, ""
    shape = (opts.shape[1], opts.shape[0]) if opts.shape else None
    try:
        img_c, img_p = read_any_image(c_path, shape), read_any_image(p_path, shape)
        summary["shape"] = {"c": list(img_c.shape), "py": list(img_p.shape)}
        if img_c.shape != img_p.shape:
            raise CompareError(EXIT_SHAPE, f"image shapes differ: c {img_c.shape[1]}x{img_c.shape[0]}, "
                                           f"py {img_p.shape[1]}x{img_p.shape[0]} (fast x slow)")
        sl = (slice(None), slice(None))
        if opts.roi is not None:
            x0, x1, y0, y1 = opts.roi
            if x1 >= img_c.shape[1] or y1 >= img_c.shape[0]:
                raise CompareError(EXIT_USAGE, f"--roi {x0} {x1} {y0} {y1} is outside the image")
            sl = (slice(y0, y1 + 1), slice(x0, x1 + 1))
        metrics = image_metrics(img_c[sl], img_p[sl])
        summary["metrics"] = metrics
        if not (metrics["correlation"] >= opts.threshold):
            raise CompareError(EXIT_CORRELATION, f"correlation {metrics['correlation']:.6f} is below the "
                                                 f"threshold {opts.threshold:g}")
    except CompareError as e:
        code, message = e.code, str(e)
    except OSError as e:
        code, message = EXIT_IO, f"{e.filename or ''}: {e.strerror or e}"
    summary["exit_code"] = code
    summary["passed"] = code == EXIT_OK
    if outdir and not _write_summary(outdir, summary, err):
        code = code or EXIT_IO
    _report(summary, code, message, opts.quiet)
    return code


def _write_summary(outdir: str, summary: Dict, err) -> bool:
    """Write ``outdir/summary.json`` (creating the folder); False, with a message, if it cannot."""
    try:
        os.makedirs(outdir, exist_ok=True)
        with open(os.path.join(outdir, "summary.json"), "w") as fh:
            json.dump(_json_clean(summary), fh, indent=2)
    except OSError as e:
        err(f"cannot write summary.json: {e.strerror or e}")
        return False
    return True


PNG_NOTE = ("Pillow is not installed, so %s were not written (the .bin images and summary.json were); "
            "pip install 'nanobragg-torch[formats]' adds it")


def _report(summary: Dict, code: int, message: str, quiet: bool) -> None:
    out = sys.stdout
    if summary.get("png_note"):
        print("nb-compare: note: %s" % summary["png_note"], file=sys.stderr)
    if not quiet:
        rt = summary.get("runtime_s", {})
        if rt:
            fmt = lambda v: "-" if v is None else "%.3f s" % v
            print("runtime: c %s, py %s" % (fmt(rt.get("c")), fmt(rt.get("py"))), file=out)
        m = summary.get("metrics")
        if m:
            print("pixels compared: %d%s" % (m["pixels"], "" if summary.get("roi") is None else
                                             " (roi %s)" % " ".join(map(str, summary["roi"]))), file=out)
            print("correlation: %.9f  mse: %.6g  rmse: %.6g  max|diff|: %.6g" % (
                m["correlation"], m["mse"], m["rmse"], m["max_abs_diff"]), file=out)
            print("sum c: %.9g  sum py: %.9g  ratio py/c: %.9f" % (m["sum_c"], m["sum_py"],
                                                                   m["sum_ratio_py_over_c"]), file=out)
        print("outputs: %s" % summary["outdir"], file=out)
    if code == EXIT_OK:
        print("PASS (correlation >= %g)" % summary["threshold"], file=out)
    else:
        print("nb-compare: %s (exit %d)" % (message, code), file=sys.stderr)


def console_main():  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
