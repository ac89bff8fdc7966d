"""``edged demo`` and ``edged eval`` build the engine ``model.engine`` names, through the daemon's factory
(``edged.engine.select.create_engine``), and hand the offline models over in the form it loads."""

from __future__ import annotations

from pathlib import Path

import pytest

import edged.engine.select
from edged.models import store
from edged.settings import ModelSettings, Settings


def test_eval_builds_its_engine_with_the_daemons_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    from edged.evaluate import RefusingEngine, _eval_engine

    built: list[ModelSettings] = []
    sentinel = RefusingEngine()

    def factory(model: ModelSettings) -> RefusingEngine:
        built.append(model)
        return sentinel

    monkeypatch.setattr(edged.engine.select, "create_engine", factory)
    settings = Settings(model={"path": "/models/elsewhere", "engine": "llamacpp"})
    engine, model = _eval_engine("/models/model.gguf", settings)
    assert engine is sentinel and built == [model]
    assert (model.engine, model.path, model.seed, model.no_think.temperature) == (
        "llamacpp",
        "/models/model.gguf",
        0,
        0,
    )

    engine, _model = _eval_engine("none", settings)
    assert isinstance(engine, RefusingEngine) and engine is not sentinel and len(built) == 1


def test_the_offline_models_come_in_the_form_the_engine_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "offline_model_dir", lambda which: Path(f"/cache/{which}-mlx"))
    monkeypatch.setattr(store, "ensure_demo_model", lambda: Path("/cache/smollm2-mlx"))
    monkeypatch.setattr(store, "demo_gguf", lambda: Path("/site/smollm2.gguf"))
    assert store.offline_model_path("smollm2", "auto") == Path("/cache/smollm2-mlx")
    assert store.offline_model_path("tiny", "mlx") == Path("/cache/tiny-mlx")
    assert store.offline_model_path("smollm2", "llamacpp") == Path("/site/smollm2.gguf")
    assert store.demo_model_path("auto") == Path("/cache/smollm2-mlx")
    assert store.demo_model_path("llamacpp") == Path("/site/smollm2.gguf")


def test_the_tiny_offline_model_for_llamacpp_is_a_gguf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGED_CACHE_DIR", str(tmp_path))
    path = store.offline_model_path("tiny", "llamacpp")
    assert path.suffix == ".gguf" and path.is_file() and edged.engine.select.gguf_file(str(path)) == path
