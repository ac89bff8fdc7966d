"""The production-shape row of ``edged bench``: random weights in Qwen3-1.7B's shape on both engines.

The ``gguf`` package writes random Q4_0 weights in the real shape (~1 GB); llama.cpp loads the file,
MLX an import of it (4-bit as loaded, and dequantised to float32, its fastest CPU mode). Each engine
runs in its own process (``python -m edged.bench.production JOB.json``) so its peak memory is its
own: one greedy generation of a fixed prompt, end-of-sequence never reached in practice (random
weights). Printed, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from edged.bench.baseline import peak_rss_mb, run_child

log = structlog.get_logger("edged.bench")
PROMPT = "Summarise the state of pump 3 and the hall lights. " * 4  # ~50 tokens with the chat template
NEW_TOKENS = 12
MODES = (("llamacpp", "keep"), ("mlx", "float32"), ("mlx", "keep"))


def _engine(job: dict[str, Any]) -> Any:
    from edged.settings import ModelSettings

    settings = ModelSettings(path=job["path"], name="qwen3-1.7b-shape", seed=0, dtype=job["dtype"], max_context=2048)
    if job["engine"] == "llamacpp":
        from edged.engine.llamacpp import LlamaCppEngine

        return LlamaCppEngine(settings)
    from edged.engine.blas import preload_blas

    preload_blas("auto")
    from edged.engine.mlx import MlxEngine

    return MlxEngine(settings)


def main(job_path: str) -> None:
    from edged.settings import NoThinkSampling

    job = json.loads(Path(job_path).read_text())
    started = time.perf_counter()
    engine = _engine(job)
    load_s = time.perf_counter() - started
    gen = engine.generate(
        [{"role": "user", "content": PROMPT}], "no_think", NoThinkSampling(temperature=0.0, max_tokens=NEW_TOKENS)
    )
    computed = gen.prompt_tokens - gen.cached_tokens
    print(
        json.dumps(
            {
                "engine": job["engine"],
                "dtype": job["dtype"],
                "load_s": round(load_s, 1),
                "prompt_tokens": gen.prompt_tokens,
                "completion_tokens": gen.completion_tokens,
                "prefill_tok_s": round(computed / (gen.prefill_ms / 1000), 2) if gen.prefill_ms else None,
                "decode_tok_s": round((gen.completion_tokens - 1) / (gen.decode_ms / 1000), 2)
                if gen.decode_ms
                else None,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


def measure(cache: Path, workdir: Path, modes: tuple[tuple[str, str], ...] = MODES) -> dict[str, Any]:
    """Write (or reuse) the random GGUF and its MLX import, run each engine mode; figures by mode."""
    from edged.models.gguf_import import import_gguf
    from edged.models.testmodel_gguf import random_qwen3_gguf

    gguf = random_qwen3_gguf(cache / "qwen3-1.7b-random-q4_0.gguf")
    mlx_dir = cache / "qwen3-1.7b-random-mlx"
    if not (mlx_dir / "config.json").is_file():
        import_gguf(gguf, mlx_dir)
    out: dict[str, Any] = {"gguf_mb": round(gguf.stat().st_size / 2**20, 1), "modes": {}}
    for engine, dtype in modes:
        path = gguf if engine == "llamacpp" else mlx_dir
        name = f"{engine}-{dtype}"
        try:
            out["modes"][name] = run_child(
                "edged.bench.production", {"engine": engine, "dtype": dtype, "path": str(path)}, workdir
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            log.warning("production_shape_failed", mode=name, error=str(exc))
            out["modes"][name] = None
    return out


def best_mlx(figures: dict[str, Any]) -> dict[str, Any] | None:
    """The MLX mode that decoded fastest."""
    runs = [v for k, v in figures["modes"].items() if k.startswith("mlx") and v and v.get("decode_tok_s")]
    return max(runs, key=lambda v: v["decode_tok_s"]) if runs else None


def lines(figures: dict[str, Any]) -> list[str]:
    """The production-shape rows of the table."""
    out = [
        f"production shape: random Qwen3-1.7B, Q4_0 GGUF {figures['gguf_mb']:.0f} MB, greedy {NEW_TOKENS} new tokens",
        f"{'':28}{'prompt tok':>12}{'prefill tok/s':>15}{'decode tok/s':>14}{'peak RSS MB':>13}{'load s':>9}",
    ]
    for name, v in figures["modes"].items():
        if not v:
            out.append(f"  {name:26}{'failed':>12}")
            continue
        cells = [v["prompt_tokens"], v["prefill_tok_s"], v["decode_tok_s"], v["peak_rss_mb"], v["load_s"]]
        out.append(f"  {name:26}" + "".join(f"{c!s:>{w}}" for c, w in zip(cells, (12, 15, 14, 13, 9))))
    return out


if __name__ == "__main__":
    main(sys.argv[1])
