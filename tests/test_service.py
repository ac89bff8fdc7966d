"""Service.handle with a fake engine, and answer_object."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from standins import StandInEngine

from edged.engine.types import Done, Generation, GenerationRequest
from edged.protocol import Request, Result
from edged.service.handler import Job, Service, answer_object
from edged.service.sessions import SessionStore
from edged.settings import ModelSettings

MODEL = ModelSettings(
    path="/models/fake",
    think={"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 64, "thinking_budget": 32},
    no_think={"temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_tokens": 16},
)

GEN = Generation(
    answer="All good.",
    reasoning="Let me think about the pump.",
    prompt_tokens=50,
    completion_tokens=20,
    reasoning_tokens=12,
    prefill_ms=30.04,
    decode_ms=120.06,
    finish_reason="stop",
    thinking_closed_by="model",
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeEngine(StandInEngine):
    """Returns queued generations (or GEN) and records every call."""

    name = "fake-qwen"
    supports_thinking = True

    def __init__(self, *results: Generation | Exception) -> None:
        self.results = list(results)
        self.calls: list[dict[str, Any]] = []

    def submit(self, request: GenerationRequest, on_done: Done) -> None:
        self.calls.append(
            {
                "messages": list(request.messages),
                "mode": request.mode,
                "sampling": request.sampling,
                "should_stop": request.should_stop,
            }
        )
        on_done(self.results.pop(0) if self.results else GEN)


def make_service(engine: FakeEngine, clock: FakeClock) -> Service:
    sessions = SessionStore(max_turns=8, max_tokens=4096, idle_s=1800, max_sessions=16, clock=clock)
    return Service(engine, sessions, MODEL, clock=clock)


def job(
    kind: str = "query",
    *,
    received_at: float = 100.0,
    deadline: float | None = None,
    include_reasoning: bool = False,
    **fields: Any,
) -> Job:
    request = Request(id=fields.pop("id", "r1"), text=fields.pop("text", "is the pump ok?"), **fields)
    return Job(
        kind=kind,  # type: ignore[arg-type]
        request=request,
        received_at=received_at,
        deadline=deadline,
        reply_topic="edged/n/result",
        include_reasoning=include_reasoning,
    )


def test_ok_result_shape() -> None:
    """A successful command reports mode, text, parsed data, usage and timing."""
    clock = FakeClock()
    engine = FakeEngine(replace(GEN, answer='{"actions": [], "say": "done"}'))
    clock.now = 100.25  # 250 ms in the queue
    result = make_service(engine, clock).handle(job("command", text="lights off", received_at=100.0))
    assert result.status == "ok" and result.id == "r1"
    assert (result.kind, result.mode, result.model) == ("command", "no_think", "fake-qwen")
    assert result.result == {
        "text": '{"actions": [], "say": "done"}',
        "data": {"actions": [], "say": "done"},
        "finish_reason": "stop",
    }
    assert result.error is None and result.reasoning is None
    assert result.usage.model_dump() == {
        "prompt_tokens": 50,
        "cached_tokens": 0,
        "completion_tokens": 20,
        "reasoning_tokens": 12,
        "forced_tokens": 0,
    }
    assert result.timing_ms.queue == 250.0
    assert (result.timing_ms.prefill, result.timing_ms.decode) == (30.0, 120.1)
    assert result.timing_ms.total == 250.0
    assert engine.calls[0]["mode"] == "no_think"
    assert engine.calls[0]["messages"][-1] == {"role": "user", "content": "lights off"}


def test_plain_answer_has_no_data() -> None:
    """A prose answer gives result.text and no result.data; a thinking one says how it thought."""
    result = make_service(FakeEngine(), FakeClock()).handle(job())
    assert result.result == {
        "text": "All good.",
        "finish_reason": "stop",
        "thinking": {"tokens": 12, "closed_by": "model"},
    }
    assert result.mode == "think"


def test_deadline_already_passed() -> None:
    """A request whose deadline passed in the queue times out without calling the engine."""
    clock = FakeClock()
    engine = FakeEngine()
    clock.now = 105.0
    result = make_service(engine, clock).handle(job(received_at=100.0, deadline=105.0))
    assert result.status == "timeout"
    assert result.error is not None and result.error.code.value == "deadline_exceeded"
    assert result.kind == "query" and result.result is None
    assert result.timing_ms.queue == result.timing_ms.total == 5000.0
    assert engine.calls == []


def test_should_stop_follows_deadline() -> None:
    """The engine's should_stop turns true once the deadline passes."""
    clock = FakeClock()
    engine = FakeEngine()
    make_service(engine, clock).handle(job(deadline=101.0))
    should_stop = engine.calls[0]["should_stop"]
    clock.now = 100.5
    assert should_stop() is False
    clock.now = 101.0
    assert should_stop() is True


def test_should_stop_reports_progress() -> None:
    """Each should_stop poll calls the progress heartbeat."""
    beats: list[int] = []
    engine = FakeEngine()
    make_service(engine, FakeClock()).handle(job(), progress=lambda: beats.append(1))
    should_stop = engine.calls[0]["should_stop"]
    should_stop()
    should_stop()
    assert len(beats) == 2


@pytest.mark.parametrize(("kind", "mode"), [("command", "no_think"), ("query", "think")])
def test_sampling_follows_mode(kind: str, mode: str) -> None:
    """The engine gets the sampling settings of the chosen mode."""
    engine = FakeEngine()
    make_service(engine, FakeClock()).handle(job(kind))
    assert engine.calls[0]["mode"] == mode
    assert engine.calls[0]["sampling"] == getattr(MODEL, mode)


def test_no_deadline_never_stops() -> None:
    """Without a deadline should_stop stays false."""
    clock = FakeClock()
    engine = FakeEngine()
    make_service(engine, clock).handle(job(deadline=None))
    clock.now = 1e9
    assert engine.calls[0]["should_stop"]() is False


def test_stopped_generation_is_timeout() -> None:
    """finish_reason 'stopped' becomes status timeout, and nothing is remembered."""
    clock = FakeClock()
    engine = FakeEngine(replace(GEN, finish_reason="stopped"), GEN)
    service = make_service(engine, clock)
    result = service.handle(job(session="s1", deadline=200.0))
    assert result.status == "timeout"
    assert result.error is not None and result.error.code.value == "deadline_exceeded"
    assert result.result is None and result.usage.completion_tokens == 20
    service.handle(job(id="r2", session="s1", text="again?"))
    assert [m["role"] for m in engine.calls[1]["messages"]] == ["system", "user"]


def test_expired_in_the_engine_queue_is_a_timeout_before_start() -> None:
    """The engine asks ``expired`` before starting; a request past its deadline by then ends unstarted."""
    clock = FakeClock()
    engine = FakeEngine(replace(GEN, finish_reason="stopped", completion_tokens=0, reasoning_tokens=0))
    service = make_service(engine, clock)
    started = service.start(job(deadline=101.0))
    assert not isinstance(started, Result) and started.request.expired() is False
    clock.now = 101.0
    assert started.request.expired() is True
    result = service.finish(started, engine.results[0])
    assert (result.status, result.error.code.value) == ("timeout", "deadline_exceeded")
    assert result.error.message == "deadline passed before the request started"


def test_engine_failure_is_generation_failed() -> None:
    """An exception from the engine becomes status error with generation_failed."""
    result = make_service(FakeEngine(RuntimeError("out of memory")), FakeClock()).handle(job())
    assert result.status == "error"
    assert result.error is not None and result.error.code.value == "generation_failed"
    assert "RuntimeError" in result.error.message and "out of memory" in result.error.message
    assert result.mode == "think" and result.result is None


@pytest.mark.parametrize("include", [True, False])
def test_reasoning_only_when_asked(include: bool) -> None:
    """The thinking text is in the result only with include_reasoning."""
    result = make_service(FakeEngine(), FakeClock()).handle(job(include_reasoning=include))
    assert result.reasoning == (GEN.reasoning if include else None)
    assert ("reasoning" in json.loads(result.to_json())) is include


def test_session_history_has_answers_not_reasoning() -> None:
    """A second request in a session sees the first answer but never its reasoning."""
    engine = FakeEngine(replace(GEN, answer="The pump is fine.", reasoning="SECRET-THOUGHTS"), GEN)
    service = make_service(engine, FakeClock())
    service.handle(job(session="s1", text="is the pump ok?"))
    service.handle(job(id="r2", session="s1", text="and the fan?"))
    messages = engine.calls[1]["messages"]
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", "is the pump ok?"),
        ("assistant", "The pump is fine."),
        ("user", "and the fan?"),
    ]
    assert not any("SECRET-THOUGHTS" in m["content"] for m in messages)


def test_no_session_no_history() -> None:
    """Requests without a session never share history."""
    engine = FakeEngine()
    service = make_service(engine, FakeClock())
    service.handle(job())
    service.handle(job(id="r2"))
    assert len(engine.calls[1]["messages"]) == 2


def test_soft_switch_is_remembered_per_session() -> None:
    """A /no_think on a query applies to the session's next queries, not to other sessions."""
    engine = FakeEngine()
    service = make_service(engine, FakeClock())
    first = service.handle(job(session="s1", text="pump status /no_think"))
    second = service.handle(job(id="r2", session="s1", text="and the fan?"))
    other = service.handle(job(id="r3", session="s2", text="and the fan?"))
    assert (first.mode, second.mode, other.mode) == ("no_think", "no_think", "think")
    assert engine.calls[0]["messages"][-1]["content"] == "pump status"
    assert engine.calls[1]["messages"][1]["content"] == "pump status"  # stored without the switch


def test_explicit_think_overrides_remembered_switch() -> None:
    """The think field beats a switch remembered by the session."""
    engine = FakeEngine()
    service = make_service(engine, FakeClock())
    service.handle(job(session="s1", text="status /no_think"))
    result = service.handle(job(id="r2", session="s1", text="why?", think=True))
    assert result.mode == "think" and engine.calls[1]["mode"] == "think"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The pump is fine.", {"text": "The pump is fine."}),
        ('{"a": 1}', {"text": '{"a": 1}', "data": {"a": 1}}),
        ('  {"a": [1, 2]}\n', {"text": '  {"a": [1, 2]}\n', "data": {"a": [1, 2]}}),
        ("[1, 2]", {"text": "[1, 2]", "data": [1, 2]}),
        ('```json\n{"say": "hi"}\n```', {"text": '```json\n{"say": "hi"}\n```', "data": {"say": "hi"}}),
        ('```\n{"say": "hi"}\n```', {"text": '```\n{"say": "hi"}\n```', "data": {"say": "hi"}}),
        ('```JSON\n{"say": "hi"}\n```', {"text": '```JSON\n{"say": "hi"}\n```', "data": {"say": "hi"}}),
        ('{"a": 1,}', {"text": '{"a": 1,}'}),
        ("{not json", {"text": "{not json"}),
        ("```json\nnope\n```", {"text": "```json\nnope\n```"}),
        ("", {"text": ""}),
    ],
)
def test_answer_object(text: str, expected: dict) -> None:
    """The answer is always in text; data is added only when it parses as JSON."""
    assert answer_object(text) == expected
