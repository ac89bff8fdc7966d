"""The engine-neutral engine loop (``edged.engine.queueing``) with stand-in steps, no model: the order
classes are served in, withdrawal, closing and a failing step. The engines' own steps are in
test_scheduler.py (MLX) and test_engines.py (both engines)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from edged.engine.decoding import Sequence
from edged.engine.queueing import PriorityClass, StepScheduler
from edged.protocol import Priority

WAIT_S = 10


def _seq(priority: Priority = "normal", name: int = 0) -> Sequence:
    return Sequence(
        prompt=[name], max_tokens=1, sampler=lambda logits: logits, processors=[], eos=frozenset(), priority=priority
    )


class Steps(StepScheduler[Sequence, PriorityClass[Sequence]]):
    """A prefill that ends its sequence at once (the first one waits for ``gate``); decode never runs."""

    def __init__(self, *, fail: int | None = None) -> None:
        self.gate = threading.Event()
        self.prefilled: list[int] = []
        self.released: list[int] = []
        self._fail = fail
        super().__init__(max_batch=4, fair_share=100, prefill_chunk=8)

    def _new_class(self) -> PriorityClass[Sequence]:
        return PriorityClass()

    def _prefill(self, c: PriorityClass[Sequence], seq: Sequence) -> None:
        assert self.gate.wait(WAIT_S)
        self.prefilled.append(seq.prompt[0])
        if seq.prompt[0] == self._fail:
            raise ValueError("prefill broke")
        seq.finish = "stop"
        c.waiting.popleft()
        self._ended(seq)

    def _decode(self, c: PriorityClass[Sequence]) -> None:
        raise AssertionError("no sequence joins a batch")

    def _release(self, seq: Sequence) -> None:
        self.released.append(seq.prompt[0])


@pytest.fixture
def steps() -> Iterator[Steps]:
    sched = Steps()
    yield sched
    sched.gate.set()
    sched.close()


def _blocked(sched: Steps) -> Sequence:
    """A first sequence the loop is stuck prefilling until ``gate`` opens, so the rest queue up behind it."""
    first = _seq("normal", 0)
    sched.submit(first)
    while sched.queued():  # its prefill has begun
        threading.Event().wait(0.01)
    return first


def test_classes_are_served_most_urgent_first(steps: Steps) -> None:
    _blocked(steps)
    seqs = [_seq("low", 1), _seq("normal", 2), _seq("high", 3), _seq("normal", 4)]
    for seq in seqs:
        steps.submit(seq)
    assert steps.queued() == 4 and steps.in_flight() == 5
    steps.gate.set()
    for seq in seqs:
        assert seq.done.wait(WAIT_S)
    assert steps.prefilled == [0, 3, 2, 4, 1]
    assert [seq.step_span[2] for seq in seqs] == [5, 3, 2, 4]  # the step each ended at


def test_withdraw_takes_back_the_unstarted_oldest_first_and_they_never_end(steps: Steps) -> None:
    first = _blocked(steps)
    later = [_seq("low", 1), _seq("high", 2)]
    for seq in later:
        steps.submit(seq)
    assert steps.withdraw() == later and steps.queued() == 0
    steps.gate.set()
    assert first.done.wait(WAIT_S)
    assert steps.prefilled == [0] and not any(seq.done.is_set() for seq in later)


def test_close_fails_what_is_still_queued_and_refuses_more(steps: Steps) -> None:
    _blocked(steps)
    queued = _seq("normal", 1)
    steps.submit(queued)
    closing = threading.Thread(target=steps.close)
    closing.start()
    steps.gate.set()
    closing.join(WAIT_S)
    assert queued.done.is_set() and isinstance(queued.error, RuntimeError)
    with pytest.raises(RuntimeError, match="closed"):
        steps.submit(_seq())


def test_unknown_priority_is_refused(steps: Steps) -> None:
    with pytest.raises(ValueError, match="priority"):
        steps.submit(_seq("urgent"))  # type: ignore[arg-type]


def test_a_failing_prefill_fails_and_releases_only_its_sequence() -> None:
    sched = Steps(fail=1)
    sched.gate.set()
    try:
        broken, fine = _seq("normal", 1), _seq("normal", 2)
        sched.submit(broken)
        sched.submit(fine)
        assert broken.done.wait(WAIT_S) and fine.done.wait(WAIT_S)
        assert isinstance(broken.error, ValueError) and fine.error is None and fine.finish == "stop"
        assert sched.released == [1]
    finally:
        sched.close()
