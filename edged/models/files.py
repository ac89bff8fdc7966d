"""What a model directory holds, read from its files alone (no MLX): checks, size, memory, dtype choice."""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "U8": 1, "I8": 1, "F64": 8, "I64": 8}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelInvalid(Exception):
    """The model directory is missing something edged needs, or is inconsistent."""


class ModelNotFound(ModelInvalid):
    """The configured model is neither a local directory nor in the local Hugging Face cache."""


def resolve_model_path(path_or_repo: str) -> Path:
    """A local directory for the model; never downloads."""
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} has no config.json: not an MLX model directory")
        return path
    if REPO_ID.match(path_or_repo):
        from huggingface_hub import snapshot_download
        from huggingface_hub.constants import HF_HUB_CACHE
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(path_or_repo, local_files_only=True))
        except LocalEntryNotFoundError:
            raise ModelNotFound(
                f"model {path_or_repo!r} is not a directory and not in the local Hugging Face cache "
                f"({HF_HUB_CACHE}); edged never downloads while running: download it first "
                f"(edged model pull {path_or_repo}) or set model.path to a local directory"
            ) from None
    raise ModelNotFound(f"model directory not found: {path}")


@dataclass(frozen=True)
class ModelFacts:
    path: Path
    architecture: str
    parameters: int
    quantization: str  # e.g. "4-bit (group 32), some layers 8-bit" or "none (F32)"
    quantized: bool
    disk_bytes: int
    context_length: int
    thinking_template: bool  # the chat template knows enable_thinking
    think_tokens: bool  # the vocabulary has <think> and </think>
    kv_bytes_per_token_fp16: int
    config: dict[str, Any]

    def memory_bytes(self, *, dtype: str, context: int) -> int:
        """Weights as loaded in ``dtype`` plus a KV cache of ``context`` tokens."""
        weights = self.disk_bytes if dtype == "keep" else self.parameters * (4 if dtype == "float32" else 2)
        kv_scale = 2 if dtype == "float32" else 1
        return weights + context * self.kv_bytes_per_token_fp16 * kv_scale


def check_files(path: Path) -> None:
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not list(path.glob("model*.safetensors")):
        missing.append("model*.safetensors")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    if missing:
        raise ModelInvalid(f"{path} is missing {', '.join(missing)}: not a complete MLX model directory")


class TensorInfo(TypedDict):
    """One tensor in a safetensors header."""

    dtype: str  # e.g. "F32", "U32"
    shape: list[int]
    data_offsets: list[int]


def _safetensors_header(path: Path) -> dict[str, TensorInfo]:
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def count_parameters(tensors: Mapping[str, TensorInfo], group_size: int) -> int:
    """Logical weights, counting packed quantised weights by their unpacked size."""
    total = 0
    for name, info in tensors.items():
        shape = info["shape"]
        stem = name.rsplit(".", 1)[0]
        if name.endswith((".scales", ".biases")) and f"{stem}.weight" in tensors and f"{stem}.scales" in tensors:
            continue  # quantisation bookkeeping
        if info["dtype"] == "U32" and f"{stem}.scales" in tensors:
            total += math.prod(shape[:-1]) * tensors[f"{stem}.scales"]["shape"][-1] * group_size
        else:
            total += math.prod(shape)
    return total


def _describe_quantization(config: dict[str, Any], tensors: Mapping[str, TensorInfo]) -> tuple[str, bool]:
    quant = config.get("quantization")
    if not quant:
        dtypes = sorted({t["dtype"] for t in tensors.values()})
        return f"none ({', '.join(dtypes)})", False
    others = sorted({v["bits"] for v in quant.values() if isinstance(v, dict)} - {quant["bits"]})
    extra = f", some layers {'/'.join(map(str, others))}-bit" if others else ""
    return f"{quant['bits']}-bit (group {quant['group_size']}){extra}", True


def read_facts(path: Path) -> ModelFacts:
    check_files(path)
    config = json.loads((path / "config.json").read_text())
    tensors: dict[str, TensorInfo] = {}
    for file in sorted(path.glob("model*.safetensors")):
        tensors.update(_safetensors_header(file))
    group = (config.get("quantization") or {}).get("group_size", 64)
    quantization, quantized = _describe_quantization(config, tensors)
    tok_config = path / "tokenizer_config.json"
    template: str | None = json.loads(tok_config.read_text()).get("chat_template") if tok_config.is_file() else None
    if template is None and (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text()
    vocab_text = (path / "tokenizer.json").read_text() if (path / "tokenizer.json").is_file() else ""
    heads = config.get("num_attention_heads", 1)
    head_dim = config.get("head_dim") or config.get("hidden_size", 0) // heads
    kv_per_token = 2 * config.get("num_hidden_layers", 0) * config.get("num_key_value_heads", heads) * head_dim * 2
    return ModelFacts(
        path=path,
        architecture=config.get("model_type", "unknown"),
        parameters=count_parameters(tensors, group),
        quantization=quantization,
        quantized=quantized,
        disk_bytes=sum(f.stat().st_size for f in path.glob("model*.safetensors")),
        context_length=int(config.get("max_position_embeddings") or 0),
        thinking_template=template is not None and "enable_thinking" in template,
        think_tokens='"</think>"' in vocab_text and '"<think>"' in vocab_text,
        kv_bytes_per_token_fp16=kv_per_token,
        config=config,
    )


def total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def choose_dtype(setting: str, facts: ModelFacts, *, metal: bool, ram_bytes: int) -> tuple[str, str]:
    """The weight format to run with, and why. ``keep`` leaves the weights as stored."""
    if setting != "auto":
        return setting, "configured"
    if metal:
        return "keep", "Metal runs quantised and half-precision weights fast"
    if not facts.quantized and facts.quantization == "none (F32)":
        return "keep", "weights are already float32"
    need = facts.parameters * 4
    if ram_bytes and need > ram_bytes // 2:
        return "keep", f"float32 would take {need / 1e9:.1f} GB, over half of this machine's memory"
    return (
        "float32",
        "on the CPU, float32 with an optimised BLAS is several times faster than quantised or half-precision kernels",
    )
