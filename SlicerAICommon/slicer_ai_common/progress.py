"""Progress reporting, cooperative cancellation, and running the long part of a job off the GUI thread."""
from __future__ import annotations

import threading
from typing import Callable, Optional


class Cancelled(Exception):
    """Raised inside a run when the user pressed Cancel; callers roll back and re-raise or report."""


class Progress:
    """Carries a callback (stage, fraction in [0, 1]) and a cancel flag into library code.

    Library code calls `progress.step(stage, fraction)` at safe points; it raises Cancelled there once
    `cancel()` was called (from the GUI thread, a signal handler or a test).
    """

    def __init__(self, callback: Optional[Callable[[str, float], None]] = None,
                 cancel_event: Optional[threading.Event] = None):
        self.callback = callback
        self._cancel = cancel_event or threading.Event()

    def cancel(self):
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self):
        if self._cancel.is_set():
            raise Cancelled("cancelled by the user")

    def step(self, stage: str, fraction: float):
        self.check()
        if self.callback is not None:
            self.callback(stage, max(0.0, min(1.0, float(fraction))))
        self.check()


def call_in_worker(fn: Callable[[Progress], object], progress: Optional[Progress] = None,
                   pump: Optional[Callable[[], None]] = None, interval: float = 0.05):
    """Return fn(worker_progress), computed on a worker thread while this thread keeps calling pump()
    (in Slicer: `slicer.app.processEvents`, so the window repaints and Cancel stays clickable during a
    minute of CPU inference). The worker's progress reports are handed to `progress.callback` on this
    thread, the latest one every `interval` seconds, so widgets are only touched here; `progress.cancel()`
    reaches the worker (one shared flag). fn must not touch the MRML scene: read the nodes before and
    add results after, on this thread. An exception in fn (Cancelled included) is re-raised here.
    Without pump, fn simply runs on this thread (console, batch scripts, CLIs, tests of the logic)."""
    progress = progress or Progress()
    if pump is None:
        return fn(progress)
    lock = threading.Lock()
    latest: list = []

    def report(stage, fraction):
        with lock:
            latest[:] = [(stage, fraction)]

    worker_progress = Progress(report, cancel_event=progress._cancel)
    box: dict = {}

    def target():
        try:
            box["value"] = fn(worker_progress)
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            box["error"] = e

    t = threading.Thread(target=target, name="slicer-ai-worker", daemon=True)
    t.start()
    while True:
        t.join(interval)
        with lock:
            rep, latest[:] = latest[:], []
        if rep and progress.callback is not None:
            progress.callback(*rep[0])
        if not t.is_alive():
            break
        pump()
    if "error" in box:
        raise box["error"]
    return box["value"]
