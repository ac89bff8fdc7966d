"""Reused prompt prefixes for the llama.cpp engine: KV sequences kept in the context, shared by copy.

A kept entry is a llama.cpp sequence id whose KV cells hold a token sequence: the static start of
a prompt (``system``: system text, registry, schema) or a session's whole finished turn
(``assistant``). A new generation starts from the entry sharing the longest common start with
its prompt: ``seq_cp`` makes the entry's cells part of the new sequence too (no copy), and only
the rest is prefilled. Entries beyond the token budget or entry count go least recently used first.
Not thread-safe: used from the engine thread only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger("edged.prefix_cache")


@dataclass
class CacheStats:
    hits: int = 0  # generations that started from a kept prefix
    misses: int = 0
    cached_tokens: int = 0
    bytes: int = 0
    entries: int = 0


@dataclass
class _Entry:
    tokens: list[int]
    seq: int
    kind: str
    used: int


@dataclass
class SeqPool:
    """The context's sequence ids not in use."""

    free: list[int] = field(default_factory=list)

    def take(self) -> int | None:
        return self.free.pop(0) if self.free else None

    def give(self, seq: int) -> None:
        self.free.append(seq)


def common_start(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


class KeptPrefixes:
    """``copy(src, dst, n)`` shares src's first n positions with dst; ``drop(seq)`` forgets a sequence."""

    def __init__(
        self,
        pool: SeqPool,
        *,
        copy: Callable[[int, int, int], None],
        drop: Callable[[int], None],
        max_entries: int,
        max_tokens: int,
        bytes_per_token: int,
    ):
        self._pool, self._copy, self._drop = pool, copy, drop
        self._max_entries, self._max_tokens = max_entries, max_tokens
        self._bytes_per_token = bytes_per_token
        self._entries: list[_Entry] = []
        self._tick = 0
        self.stats = CacheStats()

    def take(self, prompt: Sequence[int], dst: int) -> int:
        """Give ``dst`` the longest kept start of ``prompt`` (at least one token left to prefill); its length."""
        best, length = None, 0
        for entry in self._entries:
            n = min(common_start(entry.tokens, prompt), len(prompt) - 1)
            if n > length:
                best, length = entry, n
        if best is None:
            self.stats.misses += 1
            return 0
        self._copy(best.seq, dst, length)
        best.used = self._touch()
        self.stats.hits += 1
        self.stats.cached_tokens += length
        return length

    def keep(self, tokens: Sequence[int], src: int, *, kind: str, adopt: bool = False) -> None:
        """Keep the KV of ``tokens`` held by sequence ``src``; ``adopt``: take ``src`` itself (it is finished)."""
        tokens = list(tokens)
        if not tokens or len(tokens) > self._max_tokens or any(e.tokens == tokens for e in self._entries):
            if adopt:
                self._release(src)
            return
        seq = src if adopt else self._free_seq()
        if seq is None:
            return
        if not adopt:
            self._copy(src, seq, len(tokens))
        self._entries.append(_Entry(tokens, seq, kind, self._touch()))
        while len(self._entries) > self._max_entries or self._tokens() > self._max_tokens:
            self.evict()
        self._update()
        log.debug("prefix_stored", kind=kind, tokens=len(tokens), entries=len(self._entries))

    def evict(self) -> bool:
        """Forget the least recently used entry; False when there is none."""
        if not self._entries:
            return False
        oldest = min(self._entries, key=lambda e: e.used)
        self._entries.remove(oldest)
        self._release(oldest.seq)
        self._update()
        return True

    def _free_seq(self) -> int | None:
        seq = self._pool.take()
        while seq is None and self.evict():
            seq = self._pool.take()
        return seq

    def _release(self, seq: int) -> None:
        self._drop(seq)
        self._pool.give(seq)

    def _touch(self) -> int:
        self._tick += 1
        return self._tick

    def _tokens(self) -> int:
        return sum(len(e.tokens) for e in self._entries)

    def _update(self) -> None:
        self.stats.entries = len(self._entries)
        self.stats.bytes = self._tokens() * self._bytes_per_token
