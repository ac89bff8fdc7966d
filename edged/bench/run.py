"""``edged bench``: start edged on a model, drive it over MQTT with a seeded workload, compare with raw mlx-lm.

Phases, in this order on one daemon: idle commands one at a time; commands sent while a long
query is generating; closed-loop throughput at each concurrency. Then, with the daemon stopped,
raw mlx-lm on the same rendered prompts and, when installed, llama.cpp on the same GGUF weights.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from edged.bench import llamacpp, production, report, table
from edged.bench.baseline import run_child
from edged.bench.daemon import BenchDaemon, DaemonConfig
from edged.bench.driver import Driver, Sample
from edged.bench.workload import (
    DEFAULT_CASES,
    DEFAULT_REGISTRY,
    THINKING_QUERY,
    case_texts,
    command_messages,
    load_workload,
    resolved_without_model,
)

log = structlog.get_logger("edged.bench")
QUICK = {
    "requests": 3,
    "local_requests": 10,
    "during_query": 2,
    "throughput_requests": 8,
    "max_tokens": 16,
    "think_max_tokens": 64,
    "thinking_budget": 48,
    "baseline_requests": 1,
    "llama_cpp": False,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="smollm2",
        help="smollm2 (offline SmolLM2-135M), tiny (random Qwen3), or a model path / cached repo id",
    )
    p.add_argument(
        "--gguf", type=Path, help="the same weights as GGUF, for the llama.cpp column (default for smollm2: its GGUF)"
    )
    p.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY, help="device registry the commands address")
    p.add_argument(
        "--cases", type=Path, default=DEFAULT_CASES, help='JSONL with a command text per line ({"text": ...})'
    )
    p.add_argument("--requests", type=int, default=10, help="idle commands, one at a time")
    p.add_argument(
        "--local-requests", type=int, default=30, help="commands the templates and rules resolve, one at a time"
    )
    p.add_argument("--during-query", type=int, default=3, help="commands sent while a long query is generating")
    p.add_argument("--throughput-requests", type=int, default=8, help="commands per concurrency level")
    p.add_argument("--concurrency", default="1,4,8", help="comma-separated concurrency levels")
    p.add_argument("--seed", type=int, default=0, help="order of the commands")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=256,
        help="non-thinking budget (commands; queries on models that cannot think)",
    )
    p.add_argument("--think-max-tokens", type=int, default=1024)
    p.add_argument("--thinking-budget", type=int, default=768)
    p.add_argument(
        "--baseline-requests", type=int, default=2, help="prompts for raw mlx-lm (slow as shipped on a CPU: ~80 s each)"
    )
    p.add_argument(
        "--llama-cpp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the llama.cpp column, when llama_cpp is installed",
    )
    p.add_argument(
        "--llamacpp-engine",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run edged on its llama.cpp engine (same GGUF weights), when llama_cpp is installed",
    )
    p.add_argument(
        "--production-shape",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="random Qwen3-1.7B-shaped Q4_0 weights on both engines (writes ~1 GB into edged's cache; minutes)",
    )
    p.add_argument(
        "--production-modes",
        default="llamacpp-keep,mlx-float32,mlx-keep",
        help="engine-dtype pairs of the production-shape row (MLX 4-bit on a CPU takes minutes)",
    )
    p.add_argument("--json", type=Path, help="also write every figure (and the samples) here")
    p.add_argument("--host", default="127.0.0.1", help="MQTT broker")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--workdir", type=Path, help="config, logs and child jobs (default: a new temporary directory)")
    p.add_argument(
        "--quick", action="store_true", help="tiny settings for CI: " + ", ".join(f"{k}={v}" for k, v in QUICK.items())
    )


@dataclass(frozen=True)
class ModelChoice:
    path: Path
    name: str
    gguf: Path | None


def choose_model(which: str, gguf: Path | None) -> ModelChoice:
    from edged.models.files import resolve_model_path

    if which in ("smollm2", "tiny"):
        from edged.models.store import OFFLINE_MODELS, demo_gguf, offline_model_dir

        return ModelChoice(
            offline_model_dir(which),
            OFFLINE_MODELS[which]["name"],
            gguf or (demo_gguf() if which == "smollm2" else None),
        )
    path = resolve_model_path(which)
    return ModelChoice(path, Path(which.rstrip("/")).name, gguf)


def drive(args: argparse.Namespace, model: ModelChoice, workdir: Path, engine: str = "mlx") -> dict[str, Any]:
    """Start edged on ``engine``, run the three phases over MQTT, read its peak memory, stop it."""
    from edged.bus.client import EdgedClient

    node = f"bench-{uuid.uuid4().hex[:8]}"
    config = DaemonConfig(
        str(model.path),
        model.name,
        args.registry.resolve(),
        node,
        args.host,
        args.port,
        args.max_tokens,
        args.think_max_tokens,
        args.thinking_budget,
        engine,
    )
    texts = case_texts(args.cases)
    local = resolved_without_model(args.registry, texts)
    left = set(texts) - local or None  # the model phases measure the model: commands the pipeline leaves to it
    workload = load_workload(
        args.cases, seed=args.seed, n=max(args.requests, args.during_query, args.throughput_requests), keep=left
    )
    local_texts = load_workload(args.cases, seed=args.seed, n=args.local_requests, keep=local).commands if local else []
    daemon = BenchDaemon(config.toml(), node, workdir)
    try:
        with EdgedClient(daemon.base, host=args.host, port=args.port, timeout=30) as client:
            load_s = daemon.wait_online(client)
            client.subscribe(f"{daemon.base}/stats")
            driver = Driver(client, daemon.base)
            # The first command after start-up is reported apart, not as idle latency (without model.warm_up
            # it builds the grammar and the prefix cache).
            phases: dict[str, Any] = {"warmup": driver.command(workload.take(1, len(workload.commands) - 1)[0])}
            phases["local"] = driver.idle(local_texts)  # resolved by templates or rules: no generation
            phases["idle"] = driver.idle(workload.take(args.requests))
            phases["during_query"], phases["queries"] = driver.during_query(
                workload.take(args.during_query, args.requests), THINKING_QUERY, max_queries=args.during_query + 1
            )
            levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
            phases["throughput"] = {c: driver.throughput(workload.take(args.throughput_requests), c) for c in levels}
            mark = client.count()
            stats_topic = f"{daemon.base}/stats"
            last = client.wait_for(
                lambda m: m.topic == stats_topic, 10, after=mark
            ).json()  # one published after the work
            rss = [m.json().get("rss_bytes") or 0 for m in client.messages(stats_topic)]
            stats = {**last, "rss_bytes_max": max(rss)}
            peak = daemon.peak_rss_mb()
    finally:
        code = daemon.stop()
    log.info("bench_daemon_stopped", exit_code=code, log=str(daemon.log_path))
    return {
        "phases": phases,
        "stats": stats,
        "peak_rss_mb": peak,
        "load_s": load_s,
        "texts": workload.take(args.requests),
    }


def references(
    args: argparse.Namespace, model: ModelChoice, idle: list[Sample], texts: list[str], workdir: Path
) -> dict[str, Any]:
    """Raw mlx-lm on the first prompts, llama.cpp on all: same rendered prompts, same number of new tokens."""
    budgets = [max(1, min(args.max_tokens, s.usage.get("completion_tokens", 0))) for s in idle]
    out: dict[str, Any] = {"notes": []}
    n = min(args.baseline_requests, len(idle))
    job = {"model": str(model.path), "messages": command_messages(args.registry, texts), "max_tokens": budgets[:n]}
    raw = run_child("edged.bench.baseline", job, workdir)
    same = [len(p) == s.usage.get("prompt_tokens") for p, s in zip(raw["prompts"], idle)]
    out["same_prompts"] = all(same)
    out["baseline"] = report.reference_figures(raw) if n else None
    out["notes"].append(
        f"raw mlx-lm: {n} of the {len(idle)} idle prompts (as shipped it is slow), same token ids "
        f"({'identical lengths' if all(same) else 'LENGTHS DIFFER: ' + str(same)}), "
        "exactly the tokens edged generated for that prompt (end-of-sequence suppressed), greedy, no cache"
    )
    if not args.llama_cpp:
        reason = "off (--no-llama-cpp)"
    elif not llamacpp.available():
        reason = "llama-cpp-python is not installed (pip install llama-cpp-python; compiles ~15 min on 2 cores)"
    elif model.gguf is None:
        reason = "no GGUF of these weights (--gguf FILE)"
    else:
        reason = None
        try:
            ref = run_child(
                "edged.bench.llamacpp",
                {"gguf": str(model.gguf), "prompts": raw["prompts"], "max_tokens": budgets},
                workdir,
            )
        except subprocess.CalledProcessError as exc:  # a broken build must not cost the rest of the run
            reason = f"the llama.cpp process failed (exit code {exc.returncode}; see {workdir / 'llamacpp.log'})"
    if reason is None and model.gguf is not None:
        out["llama_cpp"] = report.reference_figures(ref)
        out["notes"].append(
            f"llama.cpp: {model.gguf.name}, all {len(budgets)} idle prompts, one Llama object (prompt reuse), "
            "greedy, exactly the tokens edged generated for each prompt (end-of-sequence suppressed)"
        )
    if reason:
        out["llama_cpp"] = None
        out["notes"].append(f"llama.cpp column: {reason}")
    return out


def _llamacpp_engine(
    args: argparse.Namespace, model: ModelChoice, workdir: Path
) -> tuple[dict[str, Any] | None, float | None]:
    """edged on its llama.cpp engine with the same GGUF weights (figures), and its memory budget in MB:
    the file, its KV cache (model.max_context cells, f16) and 300 MB."""
    if not (args.llamacpp_engine and llamacpp.available() and model.gguf is not None):
        return None, None
    from edged.engine.llamacpp import DEFAULT_CONTEXT
    from edged.engine.llamacpp_facts import kv_bytes_per_token
    from edged.models.gguf_import import read_header

    meta, _ = read_header(model.gguf)
    kv_mb = DEFAULT_CONTEXT * kv_bytes_per_token(meta, str(meta.get("general.architecture"))) / 2**20
    budget_mb = round(model.gguf.stat().st_size / 2**20 + kv_mb + 300, 1)
    try:
        measured = drive(args, ModelChoice(model.gguf, model.name, model.gguf), workdir, engine="llamacpp")
    except Exception as exc:  # the MLX figures and the references still stand
        log.error("llamacpp_engine_run_failed", error=str(exc), log=str(workdir / "edged-bench.log"))
        return None, budget_mb
    figures = report.edged_figures(measured["phases"], measured["stats"], measured["peak_rss_mb"], measured["load_s"])
    return figures, budget_mb


def run(args: argparse.Namespace) -> int:
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    from edged.devices.registry import load_registry

    model = choose_model(args.model, args.gguf)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edged-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    measured = drive(args, model, workdir)
    idle = measured["phases"]["idle"]
    phases = measured["phases"]
    (workdir / "edged-samples.json").write_text(
        json.dumps(
            {  # kept even if a slow reference run is interrupted
                "warmup": phases["warmup"].as_dict(),
                "local": [s.as_dict() for s in phases["local"]],
                "idle": [s.as_dict() for s in idle],
                "during_query": [s.as_dict() for s in phases["during_query"]],
                "queries": [s.as_dict() for s in phases["queries"]],
                "throughput": {
                    str(c): {"seconds": v[1], "samples": [s.as_dict() for s in v[0]]}
                    for c, v in phases["throughput"].items()
                },
            }
        )
    )
    llama_engine, budget_mb = _llamacpp_engine(args, model, workdir)
    refs = references(args, model, idle, measured["texts"], workdir)
    edged = report.edged_figures(measured["phases"], measured["stats"], measured["peak_rss_mb"], measured["load_s"])
    ratios = report.ratios(edged, refs["baseline"], refs["llama_cpp"])
    shape = None
    if args.production_shape:
        from edged.models.store import models_dir

        modes = tuple(tuple(m.strip().split("-", 1)) for m in args.production_modes.split(",") if m.strip())
        shape = production.measure(models_dir(), workdir, modes)
    best = production.best_mlx(shape) if shape else None
    ratios.update(report.engine_ratios(llama_engine, refs["llama_cpp"], budget_mb, shape, best))
    devices = len(load_registry(args.registry).devices)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores"
    doc = {
        "title": f"edged bench: {model.name} on {args.registry.name} "
        f"({devices} devices, prompt ~{edged['usage_p50']['prompt_tokens']} tokens), "
        f"seed {args.seed}, {when}, {machine}",
        "meta": {
            "date": when,
            "machine": machine,
            "python": platform.python_version(),
            "model": model.name,
            "model_path": str(model.path),
            "registry": str(args.registry),
            "devices": devices,
            "seed": args.seed,
            "requests": args.requests,
            "during_query": args.during_query,
            "throughput_requests": args.throughput_requests,
            "max_tokens": args.max_tokens,
            "quick": args.quick,
            "workdir": str(workdir),
        },
        "edged": edged,
        "baseline": refs["baseline"],
        "llama_cpp": refs["llama_cpp"],
        "edged_llamacpp": llama_engine,
        "llamacpp_memory_budget_mb": budget_mb,
        "production": shape,
        "same_prompts": refs["same_prompts"],
        "ratios": ratios,
        "targets": report.targets(ratios),
        "notes": [
            "latency = caller's publish -> result received; overhead = latency - (prefill + decode - mask)",
            *refs["notes"],
            "the machine may be shared: compare the ratios of one run, not absolute times",
        ],
        "samples": {
            "warmup": measured["phases"]["warmup"].as_dict(),
            "local": [s.as_dict() for s in measured["phases"]["local"]],
            "idle": [s.as_dict() for s in idle],
            "during_query": [s.as_dict() for s in measured["phases"]["during_query"]],
            "queries": [s.as_dict() for s in measured["phases"]["queries"]],
            "throughput": {str(c): [s.as_dict() for s in v[0]] for c, v in measured["phases"]["throughput"].items()},
        },
    }
    print(table.render(doc), flush=True)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
    return 0
