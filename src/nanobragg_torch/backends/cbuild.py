"""Build a small C library once per machine into a per-user cache, and load it (no torch import).

Used by the fused CPU kernel (:mod:`.fused_cpu`) and the noise kernel (:mod:`.cnoise`).
The cache is ``$NANOBRAGG_TORCH_CACHE`` or ``$XDG_CACHE_HOME/nanobragg_torch`` (default
``~/.cache/nanobragg_torch``); a library's file name hashes its sources, the flags, the
compiler and the CPU's feature flags, so a change of any of them builds a new one, and
later processes only load the cached file (milliseconds).  Builds are atomic (a temporary
file renamed into place), so concurrent processes see the whole library or none.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """Where built kernels are kept (created on demand)."""
    env = os.environ.get("NANOBRAGG_TORCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nanobragg_torch"


def compiler() -> Optional[str]:
    """Path of the C compiler that builds the kernels, or None."""
    return shutil.which(os.environ.get("CC", "cc"))


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return line.strip()
    except OSError:
        pass
    import platform
    return platform.processor() + platform.machine()


def library_path(stem: str, sources: Sequence[str], flags: Sequence[str], abi: int, cc: str) -> Path:
    """The cache file for these sources, flags, ABI version, compiler and CPU."""
    h = hashlib.sha256()
    for name in sources:
        h.update((HERE / name).read_bytes())
    st = os.stat(cc)
    h.update(repr((tuple(flags), os.path.realpath(cc), st.st_size, int(st.st_mtime), cpu_flags(), abi)).encode())
    return cache_dir() / f"{stem}-{h.hexdigest()[:20]}.so"


def build_library(stem: str, sources: Sequence[str], flags: Sequence[str], abi: int,
                  what: str) -> "tuple[Path, Optional[float]]":
    """Compile ``sources[0]`` (which includes the others) into the cache if it is not there yet.

    Returns (path, seconds spent compiling, or None when the cached file was used).  A
    missing compiler or a failed compilation raises RuntimeError with a one-line reason.
    """
    cc = compiler()
    if cc is None:
        raise RuntimeError(f"no C compiler ({os.environ.get('CC', 'cc')!r} not found on PATH)")
    path = library_path(stem, sources, flags, abi, cc)
    if path.exists():
        return path, None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.so", dir=str(path.parent))
    os.close(fd)
    cmd = [cc, *flags, str(HERE / sources[0]), "-o", tmp, "-lm"]
    print(f"nanoBragg: note: building the {what}, once for this machine (cached in {path.parent})",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            msg = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise RuntimeError(f"compiling the {what} failed: {msg}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path, time.perf_counter() - t0


_noted: set = set()


def note_fallback(what: str, reason: Optional[str], instead: str) -> None:
    """One line on stderr, once per process, when a C kernel cannot be used and ``instead`` runs
    (nothing when it was switched off on purpose through its environment variable)."""
    if reason is None or reason.startswith("disabled by"):
        return
    msg = f"nanoBragg: note: the {what} is not available ({reason}); using {instead}"
    if msg not in _noted:
        _noted.add(msg)
        print(msg, file=sys.stderr, flush=True)


class Library:
    """One of the package's small C libraries (``cio``, ``cnoise``, ``camorphous``): built into the
    cache on first use, loaded once per process (thread-safe), switched off by an environment
    variable.  ``declare(lib)`` sets the ctypes signatures; ``abi_symbol`` names the function that
    returns the library's ABI version, which must equal ``abi``.  :meth:`load` returns the
    library or None, :attr:`error` says why not."""

    def __init__(self, stem: str, sources: Sequence[str], flags: Sequence[str], abi: int, what: str,
                 disable_env: str, abi_symbol: str, declare):
        import threading
        self.stem, self.sources, self.flags, self.abi, self.what = stem, tuple(sources), tuple(flags), abi, what
        self.disable_env, self.abi_symbol, self.declare = disable_env, abi_symbol, declare
        self._lock = threading.Lock()
        self._lib = None
        self.error: Optional[str] = None
        self.build_seconds: Optional[float] = None     # this process's compile time (None: from the cache)

    def load(self):
        import ctypes
        with self._lock:
            if self._lib is not None or self.error is not None:
                return self._lib
            if os.environ.get(self.disable_env):
                self.error = f"disabled by {self.disable_env}"
                return None
            try:
                path, self.build_seconds = build_library(self.stem, self.sources, self.flags, self.abi, self.what)
                lib = ctypes.CDLL(str(path))
                if getattr(lib, self.abi_symbol)() != self.abi:
                    raise RuntimeError(f"cached {self.what} has another ABI version")
                self.declare(lib)
                self._lib = lib
            except (OSError, RuntimeError, AttributeError) as exc:
                self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return self._lib

    def reset(self) -> None:
        """Forget the loaded library and any error (tests that simulate a missing compiler)."""
        with self._lock:
            self._lib = None
            self.error = None
