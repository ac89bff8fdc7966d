"""Figures from the samples: latency percentiles, throughput, token rates, cache, overhead, ratios, targets."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from edged.bench.driver import Sample
from edged.ops.stats import percentile

# The goals the figures are compared against (printed, never asserted).
TARGETS = [
    ("command p50 vs raw mlx-lm", "p50_vs_baseline", "<=", 0.05),
    ("command p50 vs llama.cpp (prompt reuse)", "p50_vs_llama_cpp", "<=", 2.0),
    ("command p95 during a query vs idle p95", "during_query_p95_vs_idle", "<=", 2.0),
    ("throughput at concurrency 8 vs 1", "throughput_8_vs_1", ">=", 3.0),
    ("edged's own overhead share of latency", "overhead_share", "<=", 0.05),
    ("llama.cpp engine command p50 vs raw llama.cpp", "llamacpp_p50_vs_llama_cpp", "<=", 1.2),
    ("llama.cpp engine decode vs raw llama.cpp", "llamacpp_decode_vs_llama_cpp", ">=", 0.9),
    ("llama.cpp engine peak RSS vs GGUF+KV+300 MB", "llamacpp_rss_vs_budget", "<=", 1.0),
    ("production shape: decode vs best MLX mode", "production_decode_vs_mlx", ">=", 3.0),
    ("production shape: peak RSS vs that MLX mode", "production_rss_vs_mlx", "<=", 0.2),
]


def _r(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def latency(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": _r(percentile(values, 50)),
        "p95_ms": _r(percentile(values, 95)),
        "p99_ms": _r(percentile(values, 99)),
        "mean_ms": _r(statistics.fmean(values)) if values else None,
    }


def rates(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Token rates over rows with prompt_tokens, cached_tokens, completion_tokens, prefill_ms, decode_ms."""
    prefill_s = sum(r["prefill_ms"] for r in rows) / 1000
    decode_s = sum(r["decode_ms"] for r in rows) / 1000
    prompt = sum(r["prompt_tokens"] for r in rows)
    computed = prompt - sum(r.get("cached_tokens", 0) for r in rows)
    return {
        "prompt_tok_s": _r(prompt / prefill_s) if prefill_s else None,  # whole prompt over time to first token
        "prefill_tok_s": _r(computed / prefill_s) if prefill_s else None,  # tokens actually computed
        "decode_tok_s": _r(sum(r["completion_tokens"] for r in rows) / decode_s) if decode_s else None,
    }


def _row(s: Sample) -> dict[str, Any]:
    return {**s.usage, "prefill_ms": s.timing.get("prefill", 0.0), "decode_ms": s.timing.get("decode", 0.0)}


def overhead(samples: list[Sample]) -> dict[str, Any]:
    """What edged adds around the model: caller latency − (prefill + decode − mask), and its parts."""
    parts: dict[str, list[float]] = {k: [] for k in ("overhead", "share", "bus", "queue", "mask", "other")}
    callers = 0.0
    for s in samples:
        t = s.timing
        model = t.get("prefill", 0) + t.get("decode", 0) - t.get("mask", 0)
        parts["overhead"].append(s.caller_ms - model)
        parts["share"].append((s.caller_ms - model) / s.caller_ms)
        parts["bus"].append(s.caller_ms - t.get("total", 0))
        parts["queue"].append(t.get("queue", 0))
        parts["mask"].append(t.get("mask", 0))
        parts["other"].append(t.get("total", 0) - t.get("queue", 0) - t.get("prefill", 0) - t.get("decode", 0))
        callers += s.caller_ms
    med = {f"{k}_ms_p50": _r(statistics.median(v)) if v else None for k, v in parts.items() if k != "share"}
    return {
        **med,
        "share_p50": _r(statistics.median(parts["share"]), 4) if samples else None,
        "share_total": _r(sum(parts["overhead"]) / callers, 4) if callers else None,
    }


def cache(samples: list[Sample], stats: dict[str, Any]) -> dict[str, Any]:
    ran = [s for s in samples if s.ran]
    prompt = sum(s.usage.get("prompt_tokens", 0) for s in ran)
    cached = [s.usage.get("cached_tokens", 0) for s in ran]
    return {
        "hit_rate": _r(sum(c > 0 for c in cached) / len(ran), 4) if ran else None,
        "cached_token_share": _r(sum(cached) / prompt, 4) if prompt else None,
        "cached_tokens_mean": _r(statistics.fmean(cached)) if cached else None,
        "cache_bytes": stats.get("cache_bytes"),
        "stats_cache_hit_rate": stats.get("cache_hit_rate"),
    }


def local_path(samples: list[Sample]) -> dict[str, Any]:
    """Commands resolved without generation: edged's timing_ms.total and the caller's latency."""
    done = [s for s in samples if not s.ran and s.status in ("ok", "needs_confirmation")]
    totals = [s.timing.get("total", 0.0) for s in done]
    return {
        "count": len(done),
        "of": len(samples),
        "total_p50_ms": _r(percentile(totals, 50)),
        "total_p95_ms": _r(percentile(totals, 95)),
        "caller_p50_ms": _r(percentile([s.caller_ms for s in done], 50)),
    }


def edged_figures(
    phases: dict[str, Any], stats: dict[str, Any], peak_rss_mb: float | None, load_s: float
) -> dict[str, Any]:
    idle: list[Sample] = phases["idle"]
    during = [s for s in phases["during_query"] if s.during_query]
    throughput = {}
    for c, (samples, wall) in phases["throughput"].items():
        done = [s for s in samples if s.ran]
        throughput[str(c)] = {
            "commands": len(done),
            "errors": len(samples) - len(done),
            "seconds": _r(wall, 2),
            "per_s": _r(len(done) / wall, 3) if wall else None,
            **{k: v for k, v in latency([s.caller_ms for s in samples]).items() if k in ("p50_ms", "p95_ms")},
        }
    everything = [phases["warmup"], *idle, *phases["during_query"]] + [
        s for samples, _ in phases["throughput"].values() for s in samples
    ]
    queries = phases["queries"]
    return {
        "local_path": local_path(phases.get("local", [])),
        "first_command_ms": _r(phases["warmup"].caller_ms),  # the first after start-up (model.warm_up prepared it)
        "idle": {
            **latency([s.caller_ms for s in idle]),
            "edged_total_p50_ms": _r(percentile([s.timing.get("total", 0) for s in idle], 50)),
        },
        "during_query": {
            **latency([s.caller_ms for s in during]),
            "sent": len(phases["during_query"]),
            "queries": len(queries),
            "query_ms_p50": _r(percentile([q.caller_ms for q in queries], 50)),
            "query_tokens_p50": percentile([q.usage.get("completion_tokens", 0) for q in queries], 50),
        },
        "throughput": throughput,
        **rates([_row(s) for s in idle if s.ran]),
        "usage_p50": {
            k: percentile([s.usage.get(k, 0) for s in idle], 50)
            for k in ("prompt_tokens", "cached_tokens", "completion_tokens", "forced_tokens")
        },
        "cache": cache(everything, stats),
        "overhead": overhead([s for s in idle if s.ran]),
        "peak_rss_mb": peak_rss_mb if peak_rss_mb is not None else _r((stats.get("rss_bytes_max") or 0) / 2**20),
        "load_s": _r(load_s, 2),
        "statuses": dict(Counter(s.status for s in everything)),
    }


def reference_figures(result: dict[str, Any]) -> dict[str, Any]:
    rows = result["rows"]
    return {
        **latency([r["total_ms"] for r in rows]),
        **rates(rows),
        "peak_rss_mb": result.get("peak_rss_mb"),
        "load_s": _r(result.get("load_s"), 2),
        "rows": rows,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def ratios(
    edged: dict[str, Any], baseline: dict[str, Any] | None, llama: dict[str, Any] | None
) -> dict[str, float | None]:
    tp = edged["throughput"]
    out = {
        "during_query_p95_vs_idle": _ratio(edged["during_query"]["p95_ms"], edged["idle"]["p95_ms"]),
        "throughput_8_vs_1": _ratio((tp.get("8") or {}).get("per_s"), (tp.get("1") or {}).get("per_s")),
        "overhead_share": edged["overhead"]["share_total"],
    }
    for name, ref in (("baseline", baseline), ("llama_cpp", llama)):
        ok = ref is not None and "rows" in ref
        out[f"p50_vs_{name}"] = _ratio(edged["idle"]["p50_ms"], ref["p50_ms"]) if ref and ok else None
        out[f"p95_vs_{name}"] = _ratio(edged["idle"]["p95_ms"], ref["p95_ms"]) if ref and ok else None
        for k in ("prompt_tok_s", "decode_tok_s", "peak_rss_mb"):
            out[f"{k}_vs_{name}"] = _ratio(edged.get(k), ref.get(k)) if ref and ok else None
    return out


def targets(r: dict[str, float | None]) -> list[dict[str, Any]]:
    rows = []
    for label, key, op, goal in TARGETS:
        value = r.get(key)
        met = None if value is None else (value <= goal if op == "<=" else value >= goal)
        rows.append({"target": label, "key": key, "value": value, "goal": f"{op} {goal:g}", "met": met})
    return rows


def engine_ratios(
    llama_engine: dict[str, Any] | None,
    llama: dict[str, Any] | None,
    budget_mb: float | None,
    production: dict[str, Any] | None,
    best_mlx: dict[str, Any] | None,
) -> dict[str, float | None]:
    """The llama.cpp engine against raw llama.cpp and its memory budget; the production shape against MLX."""
    engine = (production or {}).get("modes", {}).get("llamacpp-keep") or {}
    mlx = best_mlx or {}
    ours, ref = llama_engine or {}, llama if llama is not None and "rows" in llama else {}
    return {
        "llamacpp_p50_vs_llama_cpp": _ratio((ours.get("idle") or {}).get("p50_ms"), ref.get("p50_ms")),
        "llamacpp_decode_vs_llama_cpp": _ratio(ours.get("decode_tok_s"), ref.get("decode_tok_s")),
        "llamacpp_rss_vs_budget": _ratio(ours.get("peak_rss_mb"), budget_mb),
        "production_decode_vs_mlx": _ratio(engine.get("decode_tok_s"), mlx.get("decode_tok_s")),
        "production_rss_vs_mlx": _ratio(engine.get("peak_rss_mb"), mlx.get("peak_rss_mb")),
    }
