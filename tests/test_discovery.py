"""Devices discovered from zigbee2mqtt and Home Assistant MQTT discovery, merged with the registry file.

The fixtures in tests/data/discovery are payloads as zigbee2mqtt (bridge/devices) and Home Assistant
integrations publish them; the integration tests replay them retained on the real broker under a private
base topic and discovery prefix.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from edged.devices.discovery import homeassistant, zigbee2mqtt
from edged.devices.discovery.common import Policy
from edged.devices.discovery.merge import merge
from edged.devices.registry import Registry, load_registry
from tests.conftest import make_settings

DATA = Path(__file__).parent / "data"
Z2M = json.loads((DATA / "discovery" / "zigbee2mqtt_bridge_devices.json").read_text())
HA = json.loads((DATA / "discovery" / "homeassistant_configs.json").read_text())
SMALL = DATA / "registry-small.toml"


def z2m_devices(base: str = "zigbee2mqtt") -> dict[str, Any]:
    return {d.device.id: d for d in zigbee2mqtt.from_bridge_devices(Z2M, base, Policy())}


def ha_devices() -> dict[str, Any]:
    found = [d for topic, body in HA for d in homeassistant.from_config(topic, body, "homeassistant", Policy())]
    return {d.device.id: d for d in found}


def test_zigbee2mqtt_exposes_become_devices_and_actions():
    """Lights, switches (one per endpoint), covers, climate, lock and fan; sensors, remotes, the coordinator and
    unsupported devices are left out."""
    found = z2m_devices()
    assert sorted(found) == [
        "bathroom_radiator",
        "bedroom_blinds",
        "coffee_machine",
        "front_door",
        "garage_door",
        "hallway_wall_switch_left",
        "hallway_wall_switch_right",
        "kitchen_spots",
        "living_room_ceiling",
        "office_air_purifier",
    ]
    ceiling = found["living_room_ceiling"].device
    assert ceiling.type == "light" and ceiling.command_topic == "zigbee2mqtt/living_room/ceiling/set"
    assert ceiling.state_topic == "zigbee2mqtt/living_room/ceiling"
    actions = ceiling.all_actions()
    assert sorted(actions) == ["set_brightness", "set_color_temp", "turn_off", "turn_on"]
    assert (actions["set_color_temp"].params["color_temp"].min, actions["set_color_temp"].params["color_temp"].max) == (
        250,
        454,
    )
    assert actions["set_brightness"].payload == {"state": "ON", "brightness": "{brightness}"}
    spots = found["kitchen_spots"].device.all_actions()
    assert spots["set_color"].payload == {"state": "ON", "color": {"hue": "{hue}", "saturation": "{saturation}"}}
    right = found["hallway_wall_switch_right"].device.all_actions()
    assert right["turn_on"].payload == {"state_right": "ON"}
    radiator = found["bathroom_radiator"].device.all_actions()
    setpoint = radiator["set_temperature"].params["setpoint"]
    assert (setpoint.min, setpoint.max, setpoint.step) == (4, 35, 0.5)
    assert radiator["turn_off"].payload == {"system_mode": "off"}
    fan = found["office_air_purifier"].device.all_actions()
    assert fan["turn_on"].payload == {"fan_state": "ON"} and "auto" in fan["set_mode"].params["mode"].values
    assert sorted(found["bedroom_blinds"].device.all_actions()) == ["close", "open", "set_position", "stop"]


def test_zigbee2mqtt_areas_come_from_the_friendly_name_or_the_description():
    found = z2m_devices()
    assert found["living_room_ceiling"].area_name == "living_room"
    assert found["hallway_wall_switch_left"].area_name == "Hallway"  # description "area: Hallway"
    assert found["coffee_machine"].area_name == "Kitchen"  # description "room=Kitchen"
    assert zigbee2mqtt.area_of("plug", None) is None


def test_safety_policy_for_discovered_devices():
    """Locks always ask; a cover called garage/gate/door asks; a setpoint above the limit asks; blinds do not."""
    found = z2m_devices()
    assert all(a.confirm for a in found["front_door"].device.all_actions().values())
    assert all(a.confirm for a in found["garage_door"].device.all_actions().values())
    assert not any(a.confirm for a in found["bedroom_blinds"].device.all_actions().values())
    rule = found["bathroom_radiator"].device.all_actions()["set_temperature"].confirm_if
    assert rule is not None and rule.param == "setpoint" and rule.above == 25.0
    strict = zigbee2mqtt.from_bridge_devices(Z2M, "zigbee2mqtt", Policy(setpoint_above=21))
    radiator = next(d for d in strict if d.device.id == "bathroom_radiator")
    assert radiator.device.all_actions()["set_temperature"].confirm_if.above == 21


def test_home_assistant_configs_with_abbreviations_base_topic_and_components():
    """cmd_t/stat_t/dev/sa expanded, ~ replaced, device-based cmps split; sensors and edged's own entities ignored."""
    found = ha_devices()
    kitchen = found["kitchen"].device  # "~": "homeassistant/light/kitchen", "cmd_t": "~/set"
    assert kitchen.command_topic == "homeassistant/light/kitchen/set"
    assert kitchen.state_topic == "homeassistant/light/kitchen/state"
    assert kitchen.all_actions()["set_brightness"].payload == {"state": "ON", "brightness": "{brightness}"}
    irrigation = found["irrigation"]
    assert irrigation.area_name == "Garden" and irrigation.device.all_actions()["turn_on"].payload == "1"
    heat_pump = found["heat_pump"].device  # from homeassistant/device/heatpump01/config, platform climate
    assert heat_pump.type == "climate" and found["heat_pump"].area_name == "Utility room"
    set_temp = heat_pump.all_actions()["set_temperature"]
    assert set_temp.topic == "heatpump/setpoint/set" and set_temp.params["setpoint"].max == 30
    assert found["heat_pump_fan"].device.all_actions()["set_speed"].topic == "heatpump/fan/percentage"
    desk = found["desk_lamp"].device.all_actions()
    assert desk["set_brightness"].params["brightness"].max == 100 and desk["set_color_temp"].topic.endswith("/ct/set")
    assert found["doorbell_chime"].device.all_actions()["press"].payload == "RING"
    assert all(a.confirm for a in found["back_door_lock"].device.all_actions().values())
    assert all(a.confirm for a in found["garage_door"].device.all_actions().values())  # device_class garage, name
    assert "outdoor_temperature" not in found and not any(
        "edged" in t for t in (d.command_topic for d in [f.device for f in found.values()])
    )


def test_the_file_wins_field_by_field_and_duplicates_collapse():
    """A file device on the same command topic keeps its own name, area and actions; discovered actions are added.
    zigbee2mqtt's own Home Assistant announcement of a device it already described adds nothing."""
    file = Registry.model_validate(
        {
            "name": "home",
            "areas": [{"id": "kitchen", "name": "Kitchen"}, {"id": "utility", "name": "Utility room"}],
            "devices": [
                {
                    "id": "espresso",
                    "name": "Espresso machine",
                    "aliases": ["coffee"],
                    "area": "kitchen",
                    "type": "switch",
                    "command_topic": "zigbee2mqtt/coffee_machine/set",
                }
            ],
            "version": "f1",
        }
    )
    found = zigbee2mqtt.from_bridge_devices(Z2M, "zigbee2mqtt", Policy())
    found += [d for t, b in HA for d in homeassistant.from_config(t, b, "homeassistant", Policy())]
    merged = merge(file, found)
    ids = [d.id for d in merged.registry.devices]
    assert "coffee_machine" not in ids and ids.count("espresso") == 1
    espresso = merged.registry.device("espresso")
    assert (espresso.name, espresso.aliases, espresso.area) == ("Espresso machine", ["coffee"], "kitchen")
    assert espresso.state_topic == "zigbee2mqtt/coffee_machine"  # not set in the file: discovered
    assert merged.sources["espresso"] == "file+zigbee2mqtt"
    assert merged.registry.device("heat_pump").area == "utility"  # "Utility room" matched by name
    assert merged.sources["heat_pump"] == "homeassistant"
    assert sum(d.command_topic == "zigbee2mqtt/coffee_machine/set" for d in merged.registry.devices) == 1


# -- on the real broker ---------------------------------------------------------------------------


@pytest.fixture
def private_topics(client_for):
    """A private zigbee2mqtt base and discovery prefix; retained messages are cleared at the end."""
    tag = uuid.uuid4().hex[:8]
    base, prefix = f"z2m-{tag}", f"ha-{tag}"
    publisher = client_for("unused")
    published: list[str] = []

    def publish(topic: str, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        text = text.replace("zigbee2mqtt/", f"{base}/")
        publisher.publish(topic, text, retain=True)
        published.append(topic)

    yield base, prefix, publish
    for topic in published:
        publisher.publish(topic, b"", retain=True)


def replay(base: str, prefix: str, publish) -> None:
    publish(f"{base}/bridge/devices", Z2M)
    for topic, body in HA:
        publish(topic.replace("homeassistant/", f"{prefix}/", 1), body)


def settings_for(tiny_model_dir, base: str, prefix: str, **devices: Any):
    return make_settings(
        tiny_model_dir,
        devices={
            "discover": ["zigbee2mqtt", "homeassistant"],
            "zigbee2mqtt_base": base,
            "homeassistant_prefix": prefix,
            "dispatch": False,
            **devices,
        },
    )


def test_a_daemon_discovers_retained_devices_and_follows_changes(start_daemon, tiny_model_dir, private_topics):
    """Replayed fixtures -> the merged registry; a removed HA config and a shorter bridge/devices take devices away,
    logged like a reload; a malformed announcement changes nothing."""
    base, prefix, publish = private_topics
    replay(base, prefix, publish)
    daemon = start_daemon(settings_for(tiny_model_dir, base, prefix, registry=SMALL))
    store = daemon.devices.store
    expected = {*z2m_devices(), *ha_devices(), "garage_door_2", "porch_light", "thermostat"}  # HA's garage door: _2
    assert store.wait_until(lambda r: {d.id for d in r.devices} == expected, 15), sorted(
        d.id for d in store.current.devices
    )
    assert store.sources["front_door"] == "file+zigbee2mqtt" and store.sources["kitchen_spots"] == "zigbee2mqtt"
    assert f"{base}/kitchen/spots" in store.state_topics()
    with capture_logs() as logs:
        publish(f"{prefix}/lock/back_door/config", "")
        assert store.wait_until(lambda r: "back_door_lock" not in {d.id for d in r.devices}, 10)
        publish(f"{base}/bridge/devices", [d for d in Z2M if d["friendly_name"] != "office/air_purifier"])
        assert store.wait_until(lambda r: "office_air_purifier" not in {d.id for d in r.devices}, 10)
        version = store.current.version
        publish(f"{prefix}/switch/broken/config", "{not json")
        publish(f"{prefix}/switch/probe/config", {"name": "Probe", "cmd_t": f"{base}/probe/set", "uniq_id": "probe"})
        assert store.wait_until(lambda r: "probe" in {d.id for d in r.devices}, 10)
    loaded = [e for e in logs if e["event"] == "registry_loaded"]
    assert loaded[0]["removed"] == ["back_door_lock"] and loaded[1]["removed"] == ["office_air_purifier"]
    assert any(e["event"] == "discovery_message_ignored" and e["topic"].endswith("broken/config") for e in logs)
    assert store.current.version != version


def test_discovery_alone_serves_commands_for_discovered_devices(
    start_daemon, tiny_model_dir, private_topics, client_for
):
    """No registry file: a command is resolved against discovered devices only, and its actions name them."""
    base, prefix, publish = private_topics
    replay(base, prefix, publish)
    daemon = start_daemon(settings_for(tiny_model_dir, base, prefix))
    assert daemon.devices.store.wait_until(lambda r: len(r.devices) >= 15, 15)
    result = client_for(daemon.base).request("command", {"text": "turn on the kitchen spots", "dispatch": False})
    ids = {d.id for d in daemon.devices.store.current.devices}
    assert result["status"] in ("ok", "rejected", "needs_confirmation"), result
    assert all(a["device"] in ids for a in (result.get("result") or {}).get("actions", []))


def test_registry_show_prints_the_merged_registry_with_sources(broker, private_topics, tmp_path):
    """`edged registry show` reads the retained announcements and prints every device with its source."""
    from edged.cli import _parser
    from edged.devices.discovery import show

    base, prefix, publish = private_topics
    replay(base, prefix, publish)
    config = tmp_path / "edged.toml"
    config.write_text(
        f'[devices]\nregistry = "{SMALL}"\ndiscover = ["zigbee2mqtt", "homeassistant"]\n'
        f'zigbee2mqtt_base = "{base}"\nhomeassistant_prefix = "{prefix}"\n'
        f'[mqtt]\nhost = "{broker[0]}"\nport = {broker[1]}\n'
    )
    out = io.StringIO()
    assert show.main(_parser().parse_args(["registry", "show", "--config", str(config)]), out) == 0
    text = out.getvalue()
    assert "  garage_door [cover, zigbee2mqtt] Garage door:" in text
    assert "  porch_light [light, file] Porch light:" in text
    assert "  front_door [lock, file+zigbee2mqtt]" in text
    assert "      needs confirmation: close, open, set_position, stop" in text
    out = io.StringIO()
    show.main(_parser().parse_args(["registry", "show", "--config", str(config), "--json"]), out)
    doc = json.loads(out.getvalue())
    assert {d["id"]: d["source"] for d in doc["devices"]}["heat_pump"] == "homeassistant"
    assert load_registry(SMALL).version  # the file itself is untouched


def test_a_cover_whose_device_class_is_a_gate_asks_first():
    """The cover's device_class (dev_cla) counts like its name: a gate named 'Side entrance' still asks."""
    config = {"name": "Side entrance", "cmd_t": "yard/side/set", "dev_cla": "gate", "uniq_id": "side_1"}
    (found,) = homeassistant.from_config("homeassistant/cover/side/config", config, "homeassistant", Policy())
    assert all(a.confirm for a in found.device.all_actions().values())
