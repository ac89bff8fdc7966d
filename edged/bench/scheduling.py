"""In-process figures for the scheduler on SmolLM2-135M with the home registry (greedy commands).

- command latency alone vs while a long query is decoding (the command preempts it);
- 8 concurrent commands decoded as one batch vs the same 8 one after another;
- sampled vs grammar-forced tokens per command (jump-forward);
- ``--ceiling``: what one forward pass costs after the registry prompt, for 1 to 128 new positions,
  split into a fixed part (paid once per step, however many rows it feeds: what batching saves) and
  a part per position (paid by every token of every row: what batching cannot save).

Run: ``python -u -m edged.bench.scheduling [--batch-only | --ceiling] [model_dir]`` (default: the demo model,
imported on first use).
Figures are printed; nothing is asserted. The machine's other load changes them: compare within one run.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edged.engine.blas import preload_blas

preload_blas("auto")  # as `edged run` does, before anything imports mlx

from edged.devices.actions import output_model  # noqa: E402
from edged.devices.prompts import device_messages  # noqa: E402
from edged.devices.registry import load_registry  # noqa: E402
from edged.engine.costs import forward_seconds  # noqa: E402
from edged.engine.mlx import MlxEngine  # noqa: E402
from edged.engine.types import Generation  # noqa: E402
from edged.models.store import ensure_demo_model  # noqa: E402
from edged.prompts import build_messages  # noqa: E402
from edged.settings import ModelSettings, NoThinkSampling  # noqa: E402

CONFIG = Path(__file__).resolve().parents[2] / "config"
REGISTRY = load_registry(CONFIG / "registry-home.toml")
SCHEMA = output_model(REGISTRY).model_json_schema()
COMMAND = NoThinkSampling(temperature=0.0, top_p=1.0, top_k=0, max_tokens=160)
QUERY = NoThinkSampling(temperature=0.0, top_p=1.0, top_k=0, max_tokens=120)
UTTERANCES = [
    "turn off the kitchen lights",
    "lock the front door",
    "set the living room thermostat to 21",
    "open the garage door",
    "turn on the porch light",
    "close the bedroom blinds",
    "dim the hall light to 30 percent",
    "switch off the coffee machine",
]


def command(engine: MlxEngine, text: str, *, jump_forward: bool | None = None) -> tuple[Generation, float]:
    started = time.perf_counter()
    gen = engine.generate(
        device_messages(REGISTRY, text, states={}),
        "no_think",
        COMMAND,
        schema=SCHEMA,
        priority="high",
        jump_forward=jump_forward,
    )
    return gen, time.perf_counter() - started


def main() -> None:
    args = sys.argv[1:]
    only_batch = "--batch-only" in args
    only_ceiling = "--ceiling" in args
    args = [a for a in args if a not in ("--batch-only", "--ceiling")]
    path = args[0] if args else str(ensure_demo_model())
    engine = MlxEngine(ModelSettings(path=path, name="SmolLM2-135M-Instruct", seed=0, scheduler={"max_batch": 8}))
    command(engine, "warm up: turn on the porch light")  # grammar tokenizer and the registry prefix
    if only_ceiling:
        ceiling(engine)
        engine.close()
        return
    if not only_batch:
        per_command(engine)
    batch(engine)
    print("prefix cache:", engine.cache_stats())
    engine.close()


def per_command(engine: MlxEngine) -> None:
    print("== tokens per command (jump-forward) ==")
    alone: list[float] = []
    for i, text in enumerate(UTTERANCES):
        gen, seconds = command(engine, text)
        alone.append(seconds)
        print(
            f"{text!r:42} completion={gen.completion_tokens:3} sampled={gen.completion_tokens - gen.forced_tokens:3} "
            f"forced={gen.forced_tokens:3} steps={gen.steps:3} cached={gen.cached_tokens}/{gen.prompt_tokens} "
            f"{seconds:.2f}s"
        )
        if i == 0:
            stepped, stepped_s = command(engine, text, jump_forward=False)
            print(
                f"{'  the same without jump-forward':42} steps={stepped.steps:3} {stepped_s:.2f}s "
                f"same answer: {stepped.answer == gen.answer}"
            )

    print("== command latency while a query decodes ==")
    steps: list[int] = []
    go = threading.Event()

    def progress() -> bool:
        steps.append(1)
        if len(steps) == 5:
            go.set()
        return False

    query_result: dict[str, float] = {}

    def query() -> None:
        started = time.perf_counter()
        gen = engine.generate(
            build_messages("query", "why does pump 3 make a grinding noise at night?"),
            "no_think",
            QUERY,
            should_stop=progress,
            priority="normal",
        )
        query_result.update(seconds=time.perf_counter() - started, tokens=gen.completion_tokens)

    with ThreadPoolExecutor(1) as pool:
        q = pool.submit(query)
        go.wait(600)
        during: list[float] = []
        for text in UTTERANCES[:2]:
            _, seconds = command(engine, text)
            during.append(seconds)
        q.result()
    base = sum(alone[:2]) / 2
    print(
        f"command alone: mean {base:.2f}s; while the query decodes: {', '.join(f'{s:.2f}s' for s in during)} "
        f"(mean {sum(during) / 2:.2f}s); the query: {query_result['tokens']} tokens in {query_result['seconds']:.1f}s"
    )


def batch(engine: MlxEngine) -> None:
    print("== 8 commands: sequential vs concurrent (one batch) ==")
    started = time.perf_counter()
    sequential = [command(engine, t)[0] for t in UTTERANCES]
    seq_s = time.perf_counter() - started
    engine.scheduler.largest_batch = 0
    started = time.perf_counter()
    with ThreadPoolExecutor(len(UTTERANCES)) as pool:
        batched = [g for g, _ in pool.map(lambda t: command(engine, t), UTTERANCES)]
    batch_s = time.perf_counter() - started
    tokens = sum(g.completion_tokens for g in sequential)
    same = sum(a.tokens == b.tokens for a, b in zip(sequential, batched))
    print(
        f"sequential {seq_s:.1f}s ({tokens / seq_s:.1f} tok/s), concurrent {batch_s:.1f}s "
        f"({sum(g.completion_tokens for g in batched) / batch_s:.1f} tok/s), "
        f"largest batch {engine.scheduler.largest_batch}, identical outputs {same}/{len(UTTERANCES)}"
    )


def ceiling(engine: MlxEngine, widths: tuple[int, ...] = (1, 8, 32, 128)) -> None:
    """Median time of a forward pass feeding ``n`` new positions after the registry prompt's KV cache."""
    print("== forward pass cost after the registry prompt ==")
    prompt = engine.render(device_messages(REGISTRY, "turn on the porch light", states={}), "no_think")
    seconds = forward_seconds(engine.model, prompt, widths)
    for n in widths:
        rate = n / seconds[n]
        print(f"{n:4} new positions after {len(prompt)}: {seconds[n] * 1000:8.1f} ms ({rate:6.1f} positions/s)")
    wide, narrow = max(widths), min(widths)
    per = (seconds[wide] - seconds[narrow]) / (wide - narrow)
    fixed = seconds[narrow] - narrow * per
    print(f"fixed per forward pass {fixed * 1000:.1f} ms, per position {per * 1000:.2f} ms")


if __name__ == "__main__":
    main()
