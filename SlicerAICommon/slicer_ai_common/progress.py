"""Progress reporting and cooperative cancellation for long runs."""
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

    def __init__(self, callback: Optional[Callable[[str, float], None]] = None):
        self.callback = callback
        self._cancel = threading.Event()

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
