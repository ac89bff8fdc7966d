"""Sizes read from GGUF metadata (no llama_cpp import): what the llama.cpp engine's KV cache costs."""

from __future__ import annotations

from collections.abc import Mapping

KV_BYTES = 2  # llama.cpp's default KV cache type: f16 K and V


def kv_bytes_per_token(meta: Mapping[str, object], arch: str) -> int:
    """Bytes of K and V one token takes in every layer (f16)."""

    def number(key: str, default: int) -> int:
        value = meta.get(f"{arch}.{key}")
        return int(str(value)) if value is not None else default

    layers = number("block_count", 0)
    heads = number("attention.head_count", 1)
    kv_heads = number("attention.head_count_kv", heads)
    key = number("attention.key_length", number("embedding_length", 0) // max(1, heads))
    value = number("attention.value_length", key)
    return layers * kv_heads * (key + value) * KV_BYTES
