"""Sends the workload to a running edged over MQTT, as any caller would, and times what comes back."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from edged.bus.client import EdgedClient
from edged.ops.progressbar import bar, progress

log = structlog.get_logger("edged.bench")


@dataclass
class Sample:
    """One request as the caller saw it (publish → result received) and as edged reported it."""

    kind: str
    text: str
    sent_at: float  # time.monotonic()
    received_at: float
    status: str
    usage: dict[str, int] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)  # edged's timing_ms
    error: str | None = None
    during_query: bool = False  # sent while a query was generating (and answered after that)

    @property
    def caller_ms(self) -> float:
        return (self.received_at - self.sent_at) * 1000

    @property
    def ran(self) -> bool:
        """The model worked on it (errors such as ``busy`` never reach the model)."""
        return self.usage.get("prompt_tokens", 0) > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "text": self.text,
            "status": self.status,
            "caller_ms": round(self.caller_ms, 1),
            "usage": self.usage,
            "timing_ms": self.timing,
            "error": self.error,
            "during_query": self.during_query,
        }


class Driver:
    def __init__(self, client: EdgedClient, base: str, *, timeout: float = 900):
        self.client = client
        self.base = base
        self.timeout = timeout
        client.subscribe(f"{base}/result/+")
        client.subscribe(f"{base}/progress/+")

    # -- one request ---------------------------------------------------------------------------
    def send(self, kind: str, body: dict[str, Any]) -> tuple[str, float, int]:
        rid = f"bench-{uuid.uuid4().hex[:12]}"
        mark = self.client.count()
        sent = time.monotonic()
        self.client.publish(f"{self.base}/{kind}", json.dumps({"id": rid, **body}))
        return rid, sent, mark

    def result(self, kind: str, rid: str, sent: float, mark: int, text: str) -> Sample:
        msg = self.client.wait_for(lambda m: m.topic == f"{self.base}/result/{rid}", self.timeout, after=mark)
        doc = msg.json()
        error = (doc.get("error") or {}).get("code")
        return Sample(
            kind,
            text,
            sent,
            msg.received_at,
            doc.get("status", "?"),
            doc.get("usage") or {},
            doc.get("timing_ms") or {},
            error,
        )

    def command(self, text: str) -> Sample:
        rid, sent, mark = self.send("command", {"text": text})
        return self.result("command", rid, sent, mark, text)

    # -- phases --------------------------------------------------------------------------------
    def idle(self, texts: list[str]) -> list[Sample]:
        """One command at a time, nothing else running."""
        out = []
        for i, text in enumerate(progress(texts, desc="idle commands", unit="cmd")):
            out.append(self.command(text))
            log.info("bench_command", phase="idle", n=i + 1, of=len(texts), ms=round(out[-1].caller_ms))
        return out

    def during_query(
        self, texts: list[str], query: dict[str, Any], *, max_queries: int
    ) -> tuple[list[Sample], list[Sample]]:
        """Each command is sent while a long query is generating (a new query starts when the last one ended)."""
        commands: list[Sample] = []
        queries: list[Sample] = []
        running: tuple[str, float, int] | None = None
        for text in texts:
            if running is not None and self._finished(running[0], running[2]):
                queries.append(self.result("query", running[0], running[1], running[2], query["text"]))
                running = None
            if running is None:
                if len(queries) >= max_queries:
                    break
                running = self.send("query", query)
                self._wait_generating(running[0], running[2])
            sample = self.command(text)
            done = self._result_at(running[0], running[2])
            sample.during_query = done is None or done > sample.sent_at
            commands.append(sample)
            log.info(
                "bench_command",
                phase="during_query",
                n=len(commands),
                ms=round(sample.caller_ms),
                during=sample.during_query,
            )
        if running is not None:  # stop it: the next phase must start on an idle daemon
            self.client.publish(f"{self.base}/cancel", json.dumps({"id": running[0]}))
            queries.append(self.result("query", running[0], running[1], running[2], query["text"]))
        return commands, queries

    def throughput(self, texts: list[str], concurrency: int) -> tuple[list[Sample], float]:
        """``concurrency`` callers, each sending its next command as soon as its last result arrives."""
        pending: Iterator[str] = iter(texts)
        lock = threading.Lock()
        samples: list[Sample] = []
        failures: list[BaseException] = []

        def caller() -> None:
            try:
                while True:
                    with lock:
                        text = next(pending, None)
                    if text is None:
                        return
                    sample = self.command(text)
                    with lock:
                        samples.append(sample)
                        counter.update(1)
            except BaseException as exc:  # surfaced after join
                failures.append(exc)

        started = time.monotonic()
        counter = bar(total=len(texts), desc=f"throughput x{concurrency}", unit="cmd")
        threads = [threading.Thread(target=caller, name=f"bench-caller-{i}") for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        counter.close()
        wall = time.monotonic() - started
        if failures:
            raise failures[0]
        log.info("bench_throughput", concurrency=concurrency, commands=len(samples), seconds=round(wall, 1))
        return samples, wall

    # -- query state ---------------------------------------------------------------------------
    def _result_at(self, rid: str, mark: int) -> float | None:
        topic = f"{self.base}/result/{rid}"
        return next((m.received_at for m in self.client.messages(topic)), None)

    def _finished(self, rid: str, mark: int) -> bool:
        return self._result_at(rid, mark) is not None

    def _wait_generating(self, rid: str, mark: int) -> None:
        """Until the query has produced a token (or ended: a model without progress still gets measured)."""
        progress, result = f"{self.base}/progress/{rid}", f"{self.base}/result/{rid}"
        self.client.wait_for(
            lambda m: m.topic == result or (m.topic == progress and m.json().get("tokens", 0) > 0),
            self.timeout,
            after=mark,
        )
