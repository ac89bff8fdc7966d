"""Serving one request: mode and prompt (``start``), the engine's generation, then the result (``finish``).

Pure service logic on whichever thread calls it; the engine runs the generation (``edged.engine.types``)."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from edged.devices.commands import DeviceControl
from edged.diagnostics.diagnosis import Diagnostics
from edged.engine.types import ContextOverflow, Engine, Generation, GenerationRequest, JsonSchema, generate
from edged.prompts import Turn, build_messages
from edged.protocol import ErrorCode, ErrorInfo, Kind, Mode, Priority, Request, Result, Status, Timing, Usage
from edged.service.router import Route, route
from edged.service.sessions import SessionStore
from edged.settings import ModelSettings, SamplingSettings

log = structlog.get_logger("edged.service")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Job:
    """An accepted request on its way to the model."""

    kind: Kind
    request: Request
    received_at: float  # time.monotonic()
    deadline: float | None  # time.monotonic() after which the request is not worth answering
    reply_topic: str
    include_reasoning: bool
    correlation_data: bytes | None = None
    origin: Any = None  # the transport's handle, acknowledged once the result is published
    client: str | None = None  # who asked: the request's ``client`` field or MQTT 5 user property
    priority: Priority = "normal"


def answer_object(text: str) -> dict[str, Any]:
    """``{"text": answer}``, plus ``"data"`` when the answer is JSON (optionally fenced)."""
    out: dict[str, Any] = {"text": text}
    fenced = _FENCE.match(text.strip())
    candidate = fenced.group(1) if fenced else text.strip()
    if candidate[:1] in ("{", "["):
        with contextlib.suppress(ValueError):
            out["data"] = json.loads(candidate)
    return out


def error_result(
    request_id: str, code: ErrorCode, message: str, *, kind: Kind | None = None, status: Status = "error", **fields: Any
) -> Result:
    return Result(id=request_id, kind=kind, status=status, error=ErrorInfo(code=code, message=message), **fields)


@dataclass(frozen=True)
class Answered:
    """What a kind of request makes of the model's answer."""

    status: Status
    result: dict[str, Any] | None
    error: ErrorInfo | None = None
    remember: bool = True  # keep this turn in the session's history


@dataclass
class Plan:
    messages: list[dict[str, str]]
    schema: JsonSchema | None
    finish: Callable[[Generation], Answered]
    sampling: Callable[[SamplingSettings], SamplingSettings] = lambda s: s  # e.g. greedy for commands


class StopCheck:
    """Called once per generated token: heartbeat, progress report, deadline and cancellation."""

    def __init__(
        self,
        job: Job,
        clock: Callable[[], float],
        progress: Callable[[], None],
        cancelled: Callable[[str], bool],
        report: Callable[[Job, int], None],
    ):
        self._job, self._clock, self._progress, self._cancelled, self._report = job, clock, progress, cancelled, report
        self.tokens = 0
        self.reason: str | None = None

    def __call__(self) -> bool:
        self.tokens += 1
        self._progress()
        self._report(self._job, self.tokens)
        return self.expired()

    def starting(self) -> bool:
        """The engine takes the request from its queue: report "started" (and beat), then whether it expired."""
        self._progress()
        self._report(self._job, 0)
        return self.expired()

    def expired(self) -> bool:
        """Cancelled, or past the deadline."""
        if self._cancelled(self._job.request.id or ""):
            self.reason = "cancelled"
        elif self._job.deadline is not None and self._clock() >= self._job.deadline:
            self.reason = "deadline"
        return self.reason is not None


@dataclass(frozen=True)
class Started:
    """A job whose generation has been asked for: what ``Service.finish`` needs to make its result."""

    job: Job
    request: GenerationRequest
    plan: Plan
    chosen: Route
    stop: StopCheck
    timing: Timing
    notes: tuple[str, ...] = ()


class Service:
    def __init__(
        self,
        engine: Engine,
        sessions: SessionStore,
        model: ModelSettings,
        *,
        devices: DeviceControl | None = None,
        diagnostics: Diagnostics | None = None,
        cancelled: Callable[[str], bool] = lambda _id: False,
        report: Callable[[Job, int], None] = lambda _job, _tokens: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._engine = engine
        self._devices = devices
        self._diagnostics = diagnostics
        self._cancelled = cancelled
        self._report = report
        self._sessions = sessions
        self._clock = clock
        self.configure(model)

    def configure(self, model: ModelSettings) -> None:
        """Sampling for requests that start from now on (a reload); the one in progress keeps its own."""
        self._sampling: dict[Mode, SamplingSettings] = {"think": model.think, "no_think": model.no_think}

    def warm_up(self) -> dict[str, float]:
        """Prefill each kind's static prompt (system text, registry) into the prefix cache and build the
        answer grammar, so the first request after start-up does not pay for them. Seconds per kind."""
        took = {}
        if self._devices is not None:  # templates and matchers: the first command must not pay for loading them
            took["resolvers"] = self._devices.warm_up()
        for kind in ("command", "query"):
            request = Request.model_validate({"id": f"warm-up-{kind}", "text": "status", "dispatch": False})
            job = Job(
                kind=kind,
                request=request,
                received_at=self._clock(),
                deadline=None,
                reply_topic="-",
                include_reasoning=False,
            )
            mode = route(kind, request.text, think=None, remembered=None).mode
            if mode == "think" and not self._engine.supports_thinking:
                mode = "no_think"
            plan = self._plan(job, request.text, ())  # never finished: nothing is dispatched
            one_token = self._sampling[mode].model_copy(update={"max_tokens": 1, "thinking_budget": None})
            started = time.perf_counter()
            generate(self._engine, GenerationRequest(plan.messages, mode, one_token, plan.schema, priority="low"))
            took[kind] = round(time.perf_counter() - started, 2)
        return took

    def handle(self, job: Job, *, progress: Callable[[], None] = lambda: None) -> Result:
        """Serve ``job`` start to end on this thread (``progress`` is called once per generated token)."""
        started = self.start(job, progress=progress)
        if isinstance(started, Result):
            return started
        try:
            outcome: Generation | Exception = generate(self._engine, started.request)
        except Exception as exc:
            outcome = exc
        return self.finish(started, outcome)

    def start(self, job: Job, *, progress: Callable[[], None] = lambda: None) -> Started | Result:
        """What to generate for ``job``, or its result already (cancelled, deadline passed)."""
        req = job.request
        assert req.id is not None
        timing = Timing(queue=_ms(self._clock() - job.received_at))
        base: dict[str, Any] = {"kind": job.kind, "model": self._engine.name, "timing_ms": timing}
        if self._cancelled(req.id):
            return error_result(req.id, ErrorCode.CANCELLED, "cancelled before it started", **base)
        if job.deadline is not None and self._clock() >= job.deadline:
            timing.total = timing.queue
            return error_result(
                req.id,
                ErrorCode.DEADLINE_EXCEEDED,
                "deadline passed before the request started",
                status="timeout",
                **base,
            )
        resolved = self._without_model(job, timing)
        if resolved is not None:
            return resolved
        session = self._sessions.get(req.session) if req.session else None
        chosen = route(job.kind, req.text, think=req.think, remembered=session.switch if session else None)
        mode, notes = chosen.mode, []
        if mode == "think" and not self._engine.supports_thinking:
            mode = "no_think"
            notes.append(f"thinking was asked for but {self._engine.name} has no thinking mode; answered without it")
        plan = self._plan(job, chosen.text, session.turns if session else ())
        stop = StopCheck(job, self._clock, progress, self._cancelled, self._report)
        request = GenerationRequest(
            plan.messages,
            mode,
            plan.sampling(self._sampling[mode]),
            plan.schema,
            priority=job.priority,
            keep=bool(req.session),
            should_stop=stop,
            expired=stop.starting,  # "started" is reported when the engine takes it from its queue
        )
        return Started(job, request, plan, chosen, stop, timing, tuple(notes))

    def finish(self, started: Started, outcome: Generation | Exception) -> Result:
        """The result of ``started`` from the engine's generation (or its failure)."""
        job, req, mode, timing = started.job, started.job.request, started.request.mode, started.timing
        assert req.id is not None
        timing.total = _ms(self._clock() - job.received_at)
        base: dict[str, Any] = {"kind": job.kind, "model": self._engine.name, "timing_ms": timing}
        if isinstance(outcome, ContextOverflow):
            return error_result(req.id, ErrorCode.CONTEXT_OVERFLOW, str(outcome), mode=mode, **base)
        if isinstance(outcome, Exception):
            log.error("generation_failed", id=req.id, error=f"{type(outcome).__name__}: {outcome}")
            message = f"{type(outcome).__name__}: {outcome}"
            return error_result(req.id, ErrorCode.GENERATION_FAILED, message, mode=mode, **base)
        gen = outcome
        _add_times(timing, gen)
        usage = Usage(
            prompt_tokens=gen.prompt_tokens,
            cached_tokens=gen.cached_tokens,
            completion_tokens=gen.completion_tokens,
            reasoning_tokens=gen.reasoning_tokens,
            forced_tokens=gen.forced_tokens,
        )
        common: dict[str, Any] = {**base, "mode": mode, "usage": usage}
        if gen.finish_reason == "stopped":
            return _stopped(req.id, started.stop.reason, begun=gen.completion_tokens > 0, **common)
        answered = started.plan.finish(gen)
        if req.session and answered.remember:
            self._remember(req.session, started.chosen, gen)
        return Result(
            id=req.id,
            status=answered.status,
            result=_with_notes(answered.result, gen, mode, started.notes),
            error=answered.error,
            reasoning=gen.reasoning if job.include_reasoning else None,
            **common,
        )

    def _without_model(self, job: Job, timing: Timing) -> Result | None:
        """A command that needs no generation (resolved by templates or rules, or refused): its result."""
        req = job.request
        if job.kind != "command" or self._devices is None or req.id is None:
            return None
        o = self._devices.try_resolve(
            req.id, req.text, language=req.language, area=req.area, dispatch=req.dispatch, reply_topic=job.reply_topic
        )
        if o is None:
            return None
        timing.total = _ms(self._clock() - job.received_at)
        return Result(
            id=req.id, kind="command", status=o.status, result=o.result, error=o.error_info(), timing_ms=timing
        )

    def _plan(self, job: Job, text: str, history: Iterable[Turn]) -> Plan:
        req = job.request
        if job.kind == "command" and self._devices is not None:
            devices = self._devices
            registry, messages, schema = devices.prepare(
                text, context=req.context, history=history, language=req.language, area=req.area
            )

            def finish_command(gen: Generation) -> Answered:
                asked = devices.context(registry, text, language=req.language, area=req.area)
                o = devices.outcome(
                    registry,
                    req.id or "",
                    gen.answer,
                    dispatch=req.dispatch,
                    reply_topic=job.reply_topic,
                    command=asked,
                )
                return Answered(o.status, o.result, o.error_info(), remember=o.status != "rejected")

            return Plan(messages, schema, finish_command, devices.sampling)
        if job.kind == "query" and self._diagnostics is not None:
            query = self._diagnostics.prepare(text, context=req.context, history=history)

            def finish_query(gen: Generation) -> Answered:
                result, problem = query.outcome(gen.answer)
                if result is None:
                    return Answered(
                        "error",
                        {"text": gen.answer},
                        ErrorInfo(code=ErrorCode.INVALID_ANSWER, message=problem or ""),
                        False,
                    )
                return Answered("ok", result)

            return Plan(query.messages, query.model.model_json_schema(), finish_query)
        messages = build_messages(job.kind, text, context=req.context, history=history)
        return Plan(messages, None, lambda gen: Answered("ok", answer_object(gen.answer)))

    def _remember(self, session: str, chosen: Route, gen: Generation) -> None:
        turn_tokens = self._engine.count_tokens(chosen.text) + gen.completion_tokens - gen.reasoning_tokens
        self._sessions.remember(session, switch=chosen.switch, turn=Turn(chosen.text, gen.answer, turn_tokens))


def _add_times(timing: Timing, gen: Generation) -> None:
    timing.queue = round(timing.queue + gen.queue_ms, 1)  # before the engine, then in its queue
    timing.prefill, timing.decode, timing.mask = (
        round(gen.prefill_ms, 1),
        round(gen.decode_ms, 1),
        round(gen.mask_ms, 1),
    )


def _stopped(request_id: str, reason: str | None, *, begun: bool, **common: Any) -> Result:
    """The result of a generation that ``should_stop`` or ``expired`` ended (``begun``: after some tokens)."""
    when = "during generation" if begun else "before the request started"
    if reason == "cancelled":
        return error_result(request_id, ErrorCode.CANCELLED, f"cancelled {when}", **common)
    return error_result(request_id, ErrorCode.DEADLINE_EXCEEDED, f"deadline passed {when}", status="timeout", **common)


def _with_notes(
    result: dict[str, Any] | None, gen: Generation, mode: Mode, notes: tuple[str, ...]
) -> dict[str, Any] | None:
    """The result object with how the generation ended (finish reason, notes, how thinking closed)."""
    if result is None:
        return None
    every = [*result.get("notes", ()), *notes]
    result = {**result, "finish_reason": gen.finish_reason, **({"notes": every} if every else {})}
    if mode == "think" and gen.reasoning is not None:
        result["thinking"] = {"tokens": gen.reasoning_tokens, "closed_by": gen.thinking_closed_by}
    return result


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
