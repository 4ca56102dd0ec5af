"""A job on a thread whose result (or exception) is collected by ``join()``.

The noise kernels run without the GIL, so the images that are final (and their files) are made
on such a thread while the noise is drawn.
"""
from __future__ import annotations

import os
import threading


def _idle_priority() -> None:
    """The calling thread at the idle scheduling policy where the OS has one (Linux): it runs when
    no other thread of the machine wants the core, and a waking thread takes the core at once."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):       # pragma: no cover - not Linux, or refused
        pass


class Background:
    """``job()`` on a daemon thread; ``join()`` returns what it returned and re-raises what it raised.

    ``idle=True``: the thread runs at the idle scheduling policy (see ``_idle_priority``), for work
    that is not on the critical path: the noise kernels' threads, which draw the serial random
    stream, then never wait for a core it holds."""

    def __init__(self, job, idle: bool = False):
        self.exc = None
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(job, idle), daemon=True)
        self.thread.start()

    def _run(self, job, idle):
        try:
            if idle:
                _idle_priority()
            self.result = job()
        except BaseException as e:      # noqa: BLE001 - handed to join()
            self.exc = e

    def join(self):
        self.thread.join()
        if self.exc is not None:
            raise self.exc
        return self.result
