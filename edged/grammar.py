"""Constrained decoding: llguidance turns a JSON Schema into a per-token mask for MLX.

Part of the engine (imports mlx). The mask is computed on the CPU with NumPy and applied with
``mx.where``, which works on every MLX backend (llguidance's own MLX kernel needs Metal).
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from typing import Any

import llguidance
import llguidance.hf
import mlx.core as mx
import numpy as np
import structlog
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

log = structlog.get_logger("edged.grammar")
JSON_OPTIONS = {"whitespace_flexible": False}  # flexible whitespace lets sampling run away on spaces


class GrammarError(RuntimeError):
    pass


@lru_cache(maxsize=32)
def _compile(schema_json: str) -> str:
    return llguidance.LLMatcher.grammar_from_json_schema(schema_json, defaults=JSON_OPTIONS)


class Grammars:
    """Builds the llguidance tokenizer once per model; compiles each schema once."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int):
        started = time.perf_counter()
        self._tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size)
        self.vocab_size = vocab_size
        log.info("grammar_tokenizer_built", vocab=vocab_size, seconds=round(time.perf_counter() - started, 2))

    def constraint(self, schema: dict[str, Any], *, start_after: int | None = None, jump: bool = True) -> JsonConstraint:
        grammar = _compile(json.dumps(schema))  # key order matters: llguidance emits properties in schema order
        matcher = llguidance.LLMatcher(self._tokenizer, grammar)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return JsonConstraint(matcher, self.vocab_size, start_after=start_after, jump=jump)


class JsonConstraint:
    """The grammar state of one generation: masks the logits and reports the tokens it forces.

    With ``start_after`` (e.g. ``</think>``) the constraint starts once that token was generated.
    With ``jump`` the tokens the grammar forces ("jump-forward": keys, punctuation, the only
    continuation of an id) are returned by :meth:`forced`/:meth:`observe` and consumed at once,
    so the caller appends them without sampling and feeds them to the model as one chunk.
    """

    def __init__(self, matcher: Any, vocab_size: int, *, start_after: int | None, jump: bool = True):
        self.matcher = matcher
        self._vocab = vocab_size
        self._start_after = start_after
        self._jump = jump
        self._active = start_after is None
        self._mask = allocate_token_bitmask(1, vocab_size)
        self.mask_seconds = 0.0
        self.steps = 0

    def forced(self) -> list[int]:
        """Tokens the grammar allows nothing else than, from here on (consumed by the matcher)."""
        if not (self._active and self._jump) or self.matcher.is_stopped():
            return []
        started = time.perf_counter()
        tokens = list(self.matcher.compute_ff_tokens())
        if tokens and not self.matcher.consume_tokens(tokens):
            raise GrammarError(self.matcher.get_error() or "forced tokens were refused")
        self.mask_seconds += time.perf_counter() - started
        return tokens

    def observe(self, token: int) -> list[int]:
        """A sampled token; returns the forced tokens that follow it (already consumed)."""
        if self._active:
            if not self.matcher.consume_token(token):
                raise GrammarError(self.matcher.get_error() or f"token {token} was refused")
        elif token == self._start_after:
            self._active = True
        else:
            return []
        return self.forced()

    def apply(self, logits: mx.array) -> mx.array:
        """Only the tokens the grammar allows next keep their logits."""
        if not self._active:
            return logits
        started = time.perf_counter()
        fill_next_token_bitmask(self.matcher, self._mask, 0)
        allowed = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[: logits.shape[-1]].astype(bool)
        self.mask_seconds += time.perf_counter() - started
        self.steps += 1
        return mx.where(mx.array(allowed), logits, -mx.inf)

    @property
    def stopped(self) -> bool:
        """The grammar is complete and allows no further token: the generation ends here."""
        return self._active and self.matcher.is_stopped()

    @property
    def complete(self) -> bool:
        return self.matcher.is_accepting() or self.matcher.is_stopped()
