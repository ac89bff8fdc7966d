"""CPU attention (edged.engine.attention) and the ragged batch cache (edged.engine.batch_cache) against mlx's own."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import KVCache

from edged.engine.attention import attention, fast_exp
from edged.engine.batch_cache import RaggedKVCache


def test_fast_exp_matches_exp_in_float32():
    x = mx.array(np.linspace(-87, 87, 200_001, dtype=np.float32))
    ref = np.exp(np.array(x, dtype=np.float64))
    assert np.max(np.abs(np.array(fast_exp(x)) - ref) / ref) < 5e-6
    assert float(fast_exp(mx.array([-mx.inf]))[0]) < 1e-37  # a masked score weighs nothing


def _qkv(b, hq, hk, m, length, seed=0):
    mx.random.seed(seed)
    return (
        mx.random.normal((b, hq, m, 64)),
        mx.random.normal((b, hk, length, 64)),
        mx.random.normal((b, hk, length, 64)),
    )


@pytest.mark.parametrize("hq,hk", [(9, 3), (4, 4)])
@pytest.mark.parametrize("m", [1, 5])
def test_attention_equals_mlx_for_causal_and_no_mask(hq, hk, m):
    q, k, v = _qkv(2, hq, hk, m, 300)
    mask = "causal" if m > 1 else None
    expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=mask)
    assert mx.allclose(attention(q, k, v, 0.125, mask), expected, atol=1e-5)


def test_attention_equals_mlx_for_boolean_and_additive_masks():
    q, k, v = _qkv(3, 6, 2, 4, 50)
    rng = np.random.default_rng(1)
    allowed = rng.random((3, 1, 4, 50)) > 0.3
    allowed[..., 0] = True  # every query sees something
    boolean = mx.array(allowed)
    additive = mx.where(boolean, 0.0, -mx.inf)
    for mask in (boolean, additive):
        expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.2, mask=mask)
        assert mx.allclose(attention(q, k, v, 0.2, mask), expected, atol=1e-5)


def _single(tokens: int, seed: int) -> KVCache:
    cache = KVCache()
    mx.random.seed(seed)
    kv = mx.random.normal((1, 2, tokens, 8))
    cache.update_and_fetch(kv, kv * 2)
    return cache


def test_ragged_rows_pad_in_front_and_give_back_exactly_their_tokens():
    a, b = _single(5, 0), _single(3, 1)
    batch = RaggedKVCache.of(a)
    batch.extend(RaggedKVCache.of(b))  # b is padded in front by 2 invalid slots
    assert batch.used == 5 and np.array(batch.offset).tolist() == [5, 3]
    batch.prepare([3, 1])  # a feeds a 3-token chunk, b one token (padded in front by 2)
    mask = batch.make_mask(3)
    new = mx.ones((2, 2, 3, 8))
    batch.update_and_fetch(new, new)
    batch.finalize()
    assert np.array(batch.offset).tolist() == [8, 4]
    assert np.array(mask[1, 0, 2]).tolist() == [False, False, True, True, True, False, False, True]
    assert np.array(mask[0, 0, 0]).tolist() == [True] * 6 + [False, False]  # causal within the step
    out = batch.extract(1)
    assert out.offset == 4 and mx.array_equal(out.keys[..., :3, :], b.keys[..., :3, :])
    batch.filter([1])  # the slots only row 0 used are dropped from the front
    assert batch.used == 6 and mx.array_equal(batch.extract(0).keys, out.keys)


@pytest.mark.parametrize("m", [1, 3])
def test_a_shared_part_gives_the_attention_over_the_whole(m):
    """Rows that share their first 40 keys: attending to one copy of those plus each row's own keys
    equals attending to each row's concatenation."""
    q, k, v = _qkv(4, 6, 2, m, 25, seed=3)
    shared_k, shared_v = mx.random.normal((1, 2, 40, 64)), mx.random.normal((1, 2, 40, 64))
    whole_k = mx.concatenate([mx.broadcast_to(shared_k, (4, 2, 40, 64)), k], axis=2)
    whole_v = mx.concatenate([mx.broadcast_to(shared_v, (4, 2, 40, 64)), v], axis=2)
    rng = np.random.default_rng(2)
    own = rng.random((4, 1, m, 25)) > 0.4
    own[..., -1] = True
    whole_mask = mx.concatenate([mx.ones((4, 1, m, 40), dtype=mx.bool_), mx.array(own)], axis=-1)
    expected = mx.fast.scaled_dot_product_attention(q, whole_k, whole_v, scale=0.125, mask=whole_mask)
    got = attention(q, k, v, 0.125, mx.array(own), shared=(shared_k, shared_v))
    assert mx.allclose(got, expected, atol=1e-5)


def test_sharing_less_puts_the_tail_back_into_every_row():
    base = _single(6, 4)
    batch = RaggedKVCache.of(base, shared=6)
    other = RaggedKVCache.of(_single(6, 4), shared=6)
    batch.extend(other)
    assert batch.shared_len == 6 and batch.used == 0 and batch.rows == 2
    batch.share_less(2)
    assert batch.shared_len == 2 and batch.used == 4
    assert mx.array_equal(batch.extract(1).keys, base.keys[..., :6, :])


def test_a_lone_row_shares_its_start_when_a_second_joins():
    first, second = _single(7, 5), _single(7, 5)
    batch = RaggedKVCache.of(first)
    batch.share_first(4)
    joining = RaggedKVCache.of(second)
    joining.share_first(4)
    batch.extend(joining)
    assert batch.shared_len == 4 and batch.used == 3 and batch.rows == 2
    assert mx.array_equal(batch.extract(0).keys, first.keys[..., :7, :])


def test_a_chunk_longer_than_the_spare_slots_grows_the_cache_enough():
    """Growth makes room for the whole chunk even when some slots were spare (106 spare, 300 fed)."""
    batch = RaggedKVCache.of(_single(3, 6))
    batch.update_and_fetch(mx.ones((1, 2, 150, 8)), mx.ones((1, 2, 150, 8)))  # 3 + 256 slots after growing
    assert batch.keys.shape[2] - batch.used == 106
    keys, _ = batch.update_and_fetch(mx.ones((1, 2, 300, 8)), mx.ones((1, 2, 300, 8)))
    assert batch.used == 453 and keys.shape[2] == 453 and bool(batch.valid[0, :453].all())
