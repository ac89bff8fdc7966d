"""A finished sequence's record (``edged.engine.records``), the same for both engines: the thinking split,
the finish reason, and an error or a failing callback that never stops the engine thread."""

from __future__ import annotations

from collections.abc import Sequence as Seq

from edged.engine.decoding import Sequence
from edged.engine.records import deliver, generation
from edged.engine.thinking import ThinkTokens
from edged.engine.types import Generation, GenerationRequest
from edged.settings import ThinkSampling

THINK = ThinkTokens(start=1, end=2)
REQUEST = GenerationRequest(messages=[{"role": "user", "content": "hi"}], mode="think", sampling=ThinkSampling())


def _text(tokens: Seq[int]) -> str:
    return " " + " ".join(f"t{t}" for t in tokens) + " "


def _finished(generated: list[int], finish: str | None = "stop") -> Sequence:
    seq = Sequence(prompt=[7, 8, 9], max_tokens=16, sampler=lambda logits: logits, processors=[], eos=frozenset())
    seq.generated, seq.finish, seq.forced, seq.step_span = generated, finish, 1, (1, 2, 5)
    seq.end()
    return seq


def test_the_record_splits_thinking_by_token_and_strips_the_text() -> None:
    gen = generation(REQUEST, _finished([1, 5, 6, 2, 3, 4]), think=THINK, detokenize=_text)
    assert (gen.reasoning, gen.answer) == ("t5 t6", "t3 t4")
    assert (gen.prompt_tokens, gen.completion_tokens, gen.reasoning_tokens, gen.forced_tokens) == (3, 6, 2, 1)
    assert gen.finish_reason == "stop" and gen.thinking_closed_by == "model" and gen.step_span == (1, 2, 5)


def test_a_sequence_cut_short_reports_length_and_an_unclosed_thought() -> None:
    gen = generation(REQUEST, _finished([5, 6], finish=None), think=THINK, detokenize=_text)
    assert gen.finish_reason == "length" and gen.answer == "" and gen.thinking_closed_by is None


def test_deliver_hands_on_the_error_and_survives_a_failing_callback() -> None:
    got: list[Generation | Exception] = []
    failed = _finished([3])
    failed.error = ValueError("broke")
    deliver(REQUEST, failed, got.append, think=THINK, detokenize=_text)

    def unreadable(_tokens: Seq[int]) -> str:
        raise UnicodeDecodeError("utf-8", b"", 0, 1, "bad")

    deliver(REQUEST, _finished([3]), got.append, think=THINK, detokenize=unreadable)

    def refuses(_outcome: Generation | Exception) -> None:
        raise RuntimeError("the caller broke")

    deliver(REQUEST, _finished([3]), refuses, think=THINK, detokenize=_text)  # logged, not raised
    assert got[0] is failed.error and isinstance(got[1], UnicodeDecodeError)
