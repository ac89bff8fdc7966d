"""The device registry and the action schema built from it (pure parts, no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from edged.devices.actions import InvalidAnswer, output_model, parse_answer, render_payload
from edged.devices.confirmations import Confirmations, TokenError
from edged.devices.registry import Registry, RegistryStore, load_registry
from edged.devices.state import summarise

CONFIG = Path(__file__).resolve().parent.parent / "config"
SMALL = Path(__file__).resolve().parent / "data" / "registry-small.toml"


@pytest.mark.parametrize("name", ["registry-home.toml", "registry-plant.toml"])
def test_example_registries_load(name):
    """Both shipped examples validate and every device has actions."""
    reg = load_registry(CONFIG / name)
    assert reg.devices and all(d.all_actions() for d in reg.devices) and len(reg.version) == 12


def _reg(**changes) -> dict:
    data = {
        "name": "t",
        "areas": [{"id": "a", "name": "A"}],
        "devices": [{"id": "l1", "name": "Lamp", "area": "a", "type": "dimmer", "command_topic": "x/l1/set"}],
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"devices": [{"id": "l1", "name": "L", "area": "nowhere", "type": "light"}]}, "unknown area"),
        ({"devices": [{"id": "l1", "name": "L", "area": "a", "type": "light"}] * 2}, "duplicate device"),
        ({"devices": [{"id": "L 1", "name": "L", "area": "a", "type": "light"}]}, "pattern"),
        ({"devices": [{"id": "l1", "name": "L", "area": "a", "type": "toaster"}]}, "type"),
        ({"devices": [{"id": "g", "name": "G", "area": "a", "type": "generic"}]}, "no actions"),
        ({"devices": [{"id": "l1", "name": "L", "area": "a", "type": "light", "command_topic": "x/#"}]}, "wildcards"),
        (
            {
                "devices": [
                    {
                        "id": "l1",
                        "name": "L",
                        "area": "a",
                        "type": "generic",
                        "actions": {"go": {"params": {"n": {"type": "integer"}}, "payload": "{n}"}},
                    }
                ]
            },
            "min <= max",
        ),
        (
            {
                "devices": [
                    {
                        "id": "l1",
                        "name": "L",
                        "area": "a",
                        "type": "generic",
                        "actions": {
                            "go": {
                                "params": {"mode": {"type": "enum", "values": ["eco", "max"]}},
                                "payload": "{mode}",
                                "confirm_if": {"param": "mode", "above": 1},
                            }
                        },
                    }
                ]
            },
            "integer or number",
        ),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_invalid_registries_are_refused(changes, needle):
    with pytest.raises(ValidationError, match=needle):
        Registry.model_validate(_reg(**changes))


def test_schema_accepts_only_registry_actions_in_range():
    """The output model refuses unknown devices, unknown actions, out-of-range and extra params."""
    reg = Registry.model_validate(_reg())
    model = output_model(reg)
    ok = '{"actions":[{"device":"l1","action":"set_brightness","params":{"brightness":40}}],"say":"ok"}'
    actions, say = parse_answer(reg, model, ok)
    assert [(a.device, a.action, a.params, a.topic) for a in actions] == [
        ("l1", "set_brightness", {"brightness": 40}, "x/l1/set")
    ]
    assert json.loads(actions[0].payload) == {"state": "ON", "brightness_percent": 40}
    for bad in (
        '{"actions":[{"device":"l2","action":"turn_on","params":{}}],"say":""}',
        '{"actions":[{"device":"l1","action":"explode","params":{}}],"say":""}',
        '{"actions":[{"device":"l1","action":"set_brightness","params":{"brightness":140}}],"say":""}',
        '{"actions":[{"device":"l1","action":"turn_on","params":{"x":1}}],"say":""}',
        '{"actions":[{"device":"l1","action":"turn_on","params":{}}]',
    ):
        with pytest.raises(InvalidAnswer):
            parse_answer(reg, model, bad)


def test_area_targets_expand_deterministically_without_duplicates():
    """'all lights' expands to every light in sorted order; a device named twice runs once."""
    reg = load_registry(CONFIG / "registry-home.toml")
    model = output_model(reg)
    text = json.dumps(
        {
            "actions": [
                {"area": "kitchen", "type": "dimmer", "action": "turn_off", "params": {}},
                {"device": "kitchen_ceiling", "action": "turn_off", "params": {}},
                {"area": "all", "type": "light", "action": "turn_on", "params": {}},
            ],
            "say": "",
        }
    )
    actions, _ = parse_answer(reg, model, text)
    names = [(a.device, a.action) for a in actions]
    lights = sorted(d.id for d in reg.devices if d.type == "light")
    assert names == [("kitchen_ceiling", "turn_off")] + [(d, "turn_on") for d in lights]


def test_confirmation_policy():
    """Locks ask before unlocking; a heating setpoint above its limit asks, below does not."""
    reg = load_registry(CONFIG / "registry-home.toml")
    model = output_model(reg)

    def held(item):
        return parse_answer(reg, model, json.dumps({"actions": [item], "say": ""}))[0][0].needs_confirmation

    assert held({"device": "front_door", "action": "unlock", "params": {}})
    assert not held({"device": "front_door", "action": "lock", "params": {}})
    assert held({"device": "thermostat", "action": "set_temperature", "params": {"setpoint": 28}})
    assert not held({"device": "thermostat", "action": "set_temperature", "params": {"setpoint": 21}})


def test_payload_templates_keep_types():
    assert render_payload({"a": "{n}", "b": ["{n}", "x{n}"]}, {"n": 5}) == b'{"a":5,"b":[5,"x5"]}'
    assert render_payload("SPEED {n}", {"n": 3}) == b"SPEED 3"


def test_confirmation_tokens_are_one_time_and_expire():
    now = [0.0]
    conf = Confirmations(10, clock=lambda: now[0])
    token = conf.hold("r1", ["a"])
    assert conf.redeem(token).actions == ("a",)
    with pytest.raises(TokenError, match="already used"):
        conf.redeem(token)
    with pytest.raises(TokenError, match="no pending"):
        conf.redeem("forged-token-123")
    late = conf.hold("r2", ["b"])
    now[0] = 11
    with pytest.raises(TokenError) as info:
        conf.redeem(late)
    assert info.value.code == "token_expired"


def test_state_summaries():
    assert summarise(b'{"state":"ON","brightness_percent":40,"linkquality":80}') == "state=ON, brightness_percent=40"
    assert summarise(b"OFF") == "OFF" and summarise(b"\xff") is None


def test_registry_store_reloads_changes_and_keeps_the_old_one_on_error(tmp_path):
    """An edited file is picked up on the next use; an invalid edit keeps the registry in force."""
    path = tmp_path / "r.toml"
    path.write_text(SMALL.read_text())
    seen = []
    store = RegistryStore(path, on_change=seen.append)
    first = store.get().version
    path.write_text(SMALL.read_text() + '\n[[devices]]\nid = "fan"\nname = "Fan"\narea = "hallway"\ntype = "fan"\n')
    assert "fan" in [d.id for d in store.get().devices] and store.get().version != first and len(seen) == 1
    good = store.get().version
    path.write_text("this is [not toml")
    assert store.get().version == good and store.last_error


def _control(dispatch=True):
    from edged.devices.commands import DeviceControl
    from edged.devices.state import DeviceStates

    sent = []
    store = RegistryStore(SMALL)
    control = DeviceControl(
        store, DeviceStates(), Confirmations(60), lambda t, p: sent.append((t, p)), dispatch_default=dispatch
    )
    return control, store.current, sent


def test_outcomes_of_answers():
    """No action -> rejected/not_understood; cut-short answer -> rejected/invalid_answer; safe actions go out at once,
    held ones wait for a token; a dry run sends nothing."""
    control, reg, sent = _control()
    none = control.outcome(reg, "r1", '{"actions":[],"say":"I only control devices."}', dispatch=None)
    assert (none.status, none.code, sent) == ("rejected", "not_understood", [])
    cut = control.outcome(reg, "r2", '{"actions":[{"device":"porch_li', dispatch=None)
    assert (cut.status, cut.code, sent) == ("rejected", "invalid_answer", [])
    both = (
        '{"actions":[{"device":"porch_light","action":"turn_on","params":{}},'
        '{"device":"front_door","action":"unlock","params":{}}],"say":"ok"}'
    )
    held = control.outcome(reg, "r3", both, dispatch=None)
    assert held.status == "needs_confirmation" and sent == [("test-devices/porch_light/set", b'{"state":"ON"}')]
    assert [a["dispatched"] for a in held.result["actions"]] == [True, False]
    assert control.confirm(held.result["confirmation"]["token"]).status == "ok"
    assert sent[-1] == ("test-devices/front_door/set", b'{"state":"UNLOCK"}')
    dry, _, dry_sent = _control(dispatch=False)
    out = dry.outcome(reg, "r4", both, dispatch=None)
    assert out.status == "ok" and dry_sent == [] and "confirmation" not in out.result


def test_home_types_have_their_actions():
    """Every type of a real home has the action names all three resolvers use."""
    from edged.devices.registry import TYPE_ACTIONS

    expected = {
        "light": {"turn_on", "turn_off"},
        "dimmer": {"turn_on", "turn_off", "set_brightness"},
        "color_light": {"turn_on", "turn_off", "set_brightness", "set_color", "set_color_temp"},
        "media_player": {"turn_on", "turn_off", "play", "pause", "next", "previous", "set_volume"},
        "vacuum": {"start", "stop", "return_to_base"},
        "scene": {"activate"},
        "script": {"activate"},
        "fan": {"turn_on", "turn_off", "set_speed"},
        "cover": {"open", "close", "set_position"},
        "valve": {"open", "close", "set_position"},
    }
    for dtype, names in expected.items():
        assert set(TYPE_ACTIONS[dtype]) == names, dtype


def _one(reg, item):
    return parse_answer(reg, output_model(reg), json.dumps({"actions": [item], "say": ""}))[0][0]


def test_color_light_payloads_are_computed_from_names_and_kelvin():
    """A colour name is sent as its hex value, a colour temperature as mireds; unknown colours are refused."""
    reg = load_registry(CONFIG / "registry-home.toml")
    colour = reg.device("kids_color_lamp").all_actions()["set_color"]
    assert render_payload(colour.payload, colour.template_values({"color": "purple"})) == (
        b'{"state":"ON","color":{"hex":"#8000FF"}}'
    )
    temp = reg.device("kids_color_lamp").all_actions()["set_color_temp"]
    assert render_payload(temp.payload, temp.template_values({"kelvin": 2500})) == b'{"state":"ON","color_temp":400}'
    resolved = _one(reg, {"device": "kids_color_lamp", "action": "set_color_temp", "params": {"kelvin": 4000}})
    assert resolved.payload == b'{"state":"ON","color_temp":250}'  # what a validated answer dispatches
    for bad in ({"color": "mauve"}, {"kelvin": 9000}):
        action = "set_color" if "color" in bad else "set_color_temp"
        with pytest.raises(InvalidAnswer):
            _one(reg, {"device": "kids_color_lamp", "action": action, "params": bad})


def test_derived_values_must_come_from_a_parameter():
    with pytest.raises(ValidationError, match="derive"):
        Registry.model_validate(
            _reg(
                devices=[
                    {
                        "id": "l1",
                        "name": "L",
                        "area": "a",
                        "type": "generic",
                        "actions": {"go": {"payload": "{x}", "derive": {"x": {"fn": "hex", "param": "color"}}}},
                    }
                ]
            )
        )


def test_vacuum_cleans_only_its_zones():
    """clean_area takes the vacuum's zones (area ids from the file); other areas and zones on non-vacuums fail."""
    reg = load_registry(CONFIG / "registry-home.toml")
    done = _one(reg, {"device": "robot_vacuum", "action": "clean_area", "params": {"area": "kitchen"}})
    assert json.loads(done.payload) == {"state": "CLEAN", "area": "kitchen"}
    with pytest.raises(InvalidAnswer):
        _one(reg, {"device": "robot_vacuum", "action": "clean_area", "params": {"area": "garage"}})
    vac = {"id": "v", "name": "V", "area": "a", "type": "vacuum"}
    with pytest.raises(ValidationError, match="not areas"):
        Registry.model_validate(_reg(devices=[{**vac, "zones": ["a", "moon"]}]))
    with pytest.raises(ValidationError, match="only a vacuum"):
        Registry.model_validate(_reg(devices=[{"id": "l", "name": "L", "area": "a", "type": "light", "zones": ["a"]}]))
    assert "clean_area" not in Registry.model_validate(_reg(devices=[vac])).device("v").all_actions()


def test_scenes_scripts_and_valve_positions():
    reg = load_registry(CONFIG / "registry-home.toml")
    assert _one(reg, {"device": "movie_night", "action": "activate", "params": {}}).payload == b'{"scene_recall":1}'
    assert _one(reg, {"device": "morning_routine", "action": "activate", "params": {}}).payload == b'{"state":"ON"}'
    held = _one(reg, {"device": "sprinkler", "action": "set_position", "params": {"position": 40}})
    assert held.payload == b'{"position":40}' and held.needs_confirmation
