"""Carries jobs to the engine and their results back. The engine's scheduler is the one queue.

A small fixed pool of threads does the service's work around each generation: ``Service.start``
(mode, prompt) then ``Engine.submit``, which returns at once; the engine orders what it holds by
priority (commands before queries before low), batches and bounds what runs at once. When a
generation ends, a pool thread makes its result (``Service.finish``) and hands it to ``on_done``.
Admission counts what waits in front of the model: ``queue_size`` and more is ``busy``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import Enum

import structlog

from edged.engine.types import Engine, Generation
from edged.protocol import ErrorCode, Result
from edged.service.handler import Job, Service, Started, error_result

log = structlog.get_logger("edged.worker")
THREADS = 4  # service threads: prompts built and results delivered (a delivery waits for the broker's PUBACK)


class Admission(Enum):
    ACCEPTED = "accepted"
    BUSY = "busy"  # the queue is full
    STOPPING = "stopping"  # shutting down: leave the request to the broker


class Worker:
    """Every job accepted ends in exactly one ``on_done``, unless ``stop`` hands it back unstarted."""

    def __init__(self, *, queue_size: int, on_done: Callable[[Job, Result], None], threads: int = THREADS):
        self._on_done = on_done
        self._queue_size = queue_size
        self._threads = threads
        self._service: Service | None = None  # with start(): until then jobs wait (the model is loading)
        self._engine: Engine | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._cond = threading.Condition()
        self._early: list[Job] = []  # accepted before start()
        self._preparing = 0  # jobs on their way into the engine
        self._running: list[Job] = []  # jobs started and not yet done, oldest first
        self._submitted: dict[int, Job] = {}  # id(generation request) -> its job, while the engine has it
        self._returned: list[Job] = []  # unstarted jobs handed back at stop
        self._stopping = threading.Event()
        self.heartbeat = time.monotonic()  # last sign of progress: job start, token, job end

    def start(self, service: Service, engine: Engine) -> None:
        """Serve from now on: the jobs that came while the model loaded go first, in the engine's order."""
        with self._cond:
            self._service, self._engine = service, engine
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="edged-service")
            early, self._early = self._early, []
        for job in early:
            self._launch(job)

    @property
    def current(self) -> Job | None:
        """The longest-running job in flight."""
        with self._cond:
            return self._running[0] if self._running else None

    def in_flight(self) -> int:
        """Jobs started and not done (waiting in the engine included)."""
        with self._cond:
            return len(self._running)

    def depth(self) -> int:
        """Jobs waiting for the model: before start, on their way in, or queued in the engine."""
        with self._cond:
            waiting = len(self._early) + self._preparing
        return waiting + (self._engine.queued() if self._engine is not None else 0)

    def stuck(self, limit_s: float) -> bool:
        """True when jobs are in flight and none made progress (no token) for ``limit_s`` seconds."""
        return bool(self._running) and time.monotonic() - self.heartbeat > limit_s

    def _beat(self) -> None:
        self.heartbeat = time.monotonic()

    def submit(self, job: Job) -> Admission:
        """Accept ``job`` or say why not; never blocks (the network thread calls it)."""
        if self._stopping.is_set():
            return Admission.STOPPING
        if self.depth() >= self._queue_size:
            return Admission.BUSY
        with self._cond:
            if self._service is None:
                self._early.append(job)
                return Admission.ACCEPTED
        self._launch(job)
        return Admission.ACCEPTED

    def _launch(self, job: Job) -> None:
        assert self._pool is not None
        with self._cond:
            self._preparing += 1
            self._running.append(job)
        self._beat()
        self._pool.submit(self._begin, job)

    def _begin(self, job: Job) -> None:
        """On a service thread: the prompt, then into the engine (or the result at once)."""
        assert self._service is not None and self._engine is not None
        try:
            started = self._service.start(job, progress=self._beat)
        except Exception as exc:  # a bug in edged, not in the request: still answer it
            started = _crashed(job, exc)
        if isinstance(started, Result):
            self._prepared()
            self._end(job, started)
            return
        with self._cond:
            stopping = self._stopping.is_set()
            if stopping:  # shutting down before it reached the engine: unstarted, handed back by stop()
                self._returned.append(job)
                self._running.remove(job)
            else:
                self._submitted[id(started.request)] = job
        if not stopping:
            self._engine.submit(started.request, lambda outcome: self._generated(started, outcome))
        self._prepared()

    def _prepared(self) -> None:
        """One job less on its way in (counted until the engine has it, so that stop() can withdraw it)."""
        with self._cond:
            self._preparing -= 1
            self._cond.notify_all()

    def _generated(self, started: Started, outcome: Generation | Exception) -> None:
        """On the engine's thread: hand the rest to a service thread at once."""
        assert self._pool is not None
        with self._cond:
            self._submitted.pop(id(started.request), None)
        try:
            self._pool.submit(self._complete, started, outcome)
        except RuntimeError:  # stopped past the grace and the engine closed: the broker redelivers it
            log.warning("generation_ended_after_stop", id=started.job.request.id)

    def _complete(self, started: Started, outcome: Generation | Exception) -> None:
        assert self._service is not None
        try:
            result = self._service.finish(started, outcome)
        except Exception as exc:
            result = _crashed(started.job, exc)
        self._end(started.job, result)

    def _end(self, job: Job, result: Result) -> None:
        try:
            self._on_done(job, result)
        except Exception:
            log.exception("result_delivery_failed", id=job.request.id)
        with self._cond:
            self._running.remove(job)
            self._cond.notify_all()
        self._beat()

    def stop(self, *, timeout: float) -> list[Job]:
        """Take no more work, let the jobs in flight finish (up to ``timeout``), return the unstarted ones."""
        self._stopping.set()
        ends = time.monotonic() + timeout
        with self._cond:
            left, self._early = self._early, []
            while self._preparing and (wait := ends - time.monotonic()) > 0:
                self._cond.wait(wait)
        withdrawn = self._engine.withdraw() if self._engine is not None else []
        with self._cond:
            back = [self._submitted.pop(id(request)) for request in withdrawn if id(request) in self._submitted]
            left += self._returned + back
            self._returned = []
            for job in back:
                self._running.remove(job)
            while self._running and (wait := ends - time.monotonic()) > 0:
                self._cond.wait(wait)
            if self._running:
                log.warning("worker_still_busy", timeout_s=timeout, in_flight=len(self._running))
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        return sorted(left, key=lambda job: job.received_at)


def _crashed(job: Job, exc: Exception) -> Result:
    log.exception("request_crashed", id=job.request.id)
    return error_result(job.request.id or "unknown", ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", kind=job.kind)
