"""The engine-neutral half of an engine loop: priority classes, admission, fairness and closing.

Imports no engine library: both engines' schedulers (``edged.engine.scheduler`` for MLX,
``edged.engine.llamacpp_scheduler`` for llama.cpp) subclass :class:`StepScheduler` and supply only
what touches their model, a **prefill** step (``_prefill``) and a **decode** step (``_decode``).
Kept here, once, so that both engines queue, prioritise and close the same way:

- ``submit`` queues a sequence from any thread; one engine thread takes it in and advances every
  sequence in flight, one step at a time;
- each step serves one priority class (``high`` commands before ``normal`` queries before
  ``low``): a prefill of the class's next waiting sequence, or a decode step of its batch,
  alternating while both have work;
- fairness: a runnable lower class that has waited ``fair_share`` steps gets the next step;
- ``withdraw`` takes back what has not started (shutting down); ``close`` stops the thread and
  fails what is still in flight.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import structlog

from edged.engine.decoding import Sequence
from edged.protocol import PRIORITIES, Priority  # most urgent first

log = structlog.get_logger("edged.scheduler")
S = TypeVar("S", bound=Sequence)
T = TypeVar("T")


class PriorityClass(Generic[S]):
    """The sequences of one priority: waiting for prefill (in order) and decoding together."""

    def __init__(self) -> None:
        self.waiting: deque[S] = deque()
        self.batch: list[S] = []
        self.decoded_last = False  # alternate prefill and decode steps while both have work
        self.waited = 0  # steps given to other classes while this one was runnable

    def runnable(self, max_batch: int) -> bool:
        return bool(self.batch) or (bool(self.waiting) and len(self.batch) < max_batch)

    def drop_batch(self) -> None:
        """Forget the batch (its decode step failed; its sequences have failed)."""
        self.batch = []


# An engine's priority class, over its own sequence type (``S``: a type variable cannot parametrise a bound).
C = TypeVar("C", bound="PriorityClass[Any]")


class StepScheduler(Generic[S, C]):
    """Queues sequences by priority and runs the engine thread that steps them.

    A subclass supplies ``_new_class``, ``_prefill`` and ``_decode`` (and ``_release`` when a failed
    sequence holds engine resources), and calls ``super().__init__`` last: it starts the thread.
    """

    def __init__(self, *, max_batch: int, fair_share: int, prefill_chunk: int) -> None:
        self.max_batch = max_batch
        self.fair_share = fair_share
        self.prefill_chunk = prefill_chunk
        self._cond = threading.Condition()
        self._incoming: list[S] = []
        self._unstarted: list[S] = []  # accepted, prefill not begun: the ones ``withdraw`` can take back
        self._classes: dict[Priority, C] = {p: self._new_class() for p in PRIORITIES}
        self._closed = False
        self._stopped = threading.Event()  # the loop has taken its last step
        self.steps = 0  # steps taken since start
        self.largest_batch = 0  # the most sequences one decode step has fed
        self._thread = threading.Thread(target=self._run, name="edged-engine", daemon=True)
        self._thread.start()

    # -- what an engine supplies ------------------------------------------------------------
    def _new_class(self) -> C:
        raise NotImplementedError

    def _prefill(self, c: C, seq: S) -> None:
        """Advance ``seq``, the class's first waiting sequence, by one prefill chunk."""
        raise NotImplementedError

    def _decode(self, c: C) -> None:
        """Advance every sequence of the class's batch by one decode step."""
        raise NotImplementedError

    def _release(self, seq: S) -> None:
        """Give back what a failed ``seq`` holds in the engine (nothing, unless the engine says so)."""

    def _after_close(self) -> None:
        """What the engine thread does once the loop has stopped (return: the thread ends)."""

    # -- the callers' side -------------------------------------------------------------------
    def submit(self, seq: S) -> None:
        """Queue ``seq`` and return; it ends (``seq.done``, ``seq.on_end``) on the engine thread."""
        if seq.priority not in self._classes:
            raise ValueError(f"unknown priority {seq.priority!r}")
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._incoming.append(seq)
            self._unstarted.append(seq)
            self._cond.notify()

    def run(self, seq: S) -> S:
        """Generate ``seq`` to its end (blocking the calling thread); raises what generation raised."""
        self.submit(seq)
        seq.done.wait()
        if seq.error is not None:
            raise seq.error
        return seq

    def close(self) -> None:
        """Stop stepping and wait for the last step to end; what is still in flight (and not withdrawn) fails."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._stopped.wait(timeout=30)

    def in_flight(self) -> int:
        """Sequences accepted that have not ended."""
        with self._cond:
            return len(self._incoming) + sum(len(c.waiting) + len(c.batch) for c in self._classes.values())

    def queued(self) -> int:
        """Sequences accepted whose prefill has not begun."""
        with self._cond:
            return len(self._unstarted)

    def withdraw(self) -> list[S]:
        """Take back every sequence whose prefill has not begun, oldest first; they never end (shutting down)."""
        with self._cond:
            taken, self._unstarted = self._unstarted, []
            for seq in taken:
                seq.withdrawn = True
            self._cond.notify()
        return taken

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                self._take_incoming()
                while not self._closed and self._pick(dry=True) is None:
                    self._cond.wait()
                    self._take_incoming()
                if self._closed:
                    break
                priority = self._pick()
                prefill = priority is not None and self._prefills(self._classes[priority])
                if prefill and priority is not None:
                    self._start(self._classes[priority].waiting[0])
            if priority is not None:
                self._step(self._classes[priority], prefill)
        with self._cond:
            self._take_incoming()
        for c in self._classes.values():  # closed: nothing more will run
            for seq in [*c.waiting, *c.batch]:
                if not seq.withdrawn:
                    seq.fail(RuntimeError("the engine was closed"))
        self._stopped.set()
        self._after_close()

    def _take_incoming(self) -> None:
        """Queue what was submitted, drop what was withdrawn (call with the lock held)."""
        for seq in self._incoming:
            seq.step_span = (self.steps, 0, 0)
            self._classes[seq.priority].waiting.append(seq)
        self._incoming = []
        for c in self._classes.values():
            if any(seq.withdrawn for seq in c.waiting):
                c.waiting = deque(seq for seq in c.waiting if not seq.withdrawn)

    def _start(self, seq: S) -> None:
        """``seq``'s prefill begins: it is no longer queued, nor can it be withdrawn (call with the lock held)."""
        self._unstarted = [other for other in self._unstarted if other is not seq]  # by identity

    def _prefills(self, c: C) -> bool:
        """Whether the class's next step is a prefill (else a decode step of its batch)."""
        return bool(c.waiting) and len(c.batch) < self.max_batch and (not c.batch or c.decoded_last)

    def _pick(self, *, dry: bool = False) -> Priority | None:
        """The class to serve next: the most urgent runnable one, unless a lower one has waited its share."""
        runnable = [p for p in PRIORITIES if self._classes[p].runnable(self.max_batch)]
        if not runnable or dry:
            return runnable[0] if runnable else None
        starved = [p for p in runnable[1:] if self._classes[p].waited >= self.fair_share]
        choice = max(starved, key=lambda p: self._classes[p].waited) if starved else runnable[0]
        for p in PRIORITIES:
            c = self._classes[p]
            c.waited = c.waited + 1 if p in runnable and p != choice else 0
        return choice

    def _step(self, c: C, prefill: bool) -> None:
        """One step of class ``c``; a failing step fails only the sequences it was advancing."""
        self.steps += 1
        if prefill:
            seq = c.waiting[0]
            try:
                self._prefill(c, seq)
            except Exception as exc:
                log.exception("prefill_failed")
                if c.waiting and c.waiting[0] is seq:
                    c.waiting.popleft()
                self._release(seq)
                seq.fail(exc)
        else:
            try:
                self._decode(c)
            except Exception as exc:
                log.exception("decode_failed", batch=len(c.batch))
                for seq in c.batch:
                    self._release(seq)
                    seq.fail(exc)
                c.drop_batch()
        c.decoded_last = not prefill

    def _ended(self, seq: S) -> None:
        """``seq`` has finished: note the step it ended at and end it (its ``on_end`` runs)."""
        seq.step_span = (*seq.step_span[:2], self.steps)
        seq.end()


def guarded(seq: Sequence, work: Callable[[], T]) -> T | None:
    """Run one sequence's part of a batched step; its failure (a grammar error, a callback) ends only it."""
    try:
        return work()
    except Exception as exc:
        log.exception("sequence_failed")
        seq.error, seq.finish = exc, "error"
        return None
