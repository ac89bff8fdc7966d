"""The one table ``edged bench`` prints: edged's figures with raw mlx-lm and llama.cpp beside them."""

from __future__ import annotations

from typing import Any

# edged on MLX beside raw mlx-lm; edged on llama.cpp beside raw llama.cpp (same GGUF weights).
COLUMNS = ("edged-MLX", "raw mlx-lm", "MLX/raw", "edged-llama", "raw llama", "e-llama/raw")


def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.3f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"


def _mb(nbytes: Any) -> float | None:
    return nbytes / 2**20 if isinstance(nbytes, (int, float)) else None


def render(doc: dict[str, Any]) -> str:
    e, b, lc = doc["edged"], doc.get("baseline") or {}, doc.get("llama_cpp") or {}
    el = doc.get("edged_llamacpp") or {}
    lines = [doc["title"], f"{'':44}" + "".join(f"{c:>13}" for c in COLUMNS)]

    def row(label: str, ev: Any, bv: Any = None, lv: Any = None, spec: str = ".1f", key: Any = None) -> None:
        ov = key(el) if key is not None and el else None  # the same figure from edged on llama.cpp
        cells = [_fmt(ev, spec), _fmt(bv, spec), _ratio(ev, bv), _fmt(ov, spec), _fmt(lv, spec), _ratio(ov, lv)]
        lines.append(f"{label:44}" + "".join(f"{c:>13}" for c in cells))

    lp = e.get("local_path") or {}
    if lp.get("count"):
        row(f"local path timing.total p50 ms ({lp['count']}/{lp['of']} cmds)", lp["total_p50_ms"])
        row("local path timing.total p95 ms", lp["total_p95_ms"])
        row("local path caller p50 ms", lp["caller_p50_ms"])
    row("first command ms (after start-up)", e["first_command_ms"], key=lambda x: x["first_command_ms"])
    for p in ("p50", "p95", "p99"):
        row(
            f"command latency idle {p} ms",
            e["idle"][f"{p}_ms"],
            b.get(f"{p}_ms"),
            lc.get(f"{p}_ms"),
            key=lambda x, p=p: x["idle"][f"{p}_ms"],
        )
    dq = e["during_query"]
    for p in ("p50", "p95", "p99"):
        label = f"  while a query runs {p} ms (vs idle: {_ratio(dq[f'{p}_ms'], e['idle'][f'{p}_ms'])})"
        row(label, dq[f"{p}_ms"], key=lambda x, p=p: x["during_query"][f"{p}_ms"])
    for c, t in e["throughput"].items():
        row(
            f"throughput, concurrency {c}, commands/s",
            t["per_s"],
            spec=".3f",
            key=lambda x, c=c: (x["throughput"].get(c) or {}).get("per_s"),
        )
    if "1" in e["throughput"] and "8" in e["throughput"]:
        lines.append(f"  concurrency 8 vs 1: {_ratio(e['throughput']['8']['per_s'], e['throughput']['1']['per_s'])}")
    row(
        "prompt tok/s (whole prompt / time to 1st token)",
        e["prompt_tok_s"],
        b.get("prompt_tok_s"),
        lc.get("prompt_tok_s"),
        key=lambda x: x["prompt_tok_s"],
    )
    row(
        "prefill tok/s (tokens computed, cache excluded)",
        e["prefill_tok_s"],
        b.get("prefill_tok_s"),
        lc.get("prefill_tok_s"),
        key=lambda x: x["prefill_tok_s"],
    )
    row(
        "decode tok/s",
        e["decode_tok_s"],
        b.get("decode_tok_s"),
        lc.get("decode_tok_s"),
        key=lambda x: x["decode_tok_s"],
    )
    c = e["cache"]
    row("prompt-cache hit rate (commands)", c["hit_rate"], spec=".3f", key=lambda x: x["cache"]["hit_rate"])
    row("cached tokens per command (mean)", c["cached_tokens_mean"], key=lambda x: x["cache"]["cached_tokens_mean"])
    row(
        "cached share of prompt tokens",
        c["cached_token_share"],
        spec=".3f",
        key=lambda x: x["cache"]["cached_token_share"],
    )
    row("prefix cache MB (stats topic)", _mb(c["cache_bytes"]), key=lambda x: _mb(x["cache"]["cache_bytes"]))
    row("peak RSS MB", e["peak_rss_mb"], b.get("peak_rss_mb"), lc.get("peak_rss_mb"), key=lambda x: x["peak_rss_mb"])
    o = e["overhead"]
    row("edged overhead p50 ms (caller - model)", o["overhead_ms_p50"], key=lambda x: x["overhead"]["overhead_ms_p50"])
    row("  bus (caller - timing.total) p50 ms", o["bus_ms_p50"], spec=".2f")
    row("  queue p50 ms", o["queue_ms_p50"], spec=".2f")
    row("  mask p50 ms", o["mask_ms_p50"], spec=".2f")
    row("  prompt, parsing, validation p50 ms", o["other_ms_p50"], spec=".2f")
    row("edged overhead share of caller latency", o["share_total"], spec=".4f")
    if doc.get("production"):
        from edged.bench.production import lines as production_lines

        lines += ["", *production_lines(doc["production"])]
    lines += ["", "targets (one run, ratios):"]
    for t in doc["targets"]:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.4g}"
        lines.append(f"  {t['target']:44} {value:>10}  goal {t['goal']:<7} {verdict}")
    lines += ["", *doc.get("notes", [])]
    return "\n".join(lines)
