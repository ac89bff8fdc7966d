"""Which engine runs the model: ``model.engine`` (auto, mlx, llamacpp), the host and the model's format.

``auto`` picks MLX on Apple silicon (Metal); on any other host llama.cpp when the model is a GGUF
and ``llama_cpp`` is installed (its integer SIMD kernels are several times faster than MLX's CPU
backend), else MLX. A GGUF given to MLX is imported into an MLX directory in edged's cache once.
Imports no engine library until :func:`create_engine` builds the chosen one.
"""

from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from edged.engine.types import Engine
from edged.models.files import ModelInvalid
from edged.settings import ModelSettings

log = structlog.get_logger("edged.engine")
EngineName = Literal["mlx", "llamacpp"]
INSTALL_HINT = (
    "install it with: CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON' "
    "pip install 'edged[llamacpp]' (or scripts/install-llamacpp)"
)


class EngineUnavailable(ModelInvalid):
    """The configured engine cannot run here (not installed, or not for this model format)."""


@dataclass(frozen=True)
class EngineChoice:
    engine: EngineName
    reason: str


def gguf_file(path: str) -> Path | None:
    """The GGUF file ``path`` names (a .gguf file, or a directory holding exactly one), else None."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return p
    found = sorted(p.glob("*.gguf")) if p.is_dir() else []
    return found[0] if len(found) == 1 else None


def llamacpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def apple_silicon(system: str | None = None, machine: str | None = None) -> bool:
    return (system or platform.system()) == "Darwin" and (machine or platform.machine()) == "arm64"


def choose_engine(settings: ModelSettings, *, apple: bool | None = None, llamacpp: bool | None = None) -> EngineChoice:
    """The engine for ``settings`` on this host (``apple``/``llamacpp`` override the host facts in tests)."""
    apple = apple_silicon() if apple is None else apple
    llamacpp = llamacpp_installed() if llamacpp is None else llamacpp
    gguf = gguf_file(settings.path) is not None
    if settings.engine == "mlx":
        return EngineChoice("mlx", "model.engine = mlx" + (" (the GGUF is imported for MLX)" if gguf else ""))
    if settings.engine == "llamacpp":
        if not llamacpp:
            raise EngineUnavailable(f"model.engine = llamacpp, but llama_cpp is not installed; {INSTALL_HINT}")
        if not gguf:
            raise EngineUnavailable(f"model.engine = llamacpp needs a GGUF model; {settings.path} is not one")
        return EngineChoice("llamacpp", "model.engine = llamacpp")
    if apple:
        return EngineChoice("mlx", "auto: Apple silicon, MLX runs on Metal")
    if not gguf:
        return EngineChoice("mlx", "auto: the model is an MLX directory, not a GGUF")
    if not llamacpp:
        return EngineChoice(
            "mlx", f"auto: GGUF model but llama_cpp is not installed, so MLX imports it; {INSTALL_HINT}"
        )
    return EngineChoice("llamacpp", f"auto: GGUF model on {platform.system()} {platform.machine()} with llama_cpp")


def create_engine(settings: ModelSettings) -> Engine:
    """Build the chosen engine (logs ``engine_chosen`` with the reason)."""
    choice = choose_engine(settings)
    log.info("engine_chosen", engine=choice.engine, reason=choice.reason, path=settings.path)
    if choice.engine == "llamacpp":
        from edged.engine.llamacpp import LlamaCppEngine

        return LlamaCppEngine(settings)
    from edged.engine.mlx import MlxEngine

    gguf = gguf_file(settings.path)
    if gguf is not None:
        settings = settings.model_copy(update={"path": str(_imported(gguf)), "name": settings.display_name()})
    return MlxEngine(settings)


def _imported(gguf: Path) -> Path:
    """The MLX directory imported from ``gguf`` into edged's cache (once)."""
    from edged.models.gguf_import import import_gguf
    from edged.models.store import models_dir

    out = models_dir() / gguf.stem
    return out if (out / "config.json").is_file() else import_gguf(gguf, out)
