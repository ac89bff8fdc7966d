"""Where each received message goes: refused, carried out (admin), known already (ledger), or queued.

Runs on the network thread: it decides, publishes refusals and enqueues, and never blocks.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

import structlog

from edged.bus.mqtt import Bus, Inbound
from edged.protocol import ErrorCode, Result
from edged.service.delivery import Delivery
from edged.service.handler import Job, error_result
from edged.service.intake import Admin, Intake, Reply
from edged.service.ledger import Ledger, Verdict
from edged.service.worker import Admission, Worker

log = structlog.get_logger("edged.app")


class Inbox:
    """Routes each inbound message; every request ends in one result or stays unacknowledged for redelivery."""

    def __init__(
        self,
        bus: Bus,
        intake: Intake,
        ledger: Ledger,
        worker: Worker,
        delivery: Delivery,
        *,
        admin: Callable[[Admin], None],
        stopping: threading.Event,
        model_name: Callable[[], str | None],
        queue_size: Callable[[], int],
        claim: Callable[[Inbound], bool] = lambda _msg: False,
        accepted: Callable[[], None] = lambda: None,
    ):
        """``admin`` carries out an admin request (on the main thread); ``stopping``: leave messages to the broker;
        ``claim`` takes messages that are not requests (True: handled, acknowledged); ``accepted``: a job queued."""
        self._bus = bus
        self._intake = intake
        self._ledger = ledger
        self._worker = worker
        self._delivery = delivery
        self._admin = admin
        self._stopping = stopping
        self._model_name = model_name
        self._queue_size = queue_size
        self._claim = claim
        self._accepted = accepted

    def receive(self, msg: Inbound) -> None:
        if self._stopping.is_set():
            return  # unacknowledged: the broker delivers it again after restart
        if self._claim(msg):
            self._bus.ack(msg)
            return
        decision = self._intake.decide(msg)
        if decision is None:
            self._bus.ack(msg)
        elif isinstance(decision, Reply):
            self._delivery.refusal(msg, decision)
        elif isinstance(decision, Admin):
            self._admin(decision)
        elif not self._admit(msg, decision):
            return  # a copy of a request edged knows: answered from the ledger, or acknowledged with the original
        elif (admitted := self._worker.submit(decision)) is Admission.ACCEPTED:
            self._accepted()
        elif admitted is Admission.BUSY:
            self._delivery.result(decision, self._busy(decision))

    def _busy(self, job: Job) -> Result:
        return error_result(
            job.request.id or "unknown",
            ErrorCode.BUSY,
            f"queue full ({self._queue_size()} waiting); try again later",
            kind=job.kind,
            model=self._model_name(),
        )

    def _admit(self, msg: Inbound, job: Job) -> bool:
        """True: run the job. Else a redelivery or a resent copy, dealt with here (see edged.service.ledger)."""
        assert job.request.id is not None
        seen = self._ledger.admit(job.request.id, job.reply_topic, redelivered=msg.dup, origin=msg, digest=_digest(msg))
        if seen.verdict is Verdict.CONFLICT:
            message = f"id {job.request.id!r} belongs to another request answered on this topic recently; use a new id"
            result = error_result(job.request.id, ErrorCode.BAD_ID, message, kind=job.kind)
            self._delivery.refusal(msg, Reply(job.reply_topic, result))
            return False
        if seen.verdict in (Verdict.NEW, Verdict.RESUMED):
            if seen.verdict is Verdict.RESUMED:
                log.info("request_resumed", id=job.request.id, reply_topic=job.reply_topic)
            return True
        log.info(
            "duplicate_request", id=job.request.id, verdict=seen.verdict.value, dup=msg.dup, reply_topic=job.reply_topic
        )
        if seen.verdict is Verdict.ANSWERED:
            self._bus.ack(msg)
        elif seen.verdict is Verdict.REPLAY and seen.result is not None:
            self._delivery.replay(msg, job.reply_topic, seen.result)
        return False  # PENDING: the original's acknowledgement covers it


def _digest(msg: Inbound) -> str:
    """A copy is the same message again: topic, payload and MQTT 5 correlation data (another correlation is
    another exchange the caller waits on, so it is not a copy)."""
    parts = (msg.topic.encode(), msg.correlation_data or b"", msg.payload)
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:32]
