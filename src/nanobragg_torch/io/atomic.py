"""Atomic file writing: write a temporary file next to the target, then rename.

A reader never sees a half-written image: the data go to a temporary file in
the destination directory (same filesystem, so :func:`os.replace` is an
atomic rename), which is flushed, fsync'ed and then moved over ``path``.  On
any error the temporary file is removed and ``path`` is left untouched.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_open", "atomic_write_bytes"]


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # fall back: read by setting, then restore
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", encoding: str = "ascii") -> Iterator[IO]:
    """Context manager yielding a file object whose content replaces ``path`` on success.

    ``mode`` is ``"wb"`` (binary) or ``"w"`` (text, written with ``encoding``).
    The new file gets the permissions a plain ``open(path, mode)`` would give
    a new file (0666 minus the umask).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports modes 'wb' and 'w', not {mode!r}")
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=directory
    )
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_current_umask())
        kwargs = {} if mode == "wb" else {"encoding": encoding, "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (all or nothing)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
