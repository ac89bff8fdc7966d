"""Intake: what a received message becomes. Runs on the network thread: decide, never block.

A message becomes a :class:`~edged.service.handler.Job` for the worker, a :class:`Reply` to publish at
once (the request was refused), an :class:`Admin` request for the main thread, or nothing
(edged's own topics, retained messages).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import structlog

from edged.bus.mqtt import Inbound
from edged.devices.commands import DeviceControl
from edged.diagnostics.telemetry import TelemetryStore
from edged.protocol import (
    AREA_PATTERN,
    ID_PATTERN,
    PRIORITIES,
    AdminRequest,
    ErrorCode,
    Kind,
    Limits,
    Priority,
    Request,
    RequestError,
    Result,
    is_priority,
    parse_admin,
    parse_cancel,
    parse_confirm,
    parse_request,
    valid_topic,
)
from edged.service.handler import Job, error_result
from edged.service.progress import Cancellations
from edged.service.ratelimit import RateLimiter
from edged.settings import RateLimitSettings, Settings

log = structlog.get_logger("edged.intake")

REQUEST_TOPICS: dict[str, Kind] = {"command": "command", "query": "query"}
EVERY_INSTANCE = (
    "confirm",
    "cancel",
)  # in a shared group these reach every instance: tokens and running requests are local
OWN_TOPICS = {"status", "stats", "busy"}  # published by edged itself under {base}/
ADMIN_ACTIONS = {"admin/reload": "reload"}
DEFAULT_PRIORITY: dict[str, Priority] = {"command": "high", "query": "normal"}


def request_priority(kind: str, asked: str | None, request: Request) -> Priority:
    """The scheduling class: as asked (payload field or MQTT 5 user property), else by kind."""
    if asked is None:
        return DEFAULT_PRIORITY.get(kind, "normal")
    if not is_priority(asked):
        raise RequestError(
            ErrorCode.BAD_TYPE,
            f"priority: must be one of {', '.join(PRIORITIES)}",
            id=request.id,
            reply_to=request.reply_to,
        )
    return asked


@dataclass(frozen=True)
class Reply:
    """A refused request: publish ``result`` on ``topic`` now."""

    topic: str
    result: Result


@dataclass(frozen=True)
class Admin:
    """An admin request (``{base}/admin/<action>``), carried out on the main thread."""

    action: str
    request: AdminRequest
    reply_topic: str
    origin: Inbound


Decision = Job | Reply | Admin | None


class Intake:
    def __init__(
        self,
        base: str,
        settings: Settings,
        *,
        devices: DeviceControl | None = None,
        telemetry: TelemetryStore | None = None,
        cancellations: Cancellations | None = None,
    ):
        self.base = base
        self.devices = devices
        self.telemetry = telemetry
        self.cancellations = cancellations or Cancellations()
        self._limiter: RateLimiter | None = None
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """Use ``settings`` from the next message on (a reload)."""
        req = settings.requests
        self._current = (settings, Limits(req.max_payload_bytes, req.max_text_chars, req.max_context_bytes))
        self._limiter = _limiter(req.rate_limit, self._limiter)

    def subscriptions(self) -> list[str]:
        settings, _ = self._current
        admin = [f"{self.base}/{topic}" for topic in ADMIN_ACTIONS] if settings.admin.reload_topic else []
        group = settings.mqtt.shared_group
        if group is None:
            return [f"{self.base}/+", *admin]
        shared = [f"$share/{group}/{self.base}/{topic}" for topic in REQUEST_TOPICS]
        return [*shared, *(f"{self.base}/{topic}" for topic in EVERY_INSTANCE), *admin]

    def watched(self) -> list[str]:
        """Topics whose retained message is wanted too: device states and sensors."""
        states = list(self.devices.store.state_topics()) if self.devices else []
        return [*states, *(self.telemetry.topics() if self.telemetry else [])]

    def decide(self, msg: Inbound) -> Decision:
        """What ``msg`` becomes; a failure inside edged still answers a request (``internal``) and never
        leaves a message unacknowledged, which would stall the broker's flow to edged."""
        try:
            return self._decide(msg)
        except Exception as exc:
            log.exception("intake_failed", topic=msg.topic)
            if not msg.topic.startswith(self.base + "/") or msg.retained:
                return None
            return self._refuse(
                msg, RequestError(ErrorCode.INTERNAL, f"{type(exc).__name__} while reading the request"), None
            )

    def _decide(self, msg: Inbound) -> Decision:
        settings, limits = self._current  # one reference: a reload in between does not mix old and new
        if not msg.topic.startswith(self.base + "/"):
            self._observe(msg)
            return None
        suffix = msg.topic[len(self.base) + 1 :]
        if suffix == "confirm" and not msg.retained:
            return self._confirm(msg, limits)
        if suffix == "cancel" and not msg.retained:
            return self._cancel(msg, limits)
        if suffix in OWN_TOPICS or msg.retained:
            if msg.retained and suffix not in OWN_TOPICS:
                log.warning("retained_request_ignored", topic=msg.topic)
            return None
        if suffix in ADMIN_ACTIONS and settings.admin.reload_topic:
            return self._admin(msg, ADMIN_ACTIONS[suffix])
        kind = REQUEST_TOPICS.get(suffix)
        try:
            request = parse_request(msg.payload, limits)
            if kind is None:
                raise RequestError(
                    ErrorCode.UNKNOWN_TOPIC,
                    f"no requests are taken on {msg.topic!r}; use {self.base}/command or {self.base}/query",
                    id=request.id,
                    reply_to=request.reply_to,
                )
            if request.reply_to is not None and self.reserved(request.reply_to):
                raise RequestError(
                    ErrorCode.BAD_REPLY_TO,
                    f"reply_to {request.reply_to!r} is a topic edged reads or that drives a device; choose another",
                    id=request.id,
                )
            priority = request_priority(kind, request.priority or msg.user_property("priority"), request)
            client = request.client or msg.user_property("client")
            if client is not None and not re.fullmatch(ID_PATTERN, client):
                raise RequestError(
                    ErrorCode.BAD_TYPE, f"client: must match {ID_PATTERN}", id=request.id, reply_to=request.reply_to
                )
            request = _with_area(request, msg.user_property("area"))
            if self._limiter is not None and not self._limiter.allow(client):
                wait_s = self._limiter.retry_after_s(client)
                log.info("rate_limited", id=request.id, client=client, retry_after_s=round(wait_s, 1))
                raise RequestError(
                    ErrorCode.RATE_LIMITED,
                    f"client {client or '(none)'} is over its rate limit; try again in {wait_s:.1f} s",
                    id=request.id,
                    reply_to=request.reply_to,
                )
        except RequestError as exc:
            return self._refuse(msg, exc, kind)
        assert request.id is not None
        return Job(
            kind=kind,
            request=request,
            received_at=msg.received_at,
            deadline=self._deadline(msg, request.deadline_ms or settings.requests.default_deadline_ms),
            reply_topic=self.reply_topic(msg, request.id, request.reply_to),
            include_reasoning=(
                request.include_reasoning
                if request.include_reasoning is not None
                else settings.requests.include_reasoning
            ),
            correlation_data=msg.correlation_data,
            origin=msg,
            client=client,
            priority=priority,
        )

    def reply_topic(self, msg: Inbound, request_id: str, reply_to: str | None) -> str:
        """``reply_to``, else the MQTT 5 Response Topic, else ``{base}/result/{id}``; never a topic
        edged reads or that drives a device (a result there would be taken as a command or reading)."""
        for asked in (reply_to, msg.response_topic):
            if asked and valid_topic(asked) and not self.reserved(asked):
                return asked
        return f"{self.base}/result/{request_id}"

    def reserved(self, topic: str) -> bool:
        """True for a topic a result must not go to: edged's own inputs and status, device and sensor topics."""
        if topic.startswith(self.base + "/") and not topic.startswith(f"{self.base}/result/"):
            suffix = topic[len(self.base) + 1 :]
            if "/" not in suffix or suffix in ADMIN_ACTIONS or suffix.split("/")[0] in {*OWN_TOPICS, "progress"}:
                return True
        if self.devices is not None and topic in self.devices.store.current.topics():
            return True
        return self.telemetry is not None and self.telemetry.covers(topic)

    def _observe(self, msg: Inbound) -> None:
        """A device state or a sensor reading (edged subscribes to nothing else outside {base})."""
        device = self.devices.store.state_topics().get(msg.topic) if self.devices else None
        if device is not None and self.devices is not None:
            self.devices.states.update(device, msg.payload)
        elif self.telemetry is not None:
            self.telemetry.ingest(msg.topic, msg.payload)

    def _confirm(self, msg: Inbound, limits: Limits) -> Reply | None:
        """``{base}/confirm``: dispatch the actions held under a token; no model involved.

        In a shared group every instance sees the confirm; only the one that issued the token answers.
        """
        try:
            request = parse_confirm(msg.payload, limits)
            if self.devices is None:
                raise RequestError(ErrorCode.UNKNOWN_TOPIC, "no device registry is configured", id=request.id)
        except RequestError as exc:
            return self._refuse(msg, exc, "confirm")
        assert request.id is not None
        if self._current[0].mqtt.shared_group and not self.devices.confirmations.issued(request.token):
            return None
        outcome = self.devices.confirm(request.token)
        result = Result(
            id=request.id,
            kind="confirm",
            status=outcome.status,
            result=outcome.result or None,
            error=outcome.error_info(),
        )
        return Reply(self.reply_topic(msg, request.id, request.reply_to), result)

    def _cancel(self, msg: Inbound, limits: Limits) -> Reply | None:
        """``{base}/cancel``: ``{"id": ...}`` or the bare id; that request ends with code cancelled."""
        try:
            target = parse_cancel(msg.payload, limits)
        except RequestError as exc:
            return self._refuse(msg, exc, None)
        self.cancellations.add(target)
        log.info("cancel_requested", id=target)
        return None

    def _admin(self, msg: Inbound, action: str) -> Admin | Reply:
        try:
            request = parse_admin(msg.payload)
        except RequestError as exc:
            return self._refuse(msg, exc, None)
        assert request.id is not None
        return Admin(action, request, self.reply_topic(msg, request.id, request.reply_to), msg)

    def _refuse(self, msg: Inbound, exc: RequestError, kind: Kind | None) -> Reply:
        request_id = exc.id or "unknown"
        result = error_result(request_id, exc.code, exc.message, kind=kind)
        return Reply(self.reply_topic(msg, request_id, exc.reply_to), result)

    @staticmethod
    def _deadline(msg: Inbound, deadline_ms: int | None) -> float | None:
        candidates = []
        if deadline_ms:
            candidates.append(msg.received_at + deadline_ms / 1000)
        if msg.expiry_s:
            candidates.append(msg.received_at + msg.expiry_s)
        return min(candidates) if candidates else None


def _limiter(settings: RateLimitSettings | None, current: RateLimiter | None) -> RateLimiter | None:
    """The limiter for ``settings``: the current one (its buckets) when they did not change."""
    if settings is None:
        return None
    wanted = (settings.per_minute, settings.burst, settings.max_clients)
    if current is not None and (current.per_minute, current.burst, current.max_clients) == wanted:
        return current
    return RateLimiter(per_minute=settings.per_minute, burst=settings.burst, max_clients=settings.max_clients)


def _with_area(request: Request, asked: str | None) -> Request:
    """The speaker's area: the request's ``area`` field, else the MQTT 5 user property ``area``."""
    if request.area is not None or asked is None:
        return request
    if not re.fullmatch(AREA_PATTERN, asked):
        raise RequestError(
            ErrorCode.BAD_TYPE, "area: 1-64 characters, no control characters", id=request.id, reply_to=request.reply_to
        )
    return request.model_copy(update={"area": asked})
