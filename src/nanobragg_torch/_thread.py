"""A job on a thread whose result (or exception) is collected by ``join()``.

The noise kernels run without the GIL, so the images that are final (and their files) are made
on such a thread while the noise is drawn.
"""
from __future__ import annotations

import threading


class Background:
    """``job()`` on a daemon thread; ``join()`` returns what it returned and re-raises what it raised."""

    def __init__(self, job):
        self.exc = None
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(job,), daemon=True)
        self.thread.start()

    def _run(self, job):
        try:
            self.result = job()
        except BaseException as e:      # noqa: BLE001 - handed to join()
            self.exc = e

    def join(self):
        self.thread.join()
        if self.exc is not None:
            raise self.exc
        return self.result
