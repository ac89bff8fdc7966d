"""``edged bench``: the real CLI against the real broker on the tiny model; figures checked for shape, never speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from edged.bench.driver import Sample
from edged.bench.report import overhead
from edged.bench.workload import DEFAULT_CASES, DEFAULT_REGISTRY, command_messages, load_workload


def test_workload_is_seeded_and_rendered_with_edged_prompt_code() -> None:
    a, b, c = (load_workload(DEFAULT_CASES, seed=s, n=12) for s in (1, 1, 2))
    assert a.commands == b.commands and a.commands != c.commands
    assert len(set(a.commands)) == 12  # drawn without repeats while the set lasts
    messages = command_messages(DEFAULT_REGISTRY, a.take(2))
    assert [m[0]["role"] for m in messages] == ["system", "system"]
    assert messages[0][0] == messages[1][0]  # the static registry prefix the prompt cache reuses
    assert "kitchen_ceiling" in messages[0][0]["content"]
    assert messages[0][-1]["content"].endswith(a.commands[0])  # after the linked candidates, if any


def test_overhead_is_caller_latency_minus_model_time() -> None:
    timing = {"queue": 1.0, "prefill": 100.0, "decode": 50.0, "mask": 5.0, "total": 160.0}
    s = Sample("command", "x", sent_at=0.0, received_at=0.2, status="ok", usage={"prompt_tokens": 9}, timing=timing)
    o = overhead([s])
    assert o["overhead_ms_p50"] == 55.0  # 200 - (100 + 50 - 5)
    assert (o["bus_ms_p50"], o["queue_ms_p50"], o["mask_ms_p50"], o["other_ms_p50"]) == (40.0, 1.0, 5.0, 9.0)
    assert o["share_total"] == 0.275


def _run_cli(args: list[str], broker: tuple[str, int], tmp_path: Path, *, timeout: float) -> tuple[str, dict]:
    """``edged <args>`` as its own process against the broker; its stdout and its ``--json`` document."""
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edged.cli",
            *args,
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
            "--host",
            broker[0],
            "--port",
            str(broker[1]),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and x > 0


def test_bench_quick_reports_every_figure(broker, tiny_model_dir: Path, tmp_path: Path) -> None:
    stdout, doc = _run_cli(["bench", "--quick", "--model", str(tiny_model_dir)], broker, tmp_path, timeout=240)
    assert "command latency idle p50 ms" in stdout and "targets" in stdout
    e = doc["edged"]
    idle = e["idle"]
    assert idle["n"] == 3 and 0 < idle["p50_ms"] <= idle["p95_ms"] <= idle["p99_ms"]
    assert _positive(e["first_command_ms"])
    dq = e["during_query"]
    assert dq["sent"] == 2 and dq["queries"] >= 1 and 0 <= dq["n"] <= 2
    assert set(e["throughput"]) == {"1", "4", "8"}
    for level in e["throughput"].values():
        assert level["commands"] + level["errors"] == 8 and _positive(level["per_s"]) and _positive(level["seconds"])
    assert all(_positive(e[k]) for k in ("prompt_tok_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "load_s"))
    cache = e["cache"]
    assert 0 <= cache["hit_rate"] <= 1 and 0 <= cache["cached_token_share"] <= 1 and cache["cached_tokens_mean"] >= 0
    assert cache["hit_rate"] > 0  # the registry prompt is reused after the first command
    o = e["overhead"]
    assert 0 <= o["share_total"] < 1 and o["overhead_ms_p50"] >= 0 and o["bus_ms_p50"] >= 0
    assert doc["same_prompts"] is True  # raw mlx-lm got exactly the token count edged reported
    base = doc["baseline"]
    assert base["n"] == 1 and _positive(base["p50_ms"]) and _positive(base["peak_rss_mb"])
    assert doc["llama_cpp"] is None and any("llama.cpp column" in n for n in doc["notes"])
    r = doc["ratios"]
    assert _positive(r["p50_vs_baseline"]) and _positive(r["throughput_8_vs_1"]) and r["p50_vs_llama_cpp"] is None
    assert [t["key"] for t in doc["targets"]] == [
        "p50_vs_baseline",
        "p50_vs_llama_cpp",
        "during_query_p95_vs_idle",
        "throughput_8_vs_1",
        "overhead_share",
        "llamacpp_p50_vs_llama_cpp",
        "llamacpp_decode_vs_llama_cpp",
        "llamacpp_rss_vs_budget",
        "production_decode_vs_mlx",
        "production_rss_vs_mlx",
    ]
    assert doc["edged_llamacpp"] is None and doc["production"] is None  # no GGUF given; --production-shape off
    assert all(t["met"] in (True, False, None) for t in doc["targets"])
    assert len(doc["samples"]["idle"]) == 3 and all(s["usage"]["prompt_tokens"] > 0 for s in doc["samples"]["idle"])
    local = e["local_path"]  # commands the templates resolve: no generation, so no prompt tokens
    assert local["count"] == local["of"] == 10 and 0 < local["total_p50_ms"] <= local["total_p95_ms"]
    assert "local path timing.total p50 ms" in stdout


def test_bench_diagnostics_reports_tokens_progress_and_the_thinking_budget(
    broker, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The random Qwen3 never writes </think>: every query's block is closed by the budget, and counted so."""
    stdout, doc = _run_cli(
        [
            "bench-diagnostics",
            "--model",
            str(tiny_model_dir),
            "--queries",
            "2",
            "--steps",
            "4",
            "--interval",
            "0",
            "--thinking-budget",
            "16",
            "--think-max-tokens",
            "1024",
        ],
        broker,
        tmp_path,
        timeout=300,
    )
    assert "</think> closed by" in stdout and "example result" in stdout
    s = doc["summary"]
    assert s["queries"] == 2 and s["mode"] == ["think"]
    assert s["thinking_closed_by"] == {"budget": 2} and s["reasoning_tokens_p50"] == 16
    assert _positive(s["first_progress_ms_p50"]) and s["first_progress_ms_p50"] <= s["latency_ms_p50"]
    assert doc["readings"] == 4 * 5 * 4 and doc["ten_sensors"]["sensors"] == 10
    assert doc["ten_sensors"]["prompt_tokens"] > s["prompt_tokens"] > 0  # ten sensors cost more than pump 3's five
    assert all(
        r["result"]["result"]["sensors"][0].startswith("pump_3/") for r in doc["runs"] if r["result"]["status"] == "ok"
    )


def test_ceiling_splits_a_forward_pass_into_fixed_and_per_position_cost(tiny_model_dir: Path) -> None:
    """``python -m edged.bench.scheduling --ceiling``: a time per width, and the fit into fixed and per position."""
    import re

    done = subprocess.run(
        [sys.executable, "-m", "edged.bench.scheduling", "--ceiling", str(tiny_model_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    widths = re.findall(r"^\s*(\d+) new positions after \d+: +([\d.]+) ms", done.stdout, re.M)
    assert [int(n) for n, _ in widths] == [1, 8, 32, 128] and all(float(ms) > 0 for _, ms in widths)
    fit = re.search(r"fixed per forward pass (-?[\d.]+) ms, per position (-?[\d.]+) ms", done.stdout)
    assert fit is not None and float(fit.group(2)) > 0, done.stdout
