"""llama.cpp through llama-cpp-python's low-level API: one model, one context, many sequences.

The context holds one unified KV cache shared by ``n_seq`` sequence ids. Each generation in flight
owns a sequence id; a cached prompt prefix is a sequence id too, and copying it to a generation
(``seq_cp``) shares its KV cells instead of copying them. :meth:`Runtime.decode` feeds several
sequences' tokens in one ``llama_decode`` and returns the logits after each sequence's last token.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals
from llama_cpp._logger import set_verbose

_backend_lock = threading.Lock()
_backend_ready = False
DECODE_NO_SLOT = 1  # llama_decode: no KV cells free for the batch


class KvCacheFull(RuntimeError):
    """The KV cache has no room for the batch (free cached prefixes, or feed less)."""


@dataclass(frozen=True)
class Feed:
    """Tokens for one sequence: ``tokens`` at positions ``start``, ``start + 1``…"""

    seq: int
    tokens: Sequence[int]
    start: int


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            set_verbose(False)  # llama.cpp's own log: errors only
            llama_cpp.llama_backend_init()
            _backend_ready = True


class Runtime:
    """Owned by the engine thread (llama.cpp contexts are not thread-safe); the tokenizer calls are."""

    def __init__(
        self, path: Path, *, n_ctx: int, n_seq: int, n_batch: int, threads: int | None = None, repack: bool = False
    ):
        """``repack``: copy the weights into llama.cpp's interleaved CPU layouts (faster batched products, but the
        copy comes on top of the mapped file: ~2x the weights' memory at load)."""
        _init_backend()
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = repack
        self.model = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
        self.vocab = self.model.vocab
        self.n_vocab = self.model.n_vocab()
        self.n_batch = n_batch
        self.n_seq = n_seq
        ctx = llama_cpp.llama_context_default_params()
        ctx.n_ctx = n_ctx
        ctx.n_batch = n_batch
        ctx.n_ubatch = n_batch
        ctx.n_seq_max = n_seq
        ctx.kv_unified = True  # one pool of cells: sequences share the cells of a copied prefix
        ctx.n_threads = ctx.n_threads_batch = threads or os.cpu_count() or 1
        self.ctx = _internals.LlamaContext(model=self.model, params=ctx, verbose=False)
        self.n_ctx = self.ctx.n_ctx()
        self._batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        self.metadata = self.model.metadata()

    # -- KV cache ---------------------------------------------------------------------------
    def copy(self, src: int, dst: int, length: int) -> None:
        """Sequence ``dst`` starts with the first ``length`` positions of ``src`` (cells shared, not copied)."""
        self.ctx.kv_cache_seq_cp(src, dst, 0, length)

    def drop(self, seq: int, start: int = 0) -> None:
        """Forget sequence ``seq`` from position ``start`` on."""
        llama_cpp.llama_memory_seq_rm(self.ctx.memory, seq, start, -1)

    def clear(self) -> None:
        self.ctx.kv_cache_clear()

    def state_bytes(self, seq: int) -> int:
        return int(llama_cpp.llama_state_seq_get_size(self.ctx.ctx, seq))

    # -- evaluation --------------------------------------------------------------------------
    def decode(self, feeds: Sequence[Feed]) -> list[np.ndarray]:
        """Feed every ``feeds`` entry in one batch (at most ``n_batch`` tokens in all); the logits after each
        entry's last token (float32 copies, one row each). Raises :class:`KvCacheFull` without side effects."""
        batch = self._batch.batch
        n = 0
        rows: list[int] = []
        for feed in feeds:
            for i, token in enumerate(feed.tokens):
                batch.token[n] = token
                batch.pos[n] = feed.start + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = feed.seq
                batch.logits[n] = i == len(feed.tokens) - 1
                n += 1
            rows.append(n - 1)
        batch.n_tokens = n
        code = llama_cpp.llama_decode(self.ctx.ctx, batch)
        if code == DECODE_NO_SLOT:
            raise KvCacheFull(f"no room for {n} tokens in the KV cache of {self.n_ctx}")
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        return [self._logits(row) for row in rows]

    def _logits(self, row: int) -> np.ndarray:
        pointer = llama_cpp.llama_get_logits_ith(self.ctx.ctx, row)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    # -- vocabulary ----------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of ``text`` without a BOS (chat templates write their own); ``special``: control tokens
        written in ``text`` become control tokens."""
        return list(self.model.tokenize(text.encode("utf-8"), False, special))

    def piece(self, token: int, *, special: bool) -> bytes:
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        return b"".join(self.piece(t, special=special) for t in tokens).decode("utf-8", errors="replace")

    def token_id(self, text: str) -> int | None:
        """The id of the single token spelled ``text`` (e.g. ``</think>``), or None."""
        ids = self.tokenize(text)
        return ids[0] if len(ids) == 1 and self.piece(ids[0], special=True) == text.encode() else None

    def end_of_generation(self) -> frozenset[int]:
        return frozenset(t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t))

    def added_tokens(self) -> list[str]:
        """Control and user-defined tokens (``<|im_start|>``, ``<think>``…): their texts."""
        flags = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        out = []
        for token in range(self.n_vocab):
            if llama_cpp.llama_vocab_get_attr(self.vocab, token) & flags:
                out.append(self.piece(token, special=True).decode("utf-8", errors="replace"))
        return out

    def close(self) -> None:
        self._batch.close()
        self.ctx.close()
        self.model.close()
