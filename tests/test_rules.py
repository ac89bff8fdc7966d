"""The rules resolver over the home and plant registries: what it answers, what it leaves to the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edged.devices.actions import output_model, parse_answer
from edged.devices.proposal import CommandContext
from edged.devices.registry import load_registry
from edged.devices.rules import RulesResolver

CONFIG = Path(__file__).resolve().parent.parent / "config"
HOME = load_registry(CONFIG / "registry-home.toml")
PLANT = load_registry(CONFIG / "registry-plant.toml")
RULES = RulesResolver()
MODELS = {reg.name: output_model(reg) for reg in (HOME, PLANT)}


def _do(text: str, registry=HOME, area: str | None = None, states: dict[str, str] | None = None):
    """The validated device actions the rules propose, as (device, action, params) sorted, or None."""
    proposal = RULES.resolve(registry, CommandContext(text, area=area, states=states or {}))
    if proposal is None:
        return None
    assert proposal.resolved_by == "rules" and proposal.intent == proposal.calls[0].action
    resolved, _ = parse_answer(registry, MODELS[registry.name], proposal.answer_json())
    return sorted((r.device, r.action, _params(r.params)) for r in resolved)


def _params(params: dict) -> str:
    return json.dumps(
        {k: int(v) if isinstance(v, float) and v == int(v) else v for k, v in params.items()}, sort_keys=True
    )


def _one(device: str, action: str, **params) -> list[tuple[str, str, str]]:
    return [(device, action, _params(params))]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("turn off the kitchen light", _one("kitchen_ceiling", "turn_off")),
        ("hey edged, uh, could you please turn off the kitchn light", _one("kitchen_ceiling", "turn_off")),
        ("uh can you kill the big light please", _one("living_room_ceiling", "turn_off")),
        ("would you mind switching the bedside lamp on, thanks", _one("bedside_lamp", "turn_on")),
        ("turn the desk lamp off", _one("office_desk_lamp", "turn_off")),
        ("lock the front door", _one("front_door", "lock")),
        ("start movie night", _one("movie_night", "activate")),
        ("run the morning routine", _one("morning_routine", "activate")),
        ("send the vacuum home", _one("robot_vacuum", "return_to_base")),
        ("send the robot to do the kitchen floor", _one("robot_vacuum", "clean_area", area="kitchen")),
        ("stop the hoover", _one("robot_vacuum", "stop")),
        ("next song on the kids speaker", _one("kids_speaker", "next")),
        ("start the irrigation", _one("sprinkler", "open")),  # a valve has no start: the nearest action
        ("lower the shades", _one("living_room_blinds", "close")),
        ("dim the hallway light to 30%", _one("hallway_light", "set_brightness", brightness=30)),
        ("dim the hallway to thirty percent", _one("hallway_light", "set_brightness", brightness=30)),
        ("set the thermostat to 21 degrees", _one("thermostat", "set_temperature", setpoint=21)),
        ("heat the office to twenty-two degrees", _one("office_heater", "set_temperature", setpoint=22)),
        ("set the TV volume to 15", _one("living_room_tv", "set_volume", volume=15)),
        ("open the living room blinds halfway", _one("living_room_blinds", "set_position", position=50)),
        ("set the bedroom fan to max", _one("bedroom_fan", "set_speed", speed=100)),
        ("make the rainbow lamp purple", _one("kids_color_lamp", "set_color", color="purple")),
        ("set the colour lamp to 3000 kelvin", _one("kids_color_lamp", "set_color_temp", kelvin=3000)),
    ],
)
def test_named_devices(text, expected):
    assert _do(text) == expected


def test_words_of_their_own_are_never_typos_of_names():
    """'all lights' is not a typo of the 'hall light' alias: every light goes off, not the hallway's only."""
    lights = sorted(d.id for d in HOME.devices if d.type in ("light", "dimmer", "color_light"))
    assert [d for d, _a, _p in _do("all lights off")] == lights


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("turn the heating to 22", _one("thermostat", "set_temperature", setpoint=22)),  # "turn ... to" spans the name
        ("warm up the office to 21 degrees", _one("office_heater", "set_temperature", setpoint=21)),  # no colour
        ("unlock the door", _one("front_door", "unlock")),  # the one door that unlocks
        ("clean the kitchen", _one("robot_vacuum", "clean_area", area="kitchen")),  # the home's one vacuum
        ("change the nursery lamp to red", _one("kids_color_lamp", "set_color", color="red")),
    ],
)
def test_verbs_spanning_names_and_kinds_narrowed_by_action(text, expected):
    assert _do(text) == expected


@pytest.mark.parametrize(
    ("text", "area", "expected"),
    [
        ("hey can you switch the lounge lamp off", None, _one("living_room_lamp", "turn_off")),  # the one lamp
        ("lamp off", "bedroom", _one("bedside_lamp", "turn_off")),
        ("turn on the light", "office", _one("office_desk_lamp", "turn_on")),  # the office's one light
        ("lock up the front door please", None, _one("front_door", "lock")),  # "up" is part of the verb
        ("let me in, unlock the front door", None, _one("front_door", "unlock")),  # "in unlock" names no place
        ("robot, go back to the dock", None, _one("robot_vacuum", "return_to_base")),
        ("movie night please", None, _one("movie_night", "activate")),  # a scene named alone
        ("trigger the wake up routine", None, _one("morning_routine", "activate")),  # "up" of a name
        ("skip to the next song on the tv", None, _one("living_room_tv", "next")),
        ("water the garden", None, _one("sprinkler", "open")),
        ("send the hoover back to its base", None, _one("robot_vacuum", "return_to_base")),  # "hoover" is a name here
        ("switch the extractor off", None, _one("kitchen_fan", "turn_off")),  # the one fan named with the word
    ],
)
def test_crowd_phrasings(text, area, expected):
    assert _do(text, area=area) == expected


def test_everything_in_a_room_and_singular_ambiguity():
    got = _do("turn everything off in the bedroom")
    assert got == [(d, "turn_off", "{}") for d in ("bedroom_ceiling", "bedroom_fan", "bedside_lamp")]
    assert _do("turn on the light", area="kids_room") is None  # two lights named "light" there
    assert _do("turn on the light", area="bedroom") is None  # "Bedroom light" and the "night light" alias
    assert _do("dim the hallway to 30 percent and turn off the kitchen lights") is None


def test_plant_devices_numbers_in_names_and_own_actions():
    assert _do("start pump 2", PLANT) == _one("pump_2", "start")
    assert _do("close v1", PLANT) == _one("inlet_valve", "close")
    assert _do("run the belt at fifteen hundred rpm", PLANT) == _one("conveyor", "set_speed", rpm=1500)
    assert _do("sound the siren for five seconds", PLANT) == _one("alarm_horn", "sound", seconds=5)
    assert _do("silence the alarm", PLANT) == _one("alarm_horn", "silence")  # a word only that device's name has
    # the device's own set_opening is preferred to the valve type's set_position
    assert _do("open the drain valve to 30 percent", PLANT) == _one("drain_valve", "set_opening", opening=30)


def test_area_and_kind_targets_become_area_calls():
    proposal = RULES.resolve(HOME, CommandContext("turn off all the lights in the kitchen"))
    assert proposal is not None
    assert {(c.area, c.type, c.action) for c in proposal.calls} == {
        ("kitchen", "dimmer", "turn_off"),
        ("kitchen", "light", "turn_off"),
    }
    assert _do("turn off the kitchen lights") == [  # an alias of one light, but plural in an area with two
        ("kitchen_ceiling", "turn_off", "{}"),
        ("kitchen_counter", "turn_off", "{}"),
    ]
    assert [d for d, _a, _p in _do("close all the blinds")] == ["bedroom_blinds", "living_room_blinds"]
    assert [d for d, _a, _p in _do("stop the pumps in the tank farm", PLANT)] == ["pump_2", "pump_3"]


def test_all_and_everything_mean_every_area():
    lights = sorted(d.id for d in HOME.devices if d.type in ("light", "dimmer", "color_light"))
    assert [d for d, _a, _p in _do("turn on all the lights")] == lights
    proposal = RULES.resolve(HOME, CommandContext("turn off everything"))
    assert proposal is not None and all(c.action == "turn_off" for c in proposal.calls)
    assert ("all", "light") in {(c.area, c.type) for c in proposal.calls}
    assert _do("open everything") is None  # "everything" alone only turns off


def test_the_speakers_area_for_a_kind_alone_and_for_in_here():
    expected = [("bedroom_ceiling", "turn_on", "{}"), ("bedside_lamp", "turn_on", "{}")]
    assert _do("turn on the lights", area="bedroom") == expected
    assert _do("lights on in here please", area="bedroom") == expected
    assert _do("could I get some warm light in here", area="kids_room") == _one(
        "kids_color_lamp", "set_color_temp", kelvin=2700
    )
    assert _do("skip this song", area="kids_room") == _one("kids_speaker", "next")
    assert _do("brighter please", area="office") == _one("office_desk_lamp", "set_brightness", brightness=80)


def test_relative_changes_use_state_then_defaults():
    state = {"bedroom_ceiling": '{"state":"ON","brightness_percent":60}'}
    assert _do("lights down a little", area="bedroom", states=state) == _one(
        "bedroom_ceiling", "set_brightness", brightness=50
    )
    assert _do("dim the bedroom light", states=state) == _one("bedroom_ceiling", "set_brightness", brightness=40)
    assert _do("dim the bedroom light") == _one("bedroom_ceiling", "set_brightness", brightness=30)
    assert _do("turn up the tv", states={"living_room_tv": "state=PLAY, volume=35"}) == _one(
        "living_room_tv", "set_volume", volume=45
    )
    assert _do("turn up the tv") == _one("living_room_tv", "set_volume", volume=40)
    warm = {"thermostat": '{"current_heating_setpoint":20}'}
    assert _do("make the heating a little warmer", states=warm) == _one("thermostat", "set_temperature", setpoint=20.5)
    assert _do("make the heating a little warmer") is None  # no state and no default for a setpoint


def test_values_said_with_the_current_value():
    assert _do("the hallway light is at 40 percent, make it 20 points brighter") == _one(
        "hallway_light", "set_brightness", brightness=60
    )
    assert _do("the thermostat is on 20 degrees, raise it by two") == _one("thermostat", "set_temperature", setpoint=22)
    assert _do("the TV volume is 20, turn it down by 5") == _one("living_room_tv", "set_volume", volume=15)
    assert _do("the kitchen light is at 80%, halve it") == _one("kitchen_ceiling", "set_brightness", brightness=40)
    assert _do("the conveyor runs at 1000 rpm, slow it down by 200", PLANT) == _one("conveyor", "set_speed", rpm=800)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("is the kitchen light on?", "question"),
        ("what's the temperature in the office", "question"),
        ("turn on the sauna", "unknown_name"),
        ("turn on the attic light", "unknown_name"),
        ("open the front window", "unknown_name"),
        ("turn on the lights in the gazebo", "unknown_name"),
        ("turn on the disco lights", "unknown_modifier"),
        ("turn on the lights", "ambiguous_kind"),  # no area: several lights
        ("turn off the kitchen", "area_ambiguous"),  # an area with several devices that turn off
        ("turn off the kitchen light and lock the front door", "several_verbs"),
        ("tell me a story", "no_target"),
        ("set the thermostat to 40 degrees", "action_not_available"),  # out of range: never clamped
        ("set the office heater to 19.35", "action_not_available"),  # off the 0.1 step
        ("make the lounge purple", "action_not_available"),  # no colour light there
        ("turn on the lights in here", "speaker_area_unknown"),
        ("don't turn off the kitchen light", "unsupported"),  # negation
        ("never unlock the front door", "unsupported"),
        ("turn off the kitchen light in ten minutes", "unsupported"),  # a schedule, not a value
        ("turn on the lights except the bedroom", "unsupported"),
        ("turn on the kitchen light or the hall light", "unsupported"),
        ("the kitchen light keeps turning off", "unsupported"),  # a complaint, not an order
        ("the big light is on", "statement"),
        ("set the kitchen light to -20", "action_not_available"),  # a minus sign is kept, then out of range
        ("turn the volume up on the tv by 100", "action_not_available"),  # a change needs the value now
        ("turn the kitchen light on and off", "several_verbs"),
        ("turn the tv to channel 5", "unknown_value"),  # a number after a word that names nothing known
        ("start the washing machine", "unknown_name"),  # not the coffee machine
        ("put the washing machine on", "unknown_name"),
    ],
)
def test_refusals_leave_the_command_to_the_next_layer(text, reason):
    with capture_logs() as logs:
        assert RULES.resolve(HOME, CommandContext(text)) is None
    assert logs[-1]["event"] == "rules_pass" and logs[-1]["reason"] == reason


@pytest.mark.parametrize(
    "text",
    [
        "start pump 7",
        "open valve 9",
        "set the heater to 150 degrees",
        "what is the flow rate of pump 3?",
        "order spare bearings",
    ],
)
def test_plant_refusals(text):
    assert RULES.resolve(PLANT, CommandContext(text)) is None


@pytest.mark.parametrize("text", ["start pump 7", "open valve 9", "stop pump six", "shut valve 4 please"])
def test_a_numbered_device_the_plant_lacks_is_an_unknown_name(text):
    """Pumps 1-3 and valves v1, v2: another number names nothing here, not the nearest pump or valve."""
    with capture_logs() as logs:
        assert RULES.resolve(PLANT, CommandContext(text)) is None
    assert logs[-1]["event"] == "rules_pass" and logs[-1]["reason"] == "unknown_name"


def test_off_on_a_plant_stops_nothing_unasked():
    """ "Shut down line 1" could be the lights or the conveyor: refused. "Everything off" never stops a pump."""
    assert RULES.resolve(PLANT, CommandContext("shut down line 1")) is None
    proposal = RULES.resolve(PLANT, CommandContext("turn off everything"))
    assert proposal is not None and {c.action for c in proposal.calls} == {"turn_off"}
    assert _do("switch off pump 2", PLANT) == _one("pump_2", "stop")  # named: the pump's own off
    assert _do("halt pump two", PLANT) == _one("pump_2", "stop")  # a number word in a numbered name


def test_extra_lexicon_words_resolve(tmp_path):
    """A word the home adds in its own lexicon folder works without code."""
    (tmp_path / "en.toml").write_text('[actions]\nturn_off = ["nix"]\n')
    assert RULES.resolve(HOME, CommandContext("nix the big light")) is None
    taught = RulesResolver(extra_lexicons=[tmp_path])
    proposal = taught.resolve(HOME, CommandContext("nix the big light"))
    assert proposal is not None and proposal.calls[0].action == "turn_off"


def _multilingual():
    from edged.devices.registry import Registry

    return Registry.model_validate(
        {
            "name": "ml",
            "areas": [
                {"id": "living_room", "name": "Living room", "aliases": ["Wohnzimmer", "客厅"]},
                {"id": "bedroom", "name": "Bedroom", "aliases": ["Schlafzimmer", "卧室"]},
            ],
            "devices": [
                {"id": "lr_light", "name": "Ceiling light", "area": "living_room", "type": "dimmer"},
                {"id": "bed_light", "name": "Bed light", "area": "bedroom", "type": "color_light"},
                {"id": "bed_blinds", "name": "Blinds", "area": "bedroom", "type": "cover"},
            ],
        }
    )


@pytest.mark.parametrize(
    ("text", "language", "expected"),
    [
        ("Schalte bitte das Licht im Wohnzimmer aus", "de", _one("lr_light", "turn_off")),
        ("Mach das Licht im Schlafzimmer an", "de", _one("bed_light", "turn_on")),
        ("Dimme das Licht im Wohnzimmer auf dreißig Prozent", "de", _one("lr_light", "set_brightness", brightness=30)),
        ("Mach das Licht im Schlafzimmer blau", "de", _one("bed_light", "set_color", color="blue")),
        ("把客厅的灯关掉", "zh", _one("lr_light", "turn_off")),
        ("请打开卧室的灯", "zh", _one("bed_light", "turn_on")),
        ("把客厅的灯调到50%", "zh", _one("lr_light", "set_brightness", brightness=50)),
        ("卧室的灯调成红色", "zh", _one("bed_light", "set_color", color="red")),
        ("拉上卧室的窗帘", "zh", _one("bed_blinds", "close")),
    ],
)
def test_german_and_chinese_commands(text, language, expected):
    reg = _multilingual()
    proposal = RULES.resolve(reg, CommandContext(text, language=language))
    assert proposal is not None
    resolved, _ = parse_answer(reg, output_model(reg), proposal.answer_json())
    assert sorted((r.device, r.action, _params(r.params)) for r in resolved) == expected


@pytest.mark.parametrize(("text", "language"), [("Ist das Licht im Wohnzimmer an?", "de"), ("客厅的灯开着吗", "zh")])
def test_questions_in_other_languages(text, language):
    assert RULES.resolve(_multilingual(), CommandContext(text, language=language)) is None


@pytest.mark.parametrize(
    ("text", "language", "expected"),
    [
        ("mach bitte das Licht in der Küche an", "de", "kitchen"),  # a separable verb around five words
        ("schalte die Kaffeemaschine ein", "de", "coffee_machine"),  # "ein" is no number here
        ("开一下落地灯", "zh", "living_room_lamp"),  # 一下 is "a moment", not the number one
        ("把走廊灯调到百分之三十", "zh", "hallway_light"),  # Chinese numerals
    ],
)
def test_shipped_german_and_chinese_registries(text, language, expected):
    reg = load_registry(CONFIG / f"registry-home-{language}.toml")
    proposal = RULES.resolve(reg, CommandContext(text, language=language))
    assert proposal is not None
    resolved, _ = parse_answer(reg, output_model(reg), proposal.answer_json())
    assert {r.device for r in resolved} == (
        {expected} if expected != "kitchen" else {"kitchen_ceiling", "kitchen_counter"}
    )
    if "百分之" in text:
        assert resolved[0].params == {"brightness": 30}


def test_a_devices_own_action_wins_over_its_types():
    """A valve with its own set_opening and the type's set_position: "open it to 30 percent" takes its own."""
    from edged.devices.registry import Registry

    own = {"params": {"opening": {"type": "integer", "min": 0, "max": 100, "unit": "%"}}, "payload": {"o": "{opening}"}}
    reg = Registry.model_validate(
        {
            "name": "v",
            "areas": [{"id": "a", "name": "Yard"}],
            "devices": [
                {"id": "v1", "name": "Drain valve", "area": "a", "type": "valve", "actions": {"set_opening": own}}
            ],
        }
    )
    proposal = RULES.resolve(reg, CommandContext("open the drain valve to 30 percent"))
    assert proposal is not None and proposal.calls[0].action == "set_opening"
    proposal = RULES.resolve(reg, CommandContext("set the drain valve position to 30 percent"))
    assert proposal is not None and proposal.calls[0].action == "set_position"  # the parameter word said
