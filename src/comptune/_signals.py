"""Graceful stops for long runs: SIGTERM/SIGINT ask the loop to checkpoint and return."""

from __future__ import annotations

import signal
import threading


class StopRequested:
    """Context manager: while active, SIGTERM/SIGINT only set `requested`; the training loop
    checks it, writes its checkpoint and returns. Outside the main thread (where Python cannot
    install handlers) it is inert."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
