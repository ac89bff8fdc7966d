"""Progress reports: at most one per interval for each query in flight, however many run at once."""

from __future__ import annotations

import json
import time

from edged.protocol import Request
from edged.service.handler import Job
from edged.service.progress import MAX_REPORTING, ProgressReporter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _query(rid: str) -> Job:
    return Job(
        kind="query",
        request=Request(id=rid, text="why?"),
        received_at=time.monotonic(),
        deadline=None,
        reply_topic="r",
        include_reasoning=False,
    )


def test_two_concurrent_queries_are_each_rate_limited() -> None:
    """Two queries decoding together, tokens interleaved every 0.1 s for 3 s with a 1 s interval: each id gets
    its start report and one per second, not one per token."""
    clock, sent = FakeClock(), []
    report = ProgressReporter(lambda topic, body: sent.append((topic, json.loads(body))), "edged/n", 1.0, clock)
    jobs = [_query("a"), _query("b")]
    for job in jobs:
        report(job, 0)
    for step in range(1, 31):
        clock.now = step * 0.1
        for job in jobs:
            report(job, step)
    for rid in ("a", "b"):
        bodies = [body for topic, body in sent if topic == f"edged/n/progress/{rid}"]
        assert [b["phase"] for b in bodies] == ["started", "generating", "generating", "generating"], bodies
        assert all(b["id"] == rid for b in bodies)


def test_forget_drops_the_entry_and_the_table_is_bounded() -> None:
    """A finished request is forgotten; many requests never grow the table past its bound."""
    clock, sent = FakeClock(), []
    report = ProgressReporter(lambda topic, body: sent.append(topic), "edged/n", 1.0, clock)
    report(_query("a"), 0)
    report.forget("a")
    report(_query("a"), 1)  # a new request with a reused id reports again at once
    assert sent == ["edged/n/progress/a", "edged/n/progress/a"]
    for i in range(MAX_REPORTING + 10):
        report(_query(f"q{i}"), 0)
    assert len(report._last) == MAX_REPORTING
