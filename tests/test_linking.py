"""Entity linking, slot extraction, the lexicon and relative values (pure parts, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.devices.lexicon import load_lexicon, normalize, words
from edged.devices.linking import link
from edged.devices.proposal import CommandContext
from edged.devices.registry import Param, load_registry
from edged.devices.relative import DEFAULT_DOWN, DEFAULT_UP, STEP, change, read_state
from edged.devices.slots import extract

CONFIG = Path(__file__).resolve().parent.parent / "config"
HOME = load_registry(CONFIG / "registry-home.toml")
PLANT = load_registry(CONFIG / "registry-plant.toml")


def _refs(text: str, registry=HOME, area: str | None = None) -> dict[str, list[tuple[str, str]]]:
    found = link(registry, CommandContext(text, area=area))
    said = {kind: [(m.ref, found.text[m.start : m.end]) for m in getattr(found, kind)] for kind in ("devices", "areas")}
    return {**said, "types": [(m.ref, found.text[m.start : m.end]) for m in found.types]}


@pytest.mark.parametrize(
    ("text", "device", "said"),
    [
        ("turn off the kitchen light", "kitchen_ceiling", "kitchen light"),
        ("turn off the kitchn light", "kitchen_ceiling", "kitchn light"),  # typo
        ("switch on the readng lamp", "living_room_lamp", "readng lamp"),
        ("kill the big light", "living_room_ceiling", "big light"),  # alias
        ("turn off the kids' room light", "kids_light", "kids room light"),  # apostrophe
        ("turn off the under-cabinet lights", "kitchen_counter", "under cabinet lights"),  # hyphen
        ("turn on the living room ceiling light", "living_room_ceiling", "living room ceiling light"),
        ("pause the telly", None, None),  # a kind word, not a device name
    ],
)
def test_devices_are_linked_by_name_alias_and_typo(text, device, said):
    found = _refs(text)
    assert found["devices"] == ([(device, said)] if device else [])


def test_the_longest_name_wins_and_spans_point_into_the_normalised_text():
    """'living room ceiling light' is one device, not the living room area plus a light kind."""
    found = link(HOME, CommandContext("Hey edged, turn on the Living-Room ceiling light"))
    assert [m.ref for m in found.devices] == ["living_room_ceiling"] and not found.areas and not found.types
    m = found.devices[0]
    assert found.text[m.start : m.end] == "living room ceiling light" and m.score == 100


def test_areas_kinds_here_and_everywhere():
    found = _refs("turn off all the lights in the lounge")
    assert found["areas"] == [("living_room", "lounge")] and found["types"] == [("light", "lights")]
    here = link(HOME, CommandContext("could I get some warm light in here", area="kids_room"))
    assert here.here is not None and here.here.ref == "kids_room"
    assert link(HOME, CommandContext("turn off everything")).everywhere is not None
    assert _refs("close the curtains in the bedroom")["types"] == [("cover", "curtains")]
    assert _refs("send the robot to the kitchen")["devices"] == [("robot_vacuum", "robot")]


def test_numbers_in_names_must_agree():
    """'pump 7' never links Pump 1 though the strings are close; 'v2' links the drain valve."""
    assert _refs("start pump 7", PLANT)["devices"] == []
    assert _refs("start pump 1", PLANT)["devices"] == [("pump_1", "pump 1")]
    assert _refs("close v2", PLANT)["devices"] == [("drain_valve", "v2")]


@pytest.mark.parametrize(
    ("text", "unknown"),
    [
        ("start pump 7", "pump 7"),
        ("stop pump six please", "pump 6"),  # a number word after a numbered name
        ("open valve 9", "valve 9"),  # valves are told apart by number too ("v1", "v2")
        ("could you close valve seven", "valve 7"),
        ("switch off pump 12 in the tank farm", "pump 12"),
    ],
)
def test_a_number_no_device_carries_is_an_unknown_device(text, unknown):
    """'pump 7' beside Pumps 1-3 names a pump the plant does not have: reported, never linked to a neighbour."""
    found = link(PLANT, CommandContext(text))
    assert [w.text for w in found.unknown_devices] == [unknown] and not found.devices
    assert unknown in [w.text for w in found.unlinked]


@pytest.mark.parametrize("text", ["start pump 2", "start pump two", "set pump 2 to 50 percent", "close v2"])
def test_numbers_the_registry_has_are_no_unknown_devices(text):
    found = link(PLANT, CommandContext(text))
    assert found.devices and not found.unknown_devices and not found.unlinked


@pytest.mark.parametrize(
    "text", ["start the washing machine", "can you switch the sewing machine on", "turn on the bread machine"]
)
def test_a_head_word_said_of_another_thing_links_no_device(text):
    """Only the coffee machine has 'machine' in its names; a washing machine is not it."""
    found = link(HOME, CommandContext(text))
    assert not found.devices and [w.text.split()[-1] for w in found.unknown_devices] == ["machine"]


@pytest.mark.parametrize("text", ["start the machine", "turn on the kitchen machine", "start the coffee machine"])
def test_a_head_word_alone_or_after_a_known_word_still_links(text):
    found = link(HOME, CommandContext(text))
    assert [m.ref for m in found.devices] == ["coffee_machine"] and not found.unlinked


@pytest.mark.parametrize("text", ["turn on the sauna", "open the front window", "turn on the dishwasher"])
def test_rooms_and_appliances_the_home_lacks_are_reported(text):
    assert link(HOME, CommandContext(text)).unlinked


def test_a_place_after_in_is_reported_when_unknown():
    assert [w.text for w in link(HOME, CommandContext("turn on the lights in the gazebo")).unlinked] == ["gazebo"]
    assert not link(HOME, CommandContext("turn on the lights in the hallway")).unlinked


def _slots(text: str):
    return extract(load_lexicon("en"), words(normalize(text)))


@pytest.mark.parametrize(
    ("text", "value", "unit"),
    [
        ("set it to 30%", 30, "%"),
        ("set it to thirty percent", 30, "%"),
        ("set it to twenty five per cent", 25, "%"),
        ("heat the office to twenty-two degrees", 22, "°C"),
        ("set the heating to 21°C", 21, "°C"),
        ("set the heater to 19.5", 19.5, None),
        ("run the belt at fifteen hundred rpm", 1500, "rpm"),
        ("sound the horn for five seconds", 5, "s"),
        ("raise it by two", 2, None),
    ],
)
def test_numbers_in_digits_and_words_with_units(text, value, unit):
    said = _slots(text).value()
    assert said is not None and (said.value, said.unit) == (value, unit)


def test_colours_colour_temperatures_and_relative_words():
    assert _slots("make the lounge purple").color == "purple"
    assert _slots("make it warm white").color == "warm_white"
    assert _slots("some warm light please").kelvin == 2700
    assert _slots("cool white please").kelvin == 5000
    assert _slots("set the lamp to 4000 K").kelvin == 4000
    dim = _slots("dim the lights a bit")
    assert (dim.direction, dim.dimension, dim.small) == ("down", "brightness", True)
    assert _slots("a little warmer").dimension == "temperature"
    assert _slots("set the fan to max").extreme == "max"
    assert _slots("the lowest setting").extreme == "min"
    assert _slots("open the blinds halfway").extreme == "half"
    assert _slots("halve it").factor == 0.5


def test_a_stated_current_value_is_not_the_change():
    slots = _slots("the hallway light is at 40 percent, make it 20 points brighter")
    assert slots.current is not None and slots.current.value == 40
    assert slots.value() is not None and slots.value().value == 20 and slots.direction == "up"


BRIGHTNESS = Param(type="integer", min=0, max=100, unit="%")
SETPOINT = Param(type="number", min=5, max=30, step=0.5, unit="°C")


@pytest.mark.parametrize(
    ("text", "name", "param", "state", "expected", "basis"),
    [
        (
            "dim it",
            "brightness",
            BRIGHTNESS,
            '{"state":"ON","brightness_percent":60}',
            60 - STEP["brightness"],
            "state",
        ),
        ("dim it a bit", "brightness", BRIGHTNESS, "state=ON, brightness_percent=60", 50, "state"),
        ("brighter", "brightness", BRIGHTNESS, '{"brightness":254}', 100, "state"),  # clamped, 0-254 scale read
        ("dim it", "brightness", BRIGHTNESS, None, DEFAULT_DOWN["brightness"], "default"),
        ("brighter", "brightness", BRIGHTNESS, None, DEFAULT_UP["brightness"], "default"),
        ("a little warmer", "setpoint", SETPOINT, '{"current_heating_setpoint":20}', 20.5, "state"),
        ("it is at 20 degrees, raise it by two", "setpoint", SETPOINT, None, 22, "said"),
        ("halve it", "brightness", BRIGHTNESS, '{"brightness_percent":80}', 40, "state"),
        ("full brightness", "brightness", BRIGHTNESS, None, 100, "extreme"),
    ],
)
def test_relative_changes_from_state_or_defaults(text, name, param, state, expected, basis):
    found = change(name, param, _slots(text), state)
    assert found is not None and (found.value, found.basis) == (expected, basis)


def test_relative_without_state_or_default_is_none():
    """A heating setpoint has no default: 'warmer' with no known state is not guessed."""
    assert change("setpoint", SETPOINT, _slots("warmer"), None) is None
    assert change("brightness", BRIGHTNESS, _slots("halve it"), None) is None
    assert read_state("not json", "brightness") is None


def test_lexicons_extend_from_extra_folders(tmp_path):
    """A home adds words without code: an extra en.toml adds to the shipped lists."""
    (tmp_path / "en.toml").write_text('[actions]\nturn_off = ["nix"]\n[types.light]\nwords = ["glow"]\n')
    lex = load_lexicon("en", (tmp_path,))
    assert ("nix",) in lex.actions["turn_off"] and ("turn", "off") in lex.actions["turn_off"]
    assert ("glow",) in lex.kinds["light"].words and ("lamp",) in lex.kinds["light"].words
    assert load_lexicon("xx").language == "en"  # no lexicon for the language: English


def test_candidates_for_grounding_the_model():
    """The model path gets the devices a command may mean: named ones, else kinds in areas, else areas."""
    from edged.devices.linking import candidates

    def ids(text: str) -> list[str]:
        return candidates(HOME, link(HOME, CommandContext(text)))

    assert ids("do something with the big light") == ["living_room_ceiling"]
    assert ids("the lights in the bedroom, hmm") == ["bedroom_ceiling", "bedside_lamp"]
    assert set(ids("something in the garage")) == {"garage_door", "garage_light"}
    assert ids("tell me a story") == []


def test_german_and_chinese_lexicons_load():
    """Every shipped language has verbs for the common actions and words for lights."""
    for lang in ("en", "de", "zh"):
        lex = load_lexicon(lang)
        assert lex.language == lang and {"turn_on", "turn_off", "set"} <= set(lex.actions)
        assert lex.kinds["light"].words and lex.units["%"]
