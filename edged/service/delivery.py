"""Results on their way out: stored in the ledger, published on the reply topic, counted and logged.

The request's MQTT message is acknowledged with its result (``ack=``), so a crash before the broker
has the result leaves the request to be delivered again; copies that arrived meanwhile are
acknowledged once the broker confirms the original's result (see ``edged.service.ledger``).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from edged.bus.mqtt import Bus, Inbound
from edged.protocol import ErrorCode, Result
from edged.service.handler import Job
from edged.service.intake import Reply
from edged.service.ledger import Ledger

log = structlog.get_logger("edged.app")  # the request_done events keep their logger name


class Delivery:
    """Publishes every request's one result: answers, refusals and replays."""

    def __init__(
        self,
        bus: Bus,
        ledger: Ledger,
        *,
        record: Callable[[Result], None],
        finished: Callable[[str], None],
        publish_timeout_s: Callable[[], float],
        queue_depth: Callable[[], int],
        answered: Callable[[], None] = lambda: None,
    ):
        """``record`` counts a result (stats); ``finished`` is told a request id is done (progress);
        ``answered``: a queued job's result went out (not a busy refusal)."""
        self._bus = bus
        self._ledger = ledger
        self._record = record
        self._finished = finished
        self._timeout_s = publish_timeout_s
        self._depth = queue_depth
        self._answered = answered

    def result(self, job: Job, result: Result) -> None:
        """A job's result (worker threads, or the network thread for ``busy``): ledger first, then the bus."""
        assert job.request.id is not None
        rid, busy = job.request.id, result.error is not None and result.error.code == ErrorCode.BUSY
        self._finished(rid)
        self._ledger.settle(rid, job.reply_topic, None if busy else result.to_json())  # stored before it goes out
        confirmed = self._bus.publish(
            job.reply_topic,
            result.to_json(),
            correlation_data=job.correlation_data,
            ack=job.origin,
            on_confirmed=lambda: self._confirmed(rid, job.reply_topic),
        )
        self._record(result)
        _log_done(result, queue_depth=self._depth())
        if not busy:
            self._answered()
        timeout = self._timeout_s()
        if not busy and not confirmed.wait(timeout):  # worker threads only: the network thread never waits
            log.warning("result_unconfirmed", id=rid, timeout_s=timeout, connected=self._bus.connected.is_set())

    def refusal(self, msg: Inbound, reply: Reply) -> None:
        """A request answered without the model (bad input, rate limit, a conflicting id): acknowledged with it."""
        result = reply.result
        self._bus.publish(reply.topic, result.to_json(), correlation_data=msg.correlation_data, ack=msg)
        self._record(result)
        log.info(
            "request_done",
            id=result.id,
            kind=result.kind,
            status=result.status,
            code=result.error.code.value if result.error else None,
            topic=msg.topic,
            reply_topic=reply.topic,
        )

    def replay(self, msg: Inbound, reply_topic: str, stored: bytes) -> None:
        """A copy of a request already answered: its stored result again, marked replayed."""
        replay = Result.model_validate_json(stored).model_copy(update={"replayed": True})
        self._bus.publish(reply_topic, replay.to_json(), correlation_data=msg.correlation_data, ack=msg)

    def _confirmed(self, request_id: str, reply_topic: str) -> None:
        """The broker has the result: copies that arrived meanwhile are acknowledged with the original."""
        for copy in self._ledger.confirmed(request_id, reply_topic):
            self._bus.ack(copy)


def _log_done(result: Result, *, queue_depth: int) -> None:
    log.info(
        "request_done",
        id=result.id,
        kind=result.kind,
        mode=result.mode,
        status=result.status,
        code=result.error.code.value if result.error else None,
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
        reasoning_tokens=result.usage.reasoning_tokens,
        queue_ms=result.timing_ms.queue,
        prefill_ms=result.timing_ms.prefill,
        decode_ms=result.timing_ms.decode,
        total_ms=result.timing_ms.total,
        queue_depth=queue_depth,
    )
