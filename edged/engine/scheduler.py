"""The engine loop: one thread owns the model and advances every generation in flight, step by step.

Part of the engine (imports mlx). The queue, priorities, fairness and closing are the engine-neutral
:class:`edged.engine.queueing.StepScheduler`'s; this module supplies the steps. Each step serves one
priority class (``high`` commands before ``normal`` queries before ``low``):

- a **prefill** step feeds up to ``prefill_chunk`` prompt tokens of the class's next waiting
  sequence into its own KV cache (the static prompt prefix is taken from, and stored in, the
  prefix cache);
- a **decode** step feeds every decoding sequence of the class its pending tokens in one batched
  forward pass (a ``RaggedKVCache``: when some sequence feeds a forced multi-token chunk, the
  shorter rows are padded in front and the padding is masked, at most ``BATCH_STEP_TOKENS`` in
  all) and samples the next token of each sequence whose chunk is in, with its own sampler and
  grammar.

A command arriving while a query is thinking is therefore served from the next step on; the
query's KV cache stays in its batch until its class runs again (preemption, no recomputation).
Fairness: a runnable lower class that has waited ``fair_share`` steps gets the next step.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from edged.engine.batch_cache import RaggedKVCache
from edged.engine.decoding import Sequence
from edged.engine.forward import Forward
from edged.engine.prefix_cache import PrefixCache
from edged.engine.queueing import PriorityClass, StepScheduler
from edged.engine.queueing import guarded as _guarded

# Tokens one batched decode step feeds at most (a lone sequence feeds its whole forced chunk): in a
# batch, every row is padded to the longest, so long forced chunks are fed a few tokens per step.
BATCH_STEP_TOKENS = 32
# Prefill chunks one step may feed when it prefills several waiting sequences together.
GROUP_CHUNKS = 4


class _Class(PriorityClass[Sequence]):
    """The sequences of one priority, and the batch KV cache its decoding ones share."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: list[Any] | None = None  # per-layer batch KV cache of ``batch``
        self.shared: list[int] = []  # the leading tokens every row of ``batch`` has, held once

    def drop_batch(self) -> None:
        super().drop_batch()
        self.cache = None


class Scheduler(StepScheduler[Sequence, _Class]):
    """The MLX engine loop: prefill and decode steps on mlx arrays (queueing: :class:`StepScheduler`)."""

    def __init__(
        self,
        model: Any,
        *,
        prefixes: PrefixCache | None,
        max_batch: int,
        fair_share: int,
        prefill_chunk: int,
        share_prefix: bool = False,
    ):
        """``share_prefix``: a batch holds its rows' common prompt start once (the attention must know
        ``RaggedKVCache.shared``: edged.engine.attention does)."""
        self._model = model
        self._forward = Forward(model)
        self.share_prefix = share_prefix
        self._prefixes = prefixes
        self.grouped_prefills = 0  # steps that prefilled several sequences together
        super().__init__(max_batch=max_batch, fair_share=fair_share, prefill_chunk=prefill_chunk)

    def _new_class(self) -> _Class:
        return _Class()

    def _after_close(self) -> None:
        """Park the thread for the rest of the process. An MLX thread that has run generations and then
        ends makes the process abort at exit (SIGABRT, "terminate called without an active exception";
        mlx 0.32 on Linux, about four exits in five); a parked daemon thread never does."""
        threading.Event().wait()

    @property
    def packed_steps(self) -> int:
        """Decode steps whose padded rows ran on their real positions only (see ``edged.engine.forward``)."""
        return self._forward.packed_steps

    # -- prefill: one sequence, its own cache ---------------------------------------------
    def _prefill(self, c: _Class, seq: Sequence) -> None:
        if seq.cache is None and seq.expired():  # not worth starting any more: ends with no tokens
            seq.finish = "stopped"
            c.waiting.popleft()
            self._finish(seq)
            return
        if seq.cache is None:  # its first step: take the longest cached start of the prompt
            self._begin(seq)
        if self._short_rest(seq) and len(c.waiting) > 1 and len(c.batch) + 1 < self.max_batch:
            group = self._gather(c, seq)
            if len(group) > 1:
                self._prefill_together(c, group)
                return
        assert seq.cache is not None
        size = min(len(seq.pending), self.prefill_chunk)
        to_prefix = seq.static_prefix - len(seq.fed)
        store = self._prefixes is not None and seq.cached_tokens < seq.static_prefix and 0 < to_prefix <= size
        if store:
            size = to_prefix  # end this chunk at the static prefix, to keep its cache
        chunk = seq.pending[:size]
        logits = self._forward.last(mx.array(chunk)[None], seq.cache)  # the head on the last position only
        seq.fed += chunk
        seq.pending = seq.pending[size:]
        if store:
            mx.eval([layer.state for layer in seq.cache])
            assert self._prefixes is not None
            self._prefixes.put(seq.fed, seq.cache, kind="system")
        if seq.pending:
            mx.eval([layer.state for layer in seq.cache])
            return
        token = seq.sample(logits)
        mx.eval(token)
        seq.steps += 1
        seq.accept(_token_id(token))
        c.waiting.popleft()
        if seq.finish is not None:
            self._finish(seq)
        else:
            self._join(c, seq)

    def _begin(self, seq: Sequence) -> None:
        seq.step_span = (seq.step_span[0], self.steps, 0)
        cache, cached = self._prefixes.take(seq.prompt) if self._prefixes is not None else (None, 0)
        seq.begin(cache if cache is not None else make_prompt_cache(self._model), cached)

    # -- prefill together: several sequences whose static prefix was cached ----------------
    def _short_rest(self, seq: Sequence) -> bool:
        """Begun after a cached prefix that covers its static prompt, with at most a chunk left to feed."""
        return (
            seq.cached_tokens > 0 and seq.static_prefix <= seq.cached_tokens and len(seq.pending) <= self.prefill_chunk
        )

    def _gather(self, c: _Class, first: Sequence) -> list[Sequence]:
        """``first`` and the waiting sequences behind it that can be prefilled with it, in order, while the
        batch has room and the step stays within GROUP_CHUNKS prefill chunks (a step bounds how long a more
        urgent request waits). Each one gathered has begun; one that cannot join stops the gathering."""
        group, positions = [first], len(first.pending)
        for seq in list(c.waiting)[1:]:
            if len(c.batch) + len(group) >= self.max_batch:
                break
            with self._cond:
                if seq.withdrawn:
                    continue
                self._start(seq)
            if seq.cache is None:
                if seq.expired():
                    seq.finish = "stopped"
                    c.waiting = deque(other for other in c.waiting if other is not seq)
                    self._finish(seq)
                    continue
                self._begin(seq)
            if not self._short_rest(seq) or positions + len(seq.pending) > GROUP_CHUNKS * self.prefill_chunk:
                break  # it is prefilled on its own when its turn comes
            group.append(seq)
            positions += len(seq.pending)
        return group

    def _prefill_together(self, c: _Class, group: list[Sequence]) -> None:
        """One forward pass feeds every sequence of ``group`` the rest of its prompt (rows padded in front,
        the padding masked), samples each one's first token, and the unfinished ones join the batch."""
        c.waiting = deque(seq for seq in c.waiting if all(seq is not member for member in group))
        rows = _Class()
        try:
            for seq in group:
                self._join(rows, seq)
            self._decode(rows, whole=True)
        except Exception as exc:  # the step fails them all: the loop fails the first, these the rest
            for seq in group[1:]:
                seq.fail(exc)
            raise
        self.grouped_prefills += 1
        self._merge(c, rows)

    def _merge(self, c: _Class, rows: _Class) -> None:
        """Add the batch ``rows`` to the class's batch; their common start stays held once."""
        if not rows.batch:
            return
        if c.cache is None:
            c.cache, c.shared, c.batch = rows.cache, rows.shared, rows.batch
            return
        assert rows.cache is not None
        if self.share_prefix:
            common = min(len(c.shared), len(rows.shared))
            same = next((i for i in range(common) if c.shared[i] != rows.shared[i]), common)
            for part in (c.cache, rows.cache):
                if part[0].shared is None:  # a lone row holds its tokens from the first; rows share nothing
                    same = min(same, part[0].used - 1) if part[0].rows == 1 else 0
            for part in (c.cache, rows.cache):
                for layer in part:
                    if layer.shared is None:
                        if same > 0:
                            layer.share_first(same)
                    else:
                        layer.share_less(same)
            c.shared = c.shared[:same]
        for ours, theirs in zip(c.cache, rows.cache):
            ours.extend(theirs)
        c.batch += rows.batch

    def _join(self, c: _Class, seq: Sequence) -> None:
        assert seq.cache is not None
        layers = [RaggedKVCache.of(layer) for layer in seq.cache]
        seq.cache = None
        if c.cache is None:  # alone: nothing to share yet (one copy either way; the plain path is faster)
            c.cache, c.shared = layers, seq.fed[: seq.static_prefix] if self.share_prefix else []
        else:
            if self.share_prefix:  # hold the start the rows have in common once
                same = next((i for i, (a, b) in enumerate(zip(c.shared, seq.fed)) if a != b), len(c.shared))
                c.shared = c.shared[: min(same, len(seq.fed) - 1)]
                shared = len(c.shared)
                for ours, theirs in zip(c.cache if shared else [], layers):
                    if ours.shared is None:  # the lone row so far
                        ours.share_first(shared)
                    theirs.share_first(shared)
            for ours, theirs in zip(c.cache, layers):
                ours.extend(theirs)
        c.batch.append(seq)

    # -- decode: the class's batch, one forward pass ----------------------------------------
    def _decode(self, c: _Class, *, whole: bool = False) -> None:
        """``whole``: feed every row all its pending tokens (a prefill together), else a decode step's share."""
        assert c.cache is not None
        size = len(c.batch)
        self.largest_batch = max(self.largest_batch, size)
        longest = max(len(seq.pending) for seq in c.batch)
        cap = longest if whole or size == 1 else max(1, BATCH_STEP_TOKENS // size)
        feeds = [seq.pending[:cap] for seq in c.batch]
        lengths = [len(feed) for feed in feeds]
        width = max(lengths)
        inputs = mx.array([[0] * (width - n) + feed for feed, n in zip(feeds, lengths)])  # right-aligned
        for layer in c.cache:
            layer.prepare(lengths)
        logits = self._forward.last(inputs, c.cache, lengths)
        for layer in c.cache:
            layer.finalize()
        for seq, feed in zip(c.batch, feeds):
            seq.fed += feed
            seq.pending = seq.pending[len(feed) :]  # the rest of a long forced chunk goes in the next step
        tokens: list[mx.array | None] = []
        for i, seq in enumerate(c.batch):
            tokens.append(None if seq.pending else _guarded(seq, lambda: seq.sample(logits[i : i + 1])))  # noqa: B023 (called at once)
        mx.eval([token for token in tokens if token is not None])
        for seq, token in zip(c.batch, tokens):
            seq.steps += 1
            if token is not None:
                _guarded(seq, lambda: seq.accept(_token_id(token)))  # noqa: B023 (called at once)
        done = [i for i, seq in enumerate(c.batch) if seq.finish is not None]
        if done:
            self._leave(c, done)

    def _leave(self, c: _Class, done: list[int]) -> None:
        assert c.cache is not None
        finished = [c.batch[i] for i in done]
        for i, seq in zip(done, finished):
            if seq.keep and self._prefixes is not None:
                seq.cache = [layer.extract(i) for layer in c.cache]
        keep = [i for i in range(len(c.batch)) if i not in done]
        if keep:
            for layer in c.cache:
                layer.filter(keep)
        else:
            c.cache = None
        c.batch = [c.batch[i] for i in keep]
        for seq in finished:
            self._finish(seq)

    def _finish(self, seq: Sequence) -> None:
        if seq.keep and self._prefixes is not None and seq.cache is not None and seq.error is None:
            self._prefixes.put(seq.fed, seq.cache, kind="assistant", copy_cache=False)
        seq.cache = None
        self._ended(seq)


def _token_id(token: mx.array) -> int:
    value = token.item()
    assert isinstance(value, int), value
    return value
