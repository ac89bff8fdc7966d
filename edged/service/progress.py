"""Long requests: progress messages at a bounded rate, and cancellation by request id."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edged.service.handler import Job

MAX_CANCELLED = 1024
MAX_REPORTING = 1024  # requests whose last report is remembered (more than can be in flight)


class ProgressReporter:
    """Publishes ``{base}/progress/{id}`` for queries: once at the start, then at most every ``interval_s``
    per request (several run at once); :meth:`forget` a request once it has its result."""

    def __init__(
        self,
        publish: Callable[[str, bytes], None],
        base: str,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._publish = publish
        self._base = base
        self._interval = interval_s
        self._clock = clock
        self._last: OrderedDict[str, float] = OrderedDict()  # request id -> when its last report went out
        self._lock = threading.Lock()

    def __call__(self, job: Job, tokens: int) -> None:
        if self._interval <= 0 or job.kind != "query" or job.request.id is None:
            return
        rid, now = job.request.id, self._clock()
        with self._lock:
            if tokens and now - self._last.get(rid, -1e9) < self._interval:
                return
            self._last[rid] = now
            self._last.move_to_end(rid)
            while len(self._last) > MAX_REPORTING:
                self._last.popitem(last=False)
        body = {
            "id": rid,
            "phase": "generating" if tokens else "started",
            "tokens": tokens,
            "elapsed_ms": round((now - job.received_at) * 1000, 1),
        }
        self._publish(f"{self._base}/progress/{rid}", json.dumps(body).encode())

    def forget(self, request_id: str) -> None:
        """The request is done: no more reports, and its entry goes."""
        with self._lock:
            self._last.pop(request_id, None)


class Cancellations:
    """Request ids asked to stop; bounded, oldest forgotten first."""

    def __init__(self) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, request_id: str) -> None:
        with self._lock:
            self._ids[request_id] = None
            while len(self._ids) > MAX_CANCELLED:
                self._ids.popitem(last=False)

    def __call__(self, request_id: str) -> bool:
        with self._lock:
            return request_id in self._ids
