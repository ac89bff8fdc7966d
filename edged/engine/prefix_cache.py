"""Reuse of KV caches across requests: static prompt prefixes and sessions' own history.

Part of the engine (imports mlx). Built on mlx-lm's ``LRUPromptCache`` (a token trie): a request
takes a private copy of the cache of the longest stored sequence it starts with, or of a longer
one trimmed back to the common prefix, and prefills only the rest. Two kinds of entries:

- ``system``: the static start of a prompt (system text with the device registry and the answer
  schema), stored the first time a request's prefill passes it. The text depends on the registry
  version and the mode, so each version/mode gets its own entry and old ones age out.
- ``assistant``: the whole sequence of a finished request in a session (prompt and answer), so the
  session's next turn starts after its history.

Entries are evicted least-recently-used beyond a byte budget; the figures are in :class:`CacheStats`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from mlx_lm.models.cache import LRUPromptCache, trim_prompt_cache

log = structlog.get_logger("edged.prefix_cache")
MAX_ENTRIES = 256  # the byte budget is the real bound; this only caps the trie's bookkeeping
_KEY = "model"  # one engine, one model: the trie needs a model key


@dataclass
class CacheStats:
    hits: int = 0  # requests that started from a cached prefix
    misses: int = 0
    cached_tokens: int = 0
    bytes: int = 0
    entries: int = 0


class PrefixCache:
    """Not thread-safe: used from the engine's scheduler thread only."""

    def __init__(self, *, max_bytes: int):
        self._max_bytes = max_bytes
        self._lru = LRUPromptCache(max_size=MAX_ENTRIES, max_bytes=max_bytes)
        self.stats = CacheStats()

    def take(self, tokens: Sequence[int]) -> tuple[list[Any] | None, int]:
        """A private copy of the cache covering the longest reusable start of ``tokens``, and its length.

        At least one token is always left to prefill (the model needs it to produce logits).
        """
        tokens = list(tokens)
        cache, rest = self._lru.fetch_nearest_cache(_KEY, tokens)
        if cache is None:
            self.stats.misses += 1
            return None, 0
        if not rest:  # an exact match: step back one token
            trim_prompt_cache(cache, 1)
            rest = tokens[-1:]
        cached = len(tokens) - len(rest)
        self.stats.hits += 1
        self.stats.cached_tokens += cached
        return cache, cached

    def put(self, tokens: Sequence[int], cache: list[Any], *, kind: str, copy_cache: bool = True) -> None:
        """Keep ``cache`` (the KV of exactly ``tokens``) for later requests."""
        nbytes = sum(c.nbytes for c in cache)
        if nbytes > self._max_bytes:
            return  # too big to keep
        self._lru.insert_cache(_KEY, list(tokens), copy.deepcopy(cache) if copy_cache else cache, cache_type=kind)
        self.stats.bytes = self._lru.nbytes
        self.stats.entries = len(self._lru)
        log.debug(
            "prefix_stored",
            kind=kind,
            tokens=len(tokens),
            mb=round(nbytes / 1e6, 2),
            cache_mb=round(self.stats.bytes / 1e6, 1),
            entries=self.stats.entries,
        )
