"""The stats figures from plain results and a controlled clock."""

from __future__ import annotations

from edged.ops.stats import Stats, percentile
from edged.protocol import ErrorCode, Result, Timing, Usage
from edged.service.handler import error_result


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ok(kind: str, total_ms: float, *, completion: int = 10, decode_ms: float = 100.0, cached: int = 0) -> Result:
    return Result(
        id="r",
        kind=kind,
        status="ok",
        usage=Usage(prompt_tokens=50, cached_tokens=cached, completion_tokens=completion),
        timing_ms=Timing(decode=decode_ms, total=total_ms),
    )


def test_percentile_is_nearest_rank():
    """p50 and p95 of 1..20 are 10 and 19; a single value is every percentile; none is None."""
    values = [float(v) for v in range(20, 0, -1)]
    assert (percentile(values, 50), percentile(values, 95), percentile([7.0], 95), percentile([], 50)) == (
        10,
        19,
        7,
        None,
    )


def test_counts_since_start_figures_over_the_window():
    """Counts never forget; latency, tokens/s and cache hit rate cover only the last window_s seconds."""
    clock = Clock()
    stats = Stats(window_s=60, clock=clock)
    stats.record(_ok("command", 5000.0, completion=10, decode_ms=1000.0))
    clock.now += 61  # the first result leaves the window
    stats.record(_ok("command", 100.0, completion=30, decode_ms=500.0, cached=25))
    stats.record(_ok("command", 300.0, completion=30, decode_ms=500.0, cached=25))
    stats.record(_ok("query", 2000.0))
    stats.record(error_result("x", ErrorCode.BUSY, "full", kind="query"))
    stats.record(error_result("unknown", ErrorCode.BAD_JSON, "bad"))
    snap = stats.snapshot(queue_depth=2)
    assert snap["requests"] == {"command": {"ok": 3}, "query": {"error": 1, "ok": 1}, "unknown": {"error": 1}}
    assert snap["requests_total"] == 6 and snap["queue_depth"] == 2 and snap["uptime_s"] == 61
    assert snap["latency_ms"]["command"] == {"count": 2, "p50": 100.0, "p95": 300.0}
    assert snap["latency_ms"]["query"] == {"count": 1, "p50": 2000.0, "p95": 2000.0}
    assert snap["tokens_per_s"] == round(70 / 1.1, 2)  # (30 + 30 + 10) tokens over (0.5 + 0.5 + 0.1) s of decoding
    assert snap["cache_hit_rate"] == round(50 / 150, 4)
