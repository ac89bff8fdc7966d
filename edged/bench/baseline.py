"""Raw mlx-lm, as shipped: ``mlx_lm.load`` + ``stream_generate`` in a plain loop (no cache, no bus, no edged).

Runs in its own process (``python -m edged.bench.baseline JOB.json``), so neither edged's OpenBLAS
nor its float32 weights leak in, and its peak memory is its own. The job names the model directory,
the chat messages edged builds, and how many of them to generate for with which budgets; the
answer (one JSON line on stdout) has every prompt's token ids, rendered with the model's chat
template exactly as ``MlxEngine.render`` does, and the timings of the generated ones.

Each prompt's budget is the number of tokens edged generated for it, and end-of-sequence is
suppressed, so every engine in the table does the same amount of work per prompt.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_child(module: str, job: dict[str, Any], workdir: Path, timeout: float | None = None) -> dict[str, Any]:
    """Run ``python -m module JOB.json`` and return the JSON it prints last; its stderr goes to a log file."""
    name = module.rsplit(".", 1)[-1]
    job_path = workdir / f"{name}-job.json"
    job_path.write_text(json.dumps(job))
    with (workdir / f"{name}.log").open("wb") as err:
        out = subprocess.run(
            [sys.executable, "-m", module, str(job_path)],
            stdout=subprocess.PIPE,
            stderr=err,
            check=True,
            timeout=timeout,
        )
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def timed(stream: Any, started: float) -> dict[str, Any]:
    """Prefill (to the first token) and decode times of a token stream; counts the tokens."""
    first, count = None, 0
    for _ in stream:
        first = first or time.perf_counter()
        count += 1
    ended = time.perf_counter()
    first = first or ended
    return {
        "completion_tokens": count,
        "prefill_ms": (first - started) * 1000,
        "decode_ms": (ended - first) * 1000,
        "total_ms": (ended - started) * 1000,
    }


def main(job_path: str) -> None:
    import mlx.core as mx
    from mlx_lm import load, stream_generate

    job = json.loads(Path(job_path).read_text())
    started = time.perf_counter()
    model, tokenizer = load(job["model"])[:2]  # (model, tokenizer), plus the config when asked for
    load_s = time.perf_counter() - started
    prompts = [
        list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False, tokenize=True))
        for messages in job["messages"]
    ]
    for _ in stream_generate(model, tokenizer, mx.array(tokenizer.encode("warm up")), max_tokens=1):
        pass  # as edged does at load: lazy initialisation is not a request's cost
    eos = mx.array(sorted(tokenizer.eos_token_ids))

    def no_eos(_: mx.array, logits: mx.array) -> mx.array:
        logits[..., eos] = -mx.inf
        return logits

    rows = []
    for ids, budget in zip(prompts, job["max_tokens"]):
        started = time.perf_counter()
        stream = stream_generate(model, tokenizer, mx.array(ids), max_tokens=budget, logits_processors=[no_eos])
        row = timed(stream, started)  # greedy: no sampler
        rows.append({"prompt_tokens": len(ids), "max_tokens": budget, **row})
        print(json.dumps({"progress": len(rows), **row}), file=sys.stderr, flush=True)
    print(json.dumps({"load_s": load_s, "peak_rss_mb": peak_rss_mb(), "prompts": prompts, "rows": rows}))


if __name__ == "__main__":
    main(sys.argv[1])
