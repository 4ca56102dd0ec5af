"""Running a dataset: which frames are still to do, where they render, and the bookkeeping.

Local runs render in this process, one frame after another (torch uses all
cores, or the GPU); cluster runs submit one Dask task per frame (or per
``batch`` frames) to a ``distributed`` scheduler.  Either way the driver -
this process - writes every frame file and its manifest line, in that order.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, TextIO, Union

from .manifest import (FAILURES, HEADER, MANIFEST, DatasetLock, ManifestWriter, latest_records,
                       read_manifest, sha256_file, write_file_durably)
from .render import FrameJob, RenderedFrame, render_batch
from .spec import DatasetSpec, Frame, SpecError, load_spec

__all__ = ["Summary", "render_dataset", "verify_dataset", "dataset_status"]


@dataclass
class Summary:
    folder: str
    total: int                      # frames asked for in this run
    rendered: int = 0
    skipped: int = 0
    failed: Dict[int, str] = field(default_factory=dict)   # index -> error
    seconds: float = 0.0
    interrupted: bool = False
    where: str = "local"

    @property
    def done(self) -> int:
        return self.rendered + self.skipped

    @property
    def images_per_second(self) -> float:
        return self.rendered / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        lines = [f"dataset {self.folder}: {self.done}/{self.total} frames done "
                 f"(rendered {self.rendered}, skipped {self.skipped} already present), "
                 f"failed {len(self.failed)}" + ("; INTERRUPTED" if self.interrupted else "")]
        lines.append(f"  {self.seconds:.1f} s on {self.where}, {self.images_per_second:.3g} images/s")
        for i, err in sorted(self.failed.items()):
            lines.append(f"  frame {i} failed: {err}")
        return "\n".join(lines)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("nanobragg-torch")
    except Exception:
        return "unknown"


def _check_header(spec: DatasetSpec, folder: str) -> None:
    """Write dataset.json on the first run; on a rerun insist on the same experiment."""
    path = os.path.join(folder, HEADER)
    ident = spec.identity_sha256()
    created = _now()
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as fh:
                old = json.load(fh)
        except (OSError, ValueError) as e:
            raise SpecError(f"{path}: unreadable dataset header ({e})") from None
        if old.get("identity_sha256") != ident:
            raise SpecError(f"{folder} holds frames of a different experiment (its {HEADER} does not match "
                            "the experiment file); render into a new folder")
        if old.get("count", 0) >= spec.count:
            return
        created = old.get("created", created)       # a longer series: same dataset, new count
    doc = {
        "nanobragg_dataset": 1,
        "identity_sha256": ident,
        "count": spec.count,
        "kind": spec.kind,
        "format": spec.format,
        "noise": spec.noise,
        "input_dir": spec.input_dir,
        "manifest": MANIFEST,
        "identity": spec.identity(),
        "experiment": spec.source,
        "created": created,
        "updated": _now(),
        "nanobragg_torch": _version(),
    }
    write_file_durably(path, (json.dumps(doc, indent=2, default=str) + "\n").encode())


def _cli_line(args: Sequence[str]) -> str:
    return "nanoBragg " + " ".join(shlex.quote(a) for a in args)


def _record(spec: DatasetSpec, frame: Frame, res: RenderedFrame, run_id: str) -> dict:
    out_args = frame.output_args(spec.format, spec.noise)
    dev_args = ["-device", res.device] if res.device != "cpu" else []
    return {
        "index": frame.index,
        "file": frame.file,
        "format": spec.format,
        "bytes": len(res.data),
        "sha256": res.sha256,
        "seed": frame.seed,
        "params": frame.params,
        "args": frame.args,
        "output_args": out_args,
        "cli": _cli_line(frame.args + dev_args + out_args),
        # NeXus files carry their creation time: the CLI gives the same pixels, not the same bytes
        "cli_reproduces": "pixels" if spec.format in ("h5", "nxs") else "file",
        "device": res.device,
        "stats": res.stats,
        "render_s": round(res.seconds, 4),
        "worker": res.worker,
        "run": run_id,
        "time": _now(),
    }


def dataset_status(spec: DatasetSpec, folder: str, verify: bool = True) -> Dict[int, dict]:
    """The frames of ``spec`` already complete in ``folder``: index -> manifest record.

    Complete means: a manifest line with the frame's current arguments and
    file name, and the file present with the recorded size (and sha256 when
    ``verify``).
    """
    latest = latest_records(read_manifest(os.path.join(folder, MANIFEST)))
    done = {}
    for i, rec in latest.items():
        if not 0 <= i < spec.count:
            continue
        frame = spec.frame(i)
        if rec.get("args") != frame.args or rec.get("file") != frame.file:
            continue
        path = os.path.join(folder, frame.file)
        try:
            if os.path.getsize(path) != rec.get("bytes"):
                continue
        except OSError:
            continue
        if verify and sha256_file(path) != rec.get("sha256"):
            continue
        done[i] = rec
    return done


def verify_dataset(spec: Union[DatasetSpec, str], folder: str) -> Dict[str, List[int]]:
    """Check every frame file against the manifest: {'ok': [...], 'bad': [...], 'missing': [...]}."""
    if isinstance(spec, str):
        spec = load_spec(spec)
    latest = latest_records(read_manifest(os.path.join(folder, MANIFEST)))
    done = dataset_status(spec, folder, verify=True)
    ok = sorted(done)
    bad = sorted(i for i in latest if i not in done and 0 <= i < spec.count)
    missing = sorted(i for i in range(spec.count) if i not in latest)
    return {"ok": ok, "bad": bad, "missing": missing}


class _Progress:
    def __init__(self, stream: Optional[TextIO], total: int):
        self.stream = stream
        self.total = total
        self.n = 0
        self.t0 = time.perf_counter()
        self.width = len(str(total))

    def say(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)

    def frame(self, rec: dict) -> None:
        self.n += 1
        rate = self.n / max(time.perf_counter() - self.t0, 1e-9)
        self.say(f"[{self.n:{self.width}d}/{self.total}] {rec['file']}  {rec['render_s']:.2f} s  "
                 f"{rec['worker']}  ({rate:.3g} images/s)")

    def failure(self, index: int, name: str, err: str) -> None:
        self.n += 1
        self.say(f"[{self.n:{self.width}d}/{self.total}] {name}  FAILED: {err}")


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _batches(items: List[Any], size: int) -> List[List[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def render_dataset(spec: Union[DatasetSpec, str], folder: str, *, scheduler: Optional[str] = None,
                   client=None, local_workers: Optional[int] = None, frames: Optional[Iterable[int]] = None,
                   retries: Optional[int] = None, batch: Optional[int] = None, device: Optional[str] = None,
                   verify: bool = True, progress: Optional[TextIO] = sys.stdout,
                   _after_frame=None) -> Summary:
    """Render the frames of ``spec`` (or of the experiment file at that path) into ``folder``.

    Where: ``client`` (a ``distributed.Client``), ``scheduler`` (a Dask
    scheduler address), ``local_workers`` (a throw-away ``LocalCluster`` of
    that many one-thread worker processes), or, by default, this process.
    Frames already complete in the folder are skipped (see
    :func:`dataset_status`); ``frames`` limits the run to those indices.
    Returns a :class:`Summary`; a frame that still fails after ``retries``
    retries is listed in ``Summary.failed`` and in ``failures.jsonl``.
    """
    if isinstance(spec, str):
        spec = load_spec(spec)
    retries = spec.retries if retries is None else int(retries)
    batch = spec.batch if batch is None else max(1, int(batch))
    device = spec.device if device is None else device
    spec.validate_common()
    os.makedirs(folder, exist_ok=True)
    with DatasetLock(folder):
        _check_header(spec, folder)
        wanted = sorted(set(range(spec.count) if frames is None else frames))
        bad = [i for i in wanted if not 0 <= i < spec.count]
        if bad:
            raise SpecError(f"frame indices {bad[:5]} outside 0..{spec.count - 1}")
        _remove_stale_temporaries(spec, folder)
        done = dataset_status(spec, folder, verify=verify)
        todo = [spec.frame(i) for i in wanted if i not in done]
        summary = Summary(folder=folder, total=len(wanted), skipped=len(wanted) - len(todo))
        prog = _Progress(progress, len(todo))
        if summary.skipped:
            prog.say(f"{summary.skipped} of {len(wanted)} frames already present in {folder}; "
                     f"{len(todo)} to render")
        run_id = uuid.uuid4().hex[:12]
        by_index = {fr.index: fr for fr in todo}
        failures_path = os.path.join(folder, FAILURES)

        with ManifestWriter(os.path.join(folder, MANIFEST)) as manifest:
            def finished(res: RenderedFrame) -> None:
                frame = by_index[res.index]
                write_file_durably(os.path.join(folder, frame.file), res.data)
                rec = _record(spec, frame, res, run_id)
                manifest.append(rec)
                summary.rendered += 1
                prog.frame(rec)
                if _after_frame is not None:
                    _after_frame(rec)

            def failed(index: int, err: str) -> None:
                summary.failed[index] = err
                prog.failure(index, by_index[index].file, err)
                with open(failures_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"index": index, "file": by_index[index].file, "error": err,
                                         "run": run_id, "time": _now()}) + "\n")

            t0 = time.perf_counter()
            try:
                if client is None and scheduler is None and not local_workers:
                    summary.where = "this process"
                    _run_local(spec, todo, retries, device, finished, failed)
                else:
                    summary.where = _run_dask(spec, todo, retries, batch, device, finished, failed,
                                              client=client, scheduler=scheduler, local_workers=local_workers)
            except KeyboardInterrupt:
                summary.interrupted = True
            finally:
                summary.seconds = time.perf_counter() - t0
    prog.say(summary.text())
    return summary


def _remove_stale_temporaries(spec: DatasetSpec, folder: str) -> None:
    """Temporary files of atomic writes cut short by a killed run (``.NAME.XXXX.tmp``)."""
    for name in os.listdir(folder):
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        base = name[1:-4].rsplit(".", 1)[0]
        if base == HEADER or base.startswith(spec.name.split("{")[0]) and base.endswith("." + spec.extension):
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass


def _jobs(frames: Sequence[Frame]) -> List[FrameJob]:
    return [FrameJob(index=f.index, file=f.file, args=list(f.args)) for f in frames]


def _run_local(spec, todo, retries, device, finished, failed) -> None:
    for frame in todo:
        for attempt in range(retries + 1):
            try:
                res = render_batch(_jobs([frame]), spec.format, spec.noise, spec.input_dir, device,
                                   spec.realism)[0]
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:
                if attempt == retries:
                    failed(frame.index, _err(e) + (f" (after {retries} retries)" if retries else ""))
                continue
            finished(res)
            break


def _run_dask(spec, todo, retries, batch, device, finished, failed, *, client, scheduler, local_workers) -> str:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    own = client is None
    if own:
        if scheduler is not None:
            client = Client(scheduler)
        else:
            cluster = LocalCluster(n_workers=int(local_workers), threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
    where = f"Dask {client.scheduler.address} ({len(client.scheduler_info().get('workers', {}))} workers)"
    tag = uuid.uuid4().hex[:8]
    futures = {}

    def submit(frames, tries):
        key = f"nanobragg-frame-{frames[0].index}-{len(frames)}-{tag}"
        fut = client.submit(render_batch, _jobs(frames), spec.format, spec.noise, spec.input_dir, device,
                            spec.realism, key=key, retries=tries, pure=False)
        futures[fut] = frames
        return fut

    try:
        ac = as_completed([submit(b, retries) for b in _batches(todo, batch)])
        for fut in ac:
            frames = futures.pop(fut)
            try:
                results = fut.result()
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:
                if len(frames) > 1:
                    # a failed batch: give each of its frames its own chance
                    for fr in frames:
                        ac.add(submit([fr], retries))
                else:
                    failed(frames[0].index, _err(e) + (f" (after {retries} retries)" if retries else ""))
                fut.release()
                continue
            fut.release()
            for res in results:
                finished(res)
    finally:
        for fut in list(futures):
            fut.cancel()
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    return where
