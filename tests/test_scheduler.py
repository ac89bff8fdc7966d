"""The engine's scheduler on real models: prefix and session cache reuse, commands before queries,
batching, fairness and jump-forward. Equality is asserted under greedy sampling; speed never is."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import TEST_MODEL

from edged.devices.actions import output_model, parse_answer
from edged.devices.prompts import device_messages
from edged.devices.registry import load_registry
from edged.engine.mlx import MlxEngine
from edged.prompts import Turn, build_messages
from edged.settings import ModelSettings, NoThinkSampling

CONFIG = Path(__file__).resolve().parent.parent / "config"
REGISTRY = load_registry(CONFIG / "registry-home.toml")
SCHEMA = output_model(REGISTRY).model_json_schema()
GREEDY = NoThinkSampling(temperature=0.0, top_p=1.0, top_k=0, max_tokens=24)
UTTERANCES = [
    "turn off the kitchen lights",
    "lock the front door",
    "set the living room to 21 degrees",
    "open the garage",
]


def _command(text: str) -> list[dict[str, str]]:
    return device_messages(REGISTRY, text, states={})


def _query(text: str = "why is pump 3 noisy?") -> list[dict[str, str]]:
    return build_messages("query", text)


def test_second_command_reuses_the_prefix_and_tokens_match_without_cache(engine, tiny_model_dir):
    """The registry's system prompt is prefilled once; cached or not, greedy decoding gives the same tokens."""
    first = engine.generate(_command("dim the hall light"), "no_think", GREEDY, schema=SCHEMA, priority="high")
    second = engine.generate(_command("dim the hall light"), "no_think", GREEDY, schema=SCHEMA, priority="high")
    uncached_engine = MlxEngine(ModelSettings(path=str(tiny_model_dir), prefix_cache_mb=0, **TEST_MODEL))
    try:
        uncached = uncached_engine.generate(
            _command("dim the hall light"), "no_think", GREEDY, schema=SCHEMA, priority="high"
        )
    finally:
        uncached_engine.close()
    assert second.cached_tokens > 0 and uncached.cached_tokens == 0
    assert first.tokens == second.tokens == uncached.tokens
    stats = engine.cache_stats()
    assert stats is not None and stats["hits"] >= 1 and 0 < stats["bytes"] <= 512 << 20


def test_a_session_turn_starts_after_its_own_history(engine):
    """With keep=True the finished turn stays cached: the next turn reuses more than the static system prompt."""
    question = "is pump 3 fine?"
    first = engine.generate(_query(question), "no_think", GREEDY, keep=True)
    history = [Turn(question, first.answer, first.completion_tokens)]
    second = engine.generate(build_messages("query", "and pump 4?", history=history), "no_think", GREEDY, keep=True)
    system = engine.tokenizer.apply_chat_template([_query()[0]], add_generation_prompt=False, tokenize=True)
    user = engine.tokenizer.encode(question, add_special_tokens=False)
    assert second.cached_tokens >= len(system) + len(user)


def test_a_command_overtakes_a_running_query(engine):
    """A command queued while a query decodes runs from the next step on and finishes first."""
    query_steps: list[int] = []  # the scheduler's step count each time the query advanced
    command: dict[str, object] = {}
    submitted = threading.Event()

    def submit_command() -> None:
        command["gen"] = engine.generate(
            _command("turn off the kitchen lights"), "no_think", GREEDY, schema=SCHEMA, priority="high"
        )

    def query_progress() -> bool:
        query_steps.append(engine.scheduler.steps)
        if len(query_steps) == 3:
            threading.Thread(target=submit_command).start()
            submitted.set()
        return False

    long_query = NoThinkSampling(temperature=0.0, top_p=1.0, top_k=0, max_tokens=80)
    query = engine.generate(_query(), "no_think", long_query, should_stop=query_progress, priority="normal")
    assert submitted.is_set() and "gen" in command
    cmd = command["gen"]
    queued, started, finished = cmd.step_span
    assert query.finish_reason == "length" and query.step_span[2] > finished  # the command finished first
    assert started - queued <= 1  # it ran at the first step after it was queued
    overlapping = [s for s in query_steps if queued < s <= finished]
    assert len(overlapping) <= cmd.steps // engine.scheduler.fair_share + 1  # the query only got its fair share


def test_a_query_still_finishes_under_a_steady_command_stream(engine):
    """Fairness: commands keep arriving, the query gets a step after every fair_share command steps."""
    query_done = threading.Event()
    finished_during_query: list[int] = []
    after_query: list[int] = []

    flowing = threading.Event()

    def stream() -> None:
        while True:
            running = not query_done.is_set()
            gen = engine.generate(
                _command("open the garage"),
                "no_think",
                GREEDY,
                schema=SCHEMA,
                priority="high",
                should_stop=lambda: flowing.set() or False,
            )
            (finished_during_query if running and not query_done.is_set() else after_query).append(gen.step_span[2])
            if not running:
                return

    with ThreadPoolExecutor(2) as pool:
        streams = [pool.submit(stream) for _ in range(2)]
        assert flowing.wait(120)  # commands are decoding before the query arrives
        query_sampling = NoThinkSampling(temperature=0.0, top_p=1.0, top_k=0, max_tokens=16)
        query = engine.generate(_query(), "no_think", query_sampling, priority="normal")
        query_done.set()
        for s in streams:
            s.result(timeout=300)
    assert query.finish_reason == "length" and query.completion_tokens == 16
    assert finished_during_query  # commands did flow while the query ran, yet it finished
    assert after_query  # and the stream was still going when it did


@pytest.mark.parametrize("which", ["engine", "smol_engine"])
def test_concurrent_commands_are_batched_and_match_single_runs(request, which):
    """Commands decoded together in one batch give the same greedy tokens as each alone (SmolLM2's
    answers have forced chunks of different lengths in one step: ragged rows)."""
    engine = request.getfixturevalue(which)
    singles = [engine.generate(_command(t), "no_think", GREEDY, schema=SCHEMA, priority="high") for t in UTTERANCES]
    engine.scheduler.largest_batch = 0
    packed_before = engine.scheduler.packed_steps
    barrier = threading.Barrier(len(UTTERANCES))

    def run(text: str):
        barrier.wait(30)
        return engine.generate(_command(text), "no_think", GREEDY, schema=SCHEMA, priority="high")

    with ThreadPoolExecutor(len(UTTERANCES)) as pool:
        batched = list(pool.map(run, UTTERANCES))
    assert engine.scheduler.largest_batch >= 2
    assert [b.tokens for b in batched] == [s.tokens for s in singles]
    if which == "smol_engine":  # some steps had padded rows: those ran on the real positions only
        assert engine.scheduler.packed_steps > packed_before


@pytest.mark.parametrize("text", ["turn off the kitchen lights", "set the living room thermostat to 21"])
def test_jump_forward_counts_forced_tokens_and_changes_nothing(smol_engine, text):
    """SmolLM2 with the home registry: forced tokens are appended without sampling; greedy output is the same."""
    sampling = NoThinkSampling(temperature=0.0, top_p=1.0, top_k=0, max_tokens=160)
    jumped = smol_engine.generate(
        _command(text), "no_think", sampling, schema=SCHEMA, priority="high", jump_forward=True
    )
    stepped = smol_engine.generate(
        _command(text), "no_think", sampling, schema=SCHEMA, priority="high", jump_forward=False
    )
    print(
        f"\n{text!r}: completion={jumped.completion_tokens} forced={jumped.forced_tokens} "
        f"sampled={jumped.completion_tokens - jumped.forced_tokens} steps={jumped.steps} "
        f"(without jump-forward: {stepped.steps})"
    )
    assert jumped.forced_tokens > 0 and stepped.forced_tokens == 0
    assert jumped.steps < stepped.steps
    assert jumped.answer == stepped.answer
    actions, _say = parse_answer(REGISTRY, output_model(REGISTRY), jumped.answer)
    assert actions


def test_submit_queues_by_batch_limit_and_withdraw_takes_back_the_unstarted(engine):
    """With one generation per priority, later queries wait unstarted in the engine's queue: ``queued`` counts
    them, ``withdraw`` hands them back (never finished), and a waiting one reports its wait as queue_ms."""
    from edged.engine.types import GenerationRequest

    long_query = NoThinkSampling(temperature=0.0, top_p=1.0, top_k=0, max_tokens=40)
    running, results = threading.Event(), {}
    finished = {name: threading.Event() for name in "abcd"}

    def done(name):
        return lambda outcome: (results.__setitem__(name, outcome), finished[name].set())

    saved, engine.scheduler.max_batch = engine.scheduler.max_batch, 1
    try:
        first = GenerationRequest(_query(), "no_think", long_query, should_stop=lambda: running.set() or False)
        engine.submit(first, done("a"))
        assert running.wait(120)
        waiting = [GenerationRequest(_query(f"pump {i}?"), "no_think", GREEDY) for i in (1, 2)]
        for name, request in zip("bc", waiting):
            engine.submit(request, done(name))
        assert engine.queued() == 2
        assert [id(r) for r in engine.withdraw()] == [id(r) for r in waiting] and engine.queued() == 0
        engine.submit(GenerationRequest(_query("pump 4?"), "no_think", GREEDY), done("d"))
        assert finished["a"].wait(300) and finished["d"].wait(300)
    finally:
        engine.scheduler.max_batch = saved
    a, d = results["a"], results["d"]
    assert not finished["b"].is_set() and not finished["c"].is_set()
    assert d.step_span[1] >= a.step_span[2]  # it started once the first had finished
    assert d.queue_ms > 0 and a.finish_reason == "length"


def test_a_request_expired_in_the_queue_ends_without_prefill(engine):
    """``expired`` is asked once when a request leaves the queue: true ends it there, no step spent on it."""
    from edged.engine.types import GenerationRequest, generate

    asked: list[int] = []
    request = GenerationRequest(_query(), "no_think", GREEDY, expired=lambda: asked.append(1) or True)
    gen = generate(engine, request)
    assert (gen.finish_reason, gen.completion_tokens, gen.steps, gen.cached_tokens) == ("stopped", 0, 0, 0)
    assert asked == [1]


@pytest.mark.parametrize("which", ["engine", "smol_engine"])
def test_commands_waiting_together_are_prefilled_in_one_step_and_match_single_runs(request, which):
    """Commands queued at once, after the registry prefix is cached, have the rest of their prompts
    prefilled together (one forward pass) and still give each one's greedy tokens alone."""
    from edged.engine.types import GenerationRequest

    engine = request.getfixturevalue(which)
    singles = [engine.generate(_command(t), "no_think", GREEDY, schema=SCHEMA, priority="high") for t in UTTERANCES]
    grouped_before = engine.scheduler.grouped_prefills
    results: dict[int, object] = {}
    done = threading.Event()

    def finished(i: int):
        def record(outcome: object) -> None:
            results[i] = outcome
            if len(results) == len(UTTERANCES):
                done.set()

        return record

    with engine.scheduler._cond:  # the engine thread takes all of them in at once
        for i, text in enumerate(UTTERANCES):
            request_ = GenerationRequest(_command(text), "no_think", GREEDY, SCHEMA, priority="high")
            engine.submit(request_, finished(i))
    assert done.wait(600)
    assert engine.scheduler.grouped_prefills > grouped_before
    assert [results[i].tokens for i in range(len(UTTERANCES))] == [s.tokens for s in singles]
