"""Independent references for the GGUF importer, sharing no code with it.

* Weights: read and dequantised by the ``gguf`` package (llama.cpp's own Python reader), kept
  in GGUF's layout, with llama.cpp's rotary convention (adjacent pairs rotated). The importer
  instead keeps MLX's quantised arrays, reorders Q/K rows and runs mlx-lm's half-split rotary.
  If the row reordering were wrong, the two forward passes would disagree.
* Tokens: a plain-Python byte-level BPE over the GGUF vocabulary and merges, instead of the
  ``tokenizers`` library the importer uses.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import regex

GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


class ReferenceLlama:
    def __init__(self, gguf_path: Path):
        from gguf import GGUFReader
        from gguf.quants import dequantize

        reader = GGUFReader(str(gguf_path))
        self.meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        self.w = {}
        for t in reader.tensors:
            shape = [int(d) for d in reversed(t.shape)]
            self.w[t.name] = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        m = self.meta
        self.layers = int(m["llama.block_count"])
        self.heads = int(m["llama.attention.head_count"])
        self.kv_heads = int(m["llama.attention.head_count_kv"])
        self.dim = int(m["llama.embedding_length"])
        self.head_dim = self.dim // self.heads
        self.eps = float(m["llama.attention.layer_norm_rms_epsilon"])
        self.theta = float(m["llama.rope.freq_base"])

    def _norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def _rope(self, x: np.ndarray) -> np.ndarray:
        """llama.cpp's 'normal' rotary: rotate (x[2i], x[2i+1]) pairs."""
        t, _, d = x.shape
        freqs = self.theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        angles = np.arange(t)[:, None] * freqs[None, :]
        cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits for every position of ``ids`` (no cache: the whole sequence each time)."""
        w, t = self.w, len(ids)
        x = w["token_embd.weight"][ids]
        mask = np.triu(np.full((t, t), -np.inf, dtype=np.float32), 1)
        group = self.heads // self.kv_heads
        for i in range(self.layers):
            p = f"blk.{i}."
            h = self._norm(x, w[p + "attn_norm.weight"])
            q = self._rope((h @ w[p + "attn_q.weight"].T).reshape(t, self.heads, self.head_dim))
            k = self._rope((h @ w[p + "attn_k.weight"].T).reshape(t, self.kv_heads, self.head_dim))
            v = (h @ w[p + "attn_v.weight"].T).reshape(t, self.kv_heads, self.head_dim)
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
            scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(self.head_dim) + mask
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            attn = np.einsum("hts,shd->thd", scores, v).reshape(t, self.dim)
            x = x + attn @ w[p + "attn_output.weight"].T
            h = self._norm(x, w[p + "ffn_norm.weight"])
            gate = h @ w[p + "ffn_gate.weight"].T
            x = x + ((gate / (1 + np.exp(-gate))) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        x = self._norm(x, w["output_norm.weight"])
        return x @ w.get("output.weight", w["token_embd.weight"]).T

    def greedy(self, ids: list[int], n: int) -> list[int]:
        ids = list(ids)
        for _ in range(n):
            ids.append(int(np.argmax(self.logits(ids)[-1])))
        return ids[-n:]


@lru_cache(maxsize=1)
def _byte_map() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


class ReferenceBPE:
    """Byte-level BPE with SmolLM2's pre-tokenisation (each digit alone, then GPT-2's split)."""

    def __init__(self, meta: dict):
        self.vocab = {tok: i for i, tok in enumerate(meta["tokenizer.ggml.tokens"])}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(meta["tokenizer.ggml.merges"])}
        self.special = [
            tok for tok, ty in zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]) if ty == 3
        ]

    def _bpe(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return parts

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        pattern = "(" + "|".join(regex.escape(s) for s in self.special) + ")"
        for chunk in regex.split(pattern, text):
            if chunk in self.special:
                ids.append(self.vocab[chunk])
                continue
            for piece in regex.split(r"(\p{N})", chunk):
                for word in GPT2_SPLIT.findall(piece):
                    mapped = "".join(_byte_map()[b] for b in word.encode("utf-8"))
                    ids.extend(self.vocab[p] for p in self._bpe(mapped))
        return ids
