"""One generation as a resumable state machine: prompt, KV cache, sampling, grammar, counts.

Part of the engine. The MLX scheduler decides when a sequence advances and feeds its
``pending`` tokens to the model (alone during prefill, in a batch while decoding); the sequence
turns the resulting logits into its next token and the grammar's forced continuation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edged.engine.grammar import JsonConstraint
from edged.engine.types import GenerationRequest
from edged.protocol import Priority

if TYPE_CHECKING:
    import mlx.core as mx

Sampler = Callable[["mx.array"], "mx.array"]
Processor = Callable[["mx.array", "mx.array"], "mx.array"]
WRAP_UP_TOKENS = 64  # this close to max_tokens (or within its last half), a constrained answer heads for its end


@dataclass
class Sequence:
    """A generation in flight. Fields below ``# state`` belong to the scheduler thread."""

    prompt: list[int]
    max_tokens: int
    sampler: Sampler
    processors: list[Processor]
    eos: frozenset[int]
    priority: Priority = "normal"
    constraint: JsonConstraint | None = None
    static_prefix: int = 0  # leading prompt tokens worth keeping in the prefix cache
    keep: bool = False  # keep the finished sequence's cache (a session's next turn starts after it)
    should_stop: Callable[[], bool] = lambda: False
    expired: Callable[[], bool] = lambda: False  # checked once, before its prefill begins
    # state
    cache: list[Any] | None = None  # per-layer KV cache while not in a batch
    fed: list[int] = field(default_factory=list)  # tokens whose KV is in the cache
    pending: list[int] = field(default_factory=list)  # tokens to feed next
    generated: list[int] = field(default_factory=list)
    sampled: int = 0
    forced: int = 0
    steps: int = 0  # scheduler steps that advanced this sequence
    step_span: tuple[int, int, int] = (0, 0, 0)  # the scheduler's step count when queued, first advanced, finished
    cached_tokens: int = 0
    finish: str | None = None  # stop | length | stopped
    error: BaseException | None = None
    submitted_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None  # its prefill began
    first_token_at: float | None = None
    ended_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event)
    request: GenerationRequest | None = None  # what the service asked for
    withdrawn: bool = False  # taken back before it started: it never ends
    on_end: Callable[[Sequence], None] | None = None  # called once on the engine thread when it ends (or fails)

    @property
    def decoding(self) -> bool:
        """The prompt is in the cache: the sequence feeds one token (or a forced chunk) per step."""
        return self.first_token_at is not None

    def begin(self, cache: list[Any], cached: int) -> None:
        """Start after ``cached`` prompt tokens whose KV ``cache`` holds; a schema's opening is forced."""
        self.cache, self.cached_tokens = cache, cached
        self.started_at = time.perf_counter()
        self.fed = self.prompt[:cached]
        self.pending = self.prompt[cached:]
        if self.constraint is not None:
            opening = self.constraint.forced(self.max_tokens)  # e.g. '{"': prefilled with the prompt
            self._append(opening, forced=True)
            self.pending += opening

    def sample(self, logits: mx.array) -> mx.array:
        """The sampled next token (lazy) from the logits after ``pending``, shape (1, vocab)."""
        import mlx.core as mx

        if self.processors:  # they see the generated tokens (presence penalty, thinking budget)
            context = mx.array(self.generated, dtype=mx.int32)
            for processor in self.processors:
                logits = processor(context, logits)
        if self.constraint is not None:
            left = self.max_tokens - len(self.generated)
            logits = self.constraint.apply(logits, wrap_up=left <= min(WRAP_UP_TOKENS, self.max_tokens // 2))
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return self.sampler(logprobs)

    def accept(self, token: int) -> None:
        """The sampled token: append it and what the grammar forces after it; decide whether to finish."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if len(self.generated) >= self.max_tokens:
            self.finish = "length"
            return
        if token in self.eos:
            self.finish = "stop"  # the end-of-sequence token is not part of the answer
            return
        self._append([token], forced=False)
        self.pending = [token]
        if self.constraint is not None:
            forced = self.constraint.observe(token, self.max_tokens - len(self.generated))
            self._append(forced, forced=True)
            self.pending += forced
            if self.constraint.stopped:
                self.finish = "stop"
                return
        if len(self.generated) >= self.max_tokens:
            # an answer the grammar accepts as whole ended in time, even if on its last token
            self.finish = "stop" if self.constraint is not None and self.constraint.complete else "length"
        elif self.should_stop():
            self.finish = "stopped"

    def _append(self, tokens: Seq[int], *, forced: bool) -> None:
        self.generated += tokens
        if forced:
            self.forced += len(tokens)
        else:
            self.sampled += len(tokens)

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self.end()

    def end(self) -> None:
        self.ended_at = time.perf_counter()
        self.done.set()
        if self.on_end is not None:
            self.on_end(self)
