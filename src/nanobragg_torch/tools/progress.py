"""A terminal progress bar for long renders (by chunk, with ETA)."""
from __future__ import annotations

import time


class ProgressBar:
    """Call with (done, total) after each chunk; ``close()`` ends the line."""

    def __init__(self, stream, width: int = 40, min_interval: float = 0.2):
        self.stream = stream
        self.width = width
        self.start = time.monotonic()
        self.last = 0.0
        self.min_interval = min_interval
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < self.min_interval:
            return
        self.last = now
        frac = done / total if total else 1.0
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        bar = "#" * int(frac * self.width)
        self.stream.write(f"\r[{bar:<{self.width}s}] {100 * frac:5.1f}%  {done}/{total} px  ETA {eta:6.1f} s")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
