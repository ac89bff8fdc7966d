"""Home Assistant discovery of edged itself, checked on the real broker against HA's documented schema.

Device-based discovery (HA 2024.11+): ``<prefix>/device/<id>/config`` with ``device``, ``origin`` and
``components``; each component names its ``platform`` and has a ``unique_id``. Since HA 2025.10 the
entity id is suggested with ``default_entity_id`` (``<platform>.<id>``); ``object_id`` is deprecated.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from typing import Any

import jinja2
import pytest

from edged.ops.homeassistant import EVENT_TYPES, SUPPORT_URL
from tests.conftest import make_settings

# Required options per platform (HA MQTT docs), for configs received through discovery.
REQUIRED = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "text": {"command_topic"},
    "event": {"state_topic", "event_types"},
    "button": {"command_topic"},
}
ENV = jinja2.Environment()


def retained(client_for, topic_filter: str) -> dict[str, bytes]:
    """Every retained message under ``topic_filter`` now: a marker of our own arrives after them."""
    c = client_for("unused")
    c.subscribe(topic_filter)
    marker = f"edged-test-marker/{uuid.uuid4().hex}"
    c.subscribe(marker)
    c.publish(marker, b"x")
    c.wait_for(lambda m: m.topic == marker)
    return {m.topic: m.payload for m in c.messages() if m.retained and m.topic != marker}


@pytest.fixture
def prefix(client_for):
    name = f"ha-{uuid.uuid4().hex[:8]}"
    yield name
    cleaner = client_for("unused")
    for topic in retained(client_for, f"{name}/#"):
        cleaner.publish(topic, b"", retain=True)


def ha_daemon(start_daemon, tiny_model_dir, prefix: str, **overrides: Any):
    settings = make_settings(
        tiny_model_dir,
        homeassistant={"discovery": True, "discovery_prefix": prefix},
        admin={"reload_topic": True},
        stats={"interval_s": 0.2},
        **overrides,
    )
    return start_daemon(settings)


def render(template: str, value_json: Any) -> str:
    return ENV.from_string(template).render(value_json=value_json, value=json.dumps(value_json))


def test_device_discovery_payload_follows_the_schema(start_daemon, tiny_model_dir, client_for, prefix):
    """One device config: device + origin; components with platform, unique ids, default_entity_id, the
    options HA requires, availability on edged's status, diagnostics marked; templates render on real documents."""
    d = ha_daemon(start_daemon, tiny_model_dir, prefix)
    node = d.settings.node_id
    configs = retained(client_for, f"{prefix}/#")
    assert list(configs) == [f"{prefix}/device/edged_{node}/config"]
    cfg = json.loads(configs[f"{prefix}/device/edged_{node}/config"])
    assert cfg["device"]["identifiers"] == [f"edged_{node}"] and cfg["device"]["model"] == "tiny-qwen3-random"
    assert cfg["origin"] == {"name": "edged", "sw_version": cfg["device"]["sw_version"], "support_url": SUPPORT_URL}
    components = cfg["components"]
    assert len({c["unique_id"] for c in components.values()}) == len(components) == 16
    c = client_for(d.base)
    c.subscribe(f"{d.base}/status")
    c.subscribe(f"{d.base}/stats")
    c.request("command", {"text": "lights on"})
    status = c.wait_for(lambda m: m.topic == f"{d.base}/status" and m.json()["state"] == "online").json()
    stats = c.wait_for(lambda m: m.topic == f"{d.base}/stats" and m.json()["requests_total"] == 1).json()
    documents = {f"{d.base}/status": status, f"{d.base}/stats": stats}
    for key, comp in components.items():
        platform = comp["platform"]
        assert REQUIRED[platform] <= comp.keys(), key
        assert "object_id" not in comp and comp["default_entity_id"].startswith(
            f"{platform}.edged_{node.replace('-', '_')}_"
        )
        assert comp["unique_id"].startswith(f"edged_{node}_")
        for availability in comp.get("availability", []):
            assert availability["topic"] == f"{d.base}/status"
            assert render(availability["value_template"], status) == "online"
        if comp.get("state_topic") in documents and "value_template" in comp:
            value = render(comp["value_template"], documents[comp["state_topic"]])
            assert value not in ("", "None") or key == "query_p95", (key, value)  # no query yet
    health = [comp for key, comp in components.items() if comp["platform"] == "sensor" and key != "last_result"]
    assert len(health) == 10 and all(comp["entity_category"] == "diagnostic" for comp in health)
    assert "availability" not in components["state"]  # shows offline itself
    assert components["problem"]["device_class"] == "problem"
    assert render(components["problem"]["value_template"], {**status, "state": "degraded"}) == "ON"
    assert components["reload"]["command_topic"] == f"{d.base}/admin/reload"


def test_text_entity_command_comes_back_as_an_event(start_daemon, tiny_model_dir, client_for, prefix):
    """What HA publishes for the text entity is a request; the result arrives on the event's state topic and
    renders to one of its event types; busy goes ON then OFF."""
    d = ha_daemon(start_daemon, tiny_model_dir, prefix)
    cfg = json.loads(next(iter(retained(client_for, f"{prefix}/#").values())))["components"]
    c = client_for(d.base)
    c.subscribe(cfg["result_event"]["state_topic"])
    c.subscribe(cfg["busy"]["state_topic"])
    payload = ENV.from_string(cfg["command"]["command_template"]).render(value='turn on the "porch" light')
    assert json.loads(payload)["text"] == 'turn on the "porch" light'
    c.publish(cfg["command"]["command_topic"], payload)
    result = c.wait_for(lambda m: m.topic == cfg["result_event"]["state_topic"]).json()
    event = json.loads(render(cfg["result_event"]["value_template"], result))
    assert event["event_type"] in EVENT_TYPES and event["id"] == result["id"] and event["kind"] == "command"
    assert render(cfg["last_result"]["value_template"], result) == result["status"]
    attributes = json.loads(render(cfg["last_result"]["json_attributes_template"], result))
    assert attributes["id"] == result["id"] and "timing_ms" in attributes
    busy = c.wait_for(lambda m: m.topic == cfg["busy"]["state_topic"] and m.payload == b"OFF")
    on = [m for m in c.messages(cfg["busy"]["state_topic"]) if m.payload == b"ON" and not m.retained]
    assert on and on[0].received_at <= busy.received_at


def test_reload_button_reaches_the_admin_topic(start_daemon, tiny_model_dir, client_for, prefix):
    d = ha_daemon(start_daemon, tiny_model_dir, prefix)
    button = json.loads(next(iter(retained(client_for, f"{prefix}/#").values())))["components"]["reload"]
    client_for(d.base).publish(button["command_topic"], button["payload_press"])
    admin = d.control.get(timeout=30)  # taken by intake as an admin request, for the main thread (serve)
    assert admin.action == "reload" and d.reload(admin).error is not None  # in tests: no configuration to re-read


def test_retained_configs_are_cleared_when_discovery_is_off_or_the_node_renamed(
    start_daemon, tiny_model_dir, client_for, prefix
):
    """The state dir remembers what was announced: a rename clears the old device, turning discovery off clears
    everything, and the per-entity configs of earlier versions are cleared on the first run."""
    state = tempfile.mkdtemp(prefix="edged-state-")
    old_node = f"t-{uuid.uuid4().hex[:8]}"
    legacy = f"{prefix}/sensor/edged_{old_node}/uptime/config"
    client_for("unused").publish(legacy, b'{"name": "Uptime"}', retain=True)
    first = ha_daemon(start_daemon, tiny_model_dir, prefix, node_id=old_node, state_dir=state)
    assert list(retained(client_for, f"{prefix}/#")) == [f"{prefix}/device/edged_{old_node}/config"]
    first.stop()
    new_node = f"t-{uuid.uuid4().hex[:8]}"
    renamed = ha_daemon(start_daemon, tiny_model_dir, prefix, node_id=new_node, state_dir=state)
    assert list(retained(client_for, f"{prefix}/#")) == [f"{prefix}/device/edged_{new_node}/config"]
    renamed.stop()
    settings = make_settings(
        tiny_model_dir,
        node_id=new_node,
        state_dir=state,
        homeassistant={"discovery": False, "discovery_prefix": prefix},
    )
    start_daemon(settings)
    assert retained(client_for, f"{prefix}/#") == {}


def test_a_hub_that_never_used_discovery_publishes_nothing_there(start_daemon, tiny_model_dir, client_for, prefix):
    """Discovery off and nothing remembered: edged leaves the discovery prefix alone (even a lookalike config)."""
    node = f"t-{uuid.uuid4().hex[:8]}"
    lookalike = f"{prefix}/sensor/edged_{node}/uptime/config"
    client_for("unused").publish(lookalike, b'{"name": "Uptime"}', retain=True)
    settings = make_settings(
        tiny_model_dir, node_id=node, homeassistant={"discovery": False, "discovery_prefix": prefix}
    )
    start_daemon(settings)
    assert list(retained(client_for, f"{prefix}/#")) == [lookalike]
