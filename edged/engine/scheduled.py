"""The :class:`edged.engine.types.Engine` side of an engine whose generations run on a step scheduler.

Engine-neutral (imports no engine library): an engine turns a request into its own sequence
(``_sequence``) and its tokens back into text (``_detokenize``); submitting, counting the queue,
withdrawing, closing, the blocking ``generate`` and the record each sequence ends with are the
same for both engines, so they live here once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from collections.abc import Sequence as Seq
from typing import Any, Generic

from edged.engine.decoding import Sequence
from edged.engine.queueing import S, StepScheduler
from edged.engine.records import deliver
from edged.engine.thinking import ThinkTokens
from edged.engine.types import ChatMessage, Done, Generation, GenerationRequest, JsonSchema
from edged.protocol import Mode, Priority
from edged.settings import SamplingSettings


class ScheduledEngine(Generic[S]):
    """Submits an engine's sequences to its ``scheduler`` and reports each one's end to its caller."""

    scheduler: StepScheduler[S, Any]  # any engine's priority classes
    think: ThinkTokens

    def _sequence(self, request: GenerationRequest, jump_forward: bool | None, on_done: Done) -> S:
        """``request`` as this engine's sequence, ending with :meth:`_ended` (raises what refuses it, e.g.
        :class:`edged.engine.errors.ContextOverflow`)."""
        raise NotImplementedError

    def _detokenize(self, tokens: Seq[int]) -> str:
        """Text of ``tokens`` without control tokens."""
        raise NotImplementedError

    def submit(self, request: GenerationRequest, on_done: Done, *, jump_forward: bool | None = None) -> None:
        """Queue ``request`` with the scheduler and return; ``on_done`` runs on the engine thread."""
        try:
            self.scheduler.submit(self._sequence(request, jump_forward, on_done))
        except Exception as exc:  # it never reached the scheduler: a prompt too long, a closed engine
            on_done(exc)

    def queued(self) -> int:
        """Requests submitted whose prefill has not begun."""
        return self.scheduler.queued()

    def withdraw(self) -> list[GenerationRequest]:
        """Take back the requests whose prefill has not begun (shutting down); their ``on_done`` never runs."""
        return [seq.request for seq in self.scheduler.withdraw() if seq.request is not None]

    def close(self) -> None:
        """Stop the scheduler thread; generations still in flight fail."""
        self.scheduler.close()

    def generate(
        self,
        messages: Seq[ChatMessage],
        mode: Mode,
        sampling: SamplingSettings,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        schema: JsonSchema | None = None,
        priority: Priority = "normal",
        keep: bool = False,
        jump_forward: bool | None = None,
    ) -> Generation:
        """Generate an answer and wait for it (benchmarks, tests); the service uses :meth:`submit`."""
        request = GenerationRequest(messages, mode, sampling, schema, priority, keep, should_stop)
        finished = threading.Event()
        box: list[Generation | Exception] = []

        def done(outcome: Generation | Exception) -> None:
            box.append(outcome)
            finished.set()

        self.submit(request, done, jump_forward=jump_forward)
        finished.wait()
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]

    def _ended(self, request: GenerationRequest, seq: Sequence, on_done: Done) -> None:
        """On the engine thread: the record of a finished sequence (or its error) to ``on_done``."""
        deliver(request, seq, on_done, think=self.think, detokenize=self._detokenize)
