"""The MLX engine on the tiny random-weight Qwen3 with the real Qwen3 tokenizer and template."""

from __future__ import annotations

import json

import pytest
from conftest import TEST_MODEL

from edged.models.files import ModelNotFound, resolve_model_path
from edged.prompts import build_messages
from edged.settings import ModelSettings

MESSAGES = build_messages("command", "turn off the kitchen lights")
SETTINGS = ModelSettings(path="unused", **TEST_MODEL)


def _tail(engine, mode: str, n: int) -> str:
    return engine.tokenizer.decode(engine.render(MESSAGES, mode)[-n:])


def test_think_tokens_come_from_the_tokenizer(engine):
    """The split uses the tokenizer's own ids for <think> and </think>."""
    assert engine.think.start == engine.tokenizer.convert_tokens_to_ids("<think>") == 151667
    assert engine.think.end == engine.tokenizer.convert_tokens_to_ids("</think>") == 151668


def test_no_think_prompt_ends_with_the_empty_think_block(engine):
    """enable_thinking=False: the generation prompt closes an empty thinking block."""
    assert _tail(engine, "no_think", 10).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert engine.think.end in engine.render(MESSAGES, "no_think")[-3:]


def test_think_prompt_leaves_thinking_to_the_model(engine):
    """enable_thinking=True: the prompt ends at the assistant header, no think block."""
    tail = _tail(engine, "think", 10)
    assert tail.endswith("<|im_start|>assistant\n")
    assert "</think>" not in tail


def test_thinking_budget_closes_the_block_and_the_answer_follows(engine):
    """A random model never writes </think>; the budget forces it, the split happens at its id."""
    gen = engine.generate(MESSAGES, "think", SETTINGS.think)
    budget = SETTINGS.think.thinking_budget
    assert gen.thinking_closed_by == "budget"
    assert gen.reasoning_tokens == budget
    assert gen.completion_tokens > budget  # answer tokens came after the forced </think>
    assert "</think>" not in gen.answer and "</think>" not in (gen.reasoning or "")


def test_no_think_generation_has_no_reasoning(engine):
    """Commands run non-thinking: no reasoning, an answer, bounded by max_tokens."""
    gen = engine.generate(MESSAGES, "no_think", SETTINGS.no_think)
    assert gen.reasoning is None
    assert 0 < gen.completion_tokens <= SETTINGS.no_think.max_tokens
    assert gen.prompt_tokens == len(engine.render(MESSAGES, "no_think"))


def test_should_stop_ends_generation_early(engine):
    """A deadline checked between tokens stops generation in the middle."""
    gen = engine.generate(MESSAGES, "no_think", SETTINGS.no_think, should_stop=lambda: True)
    assert gen.finish_reason == "stopped"
    assert gen.completion_tokens == 1


def test_missing_directory_names_the_path(tmp_path):
    """A path that does not exist fails with a message naming it; nothing is downloaded."""
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFound, match=str(missing)):
        resolve_model_path(str(missing))


def test_repo_id_not_in_cache_is_refused_offline(tmp_path, monkeypatch):
    """A repo id is accepted only from the local cache; otherwise a clear error, no download."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFound, match="never downloads"):
        resolve_model_path("Qwen/Qwen3-4B-MLX-4bit")


def test_directory_without_config_is_refused(tmp_path):
    """An existing directory that is not a model directory is named in the error."""
    with pytest.raises(ModelNotFound, match="config.json"):
        resolve_model_path(str(tmp_path))


def test_prefix_cache_reuses_the_system_prompt_and_changes_nothing(engine, tiny_model_dir):
    """The second request with the same system text is served from the cache, with identical greedy tokens."""
    from edged.engine.mlx import MlxEngine
    from edged.settings import NoThinkSampling

    greedy = NoThinkSampling(temperature=0.0, max_tokens=12)
    long_system = build_messages("query", "why?")[0]["content"] * 3
    messages = [{"role": "system", "content": long_system}, {"role": "user", "content": "is pump 3 fine?"}]
    first = engine.generate(messages, "no_think", greedy)
    second = engine.generate(messages, "no_think", greedy)
    uncached = MlxEngine(ModelSettings(path=str(tiny_model_dir), prefix_cache_mb=0, **TEST_MODEL)).generate(
        messages, "no_think", greedy
    )
    assert second.cached_tokens > 32 and second.cached_tokens < second.prompt_tokens
    assert first.answer == second.answer == uncached.answer and uncached.cached_tokens == 0


def test_a_constrained_answer_near_its_token_limit_heads_for_a_valid_end(engine):
    """The random model never finishes a diagnosis in 120 tokens on its own (cut off mid-string: invalid).
    In the last tokens the grammar's closing tokens win, so every answer ends valid, by the grammar."""
    from edged.diagnostics.diagnosis import diagnosis_model

    model = diagnosis_model({"pump_3/vibration": [8.06, 4.5]})
    sampling = SETTINGS.no_think.model_copy(update={"max_tokens": 120})
    messages = build_messages("query", "why is pump 3 vibrating?")
    for _ in range(4):
        gen = engine.generate(messages, "no_think", sampling, schema=model.model_json_schema())
        assert gen.finish_reason == "stop" and gen.completion_tokens <= 120
        model.model_validate_json(gen.answer)


def test_a_constrained_answer_is_stop_exactly_when_it_is_whole(engine):
    """At every token limit: finish_reason "stop" when the answer parses (even if its last token hit the
    limit), "length" when it was cut off; forced tokens never run past the limit."""
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "say": {"type": "string", "maxLength": 40},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["say", "tags"],
    }
    messages = build_messages("query", "why is pump 3 vibrating?")
    seen = set()
    for limit in range(1, 25):
        gen = engine.generate(
            messages, "no_think", SETTINGS.no_think.model_copy(update={"max_tokens": limit}), schema=schema
        )
        assert gen.completion_tokens <= limit
        try:
            json.loads(gen.answer)
            whole = True
        except ValueError:
            whole = False
        assert gen.finish_reason == ("stop" if whole else "length"), (limit, gen.answer)
        seen.add(gen.finish_reason)
    assert seen == {"stop", "length"}


EXIT_SCRIPT = """
import sys
from edged.engine.mlx import MlxEngine
from edged.engine.types import GenerationRequest, generate
from edged.settings import ModelSettings, SamplingSettings

engine = MlxEngine(ModelSettings(path=sys.argv[1]))
greedy = SamplingSettings(temperature=0.0, top_p=1.0, top_k=0, max_tokens=4)
generate(engine, GenerationRequest([{"role": "user", "content": "hi"}], "no_think", greedy, None))
engine.close()
"""


@pytest.mark.parametrize("attempt", range(2))
def test_a_process_exits_cleanly_after_closing_an_engine_that_generated(attempt, tiny_model_dir, tmp_path):
    """Closing an engine that has generated must not make the process abort at exit (SIGABRT from MLX's
    teardown when its engine thread had ended): a daemon stopped by its service manager exits with its code."""
    import subprocess
    import sys

    script = tmp_path / "close_and_exit.py"
    script.write_text(EXIT_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
