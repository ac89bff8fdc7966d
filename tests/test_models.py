"""Getting and inspecting models: info, list, pull (offline here), start-up checks, weight format, long context."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import TEST_MODEL

from edged.models.files import ModelInvalid, choose_dtype, read_facts
from edged.settings import ModelSettings

CPU_FORMAT = "keep" if sys.platform == "darwin" else "float32"  # Metal keeps quantised weights


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("EDGED_", "HF_"))}
    return subprocess.run(
        [sys.executable, "-m", "edged.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **(env or {})},
    )


def test_info_for_the_imported_smollm2(smollm2_dir):
    """info: architecture, parameter count, quantisation, size, context, thinking, load format, memory."""
    out = _cli("model", "info", str(smollm2_dir), "--json", "--context", "8192")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["architecture"] == "llama" and 134e6 < info["parameters"] < 136e6
    assert info["quantization"] == "4-bit (group 32), some layers 8-bit"
    assert info["context_length"] == 8192 and info["thinking"] is False
    assert info["weights_at_load"] == CPU_FORMAT
    assert info["estimated_memory_bytes"] > info["parameters"] * 4


def test_info_for_the_tiny_qwen3_reports_thinking(tiny_model_dir):
    """The Qwen3 template and <think> tokens make a thinking-capable model."""
    info = json.loads(_cli("model", "info", str(tiny_model_dir), "--json").stdout)
    assert info["architecture"] == "qwen3" and info["thinking"] is True and info["context_length"] == 32768


def test_info_on_a_missing_model_names_it(tmp_path):
    out = _cli("model", "info", str(tmp_path / "absent"))
    assert out.returncode == 2 and str(tmp_path / "absent") in out.stderr


def test_list_finds_models_in_edged_cache(tmp_path, tiny_model_dir):
    """list shows MLX directories in edged's cache directory."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine").symlink_to(tiny_model_dir)
    out = _cli("model", "list", env={"EDGED_CACHE_DIR": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hf")})
    assert out.returncode == 0 and "mine" in out.stdout and "edged cache" in out.stdout


def test_pull_without_a_reachable_hub_fails_clearly(tmp_path):
    """pull is the only command that downloads; with no hub it says so and exits 1, no traceback."""
    out = _cli(
        "model",
        "pull",
        "Qwen/Qwen3-4B-MLX-4bit",
        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path), "HF_HUB_ETAG_TIMEOUT": "2"},
    )
    assert out.returncode == 1
    assert "could not download Qwen/Qwen3-4B-MLX-4bit" in out.stderr and "Traceback" not in out.stderr


def test_incomplete_directory_is_refused_naming_what_is_missing(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "tokenizer.json").unlink()
    (broken / "vocab.json").unlink()
    with pytest.raises(ModelInvalid, match="missing tokenizer.json"):
        read_facts(broken)


def test_tokenizer_without_chat_template_is_refused(tmp_path, tiny_model_dir):
    from edged.engine.mlx import MlxEngine

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelInvalid, match="no chat template"):
        MlxEngine(ModelSettings(path=str(bare), **TEST_MODEL))


def test_weight_format_choice(smollm2_dir, tiny_model_dir):
    """auto: float32 on CPU when memory allows; quantised kept on Metal or when float32 would not fit."""
    smol, tiny = read_facts(smollm2_dir), read_facts(tiny_model_dir)
    assert choose_dtype("auto", smol, metal=False, ram_bytes=24 << 30)[0] == "float32"
    assert choose_dtype("auto", smol, metal=True, ram_bytes=24 << 30)[0] == "keep"
    assert choose_dtype("auto", smol, metal=False, ram_bytes=512 << 20)[0] == "keep"
    assert choose_dtype("auto", tiny, metal=False, ram_bytes=24 << 30)[0] == "keep"  # already float32
    assert choose_dtype("bfloat16", smol, metal=False, ram_bytes=24 << 30) == ("bfloat16", "configured")


def test_long_context_applies_yarn_without_touching_the_files(tiny_model_dir):
    """long_context loads YaRN rope scaling (factor 4 over 32,768) and raises the context limit."""
    from mlx_lm.models.rope_utils import YarnRoPE

    from edged.engine.mlx import MlxEngine

    before = (tiny_model_dir / "config.json").read_bytes()
    engine = MlxEngine(ModelSettings(path=str(tiny_model_dir), long_context=True, **TEST_MODEL))
    assert engine.context_limit == 131072
    assert isinstance(engine.model.model.layers[0].self_attn.rope, YarnRoPE)
    assert (tiny_model_dir / "config.json").read_bytes() == before
    assert MlxEngine(ModelSettings(path=str(tiny_model_dir), **TEST_MODEL)).context_limit == 32768


def test_prompt_over_the_context_limit_is_refused_before_generation(start_daemon, client_for):
    """With a 128-token context, a long request is context_overflow, with nothing generated."""
    d = start_daemon(own_engine=True, model={"max_context": 128})
    c = client_for(d.base)
    r = c.request("command", {"text": "lights " * 200})
    assert (r["status"], r["error"]["code"]) == ("error", "context_overflow")
    assert "128" in r["error"]["message"] and r["usage"]["completion_tokens"] == 0
    assert c.request("command", {"text": "lights off"})["status"] == "ok"


def test_smollm2_understands_and_says_thinking_is_unavailable(start_daemon, smollm2_dir, client_for):
    """A real small model answers a plain question correctly; a query notes that it cannot think."""
    from conftest import make_settings

    greedy = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_tokens": 24}
    model = {"name": "SmolLM2-135M-Instruct", "path": str(smollm2_dir), "no_think": greedy}
    daemon = start_daemon(make_settings(smollm2_dir, model=model), own_engine=True)
    assert daemon.engine.dtype == CPU_FORMAT
    r = client_for(daemon.base).request("query", {"text": "What is the capital of France? Answer in one sentence."})
    assert r["status"] == "ok" and "Paris" in r["result"]["text"]
    assert r["mode"] == "no_think" and "no thinking mode" in r["result"]["notes"][0]
