"""Reload: validate first, keep the running configuration on error, apply what can change, name what needs a restart."""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path

import pytest
from proc import RUN_TIMEOUT, Edged, write_config
from pydantic import SecretStr

from edged.service.reload import changed_paths, plan, reread
from edged.settings import Settings, load_settings


def _settings(**overrides) -> Settings:
    return Settings(node_id="n1", **overrides)


def test_plan_applies_runtime_settings_and_keeps_restart_only_ones():
    """Limits, sampling and log levels apply; mqtt/model path/queue size keep their running value and are named."""
    old = _settings(requests={"queue_size": 4})
    new = _settings(
        requests={"queue_size": 8, "max_text_chars": 100},
        mqtt={"host": "broker.lan"},
        log={"level": "debug", "levels": {"edged.bus": "warning"}},
        model={"no_think": {"temperature": 0.5, "top_p": 0.8, "top_k": 20, "max_tokens": 32}},
    )
    outcome = plan(old, new)
    assert outcome.ok and outcome.restart_required == ["mqtt.host", "requests.queue_size"]
    assert outcome.applied == [
        "log.level",
        "log.levels.edged.bus",
        "model.no_think.max_tokens",
        "model.no_think.temperature",
        "requests.max_text_chars",
    ]
    running = outcome.settings
    assert (running.mqtt.host, running.requests.queue_size) == ("127.0.0.1", 4)  # as before: needs a restart
    assert (running.requests.max_text_chars, running.model.no_think.max_tokens, running.log.level) == (100, 32, "debug")


def test_settings_read_only_at_start_up_are_reported_as_needing_a_restart():
    """The engine's load options, the device registry settings, diagnostics, telemetry and the MQTT packet
    limit are read once at start-up: a change to them is named under restart_required and not taken over."""
    old = _settings()
    new = _settings(
        model={"engine": "llamacpp", "dtype": "float16", "max_context": 2048, "prefix_cache_mb": 0, "warm_up": False},
        devices={"dispatch": False, "confirm_ttl_s": 30, "discover": ["zigbee2mqtt"]},
        diagnostics={"structured": False, "progress_interval_s": 0},
        telemetry={"window_s": 60},
        requests={"max_payload_bytes": 4096},
    )
    outcome = plan(old, new)
    assert outcome.ok and outcome.applied == []
    assert outcome.restart_required == [
        "devices.confirm_ttl_s",
        "devices.discover",
        "devices.dispatch",
        "diagnostics.progress_interval_s",
        "diagnostics.structured",
        "model.dtype",
        "model.engine",
        "model.max_context",
        "model.prefix_cache_mb",
        "model.warm_up",
        "requests.max_payload_bytes",
        "telemetry.window_s",
    ]
    assert outcome.settings.model_dump() == old.model_dump()  # nothing of it runs before a restart


def test_a_reload_hands_every_applied_setting_to_the_running_daemon(tmp_path):
    """What the plan calls applied reaches the parts that use it; what it calls restart_required does not."""
    from edged.app import Daemon

    registry = Path(__file__).resolve().parent.parent / "config" / "registry-home.toml"
    old = _settings(state_dir=tmp_path, devices={"registry": registry})
    new = _settings(
        state_dir=tmp_path,
        shutdown_grace_s=5,
        devices={"registry": registry, "dispatch": False},
        commands={"language": "de", "grounded": False, "temperature": 0.3},
        requests={"max_text_chars": 50, "dedupe_window_s": 60, "dedupe_max_rows": 200},
        stats={"interval_s": 7, "window_s": 70},
        health={"check_interval_s": 3},
        model={"no_think": {"temperature": 0.5, "top_p": 0.8, "top_k": 20, "max_tokens": 32}},
    )
    daemon = Daemon(old, lambda _s: None, reload_settings=lambda: new)
    try:
        outcome = daemon.reload()
    finally:
        daemon.ledger.close()
    assert outcome.ok and outcome.restart_required == ["devices.dispatch"]
    assert daemon.settings is outcome.settings and daemon.settings.devices.dispatch is True
    assert daemon.devices is not None and daemon.devices.commands == new.commands
    assert daemon.devices._dispatch_default is True  # devices.* is read when the registry opens
    assert (daemon.ledger.window_s, daemon.ledger.max_rows) == (60, 200)
    assert (daemon.stats.window_s, daemon._stats_ticks.interval, daemon._health_ticks.interval) == (70, 7, 3)
    assert daemon.settings.requests.max_text_chars == 50 and daemon.settings.shutdown_grace_s == 5
    assert daemon.settings.model.no_think.max_tokens == 32


def test_an_invalid_or_unreadable_configuration_is_refused_and_the_old_one_kept(tmp_path):
    """Validation errors name the field; a TOML syntax error or a missing file is reported; current settings stay."""
    current = _settings()
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 70000\n[requests]\nqueue_size = 0\n")
    outcome = reread(current, lambda: load_settings(bad))
    assert not outcome.ok and outcome.settings is current and outcome.applied == []
    assert "mqtt.port" in outcome.error and "requests.queue_size" in outcome.error
    bad.write_text("[mqtt\n")
    assert "TOMLDecodeError" in reread(current, lambda: load_settings(bad)).error
    assert "not found" in reread(current, lambda: load_settings(tmp_path / "gone.toml")).error
    result = json.loads(outcome.result("rl-1").to_json())
    assert result["status"] == "error" and result["error"]["code"] == "invalid_config" and result["kind"] == "admin"


def test_outcomes_name_changed_secrets_without_their_values():
    """A changed password is reported as a path; its value appears nowhere in the outcome."""
    old, new = _settings(mqtt={"password": "old-secret"}), _settings(mqtt={"password": SecretStr("new-secret")})
    assert changed_paths(old, new) == ["mqtt.password"]
    text = plan(old, new).result("r").to_json().decode()
    assert "mqtt.password" in text and "secret" not in text.replace("mqtt.password", "")


RELOAD_BASE = """
[admin]
reload_topic = true

[model.scheduler]
max_batch = 1  # one generation at a time: the queries queue, and the reload lands while they wait
"""
SMALL = """
[requests]
max_text_chars = 20

[model.no_think]
temperature = 0.7
top_p = 0.8
top_k = 20
max_tokens = 3

[homeassistant]
discovery = true
"""


def test_sighup_and_admin_reload_swap_settings_without_dropping_queued_requests(
    broker, tiny_model_dir, tmp_path, client_for, notify_socket
):
    """SIGHUP mid-queue: every queued query is answered; new limits and sampling apply;
    an invalid file keeps the running one."""
    node_id = f"rl-{uuid.uuid4().hex[:8]}"
    base = f"edged/{node_id}"
    config = write_config(tmp_path / "edged.toml", tiny_model_dir, node_id, RELOAD_BASE)
    c = client_for(base, timeout=RUN_TIMEOUT)
    c.subscribe(f"{base}/result/+")
    edged = Edged(config, tmp_path / "edged.log", env={"NOTIFY_SOCKET": notify_socket.path})
    result = lambda rid: c.wait_for(lambda m: m.topic == f"{base}/result/{rid}").json()  # noqa: E731
    try:
        notify_socket.wait_for("READY", "1", timeout=RUN_TIMEOUT)
        ids = [f"q{i}" for i in range(4)]
        for rid in ids:
            c.publish(f"{base}/query", json.dumps({"id": rid, "text": "why is pump 3 vibrating?"}))
        result("q0")
        write_config(config, tiny_model_dir, node_id, RELOAD_BASE + SMALL)
        edged.proc.send_signal(signal.SIGHUP)
        reloading = notify_socket.wait_for("RELOADING", "1")
        notify_socket.wait_for("READY", "1", after=reloading)
        answered_before = sum(1 for m in c.messages() if m.topic.startswith(f"{base}/result/"))
        assert answered_before < len(ids), "the reload should have landed with queries still queued"
        assert all(result(rid)["status"] == "ok" for rid in ids)  # none dropped
        assert c.request("command", {"text": "x" * 30})["error"]["code"] == "text_too_long"  # the new limit
        assert c.request("command", {"text": "lights"})["usage"]["completion_tokens"] <= 3  # the new sampling

        config.write_text(config.read_text() + "\n[mqtt.extra]\n")  # invalid: unknown key
        edged.proc.send_signal(signal.SIGHUP)
        reloading = notify_socket.wait_for("RELOADING", "1", after=reloading + 1)
        assert notify_socket.messages[notify_socket.wait_for("READY", "1", after=reloading)][1]["STATUS"].startswith(
            "reload failed"
        )
        assert c.request("command", {"text": "x" * 30})["error"]["code"] == "text_too_long"  # still the running one

        write_config(config, tiny_model_dir, node_id, RELOAD_BASE)  # back to the defaults, over the bus this time
        c.publish(f"{base}/admin/reload", json.dumps({"id": "rl-1"}))
        answer = result("rl-1")
        assert (answer["kind"], answer["action"], answer["status"]) == ("admin", "reload", "ok")
        assert "requests.max_text_chars" in answer["applied"] and answer["restart_required"] == []
        assert c.request("command", {"text": "x" * 30})["status"] == "ok"
        assert edged.stop() == 0
    finally:
        if edged.proc.poll() is None:
            edged.stop(signal.SIGKILL)
    events = {e["event"]: e for e in edged.events()}
    assert events["reload_done"]["restart_required"] == [] and "mqtt.extra" in events["reload_failed"]["error"]
    first_reload = next(e for e in edged.events() if e["event"] == "reload_done")
    assert first_reload["restart_required"] == ["homeassistant.discovery"]
    assert (
        "requests.max_text_chars" in first_reload["applied"] and "model.no_think.max_tokens" in first_reload["applied"]
    )


@pytest.mark.parametrize("payload", [b"not json", b'{"id": "rl-2", "bogus": 1}'])
def test_a_bad_admin_request_is_answered_with_an_error(start_daemon, client_for, payload):
    """The admin topic refuses what it cannot read, like any request: an error result, nothing reloaded."""
    d = start_daemon(admin={"reload_topic": True})
    c = client_for(d.base)
    c.subscribe(f"{d.base}/result/+")
    c.publish(f"{d.base}/admin/reload", payload)
    body = c.wait_for(lambda m: m.topic.startswith(f"{d.base}/result/")).json()
    assert body["status"] == "error" and body["error"]["code"] in ("bad_json", "unknown_field")
