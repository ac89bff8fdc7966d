"""A finished sequence as the service sees it: its :class:`Generation` record, or why there is none.

Engine-neutral (imports no engine library): both engines end their sequences here, each with its
own detokenizer, so that the thinking split, the finish reason and the timings a result reports
are the same whichever engine ran the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Sequence as Seq

import structlog

from edged.engine.decoding import Sequence
from edged.engine.thinking import ThinkTokens, split_thinking
from edged.engine.types import ClosedBy, Done, FinishReason, Generation, GenerationRequest

log = structlog.get_logger("edged.engine")
Detokenize = Callable[[Seq[int]], str]  # token ids to their text, without control tokens


def deliver(
    request: GenerationRequest, seq: Sequence, on_done: Done, *, think: ThinkTokens, detokenize: Detokenize
) -> None:
    """On the engine thread: the record of a finished sequence (or its error) to ``on_done``.

    Neither a record that cannot be built nor a failing ``on_done`` may stop the engine thread:
    the first goes to ``on_done`` as the error, the second is logged.
    """
    outcome: Generation | Exception
    try:
        error = seq.error
        if error is not None:
            outcome = error if isinstance(error, Exception) else RuntimeError(repr(error))
        else:
            outcome = generation(request, seq, think=think, detokenize=detokenize)
    except Exception as exc:
        log.exception("generation_record_failed")
        outcome = exc
    try:
        on_done(outcome)
    except Exception:
        log.exception("generation_callback_failed")


def generation(request: GenerationRequest, seq: Sequence, *, think: ThinkTokens, detokenize: Detokenize) -> Generation:
    """The record of ``seq``, which finished without error: answer and thinking text, counts and timings."""
    ended = seq.ended_at or time.perf_counter()
    first_at = seq.first_token_at or ended
    started_at = seq.started_at or seq.submitted_at
    tokens = seq.generated
    split = split_thinking(tokens, think, thinking=request.mode == "think")
    constraint = seq.constraint
    return Generation(
        answer=detokenize(split.answer).strip(),
        reasoning=detokenize(split.reasoning).strip() if split.reasoning is not None else None,
        prompt_tokens=len(seq.prompt),
        cached_tokens=seq.cached_tokens,
        completion_tokens=len(tokens),
        reasoning_tokens=len(split.reasoning or ()),
        queue_ms=(started_at - seq.submitted_at) * 1000,
        prefill_ms=(first_at - started_at) * 1000,
        decode_ms=(ended - first_at) * 1000,
        finish_reason=finish_reason(seq.finish),
        thinking_closed_by=closed_by(split.end_index, request.sampling.thinking_budget),
        mask_ms=constraint.mask_seconds * 1000 if constraint else 0.0,
        forced_tokens=seq.forced,
        steps=seq.steps,
        step_span=seq.step_span,
        tokens=tuple(tokens),
    )


def finish_reason(finish: str | None) -> FinishReason:
    """The sequence's ``finish`` as a result reports it (a sequence cut short by its budget: ``length``)."""
    return "stop" if finish == "stop" else "stopped" if finish == "stopped" else "length"


def closed_by(end_index: int | None, budget: int | None) -> ClosedBy | None:
    """Who ended the thinking block at ``end_index``: the budget when it forced ``</think>`` there, else the model."""
    if end_index is None:
        return None
    return "budget" if end_index == budget else "model"
