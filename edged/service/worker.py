"""Jobs in flight in front of the model: a bounded queue, served most urgent first.

A dispatcher thread starts each job on its own thread once its priority has a free slot
(``slots`` jobs in flight per priority); the jobs' generations meet in the engine's scheduler,
which runs commands before queries and decodes concurrent ones as a batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from enum import Enum

import structlog

from edged.protocol import ErrorCode, Result
from edged.service.handler import Job, Service, error_result

log = structlog.get_logger("edged.worker")
PRIORITIES = ("high", "normal", "low")  # most urgent first


class Admission(Enum):
    ACCEPTED = "accepted"
    BUSY = "busy"  # the queue is full
    STOPPING = "stopping"  # shutting down: leave the request to the broker


class Worker:
    """Every job taken from the queue ends in exactly one ``on_done``."""

    def __init__(
        self, service: Service | None, *, queue_size: int, on_done: Callable[[Job, Result], None], slots: int = 1
    ):
        self._service = service  # may come with start(): jobs wait in the queue while the model loads
        self._on_done = on_done
        self._queue_size = queue_size
        self._slots = slots
        self._cond = threading.Condition()
        self._queued: dict[str, deque[Job]] = {p: deque() for p in PRIORITIES}
        self._running: list[Job] = []
        self._stopping = threading.Event()
        self.heartbeat = time.monotonic()  # last sign of progress: job start, token, job end
        self._thread = threading.Thread(target=self._dispatch, name="edged-worker", daemon=True)

    def start(self, service: Service | None = None) -> None:
        if service is not None:
            self._service = service
        assert self._service is not None, "a worker needs a service to start"
        self._thread.start()

    @property
    def current(self) -> Job | None:
        """The longest-running job in flight."""
        with self._cond:
            return self._running[0] if self._running else None

    def in_flight(self) -> int:
        with self._cond:
            return len(self._running)

    def depth(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queued.values())

    def stuck(self, limit_s: float) -> bool:
        """True when jobs are in flight and none made progress (no token) for ``limit_s`` seconds, or the thread died."""
        if not self._thread.is_alive():
            return self._thread.ident is not None and not self._stopping.is_set()
        return bool(self._running) and time.monotonic() - self.heartbeat > limit_s

    def _beat(self) -> None:
        self.heartbeat = time.monotonic()

    def submit(self, job: Job) -> Admission:
        if self._stopping.is_set():
            return Admission.STOPPING
        with self._cond:
            if sum(len(q) for q in self._queued.values()) >= self._queue_size:
                return Admission.BUSY
            self._queued[job.priority if job.priority in self._queued else "normal"].append(job)
            self._cond.notify_all()
        return Admission.ACCEPTED

    def stop(self, *, timeout: float) -> list[Job]:
        """Take no more work, let the jobs in flight finish (up to ``timeout``), return the unstarted ones."""
        self._stopping.set()
        with self._cond:
            left = sorted((job for q in self._queued.values() for job in q), key=lambda job: job.received_at)
            for q in self._queued.values():
                q.clear()
            self._cond.notify_all()
        if self._thread.ident is None:  # never started (the model failed to load)
            return left
        self._thread.join(timeout)
        ends = time.monotonic() + timeout
        with self._cond:
            while self._running and (wait := ends - time.monotonic()) > 0:
                self._cond.wait(wait)
            if self._running:
                log.warning("worker_still_busy", timeout_s=timeout, in_flight=len(self._running))
        return left

    def _next(self) -> Job | None:
        """The most urgent queued job whose priority has a free slot (call with the lock held)."""
        for priority, queued in self._queued.items():
            if queued and sum(1 for job in self._running if job.priority == priority) < self._slots:
                return queued.popleft()
        return None

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                job = None
                while not self._stopping.is_set() and (job := self._next()) is None:
                    self._cond.wait()
                if job is None:  # stopping
                    return
                self._running.append(job)
            self._beat()
            threading.Thread(target=self._serve, args=(job,), name=f"edged-job-{job.request.id}", daemon=True).start()

    def _serve(self, job: Job) -> None:
        try:
            assert self._service is not None
            result = self._service.handle(job, progress=self._beat)
        except Exception as exc:  # a bug in edged, not in the request: still answer it
            log.exception("request_crashed", id=job.request.id)
            result = error_result(
                job.request.id or "unknown", ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", kind=job.kind
            )
        try:
            self._on_done(job, result)
        except Exception:
            log.exception("result_delivery_failed", id=job.request.id)
        with self._cond:
            self._running.remove(job)
            self._cond.notify_all()
        self._beat()
