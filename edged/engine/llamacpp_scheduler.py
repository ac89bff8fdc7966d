"""The llama.cpp engine loop: one thread owns the context and advances every generation, step by step.

The queue, priorities, fairness and closing are the engine-neutral
:class:`edged.engine.queueing.StepScheduler`'s, as for the MLX scheduler; this module supplies the
steps. Each step serves one priority class (``high`` commands before ``normal`` queries before
``low``), a lower class that waited ``fair_share`` steps getting the next one:

- a **prefill** step feeds up to ``prefill_chunk`` prompt tokens of the class's next waiting
  generation into its own llama.cpp sequence, which starts with the longest kept prefix of its
  prompt (shared cells, :mod:`edged.engine.llamacpp_cache`); the static prompt prefix is kept the
  first time a prefill passes it;
- a **decode** step feeds every decoding generation of the class its pending tokens (the sampled
  one, or a chunk the grammar forced) in one ``llama_decode`` and chooses each one's next token.

A command arriving while a query decodes runs from the next step on; the query's KV stays in its
sequence until its class runs again (preemption without recomputation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edged.engine.decoding import WRAP_UP_TOKENS
from edged.engine.decoding import Sequence as GenSequence
from edged.engine.llamacpp_cache import KeptPrefixes, SeqPool
from edged.engine.llamacpp_runtime import Feed, KvCacheFull, Runtime
from edged.engine.llamacpp_sampling import Sampler
from edged.engine.queueing import PriorityClass, StepScheduler, guarded


def _no_mlx_sampler(_logits: Any) -> Any:
    raise RuntimeError("the llama.cpp engine chooses tokens with LlamaSequence.choose")


@dataclass(eq=False)
class LlamaSequence(GenSequence):
    """A generation in flight on llama.cpp: the shared state machine plus its sequence id and chooser."""

    chooser: Sampler | None = None
    seq_id: int | None = None  # the llama.cpp sequence holding its KV, from the start of its prefill

    def choose(self, logits: np.ndarray) -> int:
        assert self.chooser is not None
        left = self.max_tokens - len(self.generated)
        wrap_up = left <= min(WRAP_UP_TOKENS, self.max_tokens // 2)
        return self.chooser.choose(logits, self.generated, self.constraint, wrap_up=wrap_up)


_Class = PriorityClass[LlamaSequence]  # a class's generations hold their KV in their own llama.cpp sequences


class LlamaScheduler(StepScheduler[LlamaSequence, _Class]):
    """The llama.cpp engine loop: prefill and decode steps as ``llama_decode`` calls (queueing:
    :class:`StepScheduler`)."""

    def __init__(
        self,
        runtime: Runtime,
        pool: SeqPool,
        prefixes: KeptPrefixes | None,
        *,
        max_batch: int,
        fair_share: int,
        prefill_chunk: int,
    ):
        self._rt = runtime
        self._pool = pool
        self._prefixes = prefixes
        super().__init__(max_batch=max_batch, fair_share=fair_share, prefill_chunk=min(prefill_chunk, runtime.n_batch))

    def _new_class(self) -> _Class:
        return PriorityClass()

    # -- prefill ------------------------------------------------------------------------------
    def _begin(self, seq: LlamaSequence) -> None:
        seq.step_span = (seq.step_span[0], self.steps, 0)
        seq.seq_id = self._pool.take()
        while seq.seq_id is None and self._prefixes is not None and self._prefixes.evict():
            seq.seq_id = self._pool.take()
        if seq.seq_id is None:
            raise RuntimeError("no free llama.cpp sequence (raise model.scheduler.max_batch?)")
        cached = self._prefixes.take(seq.prompt, seq.seq_id) if self._prefixes is not None else 0
        seq.begin([], cached)

    def _prefill(self, c: _Class, seq: LlamaSequence) -> None:
        if seq.seq_id is None and seq.expired():  # not worth starting any more: ends with no tokens
            seq.finish = "stopped"
            c.waiting.popleft()
            self._finish(seq)
            return
        if seq.seq_id is None:
            self._begin(seq)
        assert seq.seq_id is not None
        size = min(len(seq.pending), self.prefill_chunk)
        to_prefix = seq.static_prefix - len(seq.fed)
        store = self._prefixes is not None and seq.cached_tokens < seq.static_prefix and 0 < to_prefix <= size
        if store:
            size = to_prefix
        chunk = seq.pending[:size]
        (logits,) = self._decode_feeds([Feed(seq.seq_id, chunk, len(seq.fed))])
        seq.fed += chunk
        seq.pending = seq.pending[size:]
        if store and self._prefixes is not None:
            self._prefixes.keep(seq.fed, seq.seq_id, kind="system")
        if seq.pending:
            return
        seq.steps += 1
        seq.accept(seq.choose(logits))
        c.waiting.popleft()
        if seq.finish is not None:
            self._finish(seq)
        else:
            c.batch.append(seq)

    # -- decode -------------------------------------------------------------------------------
    def _decode(self, c: _Class) -> None:
        self.largest_batch = max(self.largest_batch, len(c.batch))
        room = max(1, self._rt.n_batch // len(c.batch))
        feeds = [seq.pending[:room] for seq in c.batch]
        rows = self._decode_feeds([Feed(_seq_id(seq), feed, len(seq.fed)) for seq, feed in zip(c.batch, feeds)])
        for seq, feed, logits in zip(c.batch, feeds, rows):
            seq.fed += feed
            seq.pending = seq.pending[len(feed) :]
            seq.steps += 1
            if not seq.pending:
                guarded(seq, lambda: seq.accept(seq.choose(logits)))  # noqa: B023 (called at once)
        done = [seq for seq in c.batch if seq.finish is not None]
        if done:
            c.batch = [seq for seq in c.batch if seq.finish is None]
            for seq in done:
                self._finish(seq)

    def _decode_feeds(self, feeds: list[Feed]) -> list[np.ndarray]:
        """One ``llama_decode``; when the KV cache is full, forget kept prefixes until it fits."""
        while True:
            try:
                return self._rt.decode(feeds)
            except KvCacheFull:
                if self._prefixes is None or not self._prefixes.evict():
                    raise

    def _finish(self, seq: LlamaSequence) -> None:
        if seq.keep and self._prefixes is not None and seq.seq_id is not None and seq.error is None:
            self._prefixes.keep(seq.fed, seq.seq_id, kind="assistant", adopt=True)
            seq.seq_id = None
        self._release(seq)
        self._ended(seq)

    def _release(self, seq: LlamaSequence) -> None:
        if seq.seq_id is not None:
            self._rt.drop(seq.seq_id)
            self._pool.give(seq.seq_id)
            seq.seq_id = None


def _seq_id(seq: LlamaSequence) -> int:
    assert seq.seq_id is not None, "a decoding generation holds a sequence"
    return seq.seq_id
