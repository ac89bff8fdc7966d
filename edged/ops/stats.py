"""Figures for ``{base}/stats`` and Prometheus: counts since start, latency and throughput over a window."""

from __future__ import annotations

import math
import os
import resource
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

from edged.devices.proposal import ResolvedBy
from edged.protocol import Kind, Result

MAX_SAMPLES = 10_000  # bounds the window's memory whatever the request rate
KINDS = get_args(Kind)
RESOLVERS = get_args(ResolvedBy)


@dataclass(frozen=True)
class _Sample:
    """One request the model worked on."""

    at: float
    kind: str
    status: str
    total_ms: float
    decode_ms: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0-100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def rss_bytes() -> int:
    """Resident memory now (Linux ``/proc``); elsewhere the peak, which is what the OS offers cheaply."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


class Stats:
    """Thread-safe: results are recorded from the worker and network threads, read by publishers."""

    def __init__(self, *, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._paths: Counter[str] = Counter()  # commands by the layer that resolved them: local, rules, model
        self._samples: deque[_Sample] = deque(maxlen=MAX_SAMPLES)

    def record(self, result: Result) -> None:
        kind = result.kind or "unknown"
        with self._lock:
            self._counts[(kind, result.status)] += 1
            resolved_by = (result.result or {}).get("resolved_by") if kind == "command" else None
            if isinstance(resolved_by, str):
                self._paths[resolved_by] += 1
            if result.usage.prompt_tokens > 0:  # the model ran: it counts for latency and throughput
                self._samples.append(
                    _Sample(
                        at=self._clock(),
                        kind=kind,
                        status=result.status,
                        total_ms=result.timing_ms.total,
                        decode_ms=result.timing_ms.decode,
                        prompt_tokens=result.usage.prompt_tokens,
                        cached_tokens=result.usage.cached_tokens,
                        completion_tokens=result.usage.completion_tokens,
                    )
                )

    def snapshot(self, **gauges: Any) -> dict[str, Any]:
        """Counts since start, window figures, and the caller's ``gauges`` (queue depth, RSS, ...)."""
        now = self._clock()
        with self._lock:
            while self._samples and now - self._samples[0].at > self.window_s:
                self._samples.popleft()
            samples = list(self._samples)
            counts = dict(self._counts)
            paths = {p: self._paths.get(p, 0) for p in RESOLVERS}
        requests: dict[str, dict[str, int]] = {}
        for (kind, status), n in sorted(counts.items()):
            requests.setdefault(kind, {})[status] = n
        latency = {}
        for kind in KINDS:  # always both keys: consumers (Home Assistant templates) need a stable shape
            totals = [s.total_ms for s in samples if s.kind == kind and s.status == "ok"]
            latency[kind] = {"count": len(totals), "p50": percentile(totals, 50), "p95": percentile(totals, 95)}
        decode_s = sum(s.decode_ms for s in samples) / 1000
        prompt = sum(s.prompt_tokens for s in samples)
        return {
            "uptime_s": round(now - self._started, 1),
            "window_s": self.window_s,
            "requests": requests,
            "requests_total": sum(counts.values()),
            "commands_resolved_by": paths,
            "latency_ms": latency,
            "tokens_per_s": round(sum(s.completion_tokens for s in samples) / decode_s, 2) if decode_s > 0 else None,
            "cache_hit_rate": round(sum(s.cached_tokens for s in samples) / prompt, 4) if prompt else None,
            **gauges,
        }
