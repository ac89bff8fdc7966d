"""Reference column: llama.cpp (llama-cpp-python) on the same GGUF weights and the same prompt token ids.

Optional: used only when ``llama_cpp`` imports (it compiles from source on Linux, ~15 minutes on
two cores). One ``Llama`` object serves every prompt, so llama.cpp reuses the KV cache of the
longest common prefix (the system prompt) from one request to the next. Greedy, same budgets,
end-of-sequence suppressed: exactly as many tokens as edged generated for each prompt.
Runs in its own process: ``python -m edged.bench.llamacpp JOB.json``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from edged.bench.baseline import peak_rss_mb, timed


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def main(job_path: str) -> None:
    from llama_cpp import Llama

    job = json.loads(Path(job_path).read_text())
    started = time.perf_counter()
    llm = Llama(model_path=job["gguf"], n_ctx=job.get("n_ctx", 4096), n_threads=os.cpu_count(), seed=0, verbose=False)
    load_s = time.perf_counter() - started
    # As edged's first command (shown apart) builds its prefix cache, one untimed call puts the start
    # all prompts share (the system prompt) in llama.cpp's KV cache, so every timed prompt reuses it.
    first, *others = job["prompts"]
    shared = min(
        (next((i for i, (a, b) in enumerate(zip(first, o)) if a != b), len(o)) for o in others), default=len(first) - 1
    )
    for _ in llm.create_completion(prompt=first[: max(1, shared)], max_tokens=1, temperature=0.0, top_k=1, stream=True):
        pass
    rows = []
    no_eos = {llm.token_eos(): float("-inf")}
    for ids, budget in zip(job["prompts"], job["max_tokens"]):
        started = time.perf_counter()
        stream = llm.create_completion(
            prompt=ids, max_tokens=budget, temperature=0.0, top_k=1, stream=True, logit_bias=no_eos
        )
        row = timed(stream, started)
        rows.append({"prompt_tokens": len(ids), "max_tokens": budget, **row})
        print(json.dumps({"progress": len(rows), **row}), file=sys.stderr, flush=True)
    print(json.dumps({"load_s": load_s, "peak_rss_mb": peak_rss_mb(), "rows": rows}))


if __name__ == "__main__":
    main(sys.argv[1])
