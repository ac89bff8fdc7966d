"""``edged model import-gguf``: a GGUF file (llama.cpp, Ollama) to an MLX model directory.

Quantised tensors stay quantised: MLX reads GGUF Q4_0/Q4_1/Q8_0 blocks directly as its own
affine-quantised arrays (group size 32), so no dequantise-requantise round trip happens.
Anything else (another architecture, K-quants, an unknown tensor) is refused by name.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from edged.models.gguf_tokenizer import write_tokenizer
from edged.ops.progressbar import progress

if TYPE_CHECKING:
    import mlx.core as mx

log = structlog.get_logger("edged.gguf")

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
TENSOR_TYPES = {"F32", "F16", "Q4_0", "Q4_1", "Q8_0"}
GROUP_SIZE = 32  # every supported GGUF block quantisation has 32 weights a block

_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.(\w+)$")


class UnsupportedModel(ValueError):
    """The GGUF file uses something edged cannot import faithfully."""


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The metadata and each tensor's GGUF type name, without loading tensor data."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    meta = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    return meta, types


def check_supported(meta: dict[str, Any], types: dict[str, str]) -> str:
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedModel(f"architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    bad = Counter(t for t in types.values() if t not in TENSOR_TYPES)
    if bad:
        found = ", ".join(f"{name} ({n} tensors)" for name, n in bad.items())
        raise UnsupportedModel(
            f"tensor types {found} are not supported (supported: {', '.join(sorted(TENSOR_TYPES))}); "
            "re-quantise the model as Q4_0, Q4_1 or Q8_0"
        )
    return arch


def hf_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[stem]}.{suffix}"
    match = _BLOCK.match(stem)
    if match and match.group(2) in _BLOCK_NAMES:
        return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.{suffix}"
    raise UnsupportedModel(f"tensor {gguf_name!r} has no known place in the model")


def hf_config(arch: str, meta: dict[str, Any], names: set[str]) -> dict[str, Any]:
    def p(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    hidden, heads = int(p("embedding_length")), int(p("attention.head_count"))
    tokens = meta["tokenizer.ggml.tokens"]
    config: dict[str, Any] = {
        "model_type": arch,
        "architectures": [ARCHITECTURES[arch]],
        "hidden_size": hidden,
        "intermediate_size": int(p("feed_forward_length")),
        "num_hidden_layers": int(p("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(p("attention.head_count_kv", heads)),
        "head_dim": int(p("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(p("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(p("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(p("context_length", 2048)),
        "vocab_size": len(tokens),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in names
        config["mlp_bias"] = False
    scaling = p("rope.scaling.type")
    if scaling not in (None, "none"):
        raise UnsupportedModel(
            f"rope scaling {scaling!r} stored in the file is not supported; edged applies YaRN itself"
        )
    return config


def _unpermute(a: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's rotary row order: (heads, dim/2, 2) in GGUF -> (heads, 2, dim/2) in HF."""
    rows = a.shape[0]
    rest = a.shape[1:]
    return a.reshape(n_heads, rows // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def convert_weights(arch: str, raw: dict[str, mx.array], config: dict[str, Any]) -> dict[str, mx.array]:
    out: dict[str, mx.array] = {}
    for i, (name, array) in enumerate(progress(sorted(raw.items()), desc="converting", unit="tensor")):
        target = hf_name(name)
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            heads = config["num_attention_heads"] if ".attn_q." in name else config["num_key_value_heads"]
            array = _unpermute(array, heads)
        out[target] = array
        if (i + 1) % 100 == 0 or i + 1 == len(raw):
            log.info("gguf_tensors_converted", done=i + 1, total=len(raw))
    return out


def quantization_config(weights: dict[str, mx.array]) -> dict[str, Any] | None:
    """mlx-lm's ``quantization``: the most common bit width, with per-layer exceptions."""
    bits = {
        name[: -len(".scales")]: (weights[name[: -len(".scales")] + ".weight"].shape[-1] * 32)
        // (weights[name].shape[-1] * GROUP_SIZE)
        for name in weights
        if name.endswith(".scales")
    }
    if not bits:
        return None
    default = Counter(bits.values()).most_common(1)[0][0]
    config: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": default}
    for layer, b in bits.items():
        if b != default:
            config[layer] = {"group_size": GROUP_SIZE, "bits": b}
    return config


def import_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Write an MLX model directory for ``gguf_path`` into ``out_dir`` (replaced atomically)."""
    import mlx.core as mx

    started = time.perf_counter()
    log.info("gguf_import_start", file=str(gguf_path), out=str(out_dir))
    meta, types = read_header(gguf_path)
    arch = check_supported(meta, types)
    config = hf_config(arch, meta, set(types))
    log.info("gguf_header_read", architecture=arch, tensors=len(types), types=dict(Counter(types.values())))
    raw = mx.load(str(gguf_path))
    if not isinstance(raw, dict):  # a .gguf file loads as a dict of named arrays
        raise ValueError(f"{gguf_path} did not load as named tensors")
    weights = convert_weights(arch, raw, config)
    quant = quantization_config(weights)
    if quant is not None:
        config["quantization"] = quant

    tmp = out_dir.with_name(out_dir.name + ".importing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
    log.info("gguf_weights_written", bytes=(tmp / "model.safetensors").stat().st_size)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(meta, tmp, context_length=config["max_position_embeddings"])
    (tmp / "edged-import.json").write_text(json.dumps({"source": str(gguf_path), "architecture": arch}))
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out_dir)
    log.info("gguf_import_done", out=str(out_dir), seconds=round(time.perf_counter() - started, 2))
    return out_dir
