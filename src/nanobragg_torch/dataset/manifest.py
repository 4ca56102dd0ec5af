"""The dataset folder's bookkeeping: ``dataset.json``, ``manifest.jsonl`` and the run lock.

Crash safety rests on one ordering rule: a frame's manifest line is appended
(and fsync'ed) only after its file has been written atomically (temporary
file, fsync, rename, fsync of the folder).  A run killed at any moment
therefore leaves

* complete frame files, each with or without its manifest line, and
* a manifest whose last line may be cut short.

Reading tolerates the cut line (it is dropped, and cut off the file before
the next append); a frame counts as done only when its line is present and
its file still has the recorded size and sha256.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Dict, Iterator, List, Optional

from ..io.atomic import atomic_write_bytes

__all__ = ["MANIFEST", "HEADER", "LOCK", "read_manifest", "latest_records", "ManifestWriter",
           "sha256_file", "write_file_durably", "fsync_dir", "DatasetLock", "LockedError"]

MANIFEST = "manifest.jsonl"
HEADER = "dataset.json"
LOCK = ".dataset.lock"
FAILURES = "failures.jsonl"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file_durably(path: str, data: bytes) -> None:
    """Atomic write (temp file, fsync, rename) plus an fsync of the folder."""
    atomic_write_bytes(path, data)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _iter_lines(path: str) -> Iterator[tuple]:
    """(line number, record or None, complete) for every line of the manifest."""
    with open(path, "rb") as fh:
        raw = fh.read()
    lines = raw.split(b"\n")
    for n, line in enumerate(lines, 1):
        complete = n < len(lines)          # the part after the last newline is not a complete line
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            if not isinstance(rec, dict):
                rec = None
        except (UnicodeDecodeError, ValueError):
            rec = None
        yield n, rec, complete


def read_manifest(path: str) -> List[dict]:
    """The manifest's records in order; a cut-short last line is dropped silently,
    any other unreadable line with a warning."""
    if not os.path.exists(path):
        return []
    out = []
    for n, rec, complete in _iter_lines(path):
        if rec is None or not complete:
            if complete:
                warnings.warn(f"{path}:{n}: unreadable manifest line ignored", RuntimeWarning, stacklevel=2)
            continue
        out.append(rec)
    return out


def latest_records(records: List[dict]) -> Dict[int, dict]:
    """The last record of each frame index (a frame rendered again supersedes the old line)."""
    latest: Dict[int, dict] = {}
    for rec in records:
        if isinstance(rec.get("index"), int):
            latest[rec["index"]] = rec
    return latest


class ManifestWriter:
    """Appends one JSON line per finished frame, each flushed and fsync'ed."""

    def __init__(self, path: str):
        self.path = path
        self._repair()
        self.fh = open(path, "ab")
        fsync_dir(os.path.dirname(os.path.abspath(path)))

    def _repair(self) -> None:
        """Cut a partial last line (a run killed mid-append) so appends start on a fresh line."""
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if not data or data.endswith(b"\n"):
                return
            keep = data.rfind(b"\n") + 1
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=False, separators=(",", ":")) + "\n"
        self.fh.write(line.encode("utf-8"))
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LockedError(RuntimeError):
    pass


class DatasetLock:
    """An exclusive, advisory lock on the dataset folder (released when the process ends)."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, LOCK)
        self.fd: Optional[int] = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise LockedError(f"{os.path.dirname(self.path)}: another run is writing this dataset") from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
