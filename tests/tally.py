"""What fault tests count and watch: requests sent, answered, duplicated, lost; log events as they happen."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from structlog.testing import LogCapture


@dataclass
class Tally:
    """The caller's view: every result received on ``{base}/result/+`` for the ids it sent."""

    fault: str
    sent: list[str] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)

    def send(self, client: Any, kind: str, body: dict[str, Any]) -> str:
        rid = body.setdefault("id", f"{self.fault}-{uuid.uuid4().hex[:6]}")
        self.sent.append(rid)
        client.publish(f"{client.base}/{kind}", json.dumps(body))
        return rid

    def fence(self, client: Any, timeout: float | None = None) -> None:
        """Once every request sent so far is answered, a last one through intake: when its answer arrives,
        every earlier copy has been dealt with (copies are settled in arrival order, before it is queued).
        Waiting for the answers first keeps this true whatever the scheduler runs first."""
        for sent in list(self.sent):
            client.wait_for(lambda m, sent=sent: m.topic == f"{client.base}/result/{sent}", timeout)
        rid = self.send(client, "command", {"text": "fence", "dispatch": False})
        client.wait_for(lambda m: m.topic == f"{client.base}/result/{rid}", timeout)

    def count(self, client: Any) -> Tally:
        self.answers = [m.json() for m in client.messages() if m.topic.startswith(f"{client.base}/result/")]
        return self

    def numbers(self) -> tuple[int, int, int, int]:
        ids = [a["id"] for a in self.answers if a["id"] in self.sent]
        answered = len(set(ids))
        return len(self.sent), answered, len(ids) - answered, len(set(self.sent) - set(ids))

    def line(self) -> str:
        sent, answered, duplicated, lost = self.numbers()
        return f"fault_tally fault={self.fault} sent={sent} answered={answered} duplicated={duplicated} lost={lost}"

    def assert_exactly_once(self) -> None:
        print(self.line())
        sent, answered, duplicated, lost = self.numbers()
        assert (answered, duplicated, lost) == (sent, 0, 0), self.line()


class LogEvents(LogCapture):
    """structlog events of an in-process daemon, waited on as they arrive."""

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        with self._cond:
            try:
                return super().__call__(logger, method_name, event_dict)
            finally:
                self._cond.notify_all()

    def wait_for(self, event: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.entries:
                    if e["event"] == event and all(e.get(k) == v for k, v in fields.items()):
                        return e
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    seen = [e for e in self.entries if e["event"].startswith(event.split("_")[0])][-8:]
                    raise TimeoutError(f"no {event} {fields or ''} within {timeout} s; similar: {seen}")

    def of(self, event: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.entries if e["event"] == event]


@contextmanager
def log_events() -> Iterator[LogEvents]:
    events = LogEvents()
    old = structlog.get_config()["processors"]
    structlog.configure(processors=[events])
    try:
        yield events
    finally:
        structlog.configure(processors=old)
