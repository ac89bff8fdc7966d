"""The worker thread and its bounded queue, with a scripted service (no model needed here)."""

from __future__ import annotations

import threading
import time

from edged.protocol import Request, Result
from edged.service.handler import Job
from edged.service.worker import Admission, Worker


class GatedService:
    """Blocks each request until released, without reporting progress."""

    def __init__(self):
        self.release = threading.Event()
        self.entered = threading.Event()

    def handle(self, job: Job, *, progress) -> Result:
        self.entered.set()
        self.release.wait()
        return Result(id=job.request.id, kind=job.kind, status="ok")


def _job(i: int) -> Job:
    return Job(
        kind="command",
        request=Request(id=f"j{i}", text="x"),
        received_at=time.monotonic(),
        deadline=None,
        reply_topic="r",
        include_reasoning=False,
    )


def _worker(service, done, size=2) -> Worker:
    worker = Worker(service, queue_size=size, on_done=lambda job, result: done.append((job.request.id, result.status)))
    worker.start()
    return worker


def test_full_queue_is_busy_and_stop_returns_unstarted_jobs():
    """One running + a full queue -> busy; stop finishes the running job and hands back the rest."""
    service, done = GatedService(), []
    worker = _worker(service, done, size=2)
    assert worker.submit(_job(0)) is Admission.ACCEPTED
    assert service.entered.wait(5)
    assert [worker.submit(_job(i)) for i in (1, 2, 3)] == [Admission.ACCEPTED, Admission.ACCEPTED, Admission.BUSY]
    threading.Timer(0.05, service.release.set).start()
    left = worker.stop(timeout=5)
    assert done == [("j0", "ok")]
    assert [j.request.id for j in left] == ["j1", "j2"]
    assert worker.submit(_job(4)) is Admission.STOPPING


def test_stuck_only_without_progress():
    """Idle is never stuck; a running job is stuck once it has been silent longer than the limit."""
    service, done = GatedService(), []
    worker = _worker(service, done)
    assert not worker.stuck(0.0)  # idle
    worker.submit(_job(0))
    assert service.entered.wait(5)
    assert not worker.stuck(60.0)  # the job just started
    worker.heartbeat -= 10  # as if ten silent seconds had passed
    assert worker.stuck(5.0)
    service.release.set()
    worker.stop(timeout=5)
    assert done == [("j0", "ok")] and not worker.stuck(0.0)


class PerJobGate:
    """Blocks each request until its own release; records the order in which they started."""

    def __init__(self):
        self.started: list[str] = []
        self.entered = {f"j{i}": threading.Event() for i in range(8)}
        self.release = {f"j{i}": threading.Event() for i in range(8)}

    def handle(self, job: Job, *, progress) -> Result:
        self.started.append(job.request.id)
        self.entered[job.request.id].set()
        self.release[job.request.id].wait(30)
        return Result(id=job.request.id, kind=job.kind, status="ok")


def test_commands_start_at_once_while_queries_hold_their_slots():
    """Each priority has its own slots: a command starts beside a running query; queued queries wait;
    when slots free up, the most urgent queued job goes first."""
    service, done = PerJobGate(), []
    worker = Worker(service, queue_size=8, on_done=lambda job, result: done.append(job.request.id), slots=1)
    worker.start()
    query = lambda i: Job(**{**vars(_job(i)), "kind": "query", "priority": "normal"})  # noqa: E731
    command = lambda i: Job(**{**vars(_job(i)), "priority": "high"})  # noqa: E731
    worker.submit(query(0))
    assert service.entered["j0"].wait(5)
    worker.submit(query(1))  # waits: the normal slot is taken
    worker.submit(command(2))
    assert service.entered["j2"].wait(5)  # did not wait behind the queries
    worker.submit(command(3))
    worker.submit(Job(**{**vars(_job(4)), "priority": "low"}))
    assert service.entered["j4"].wait(5)  # low has its own slot too
    service.release["j2"].set()
    assert service.entered["j3"].wait(5)
    assert not service.entered["j1"].is_set() and worker.depth() == 1 and worker.in_flight() == 3
    service.release["j0"].set()
    assert service.entered["j1"].wait(5)  # the query slot is free again
    for gate in service.release.values():
        gate.set()
    assert worker.stop(timeout=5) == []
    assert service.started == ["j0", "j2", "j4", "j3", "j1"] and sorted(done) == ["j0", "j1", "j2", "j3", "j4"]
