"""The engine behaviour suite: every engine behind the typed boundary behaves the same.

Each test runs on the MLX engine (the tiny random Qwen3 as an MLX directory) and on the llama.cpp
engine (the same weights exported to GGUF). llama.cpp is skipped only when ``llama_cpp`` is not
installed (``scripts/install-llamacpp``; CI installs it).
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import TEST_MODEL

from edged.engine.types import Generation, GenerationRequest
from edged.prompts import build_messages
from edged.settings import ModelSettings, NoThinkSampling, ThinkSampling

LLAMACPP = importlib.util.find_spec("llama_cpp") is not None
NO_LLAMACPP = "llama_cpp is not installed (scripts/install-llamacpp installs the llamacpp extra)"
ENGINES = ["mlx", pytest.param("llamacpp", marks=pytest.mark.skipif(not LLAMACPP, reason=NO_LLAMACPP))]
MESSAGES = build_messages("command", "turn off the kitchen lights")
GREEDY = NoThinkSampling(temperature=0.0, max_tokens=12)
COMMAND_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "device": {"enum": ["kitchen_light", "hall_light", "pump_3"]},
        "action": {"enum": ["turn_on", "turn_off", "set"]},
        "value": {"type": "integer", "minimum": 0, "maximum": 100},
    },
    "required": ["device", "action", "value"],
}


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir):
    from edged.models.testmodel_gguf import build_test_gguf

    return build_test_gguf(tiny_model_dir)


@pytest.fixture(scope="session")
def llamacpp_engine(tiny_gguf):
    from edged.engine.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(ModelSettings(path=str(tiny_gguf), **TEST_MODEL))
    yield engine
    engine.close()


@pytest.fixture(params=ENGINES)
def any_engine(request) -> Iterator[Any]:
    yield request.getfixturevalue("engine" if request.param == "mlx" else "llamacpp_engine")


def _valid_command(text: str) -> dict[str, Any]:
    answer = json.loads(text)
    assert set(answer) == {"device", "action", "value"}
    assert answer["device"] in COMMAND_SCHEMA["properties"]["device"]["enum"]  # type: ignore[index]
    assert answer["action"] in COMMAND_SCHEMA["properties"]["action"]["enum"]  # type: ignore[index]
    assert isinstance(answer["value"], int) and 0 <= answer["value"] <= 100
    return answer


def test_random_weights_answer_schema_valid_json(any_engine):
    """Sampled from random weights, the grammar still makes every answer match the schema."""
    sampling = NoThinkSampling(temperature=0.7, top_p=0.8, top_k=20, max_tokens=40)
    for _ in range(3):
        gen = any_engine.generate(MESSAGES, "no_think", sampling, schema=COMMAND_SCHEMA)
        assert gen.finish_reason == "stop"
        _valid_command(gen.answer)
        assert gen.forced_tokens > 0  # keys and punctuation were forced, not sampled


def test_thinking_is_split_at_the_think_end_token(any_engine):
    """The reasoning is what came before </think> (by token id), the answer what came after."""
    gen = any_engine.generate(MESSAGES, "think", ThinkSampling(max_tokens=24, thinking_budget=12))
    end = any_engine.think.end
    assert end is not None and end in gen.tokens
    assert gen.reasoning is not None and gen.reasoning_tokens == gen.tokens.index(end)
    assert "</think>" not in gen.answer and "</think>" not in gen.reasoning


def test_thinking_budget_closes_the_block_and_a_valid_answer_follows(any_engine):
    """Random weights never write </think>: the budget forces it, and the constrained answer is still valid."""
    sampling = ThinkSampling(max_tokens=72, thinking_budget=12)
    gen = any_engine.generate(MESSAGES, "think", sampling, schema=COMMAND_SCHEMA)
    assert gen.thinking_closed_by == "budget" and gen.reasoning_tokens == 12
    assert gen.tokens.count(any_engine.think.end) == 1
    _valid_command(gen.answer)


def test_cancel_stops_between_tokens(any_engine):
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) >= 3

    gen = any_engine.generate(MESSAGES, "no_think", NoThinkSampling(max_tokens=40), should_stop=cancelled)
    assert gen.finish_reason == "stopped"
    assert gen.completion_tokens < 40


def test_a_passed_deadline_stops_at_once(any_engine):
    deadline = time.monotonic() - 1
    gen = any_engine.generate(
        MESSAGES, "no_think", NoThinkSampling(max_tokens=40), should_stop=lambda: time.monotonic() > deadline
    )
    assert gen.finish_reason == "stopped" and gen.completion_tokens <= 1


def test_a_request_expired_in_the_queue_ends_without_a_prefill(any_engine):
    from edged.engine.types import generate

    request = GenerationRequest(MESSAGES, "no_think", GREEDY, expired=lambda: True)
    gen = generate(any_engine, request)
    assert gen.finish_reason == "stopped" and gen.completion_tokens == 0 and gen.cached_tokens == 0


def test_a_command_submitted_during_a_long_query_finishes_first(any_engine):
    """Preemption: the query is decoding; the command (high) runs from the next step and ends first."""
    order: list[str] = []
    finished = {name: threading.Event() for name in ("query", "command")}
    query_running = threading.Event()

    def done(name: str):
        def record(outcome: Generation | Exception) -> None:
            assert isinstance(outcome, Generation), outcome
            order.append(name)
            finished[name].set()

        return record

    def query_step() -> bool:
        query_running.set()
        return False

    long_query = GenerationRequest(
        build_messages("query", "why is pump 3 vibrating?"),
        "no_think",
        NoThinkSampling(temperature=0.0, max_tokens=200),
        should_stop=query_step,
    )
    any_engine.submit(long_query, done("query"))
    assert query_running.wait(60)
    any_engine.submit(GenerationRequest(MESSAGES, "no_think", GREEDY, priority="high"), done("command"))
    assert finished["command"].wait(60) and finished["query"].wait(120)
    assert order == ["command", "query"]


def test_concurrent_greedy_generations_equal_single_ones(any_engine):
    """Batched (several sequences in flight) and alone, greedy decoding gives the same tokens."""
    texts = ["turn off the kitchen lights", "dim the hall to 30%", "is pump 3 running?"]
    prompts = [build_messages("command", text) for text in texts]
    alone = [any_engine.generate(p, "no_think", GREEDY).tokens for p in prompts]
    results: dict[int, Generation | Exception] = {}
    all_done = threading.Event()

    def collect(i: int):
        def record(outcome: Generation | Exception) -> None:
            results[i] = outcome
            if len(results) == len(prompts):
                all_done.set()

        return record

    for i, p in enumerate(prompts):
        any_engine.submit(GenerationRequest(p, "no_think", GREEDY), collect(i))
    assert all_done.wait(120)
    together = [results[i].tokens for i in range(len(prompts))]  # type: ignore[union-attr]
    assert together == alone


def test_the_static_prefix_is_reused_and_changes_nothing(any_engine):
    long_system = build_messages("query", "why?")[0]["content"] * 2
    messages = [{"role": "system", "content": long_system}, {"role": "user", "content": "is pump 3 fine?"}]
    first = any_engine.generate(messages, "no_think", GREEDY)
    second = any_engine.generate(messages, "no_think", GREEDY)
    assert 32 < second.cached_tokens < second.prompt_tokens
    assert second.tokens == first.tokens


@pytest.mark.skipif(not LLAMACPP, reason=NO_LLAMACPP)
def test_smollm2_gives_the_same_greedy_text_on_both_engines(smol_engine):
    """The same GGUF weights: MLX (imported, float32) and llama.cpp (the file itself) write the same greedy
    answers to clear-cut prompts. (llama.cpp's integer kernels quantise activations to 8 bits: its logits
    differ by up to ~1 here, so near-ties can go the other way on other prompts.)"""
    from edged.engine.llamacpp import LlamaCppEngine
    from edged.models.store import demo_gguf

    greedy = NoThinkSampling(temperature=0.0, max_tokens=24)
    llama = LlamaCppEngine(ModelSettings(path=str(demo_gguf()), seed=0))
    try:
        for question in ("What is 2 plus 2?", "What is the capital of Germany?"):
            messages = [{"role": "user", "content": question}]
            ours = llama.generate(messages, "no_think", greedy)
            mlx = smol_engine.generate(messages, "no_think", greedy)
            assert ours.prompt_tokens == mlx.prompt_tokens
            assert ours.tokens == mlx.tokens and ours.answer == mlx.answer
            assert ours.finish_reason == mlx.finish_reason == "stop"
    finally:
        llama.close()


def test_auto_chooses_by_host_model_format_and_install(tiny_gguf, tiny_model_dir):
    from edged.engine.select import EngineUnavailable, choose_engine

    def pick(path, engine="auto", **host: bool) -> str:
        return choose_engine(ModelSettings(path=str(path), engine=engine), **host).engine

    assert pick(tiny_gguf, apple=True, llamacpp=True) == "mlx"  # Apple silicon: Metal
    assert pick(tiny_gguf, apple=False, llamacpp=True) == "llamacpp"
    assert pick(tiny_model_dir, apple=False, llamacpp=True) == "mlx"
    fallback = choose_engine(ModelSettings(path=str(tiny_gguf)), apple=False, llamacpp=False)
    assert fallback.engine == "mlx" and "pip install 'edged[llamacpp]'" in fallback.reason
    with pytest.raises(EngineUnavailable, match="not installed"):
        pick(tiny_gguf, "llamacpp", apple=False, llamacpp=False)
    with pytest.raises(EngineUnavailable, match="needs a GGUF"):
        pick(tiny_model_dir, "llamacpp", apple=False, llamacpp=True)


@pytest.mark.skipif(not LLAMACPP, reason=NO_LLAMACPP)
def test_start_up_logs_the_chosen_engine_and_why(tiny_gguf):
    from structlog.testing import capture_logs

    from edged.engine.select import create_engine

    with capture_logs() as logs:
        engine = create_engine(ModelSettings(path=str(tiny_gguf), **TEST_MODEL))
    engine.close()  # type: ignore[attr-defined]
    chosen = [e for e in logs if e["event"] == "engine_chosen"]
    assert chosen and chosen[0]["engine"] == "llamacpp" and chosen[0]["reason"].startswith("auto: GGUF model")


def test_the_numpy_sampler_follows_budget_penalty_and_filters():
    """The llama.cpp engine's token chooser: </think> forced at the budget and never again; top-k, presence."""
    import numpy as np

    from edged.engine.llamacpp_sampling import Sampler

    end = 7
    think = ThinkSampling(max_tokens=8, thinking_budget=3, top_k=2)
    chooser = Sampler(think, think_end=end, seed=0)
    logits = np.arange(10, dtype=np.float32)  # 9 is the favourite
    assert chooser.choose(logits.copy(), [1, 2, 3], None, wrap_up=False) == end
    assert all(chooser.choose(logits.copy(), [1, 2], None, wrap_up=False) in (8, 9) for _ in range(20))  # top-k 2
    assert (
        chooser.choose(np.where(np.arange(10) == end, 99, 0).astype(np.float32), [1, end, 2], None, wrap_up=False)
        != end
    )
    greedy = Sampler(NoThinkSampling(temperature=0.0, max_tokens=4, presence_penalty=2.0), think_end=None, seed=0)
    near = np.array([0, 0, 5.0, 4.0], dtype=np.float32)
    assert greedy.choose(near.copy(), [], None, wrap_up=False) == 2
    assert greedy.choose(near.copy(), [2], None, wrap_up=False) == 3  # 5 - 2 < 4: the seen token loses
