"""``edged model …``: build-test, import-gguf, pull, list, info."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_FAILED = 1
EXIT_UNSUPPORTED = 2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    model = sub.add_parser("model", help="get, import and inspect models")
    msub = model.add_subparsers(dest="model_command", required=True)
    build = msub.add_parser("build-test", help="build the tiny random-weight Qwen3 test model (offline)")
    build.add_argument("out_dir", type=Path, nargs="?", help="default: <cache>/models/tiny-qwen3")
    imp = msub.add_parser("import-gguf", help="write an MLX model directory from a GGUF file (llama, qwen2, qwen3)")
    imp.add_argument("gguf", type=Path)
    imp.add_argument("out_dir", type=Path)
    pull = msub.add_parser(
        "pull", help="download an MLX model into the Hugging Face cache (explicit; `run` never downloads)"
    )
    pull.add_argument("repo_id")
    pull.add_argument("--revision")
    msub.add_parser("list", help="MLX models in edged's cache and the local Hugging Face cache")
    info = msub.add_parser("info", help="architecture, size, context, thinking support, memory estimate")
    info.add_argument("model", help="a model directory or a repo id in the local cache")
    info.add_argument("--context", type=int, default=4096, help="context length for the memory estimate")
    info.add_argument("--dtype", default="auto", choices=["auto", "keep", "float32", "bfloat16", "float16"])
    info.add_argument("--engine", default="auto", choices=["auto", "mlx", "llamacpp"], help="as model.engine")
    info.add_argument("--json", action="store_true")


def main(args: argparse.Namespace) -> int:
    from edged.ops.logs import setup_logging

    setup_logging("info", "console" if sys.stderr.isatty() else "json", stream=sys.stderr)
    handler = {"build-test": _build_test, "import-gguf": _import, "pull": _pull, "list": _list, "info": _info}
    return handler[args.model_command](args)


def _build_test(args: argparse.Namespace) -> int:
    from edged.models.store import models_dir
    from edged.models.testmodel import build_test_model

    print(build_test_model(args.out_dir or models_dir() / "tiny-qwen3"))
    return 0


def _import(args: argparse.Namespace) -> int:
    from edged.models.gguf_import import UnsupportedModel, import_gguf
    from edged.models.gguf_tokenizer import UnsupportedTokenizer

    try:
        print(import_gguf(args.gguf, args.out_dir))
    except (UnsupportedModel, UnsupportedTokenizer) as exc:
        print(f"edged: cannot import {args.gguf}: {exc}", file=sys.stderr)
        return EXIT_UNSUPPORTED
    return 0


def _pull(args: argparse.Namespace) -> int:
    from edged.models.store import pull

    try:
        print(pull(args.repo_id, args.revision))
    except Exception as exc:  # network, auth, unknown repo: say what happened, no traceback
        print(f"edged: could not download {args.repo_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _list(_args: argparse.Namespace) -> int:
    from edged.models.store import list_models

    models = list_models()
    if not models:
        print("no MLX models found (edged model pull REPO_ID, or edged model import-gguf FILE DIR)")
    for m in models:
        print(f"{m.name:40} {m.source:12} {m.path}")
    return 0


def engine_line(path_or_id: str, engine: str = "auto") -> dict[str, str]:
    """The engine ``edged run`` would choose for this model on this host, and why."""
    from edged.engine.select import EngineUnavailable, choose_engine
    from edged.settings import ModelSettings

    try:
        choice = choose_engine(ModelSettings(path=path_or_id, engine=engine))
    except EngineUnavailable as exc:
        return {"engine": "none", "engine_reason": str(exc)}
    return {"engine": choice.engine, "engine_reason": choice.reason}


def describe_gguf(path: Path, *, context: int) -> dict[str, Any]:
    """What the GGUF header says (no tensor data is read)."""
    from edged.engine.llamacpp_facts import kv_bytes_per_token
    from edged.models.gguf_import import read_header

    meta, _types = read_header(path)
    arch = str(meta.get("general.architecture", "?"))
    tokens = meta.get("tokenizer.ggml.tokens") or []
    template = str(meta.get("tokenizer.chat_template") or "")
    trained = int(meta.get(f"{arch}.context_length", 0))
    kv = kv_bytes_per_token(meta, arch)
    size = path.stat().st_size
    return {
        "path": str(path),
        "architecture": arch,
        "file_type": meta.get("general.file_type"),
        "size_on_disk_bytes": size,
        "context_length": trained,
        "thinking": "enable_thinking" in template and "</think>" in tokens,
        "estimated_memory_bytes": size + kv * context,
        "estimated_at_context": context,
    }


def describe(path_or_id: str, *, context: int, dtype: str) -> dict[str, Any]:
    from edged.engine.select import gguf_file
    from edged.models.files import choose_dtype, read_facts, resolve_model_path, total_memory_bytes

    gguf = gguf_file(path_or_id)
    if gguf is not None:
        return describe_gguf(gguf, context=context)
    facts = read_facts(resolve_model_path(path_or_id))
    metal = _metal_available()
    chosen, reason = choose_dtype(dtype, facts, metal=metal, ram_bytes=total_memory_bytes())
    return {
        "path": str(facts.path),
        "architecture": facts.architecture,
        "parameters": facts.parameters,
        "quantization": facts.quantization,
        "size_on_disk_bytes": facts.disk_bytes,
        "context_length": facts.context_length,
        "context_length_yarn": facts.context_length * 4,
        "thinking": facts.thinking_template and facts.think_tokens,
        "weights_at_load": chosen,
        "weights_reason": reason,
        "estimated_memory_bytes": facts.memory_bytes(dtype=chosen, context=context),
        "estimated_at_context": context,
    }


def _metal_available() -> bool:
    import mlx.core as mx

    return bool(mx.metal.is_available())


def _info(args: argparse.Namespace) -> int:
    from edged.models.files import ModelInvalid, ModelNotFound

    try:
        info = {**describe(args.model, context=args.context, dtype=args.dtype), **engine_line(args.model, args.engine)}
    except (ModelNotFound, ModelInvalid) as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return EXIT_UNSUPPORTED
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if "weights_at_load" not in info:
        _print_gguf(info)
        return 0
    gb = 1e9
    print(f"engine          {info['engine']}: {info['engine_reason']}")
    print(f"path            {info['path']}")
    print(f"architecture    {info['architecture']}, {info['parameters'] / 1e6:.1f}M parameters")
    print(f"quantisation    {info['quantization']}; {info['size_on_disk_bytes'] / gb:.2f} GB on disk")
    yarn = info["context_length_yarn"]
    print(f"context         {info['context_length']} tokens native ({yarn} with model.long_context)")
    print(f"thinking        {'yes (Qwen3-style enable_thinking and <think> tokens)' if info['thinking'] else 'no'}")
    print(f"weights at load {info['weights_at_load']}: {info['weights_reason']}")
    memory_gb = info["estimated_memory_bytes"] / gb
    print(f"memory          ~{memory_gb:.2f} GB at {info['estimated_at_context']} tokens of context")
    return 0


def _print_gguf(info: dict[str, Any]) -> None:
    gb = 1e9
    print(f"engine          {info['engine']}: {info['engine_reason']}")
    print(f"path            {info['path']}")
    print(f"architecture    {info['architecture']} (GGUF, file type {info['file_type']})")
    print(f"size            {info['size_on_disk_bytes'] / gb:.2f} GB on disk")
    print(f"context         {info['context_length']} tokens native")
    print(f"thinking        {'yes (Qwen3-style enable_thinking and <think> tokens)' if info['thinking'] else 'no'}")
    print(
        f"memory          ~{info['estimated_memory_bytes'] / gb:.2f} GB at {info['estimated_at_context']} tokens of "
        "context (llama.cpp: the file, mapped, and its f16 KV cache)"
    )
