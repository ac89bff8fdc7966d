"""Prometheus metrics on a loopback port: the same figures as {base}/stats."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from conftest import make_settings
from prometheus_client.parser import text_string_to_metric_families

from edged import __version__


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_report_the_stats_figures(start_daemon, client_for):
    """After a command and a bad payload: counters by kind/status, state, latency in seconds, gauges, as in stats."""
    d = start_daemon(metrics={"prometheus_port": 0})
    assert d.metrics is not None and d.metrics._server.server_address[0] == "127.0.0.1"
    c = client_for(d.base)
    ok = c.request("command", {"text": "lights on"})
    c.subscribe(f"{d.base}/result/+")
    c.publish(f"{d.base}/query", b"{not json")
    c.wait_for(lambda m: m.topic == f"{d.base}/result/unknown")
    metrics = _scrape(d.metrics.port)
    doc = d.stats_document()
    assert metrics[("edged_requests_total", (("kind", "command"), ("status", "ok")))] == 1
    assert metrics[("edged_requests_total", (("kind", "query"), ("status", "error")))] == 1
    assert (
        metrics[("edged_state", (("state", "online"),))] == 1
        and metrics[("edged_state", (("state", "degraded"),))] == 0
    )
    latency = metrics[("edged_request_latency_seconds", (("kind", "command"), ("quantile", "0.95")))]
    assert (
        latency
        == pytest.approx(ok["timing_ms"]["total"] / 1000)
        == pytest.approx(doc["latency_ms"]["command"]["p95"] / 1000)
    )
    assert metrics[("edged_queue_depth", ())] == 0 and metrics[("edged_mqtt_reconnects_total", ())] == 0
    assert metrics[("edged_tokens_per_second", ())] == doc["tokens_per_s"] > 0
    assert metrics[("edged_resident_memory_bytes", ())] > 50 * 2**20
    info = next(labels for (name, labels) in metrics if name == "edged_info")
    assert dict(info) == {"model": "tiny-qwen3-random", "node_id": d.settings.node_id, "version": __version__}


def test_a_taken_port_stops_start_up_with_a_clear_error(broker, engine, tiny_model_dir):
    """metrics.prometheus_port already in use: start() raises MetricsUnavailable naming the address."""
    from edged.app import Daemon
    from edged.ops.metrics import MetricsUnavailable

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = Daemon(make_settings(tiny_model_dir, metrics={"prometheus_port": port}), lambda _s: engine)
        with pytest.raises(MetricsUnavailable, match=f"127.0.0.1:{port}"):
            daemon.start()
        daemon.stop()
