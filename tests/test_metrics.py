"""Prometheus metrics on a loopback port: the same figures as {base}/stats."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import urllib.request

import pytest
from conftest import Lent, make_settings
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


def _scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_metrics_report_the_stats_figures(start_daemon, client_for):
    """After a command and a bad payload: counters by kind/status and by error code, state, gauges, process_*."""
    d = start_daemon(metrics={"prometheus_port": 0})
    assert d.metrics is not None and d.metrics._server.server_address[0] == "127.0.0.1"
    c = client_for(d.base)
    c.request("command", {"text": "lights on"})
    c.subscribe(f"{d.base}/result/+")
    c.publish(f"{d.base}/query", b"{not json")
    c.wait_for(lambda m: m.topic == f"{d.base}/result/unknown")
    metrics = _scrape(d.metrics.port)
    assert metrics[("edged_requests_total", (("kind", "command"), ("status", "ok")))] == 1
    assert metrics[("edged_requests_total", (("kind", "query"), ("status", "error")))] == 1
    assert metrics[("edged_errors_total", (("code", "bad_json"),))] == 1
    assert (
        metrics[("edged_state", (("state", "online"),))] == 1
        and metrics[("edged_state", (("state", "degraded"),))] == 0
    )
    assert metrics[("edged_queue_depth", ())] == 0 and metrics[("edged_mqtt_reconnects_total", ())] == 0
    assert metrics[("process_resident_memory_bytes", ())] > 50 * 2**20
    assert metrics[("process_cpu_seconds_total", ())] > 0
    assert metrics[("edged_model_load_seconds", ())] >= 0
    info = next(labels for (name, labels) in metrics if name == "edged_info")
    assert dict(info) == {"model": "tiny-qwen3-random", "node_id": d.settings.node_id, "version": __version__}
    names = {name for name, _ in metrics}
    assert not names & {"edged_request_latency_seconds", "edged_tokens_per_second", "edged_prompt_cache_hit_ratio"}


def test_latency_is_a_histogram_and_tokens_are_raw_counters(start_daemon, client_for):
    """Two commands: the duration histogram counts both, its sum is their total time, token counters add usage up."""
    d = start_daemon(metrics={"prometheus_port": 0})
    c = client_for(d.base)
    results = [c.request("command", {"text": text}) for text in ("lights on", "lights off")]
    metrics = _scrape(d.metrics.port)
    command = (("kind", "command"),)
    assert metrics[("edged_request_duration_seconds_count", command)] == 2
    total_s = sum(r["timing_ms"]["total"] for r in results) / 1000
    assert metrics[("edged_request_duration_seconds_sum", command)] == pytest.approx(total_s, rel=1e-6)
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in metrics.items()
        if name == "edged_request_duration_seconds_bucket" and dict(labels)["kind"] == "command"
    )
    assert buckets[-1] == (float("inf"), 2) and all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    for name in ("prompt", "cached", "completion"):
        expected = sum(r["usage"][f"{name}_tokens"] for r in results)
        assert metrics[(f"edged_{name}_tokens_total", command)] == expected
    first_token_s = sum(r["timing_ms"]["queue"] + r["timing_ms"]["prefill"] for r in results) / 1000
    assert metrics[("edged_time_to_first_token_seconds_sum", command)] == pytest.approx(first_token_s, rel=1e-6)


def test_exposition_passes_promtool(start_daemon, client_for, tmp_path):
    """promtool's linter (naming, units, suffixes) finds nothing; without promtool, the naming rules in code."""
    d = start_daemon(metrics={"prometheus_port": 0})
    client_for(d.base).request("command", {"text": "lights on"})
    text = _scrape_text(d.metrics.port)
    promtool = shutil.which("promtool")
    if promtool is not None:
        checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    for family in text_string_to_metric_families(text):
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", family.name)
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        if family.type == "gauge":
            assert not family.name.endswith("_total"), family.name


def test_a_taken_port_stops_start_up_with_a_clear_error(broker, engine, tiny_model_dir):
    """metrics.prometheus_port already in use: start() raises MetricsUnavailable naming the address."""
    from edged.app import Daemon
    from edged.ops.metrics import MetricsUnavailable

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = Daemon(make_settings(tiny_model_dir, metrics={"prometheus_port": port}), lambda _s: Lent(engine))
        with pytest.raises(MetricsUnavailable, match=f"127.0.0.1:{port}"):
            daemon.start()
        daemon.stop()
