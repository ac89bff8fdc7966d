"""Constrained decoding: llguidance turns a JSON Schema into a per-token mask.

The mask is computed on the CPU with NumPy (:meth:`JsonConstraint.mask`), which the llama.cpp
engine applies to its logits directly; the MLX engine applies it with ``mx.where``, which works on
every MLX backend (llguidance's own MLX kernel needs Metal). mlx is imported only for that.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.hf
import numpy as np
import structlog
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

if TYPE_CHECKING:
    import mlx.core as mx

log = structlog.get_logger("edged.grammar")
JSON_OPTIONS = {"whitespace_flexible": False}  # flexible whitespace lets sampling run away on spaces
CLOSERS = frozenset(b"]}")  # a token of these (and []) ends lists and objects; '"' + these ends a string
WRAP_UP_BONUS = 1e4  # near the token limit, an allowed closer wins over anything the model prefers


class GrammarError(RuntimeError):
    pass


@lru_cache(maxsize=32)
def _compile(schema_json: str) -> str:
    return llguidance.LLMatcher.grammar_from_json_schema(schema_json, defaults=JSON_OPTIONS)


class Grammars:
    """Builds the llguidance tokenizer once per model; compiles each schema once."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, *, lltokenizer: llguidance.LLTokenizer | None = None):
        """From a Hugging Face fast tokenizer, or an llguidance tokenizer built elsewhere (``lltokenizer``)."""
        started = time.perf_counter()
        self._tokenizer = lltokenizer or llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size)
        self.vocab_size = vocab_size
        texts = [self._tokenizer.decode_bytes([token]) for token in range(min(vocab_size, self._tokenizer.vocab_size))]
        self._closers = Closers(
            self._tokenizer.decode_bytes,
            string=_flags(vocab_size, (t[:1] == b'"' and set(t[1:]) <= CLOSERS for t in texts)),
            structure=_flags(vocab_size, (bool(t) and set(_without_empties(t)) <= CLOSERS for t in texts)),
        )
        log.info("grammar_tokenizer_built", vocab=vocab_size, seconds=round(time.perf_counter() - started, 2))

    def constraint(
        self, schema: dict[str, Any], *, start_after: int | None = None, jump: bool = True
    ) -> JsonConstraint:
        grammar = _compile(json.dumps(schema))  # key order matters: llguidance emits properties in schema order
        matcher = llguidance.LLMatcher(self._tokenizer, grammar)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return JsonConstraint(matcher, self.vocab_size, start_after=start_after, jump=jump, closers=self._closers)


def _without_empties(text: bytes) -> bytes:
    """An empty list (``[]``) is as short an ending as a closer."""
    return text.replace(b"[]", b"")


def _flags(size: int, values: Any) -> np.ndarray:
    out = np.zeros(size, dtype=bool)
    flags = np.fromiter(values, dtype=bool)
    out[: flags.size] = flags
    return out


@dataclass(frozen=True)
class Closers:
    """Which tokens end a string (``"``, ``"}``...) or lists and objects (``]``, ``}``); ``decode`` gives
    token bytes."""

    decode: Callable[[list[int]], bytes]
    string: np.ndarray
    structure: np.ndarray


class JsonConstraint:
    """The grammar state of one generation: masks the logits and reports the tokens it forces.

    With ``start_after`` (e.g. ``</think>``) the constraint starts once that token was generated.
    With ``jump`` the tokens the grammar forces ("jump-forward": keys, punctuation, the only
    continuation of an id) are returned by :meth:`forced`/:meth:`observe` and consumed at once,
    so the caller appends them without sampling and feeds them to the model as one chunk.
    """

    def __init__(
        self,
        matcher: Any,
        vocab_size: int,
        *,
        start_after: int | None,
        jump: bool = True,
        closers: Closers | None = None,
    ):
        self.matcher = matcher
        self._closers = closers
        self._in_string = self._escaped = False  # where the JSON written so far stands
        self._vocab = vocab_size
        self._start_after = start_after
        self._jump = jump
        self._active = start_after is None
        self._mask = allocate_token_bitmask(1, vocab_size)
        self.mask_seconds = 0.0
        self.steps = 0

    def forced(self, limit: int) -> list[int]:
        """Tokens the grammar allows nothing else than, from here on, at most ``limit`` (consumed by the matcher)."""
        if not (self._active and self._jump) or self.matcher.is_stopped() or limit <= 0:
            return []
        started = time.perf_counter()
        tokens = list(self.matcher.compute_ff_tokens())[:limit]
        if tokens and not self.matcher.consume_tokens(tokens):
            raise GrammarError(self.matcher.get_error() or "forced tokens were refused")
        self._track(tokens)
        self.mask_seconds += time.perf_counter() - started
        return tokens

    def _track(self, tokens: list[int]) -> None:
        """Follow string boundaries through the consumed tokens' bytes."""
        if self._closers is None:
            return
        for byte in self._closers.decode(tokens):
            if self._escaped:
                self._escaped = False
            elif self._in_string and byte == 0x5C:  # backslash
                self._escaped = True
            elif byte == 0x22:  # quote
                self._in_string = not self._in_string

    def observe(self, token: int, limit: int) -> list[int]:
        """A sampled token; returns the forced tokens that follow it, at most ``limit`` (already consumed)."""
        if self._active:
            if not self.matcher.consume_token(token):
                raise GrammarError(self.matcher.get_error() or f"token {token} was refused")
            self._track([token])
        elif token == self._start_after:
            self._active = True
        else:
            return []
        return self.forced(limit)

    def mask(self, size: int, *, wrap_up: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """The tokens the grammar allows next (``size`` booleans) and, with ``wrap_up`` (the token limit
        is near), a bonus for the allowed tokens that end the current string (inside one) or list or
        object (outside), so the answer takes its shortest way to a valid end instead of being cut off."""
        started = time.perf_counter()
        fill_next_token_bitmask(self.matcher, self._mask, 0)
        allowed = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[:size].astype(bool)
        self.mask_seconds += time.perf_counter() - started
        self.steps += 1
        bonus = None
        if wrap_up and self._closers is not None:
            ends = self._closers.string if self._in_string else self._closers.structure
            closing = allowed & ends[: allowed.size]
            if closing.any():
                bonus = closing.astype(np.float32) * WRAP_UP_BONUS
        return allowed, bonus

    def apply(self, logits: mx.array, *, wrap_up: bool = False) -> mx.array:
        """Only the tokens the grammar allows next keep their logits (see :meth:`mask`)."""
        if not self._active:
            return logits
        import mlx.core as mx

        allowed, bonus = self.mask(logits.shape[-1], wrap_up=wrap_up)
        if bonus is not None:
            logits = logits + mx.array(bonus)
        return mx.where(mx.array(allowed), logits, -mx.inf)

    @property
    def active(self) -> bool:
        """The constraint applies to the next token (after ``start_after``, if any)."""
        return self._active

    @property
    def stopped(self) -> bool:
        """The grammar is complete and allows no further token: the generation ends here."""
        return self._active and self.matcher.is_stopped()

    @property
    def complete(self) -> bool:
        """What was written so far is a whole answer the grammar accepts."""
        return self._active and (self.matcher.is_accepting() or self.matcher.is_stopped())
