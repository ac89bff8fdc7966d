"""``edged bench-diagnostics``: diagnostic queries over simulated pump-line telemetry, measured.

Starts edged with the pump-line example (its sensors and plant registry) on a private topic
prefix, publishes the simulator's readings with a fault, then asks the same diagnostic question
``--queries`` times and one question about ten sensors. Reports prompt tokens, the time to the
first progress message, how often the thinking budget had to close ``</think>``, latency, and
prints one diagnosis.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import structlog

from edged.bench.daemon import BenchDaemon
from edged.bench.run import choose_model
from edged.diagnostics import simulator
from edged.ops.stats import percentile

log = structlog.get_logger("edged.bench")
CONFIG = Path(__file__).resolve().parent.parent.parent / "config"
QUESTION = "why is pump 3 vibrating?"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="tiny",
        help="tiny (random Qwen3, thinks), smollm2 (answers without thinking), or a model path",
    )
    p.add_argument("--queries", type=int, default=10, help=f"times {QUESTION!r} is asked")
    p.add_argument("--fault", choices=sorted(simulator.FAULTS), default="bearing")
    p.add_argument("--fault-pump", type=int, default=3)
    p.add_argument("--pumps", type=int, default=4)
    p.add_argument("--steps", type=int, default=30, help="rounds of simulated readings")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between rounds")
    p.add_argument("--think-max-tokens", type=int, default=1024)
    p.add_argument("--thinking-budget", type=int, default=256)
    p.add_argument(
        "--max-tokens", type=int, default=700, help="non-thinking budget (a model without thinking answers in it)"
    )
    p.add_argument(
        "--telemetry-tokens", type=int, help="the prompt's telemetry budget (default: the pump-line example's)"
    )
    p.add_argument("--json", type=Path, help="also write every figure and the results here")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--workdir", type=Path)


def _toml_value(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)  # numbers and strings are written the same in TOML


def pump_line_example() -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    return tomllib.loads((CONFIG / "edged-pump-line.toml").read_text(encoding="utf-8"))


def daemon_toml(args: argparse.Namespace, model: Any, node: str, prefix: str) -> str:
    """The pump-line example with the bench's model, budgets and a private topic prefix."""
    example = pump_line_example()
    sensors = []
    for spec in example["telemetry"]["sensors"]:
        spec = {**spec, "topic": spec["topic"].replace("plant/", f"{prefix}/", 1)}
        sensors.append("[[telemetry.sensors]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in spec.items()))
    window = "".join(f"{k} = {_toml_value(v)}\n" for k, v in example["telemetry"].items() if k != "sensors")
    chosen = {
        **example["diagnostics"],
        **({"telemetry_tokens": args.telemetry_tokens} if args.telemetry_tokens else {}),
    }
    diagnostics = "".join(f"{k} = {_toml_value(v)}\n" for k, v in chosen.items())
    return f"""node_id = "{node}"

[mqtt]
host = {_toml_value(args.host)}
port = {args.port}
session_expiry_s = 0

[model]
path = {_toml_value(str(model.path))}
name = {_toml_value(model.name)}
seed = 0

[model.think]
max_tokens = {args.think_max_tokens}
thinking_budget = {args.thinking_budget}

[model.no_think]
temperature = 0.0
max_tokens = {args.max_tokens}

[devices]
registry = {_toml_value(str(CONFIG / "registry-plant.toml"))}
dispatch = false

[diagnostics]
{diagnostics}
[telemetry]
{window}
{"".join(sensors)}
[log]
format = "json"
"""


def ask(client: Any, base: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One query; its result and what the caller saw of it (first progress message, latency)."""
    rid = f"diag-{uuid.uuid4().hex[:10]}"
    mark = client.count()
    sent = time.monotonic()
    client.publish(f"{base}/query", json.dumps({"id": rid, **body}))
    result = client.wait_for(lambda m: m.topic == f"{base}/result/{rid}", timeout, after=mark)
    progress = client.messages(f"{base}/progress/{rid}")
    return {
        "result": result.json(),
        "caller_ms": round((result.received_at - sent) * 1000, 1),
        "first_progress_ms": round((progress[0].received_at - sent) * 1000, 1) if progress else None,
        "progress_messages": len(progress),
    }


def closed_by(result: dict[str, Any]) -> str | None:
    """Who closed the query's thinking block: model, budget, or None (no thinking, or never closed)."""
    return (result.get("result") or {}).get("thinking", {}).get("closed_by")


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    results = [r["result"] for r in runs]
    closed = [closed_by(r) for r in results]
    thought = [r for r in results if r.get("mode") == "think"]
    first = [r["first_progress_ms"] for r in runs if r["first_progress_ms"] is not None]
    return {
        "queries": len(runs),
        "ok": sum(r.get("status") == "ok" for r in results),
        "statuses": sorted({r.get("status", "?") for r in results}),
        "mode": sorted({r.get("mode", "?") for r in results}),
        "thinking_closed_by": {str(k): closed.count(k) for k in sorted(set(closed), key=str)} if thought else {},
        "prompt_tokens": statistics.median(r["usage"]["prompt_tokens"] for r in results) if results else None,
        "reasoning_tokens_p50": statistics.median(r["usage"]["reasoning_tokens"] for r in results) if results else None,
        "completion_tokens_p50": statistics.median(r["usage"]["completion_tokens"] for r in results)
        if results
        else None,
        "first_progress_ms_p50": statistics.median(first) if first else None,
        "first_progress_ms_max": max(first) if first else None,
        "latency_ms_p50": percentile([r["caller_ms"] for r in runs], 50),
        "latency_ms_p95": percentile([r["caller_ms"] for r in runs], 95),
    }


def run(args: argparse.Namespace) -> int:
    from edged.bus.client import EdgedClient

    model = choose_model(args.model, None)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edged-bench-diag-"))
    workdir.mkdir(parents=True, exist_ok=True)
    node, prefix = f"bench-{uuid.uuid4().hex[:8]}", f"bench-line-{uuid.uuid4().hex[:6]}"
    daemon = BenchDaemon(daemon_toml(args, model, node, prefix), node, workdir)
    timeout = 900.0
    try:
        with EdgedClient(daemon.base, host=args.host, port=args.port, timeout=timeout) as client:
            load_s = daemon.wait_online(client)
            client.subscribe(f"{daemon.base}/result/+")
            client.subscribe(f"{daemon.base}/progress/+")
            log.info(
                "bench_simulating", pumps=args.pumps, steps=args.steps, fault=args.fault, fault_pump=args.fault_pump
            )
            readings = simulator.run(
                client.publish,
                prefix,
                args.pumps,
                fault=args.fault,
                fault_pump=args.fault_pump,
                steps=args.steps,
                interval_s=args.interval,
                wait=time.sleep,
            )
            client.request(
                "command", {"text": "status check", "dispatch": False}
            )  # answered after every reading was taken in
            runs = []
            for i in range(args.queries):
                runs.append(ask(client, daemon.base, {"text": QUESTION, "include_reasoning": True}, timeout))
                log.info(
                    "bench_query",
                    n=i + 1,
                    of=args.queries,
                    ms=runs[-1]["caller_ms"],
                    status=runs[-1]["result"].get("status"),
                    closed_by=closed_by(runs[-1]["result"]),
                )
            ten = [f"pump_{p}/{s}" for p in (1, 2) for s in simulator.NORMAL]
            wide = ask(client, daemon.base, {"text": "compare pumps 1 and 2", "context": {"sensors": ten}}, timeout)
    finally:
        code = daemon.stop()
    log.info("bench_daemon_stopped", exit_code=code, log=str(daemon.log_path))
    doc = {
        "model": model.name,
        "fault": args.fault,
        "fault_pump": args.fault_pump,
        "readings": readings,
        "load_s": round(load_s, 1),
        "thinking_budget": args.thinking_budget,
        "telemetry_tokens": args.telemetry_tokens or pump_line_example()["diagnostics"]["telemetry_tokens"],
        "question": QUESTION,
        "summary": summarise_runs(runs),
        "ten_sensors": {
            "sensors": len((wide["result"].get("result") or {}).get("sensors", [])),
            "prompt_tokens": wide["result"]["usage"]["prompt_tokens"],
            "status": wide["result"].get("status"),
        },
        "example": next(
            (r["result"] for r in reversed(runs) if r["result"].get("status") == "ok"),
            runs[-1]["result"] if runs else None,
        ),
        "runs": runs,
    }
    print(render(doc), flush=True)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    return 0


def render(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    closed = (
        ", ".join(f"{k}: {v}" for k, v in s["thinking_closed_by"].items())
        or "no thinking (model without a thinking mode)"
    )
    ten = doc["ten_sensors"]
    lines = [
        f"edged bench-diagnostics: {doc['model']}, fault {doc['fault']} on pump {doc['fault_pump']}, "
        f"{doc['readings']} readings",
        f"  queries                      {s['queries']} x {doc['question']!r}: ok {s['ok']}, "
        f"statuses {s['statuses']}, mode {s['mode']}",
        f"  prompt tokens (p50)          {s['prompt_tokens']} (telemetry budget {doc['telemetry_tokens']} tokens)",
        f"  10-sensor query              {ten['sensors']} sensors, {ten['prompt_tokens']} prompt tokens "
        f"({ten['status']})",
        f"  first progress message       p50 {s['first_progress_ms_p50']} ms, "
        f"max {s['first_progress_ms_max']} ms after publishing",
        f"  </think> closed by           {closed} (budget {doc['thinking_budget']} tokens)",
        f"  reasoning / completion p50   {s['reasoning_tokens_p50']} / {s['completion_tokens_p50']} tokens",
        f"  latency                      p50 {s['latency_ms_p50']} ms, p95 {s['latency_ms_p95']} ms "
        f"(model load {doc['load_s']} s)",
        "  example result:",
    ]
    example = dict(doc["example"] or {})
    example.pop("reasoning", None)
    lines += ["    " + line for line in json.dumps(example, indent=2, ensure_ascii=False).splitlines()]
    return "\n".join(lines)
