"""Prometheus metrics (extra ``edged[metrics]``): the figures of ``{base}/stats`` on a loopback HTTP port.

One source: every scrape asks the daemon for the same document it publishes on the bus, so
the two never disagree. Latencies are converted to seconds, Prometheus' unit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import structlog

from edged.ops.health import State

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = structlog.get_logger("edged.metrics")
STATES: tuple[State, ...] = ("starting", "online", "degraded", "stopping", "offline")


class MetricsUnavailable(Exception):
    """Metrics were asked for but cannot be served (package missing, port taken)."""


def families(doc: dict[str, Any], info: dict[str, str]) -> Iterator[Metric]:
    """Prometheus metric families for one stats document."""
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
    latency = GaugeMetricFamily(
        "edged_request_latency_seconds",
        "total latency of ok results over the stats window",
        labels=["kind", "quantile"],
    )
    for kind, figures in doc["latency_ms"].items():
        for quantile, key in (("0.5", "p50"), ("0.95", "p95")):
            if figures[key] is not None:
                latency.add_metric([kind, quantile], figures[key] / 1000)
    yield latency
    gauges = [
        ("edged_uptime_seconds", "seconds since start", doc["uptime_s"]),
        ("edged_queue_depth", "requests waiting for the model", doc["queue_depth"]),
        (
            "edged_tokens_per_second",
            "completion tokens per second of decoding over the stats window",
            doc["tokens_per_s"],
        ),
        ("edged_prompt_cache_hit_ratio", "cached over prompt tokens over the stats window", doc["cache_hit_rate"]),
        ("edged_prompt_cache_bytes", "bytes held by the engine's prompt cache", doc["cache_bytes"]),
        ("edged_resident_memory_bytes", "resident memory (peak on macOS)", doc["rss_bytes"]),
    ]
    for metric, help_text, value in gauges:
        if value is not None:
            yield GaugeMetricFamily(metric, help_text, value=value)
    yield CounterMetricFamily("edged_mqtt_reconnects", "reconnections to the broker", value=doc["reconnects"])


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
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise MetricsUnavailable(
                "metrics.prometheus_port is set but prometheus-client is missing: pip install 'edged[metrics]'"
            ) from None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(document, info))
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise MetricsUnavailable(f"cannot serve metrics on {host}:{port}: {exc}") from None
        self.port: int = self._server.server_port
        log.info("metrics_serving", host=host, port=self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
