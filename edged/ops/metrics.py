"""Prometheus metrics (extra ``edged[metrics]``) on a loopback HTTP port.

What Prometheus users expect: latency as histograms (``edged_request_duration_seconds`` by kind),
raw token counters (rates and ratios are PromQL's job: ``rate(edged_completion_tokens_total[5m])``),
errors by code, time to first token, model load time, and the standard ``process_*`` metrics.
Counts by status, state and gauges come from the same stats document edged publishes on
``{base}/stats``, so the two never disagree. Seconds and bytes throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import structlog

from edged.ops.health import State
from edged.protocol import Result

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

log = structlog.get_logger("edged.metrics")
STATES: tuple[State, ...] = ("starting", "online", "degraded", "stopping", "offline")
# Commands take tens of milliseconds to seconds, queries seconds to minutes.
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class MetricsUnavailable(Exception):
    """Metrics were asked for but cannot be served (package missing, port taken)."""


def families(doc: dict[str, Any], info: dict[str, str]) -> Iterator[Metric]:
    """Metric families read from one stats document: identity, state, results by status, gauges."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

    yield InfoMetricFamily("edged", "edged version, node and model", value=info)
    state = GaugeMetricFamily("edged_state", "1 for the current state", labels=["state"])
    for name in STATES:
        state.add_metric([name], 1.0 if doc["state"] == name else 0.0)
    yield state
    requests = CounterMetricFamily("edged_requests", "results published, by kind and status", labels=["kind", "status"])
    for kind, by_status in doc["requests"].items():
        for status, count in by_status.items():
            requests.add_metric([kind, status], count)
    yield requests
    paths = CounterMetricFamily(
        "edged_commands_resolved", "command results by the layer that resolved them", labels=["resolved_by"]
    )
    for layer, count in doc.get("commands_resolved_by", {}).items():
        paths.add_metric([layer], count)
    yield paths
    gauges = [
        ("edged_uptime_seconds", "seconds since start", doc["uptime_s"]),
        ("edged_queue_depth", "requests waiting for the model", doc["queue_depth"]),
        ("edged_prompt_cache_bytes", "bytes held by the engine's prompt cache", doc["cache_bytes"]),
    ]
    for metric, help_text, value in gauges:
        if value is not None:
            yield GaugeMetricFamily(metric, help_text, value=value)
    yield CounterMetricFamily("edged_mqtt_reconnects", "reconnections to the broker", value=doc["reconnects"])


class RequestMetrics:
    """Histograms and counters fed result by result (worker and network threads; prometheus_client locks)."""

    def __init__(self, registry: CollectorRegistry):
        from prometheus_client import Counter, Gauge, Histogram

        self.duration = Histogram(
            "edged_request_duration_seconds",
            "time from receipt to result, by kind (requests the model ran for)",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.first_token = Histogram(
            "edged_time_to_first_token_seconds",
            "queue wait plus prefill: time until the first generated token, by kind",
            ["kind"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        tokens = [
            ("prompt", "prompt tokens processed (cached ones included)"),
            ("cached", "prompt tokens served from the prompt cache"),
            ("completion", "tokens generated (reasoning included)"),
            ("reasoning", "tokens generated inside the thinking block"),
        ]
        self.tokens = {
            name: Counter(f"edged_{name}_tokens", help_text, ["kind"], registry=registry) for name, help_text in tokens
        }
        self.errors = Counter("edged_errors", "error results by machine-readable code", ["code"], registry=registry)
        self.model_load = Gauge(
            "edged_model_load_seconds", "how long the model took to load at start-up", registry=registry
        )

    def record(self, result: Result) -> None:
        kind = result.kind or "unknown"
        if result.error is not None:
            self.errors.labels(result.error.code.value).inc()
        usage = result.usage
        if usage.prompt_tokens <= 0:
            return  # refused before the model ran: counted by status only
        timing = result.timing_ms
        self.duration.labels(kind).observe(timing.total / 1000)
        if usage.completion_tokens > 0:
            self.first_token.labels(kind).observe((timing.queue + timing.prefill) / 1000)
        for name, count in (
            ("prompt", usage.prompt_tokens),
            ("cached", usage.cached_tokens),
            ("completion", usage.completion_tokens),
            ("reasoning", usage.reasoning_tokens),
        ):
            self.tokens[name].labels(kind).inc(count)


class _Collector:
    def __init__(self, document: Callable[[], dict[str, Any]], info: Callable[[], dict[str, str]]):
        self._document = document
        self._info = info

    def collect(self) -> Iterator[Metric]:
        return families(self._document(), self._info())


class MetricsServer:
    """Serves ``/metrics`` on ``host:port`` (port 0: any free port, see ``.port``) until :meth:`stop`."""

    def __init__(
        self, host: str, port: int, document: Callable[[], dict[str, Any]], info: Callable[[], dict[str, str]]
    ):
        try:
            from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
        except ImportError:
            raise MetricsUnavailable(
                "metrics.prometheus_port is set but prometheus-client is missing: pip install 'edged[metrics]'"
            ) from None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(document, info))
        ProcessCollector(registry=registry)  # process_* (CPU, memory, open fds, start time) where /proc exists
        self.requests = RequestMetrics(registry)
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise MetricsUnavailable(f"cannot serve metrics on {host}:{port}: {exc}") from None
        self.port: int = self._server.server_port
        log.info("metrics_serving", host=host, port=self.port)

    def record(self, result: Result) -> None:
        self.requests.record(result)

    def model_loaded(self, seconds: float) -> None:
        self.requests.model_load.set(seconds)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
