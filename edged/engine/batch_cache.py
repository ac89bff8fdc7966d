"""The KV cache of a decoding batch whose rows feed different numbers of tokens in one step.

Part of the engine (imports mlx). In a batched step one row may feed a forced multi-token chunk
while the others feed one sampled token. mlx-lm's ``BatchKVCache`` pads the short rows on the
right and then rolls every row's whole cache back into place (a gather of the full cache, per
layer, per step: at 8 rows of ~1,300 tokens that is ~0.5 GB of copies, most of a step's time).

Here the short rows are padded on the left *within the step*, and each slot of the cache carries
a validity bit: a padding slot is written like any other and masked out of attention forever
after. Nothing is moved. Rotary positions stay exact: a row padded by ``p`` in a step starts that
step at ``offset - p``, so its real tokens get the positions they would get alone.

The rows of a batch of commands start with the same ~1,200-token system prompt. With
``shared > 0`` those leading tokens are held once (``shared_keys``, ``shared_values``: one row)
and each row's slots hold only what follows; ``edged.engine.attention`` attends to both parts and merges
them. Per step, the KV read for 8 rows falls from 8 copies of the prompt to one.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import KVCache, _BaseCache

STEP = 256  # slots added at a time


class RaggedKVCache(_BaseCache):
    def __init__(
        self,
        keys: mx.array,
        values: mx.array,
        valid: mx.array,
        used: int,
        offset: mx.array,
        shared: tuple[mx.array, mx.array] | None = None,
    ):
        self.shared = shared  # keys and values (1, heads, P, dim) of the P leading tokens every row has
        self.keys, self.values = keys, values  # (B, heads, capacity, dim): each row's tokens after those
        self.valid = valid  # (B, capacity) bool: the slot holds one of the row's tokens
        self.used = used  # slots written (the same for every row)
        self.offset = offset  # (B,) the row's next position (tokens, not slots); read by the model's rope
        self._step_valid: mx.array | None = None  # (B, width) for the step being fed

    @classmethod
    def of(cls, cache: KVCache, shared: int = 0) -> RaggedKVCache:
        """One row: a sequence's own cache after its prefill; its first ``shared`` tokens held apart."""
        n = cache.offset
        keys, values = cache.keys[..., shared:n, :], cache.values[..., shared:n, :]
        common = (cache.keys[..., :shared, :], cache.values[..., :shared, :]) if shared else None
        return cls(keys, values, mx.ones((1, n - shared), dtype=mx.bool_), n - shared, mx.array([n]), common)

    @property
    def rows(self) -> int:
        return self.keys.shape[0]

    @property
    def shared_len(self) -> int:
        return self.shared[0].shape[2] if self.shared is not None else 0

    def share_first(self, count: int) -> None:
        """A lone row (whose slots are its tokens from the first): hold its first ``count`` apart."""
        assert self.rows == 1 and self.shared is None and count < self.used
        self.shared = (self.keys[..., :count, :], self.values[..., :count, :])
        self.keys, self.values, self.valid = (
            self.keys[..., count:, :],
            self.values[..., count:, :],
            self.valid[:, count:],
        )
        self.used -= count

    def share_less(self, keep: int) -> None:
        """Hold only the first ``keep`` shared tokens apart; the rest go back into every row's slots."""
        if keep >= self.shared_len:
            return
        assert self.shared is not None
        keys, values = self.shared
        tail_k, tail_v = (
            mx.broadcast_to(a[..., keep:, :], (self.rows, *a[..., keep:, :].shape[1:])) for a in (keys, values)
        )
        self.keys = mx.concatenate([tail_k, self.keys[..., : self.used, :]], axis=2)
        self.values = mx.concatenate([tail_v, self.values[..., : self.used, :]], axis=2)
        self.valid = mx.concatenate(
            [mx.ones((self.rows, tail_k.shape[2]), dtype=mx.bool_), self.valid[:, : self.used]], axis=1
        )
        self.used += tail_k.shape[2]
        self.shared = (keys[..., :keep, :], values[..., :keep, :]) if keep else None

    # -- joining and leaving -----------------------------------------------------------------
    def extend(self, other: RaggedKVCache) -> None:
        """Add ``other``'s rows; the one with fewer slots is padded in front with invalid slots. Both must
        start with the same tokens as far as the shorter of their shared parts (the caller checks)."""
        common = min(self.shared_len, other.shared_len)
        self.share_less(common)
        other.share_less(common)
        used = max(self.used, other.used)
        parts = [c._left_padded(used) for c in (self, other)]
        self.keys, self.values, self.valid = (mx.concatenate(p, axis=0) for p in zip(*parts))
        self.offset = mx.concatenate([self.offset, other.offset])
        self.used = used

    def _left_padded(self, used: int) -> tuple[mx.array, mx.array, mx.array]:
        keys, values, valid = (
            self.keys[..., : self.used, :],
            self.values[..., : self.used, :],
            self.valid[:, : self.used],
        )
        pad = used - self.used
        if pad:
            keys = mx.pad(keys, [(0, 0), (0, 0), (pad, 0), (0, 0)])
            values = mx.pad(values, [(0, 0), (0, 0), (pad, 0), (0, 0)])
            valid = mx.pad(valid, [(0, 0), (pad, 0)], constant_values=False)
        return keys, values, valid

    def filter(self, keep: list[int]) -> None:
        """Keep these rows; slots no remaining row uses at the front are dropped."""
        index = mx.array(keep)
        self.keys, self.values, self.valid, self.offset = (
            self.keys[index],
            self.values[index],
            self.valid[index],
            self.offset[index],
        )
        used = np.array(self.valid[:, : self.used])
        start = int(used.any(axis=0).argmax()) if used.any() else self.used
        if start:
            self.keys, self.values, self.valid = (
                self.keys[..., start:, :],
                self.values[..., start:, :],
                self.valid[:, start:],
            )
            self.used -= start

    def extract(self, row: int) -> KVCache:
        """Row ``row``'s tokens alone, as a sequence's own cache (for the prefix cache)."""
        slots = mx.array(np.flatnonzero(np.array(self.valid[row, : self.used])))
        cache = KVCache()
        keys, values = self.keys[row : row + 1, :, slots], self.values[row : row + 1, :, slots]
        if self.shared is not None:
            keys, values = (
                mx.concatenate([self.shared[0], keys], axis=2),
                mx.concatenate([self.shared[1], values], axis=2),
            )
        cache.keys, cache.values = mx.contiguous(keys), mx.contiguous(values)
        cache.offset = cache.keys.shape[2]
        return cache

    # -- one step ------------------------------------------------------------------------------
    def prepare(self, lengths: list[int]) -> None:
        """The next step feeds ``lengths[b]`` tokens of row ``b``, right-aligned in a common width."""
        width = max(lengths)
        pads = mx.array([width - n for n in lengths])
        self.offset = self.offset - pads
        self._step_valid = mx.arange(width)[None] >= pads[:, None]

    def _step(self, n: int) -> mx.array:
        """(B, n) validity of the slots this step writes (all valid unless ``prepare`` padded rows)."""
        return self._step_valid if self._step_valid is not None else mx.ones((self.rows, n), dtype=mx.bool_)

    def make_mask(self, n: int, **_: object) -> mx.array:
        """(B, 1, n, used + n): a query sees the valid slots up to its own."""
        keys_valid = mx.concatenate([self.valid[:, : self.used], self._step(n)], axis=1)
        causal = mx.arange(self.used + n)[None] <= (mx.arange(n) + self.used)[:, None]
        return keys_valid[:, None, None, :] & causal[None, None]

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        n = keys.shape[2]
        if self.used + n > self.keys.shape[2]:
            grow = -(-n // STEP) * STEP  # after the used slots: room for these n, in whole STEPs
            b, h, _, d = self.keys.shape
            self.keys = mx.concatenate(
                [self.keys[..., : self.used, :], mx.zeros((b, h, grow, d), self.keys.dtype)], axis=2
            )
            self.values = mx.concatenate(
                [self.values[..., : self.used, :], mx.zeros((b, h, grow, self.values.shape[3]), self.values.dtype)],
                axis=2,
            )
            self.valid = mx.concatenate([self.valid[:, : self.used], mx.zeros((b, grow), dtype=mx.bool_)], axis=1)
        self.keys[..., self.used : self.used + n, :] = keys
        self.values[..., self.used : self.used + n, :] = values
        self.valid[:, self.used : self.used + n] = self._step(n)
        self.used += n
        self.offset = self.offset + n
        return self.keys[..., : self.used, :], self.values[..., : self.used, :]

    def finalize(self) -> None:
        self._step_valid = None

    @property
    def state(self) -> tuple[mx.array, ...]:
        return (self.keys, self.values, self.valid, self.offset, *(self.shared or ()))

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes + sum(a.nbytes for a in self.shared or ())
