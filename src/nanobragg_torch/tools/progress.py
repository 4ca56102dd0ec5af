"""A terminal progress bar for long renders (by chunk, with ETA).

The command line shows it on standard error, and only when standard error is a
terminal and ``-noprogress`` is not given, so that the report on standard
output stays clean when it is piped or redirected.
"""
from __future__ import annotations

import time


def _clock(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):   # NaN or inf
        return "--:--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """Call with ``(done, total)`` after each chunk; ``close()`` ends the line.

    ``delay``: nothing is drawn until the render has run this long (short
    renders stay silent; default :attr:`DEFAULT_DELAY`); ``min_interval``: the
    least time between redraws.
    """

    DEFAULT_DELAY = 0.5

    def __init__(self, stream, width: int = 30, min_interval: float = 0.2, delay: float = None,
                 clock=time.monotonic):
        self.stream = stream
        self.width = width
        self.clock = clock
        self.start = clock()
        self.last = None
        self.min_interval = min_interval
        self.delay = self.DEFAULT_DELAY if delay is None else delay
        self.shown = False

    def line(self, done: int, total: int, now: float) -> str:
        frac = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        bar = "#" * int(frac * self.width)
        what = "done" if done >= total else f"ETA {_clock(eta)}"
        return (f"\r[{bar:<{self.width}s}] {100 * frac:5.1f}%  {done}/{total} px  "
                f"elapsed {_clock(elapsed)}  {what} ")

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if not self.shown and now - self.start < self.delay:
            return
        if done < total and self.last is not None and now - self.last < self.min_interval:
            return
        self.last = now
        try:
            self.stream.write(self.line(done, total, now))
            self.stream.flush()
        except (OSError, ValueError):   # a closed or broken terminal must not stop the render
            return
        self.shown = True

    def close(self) -> None:
        if self.shown:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self.shown = False
