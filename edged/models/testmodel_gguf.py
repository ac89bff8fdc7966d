"""GGUF files written with the ``gguf`` package: the tiny test model, and random weights of any Qwen3 shape.

* :func:`export_qwen3_gguf` writes an MLX/Hugging Face Qwen3 directory (the tiny random test model,
  float32) as a GGUF the way llama.cpp's converter names and describes qwen3 models: F32 tensors,
  the real Qwen3 vocabulary with its ``qwen2`` pre-tokenizer, and the thinking chat template.
  Qwen models use the half-split ("neox") rotary layout in llama.cpp too, so Q/K rows are
  written as they are.
* :func:`random_qwen3_gguf` writes random Q4_0 weights in a real Qwen3 shape (e.g. 1.7B) for
  speed and memory measurements, without building the float weights first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from edged.models.testmodel import MARKER, build_test_model, tokenizer_source

log = structlog.get_logger("edged.testmodel")

_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_BLOCK = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
Q4_0_BLOCK = 32  # weights per Q4_0 block: an fp16 scale and 16 bytes of 4-bit values
QWEN3_1_7B: dict[str, int] = {
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
}


def gguf_name(stem: str) -> str:
    """The GGUF tensor name of a Hugging Face parameter name (without ``.weight``)."""
    if stem in _GLOBAL:
        return _GLOBAL[stem]
    _, _, layer, rest = stem.split(".", 3)
    return f"blk.{layer}.{_BLOCK[rest]}"


def _vocabulary(tokenizer_dir: Path, size: int) -> tuple[list[str], list[int], list[str], str]:
    """Token texts and types, merges and chat template from a Hugging Face tokenizer directory."""
    from gguf import TokenType

    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    tokens: list[str | None] = [None] * size
    types = [int(TokenType.UNUSED)] * size
    for text, i in tok["model"]["vocab"].items():
        tokens[i], types[i] = text, int(TokenType.NORMAL)
    for added in tok["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = int(TokenType.CONTROL if added["special"] else TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text().replace("\r\n", "\n"))
    texts = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    return texts, types, merges, config["chat_template"]


def _writer(path: Path, config: dict[str, Any], tokenizer_dir: Path) -> Any:
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "qwen3")
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_key_length(config["head_dim"])
    w.add_value_length(config["head_dim"])
    w.add_rope_freq_base(config.get("rope_theta", 1000000.0))
    w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    tokens, types, merges, template = _vocabulary(tokenizer_dir, config["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(config.get("bos_token_id", 151643))
    w.add_eos_token_id(config.get("eos_token_id", 151645))
    w.add_add_bos_token(False)
    w.add_chat_template(template)
    return w


def _finish(w: Any) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def export_qwen3_gguf(model_dir: Path, path: Path) -> Path:
    """Write the float Qwen3 model in ``model_dir`` (config.json, model.safetensors, tokenizer files) as F32 GGUF."""
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    tmp = path.with_name(path.name + ".tmp")
    w = _writer(tmp, config, model_dir)
    for name, array in sorted(load_file(str(model_dir / "model.safetensors")).items()):
        w.add_tensor(f"{gguf_name(name.rsplit('.', 1)[0])}.weight", np.ascontiguousarray(array, dtype=np.float32))
    _finish(w)
    tmp.replace(path)
    log.info("gguf_written", path=str(path), source=str(model_dir))
    return path


def build_test_gguf(model_dir: Path, path: Path | None = None) -> Path:
    """The tiny random Qwen3 test model in ``model_dir`` (built there if needed) as a GGUF file, by default
    ``<model_dir>.gguf`` beside it; rewritten when the model was rebuilt."""
    model_dir = build_test_model(model_dir)
    path = path or model_dir.with_name(model_dir.name + ".gguf")
    marker = path.with_name(path.name + ".source")
    source = (model_dir / MARKER).read_text()
    if path.is_file() and marker.is_file() and marker.read_text() == source:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    export_qwen3_gguf(model_dir, path)
    marker.write_text(source)
    return path


def _random_q4_0(rng: np.random.Generator, rows: int, cols: int, scale: float) -> np.ndarray:
    """Random Q4_0 blocks: per 32 weights an fp16 scale then 16 bytes of 4-bit values (raw bytes, rows x bytes)."""
    blocks = rows * cols // Q4_0_BLOCK
    data = np.empty((blocks, 18), dtype=np.uint8)
    data[:, :2] = np.frombuffer(np.float16(scale).tobytes() * blocks, dtype=np.uint8).reshape(blocks, 2)
    data[:, 2:] = rng.integers(0, 256, size=(blocks, 16), dtype=np.uint8)
    return data.reshape(rows, cols // Q4_0_BLOCK * 18)


def random_qwen3_gguf(path: Path, shape: dict[str, int] | None = None, *, seed: int = 0) -> Path:
    """Random Q4_0 weights (norms F32) in a Qwen3 shape, default Qwen3-1.7B's; reused when already written."""
    from gguf import GGMLQuantizationType

    config = {**QWEN3_1_7B, **(shape or {})}
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".tmp")
    w = _writer(tmp, config, _tokenizer_dir(path.parent))
    hidden, heads, kv, head_dim = (
        config[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim")
    )
    ffn, vocab = config["intermediate_size"], config["vocab_size"]
    q4 = GGMLQuantizationType.Q4_0
    w.add_tensor("token_embd.weight", _random_q4_0(rng, vocab, hidden, 0.002), raw_dtype=q4)
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    for i in range(config["num_hidden_layers"]):
        shapes = {
            "attn_q": (heads * head_dim, hidden),
            "attn_k": (kv * head_dim, hidden),
            "attn_v": (kv * head_dim, hidden),
            "attn_output": (hidden, heads * head_dim),
            "ffn_gate": (ffn, hidden),
            "ffn_up": (ffn, hidden),
            "ffn_down": (hidden, ffn),
        }
        for name, (rows, cols) in shapes.items():
            w.add_tensor(f"blk.{i}.{name}.weight", _random_q4_0(rng, rows, cols, 0.3 / cols**0.5), raw_dtype=q4)
        for name, size in (
            ("attn_norm", hidden),
            ("ffn_norm", hidden),
            ("attn_q_norm", head_dim),
            ("attn_k_norm", head_dim),
        ):
            w.add_tensor(f"blk.{i}.{name}.weight", np.ones(size, dtype=np.float32))
    _finish(w)
    tmp.replace(path)
    log.info("gguf_written", path=str(path), shape=config)
    return path


def _tokenizer_dir(scratch: Path) -> Path:
    """Qwen3's tokenizer files with LF line endings (as the test model has them)."""
    out = scratch / "qwen3-tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_source() / name, out / name)
    return out
