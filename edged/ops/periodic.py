"""A named thread that calls a function every ``interval`` seconds until stopped."""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger("edged.periodic")


class Periodic:
    """Calls ``fn`` at once, then every ``interval`` seconds; a failing call is logged and the loop goes on.

    ``interval`` may be changed while running (a reload); it applies from the next wait.
    """

    def __init__(self, name: str, interval: float, fn: Callable[[], object]):
        self.interval = interval
        self._fn = fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._fn()
            except Exception:
                log.exception("periodic_failed", thread=self._thread.name)
            self._stop.wait(self.interval)
