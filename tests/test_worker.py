"""The worker between intake and the engine: admission against the engine's queue, stop, stuck detection.

A scripted engine here (no model needed): it runs one generation at a time, in submission order, until
released; the real engine's ordering and batching are in test_scheduler.py."""

from __future__ import annotations

import threading
import time

from standins import StandInEngine

from edged.engine.types import Done, Generation, GenerationRequest
from edged.protocol import Request
from edged.service.handler import Job, Service
from edged.service.sessions import SessionStore
from edged.service.worker import THREADS, Admission, Worker
from edged.settings import ModelSettings

GEN = Generation(
    answer="ok",
    reasoning=None,
    prompt_tokens=3,
    completion_tokens=1,
    reasoning_tokens=0,
    prefill_ms=1.0,
    decode_ms=1.0,
    finish_reason="stop",
)


class GatedEngine(StandInEngine):
    """The oldest request runs until ``release``; the rest are queued (and can be withdrawn)."""

    name = "gated"
    supports_thinking = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.held: list[tuple[GenerationRequest, Done]] = []
        self.entered = threading.Event()
        self.withdrawn = threading.Event()

    def submit(self, request: GenerationRequest, on_done: Done) -> None:
        with self._lock:
            self.held.append((request, on_done))
        self.entered.set()

    def queued(self) -> int:
        with self._lock:
            return max(0, len(self.held) - 1)

    def withdraw(self) -> list[GenerationRequest]:
        with self._lock:
            taken, self.held = self.held[1:], self.held[:1]
        self.withdrawn.set()
        return [request for request, _done in taken]

    def release(self) -> None:
        with self._lock:
            _request, on_done = self.held.pop(0)
        on_done(GEN)


def _job(i: int) -> Job:
    return Job(
        kind="command",
        request=Request(id=f"j{i}", text="x"),
        received_at=time.monotonic(),
        deadline=None,
        reply_topic="r",
        include_reasoning=False,
    )


def _worker(engine: GatedEngine, done: list[tuple[str, str]], size: int = 2) -> Worker:
    worker = Worker(queue_size=size, on_done=lambda job, result: done.append((job.request.id, result.status)))
    sessions = SessionStore(max_turns=2, max_tokens=256, idle_s=60, max_sessions=2)
    worker.start(Service(engine, sessions, ModelSettings(path="/models/none")), engine)
    return worker


def test_full_queue_is_busy_and_stop_returns_unstarted_jobs() -> None:
    """One generating + a full engine queue -> busy; stop finishes the running job and hands back the rest."""
    engine, done = GatedEngine(), []
    worker = _worker(engine, done, size=2)
    assert worker.submit(_job(0)) is Admission.ACCEPTED
    assert engine.entered.wait(5)
    assert [worker.submit(_job(i)) for i in (1, 2, 3)] == [Admission.ACCEPTED, Admission.ACCEPTED, Admission.BUSY]
    assert len([t for t in threading.enumerate() if t.name.startswith("edged-service")]) <= THREADS
    releaser = threading.Thread(target=lambda: engine.withdrawn.wait(5) and engine.release())
    releaser.start()
    left = worker.stop(timeout=5)
    releaser.join()
    assert done == [("j0", "ok")]
    assert [j.request.id for j in left] == ["j1", "j2"]
    assert worker.submit(_job(4)) is Admission.STOPPING


def test_jobs_before_start_wait_and_count_against_the_queue() -> None:
    """Requests that come while the model loads are held (bounded by queue_size) and served once it is up."""
    engine, done = GatedEngine(), []
    worker = Worker(queue_size=2, on_done=lambda job, result: done.append((job.request.id, result.status)))
    assert [worker.submit(_job(i)) for i in range(3)] == [Admission.ACCEPTED, Admission.ACCEPTED, Admission.BUSY]
    assert worker.depth() == 2
    sessions = SessionStore(max_turns=2, max_tokens=256, idle_s=60, max_sessions=2)
    worker.start(Service(engine, sessions, ModelSettings(path="/models/none")), engine)
    for _ in range(2):
        while not engine.held:
            engine.entered.wait(5)
            engine.entered.clear()
        engine.release()
    assert worker.stop(timeout=5) == []
    assert sorted(done) == [("j0", "ok"), ("j1", "ok")]


def test_stuck_only_without_progress() -> None:
    """Idle is never stuck; a running job is stuck once it has been silent longer than the limit."""
    engine, done = GatedEngine(), []
    worker = _worker(engine, done)
    assert not worker.stuck(0.0)  # idle
    worker.submit(_job(0))
    assert engine.entered.wait(5)
    assert not worker.stuck(60.0)  # the job just started
    worker.heartbeat -= 10  # as if ten silent seconds had passed
    assert worker.stuck(5.0)
    engine.release()
    worker.stop(timeout=5)
    assert done == [("j0", "ok")] and not worker.stuck(0.0)
