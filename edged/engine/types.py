"""The engine boundary: what the service hands a model engine and what it gets back.

Imports no engine library (no mlx, no llama.cpp): the service, tests and every engine share these
records. An engine (``edged.engine.mlx.MlxEngine``, later a llama.cpp one) implements :class:`Engine`;
one request in, one :class:`Generation` (or an exception) out, like mlx-lm's ``GenerationResponse``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from edged.engine.errors import ContextOverflow
from edged.protocol import Mode, Priority
from edged.settings import SamplingSettings

__all__ = [
    "ChatMessage",
    "ContextOverflow",
    "Done",
    "Engine",
    "FinishReason",
    "Generation",
    "GenerationRequest",
    "JsonSchema",
    "generate",
]

ChatMessage = Mapping[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}
JsonSchema = Mapping[str, object]  # a JSON Schema the answer (after any thinking) must match
FinishReason = Literal["stop", "length", "stopped"]  # stopped: ``should_stop`` said so (deadline, cancellation)
ClosedBy = Literal["model", "budget"]  # who ended the thinking block: the model wrote </think>, or the budget forced it


def _never() -> bool:
    return False


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: the chat so far, how to sample it and what to constrain it to."""

    messages: Sequence[ChatMessage]
    mode: Mode
    sampling: SamplingSettings
    schema: JsonSchema | None = None
    priority: Priority = "normal"  # high runs before normal before low
    keep: bool = False  # a session's turn: keep its cache for the session's next turn
    should_stop: Callable[[], bool] = _never  # called once per generated token; True stops with "stopped"
    # called once when it leaves the queue; True ends it unstarted ("stopped", no tokens, no prefill)
    expired: Callable[[], bool] = _never


@dataclass(frozen=True)
class Generation:
    """One finished generation, with the numbers a result reports."""

    answer: str
    reasoning: str | None  # the thinking text (think mode), None without a thinking block
    prompt_tokens: int
    completion_tokens: int  # every generated token, thinking included
    reasoning_tokens: int
    prefill_ms: float  # from the start of its prompt's processing to the first generated token
    decode_ms: float
    finish_reason: FinishReason
    queue_ms: float = 0.0  # waiting in the engine's queue, from submission to the start of prefill
    thinking_closed_by: ClosedBy | None = None  # None: the block never closed (or there was none)
    mask_ms: float = 0.0  # time spent computing grammar masks
    cached_tokens: int = 0  # prompt tokens whose state came from a cache
    forced_tokens: int = 0  # of completion_tokens, those the grammar forced (appended without sampling)
    steps: int = 0  # engine steps that advanced this generation (prefill chunks and decode steps)
    step_span: tuple[int, int, int] = (0, 0, 0)  # the engine's step count when queued, first advanced, finished
    tokens: tuple[int, ...] = field(default=(), repr=False)  # the generated token ids


Done = Callable[[Generation | Exception], None]  # the generation, or why there is none (e.g. ContextOverflow)


class Engine(Protocol):
    """What the service needs from a model engine.

    The engine's queue is the only one in front of the model: it serves ``high`` before ``normal``
    before ``low`` (with its own fairness), bounds how many run at once, asks ``expired`` when a
    request leaves the queue and ``should_stop`` after every generated token, and reports each
    request exactly once through ``on_done``: a :class:`Generation`, or the exception (e.g.
    :class:`ContextOverflow`) that kept it from one.
    """

    name: str
    supports_thinking: bool

    def submit(self, request: GenerationRequest, on_done: Done) -> None:
        """Queue ``request`` and return at once; ``on_done`` is called exactly once, on any thread, maybe
        before ``submit`` returns. The engine orders its queue by ``request.priority``."""
        ...

    def queued(self) -> int:
        """Requests submitted whose generation has not begun."""
        ...

    def withdraw(self) -> list[GenerationRequest]:
        """Take back every request whose generation has not begun (shutting down); their ``on_done`` never runs."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None:
        """Stop the engine's threads and wait for them; generations still in flight fail."""
        ...


class AnswersAtOnce:
    """The queue half of :class:`Engine` for engines that answer inside ``submit`` (no model behind them,
    or a stand-in): nothing waits, so nothing can be withdrawn, and there is no thread to stop."""

    def queued(self) -> int:
        return 0

    def withdraw(self) -> list[GenerationRequest]:
        return []

    def close(self) -> None:
        return None


def generate(engine: Engine, request: GenerationRequest) -> Generation:
    """Submit ``request`` and wait for it: the generation, or the exception the engine reported."""
    finished = threading.Event()
    box: list[Generation | Exception] = []

    def done(outcome: Generation | Exception) -> None:
        box.append(outcome)
        finished.set()

    engine.submit(request, done)
    finished.wait()
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]
