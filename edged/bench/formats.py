"""Latency of one demo command on SmolLM2-135M-Instruct, by BLAS and weight format.

    .venv/bin/python -m edged.bench.formats [--runs 2]

Each combination runs in its own process (a BLAS can only be chosen before MLX is imported).
Prints one row per combination and the speed-up over MLX as shipped (reference BLAS, quantised).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

COMBINATIONS = [("off", "keep"), ("off", "float32"), ("auto", "keep"), ("auto", "float32")]
DEVICES = ", ".join(f"light.room_{i} (dimmer, brightness 0-100)" for i in range(25))


def child(blas: str, dtype: str, runs: int) -> None:
    from edged.engine.blas import preload_blas

    preload_blas(blas)
    from edged.engine.mlx import MlxEngine
    from edged.models.store import ensure_demo_model
    from edged.prompts import build_messages
    from edged.settings import ModelSettings, NoThinkSampling

    engine = MlxEngine(ModelSettings(path=str(ensure_demo_model()), dtype=dtype, blas=blas, seed=0))
    messages = build_messages("command", "turn off the kitchen lights", context={"devices": DEVICES})
    sampling = NoThinkSampling(temperature=0.0, max_tokens=30)
    for _ in range(runs):
        started = time.perf_counter()
        gen = engine.generate(messages, "no_think", sampling)
        total = time.perf_counter() - started
    print(
        json.dumps(
            {
                "blas": blas,
                "dtype": engine.dtype,
                "prompt_tokens": gen.prompt_tokens,
                "new_tokens": gen.completion_tokens,
                "prefill_s": gen.prefill_ms / 1000,
                "decode_s": gen.decode_ms / 1000,
                "total_s": total,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2, help="the last run is reported (the first warms caches)")
    parser.add_argument("--child", nargs=2, metavar=("BLAS", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        blas, dtype = args.child
        child(blas, dtype, args.runs)
        return
    rows = []
    for blas, dtype in COMBINATIONS:
        out = subprocess.run(
            [sys.executable, "-m", "edged.bench.formats", "--runs", str(args.runs), "--child", blas, dtype],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"measured blas={blas} dtype={dtype}", file=sys.stderr, flush=True)
    base = rows[0]["total_s"]
    print(
        f"{'blas':6} {'weights':8} {'prompt':>6} {'new':>4} "
        f"{'prefill s':>9} {'decode s':>8} {'total s':>8} {'speed-up':>8}"
    )
    for r in rows:
        print(
            f"{r['blas']:6} {r['dtype']:8} {r['prompt_tokens']:6} {r['new_tokens']:4} {r['prefill_s']:9.2f} "
            f"{r['decode_s']:8.2f} {r['total_s']:8.2f} {base / r['total_s']:7.1f}x"
        )


if __name__ == "__main__":
    main()
