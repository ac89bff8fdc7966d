"""The local resolver: sentence templates (hassil + Home Assistant intents) over the example registries."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edged.devices.actions import MAX_ACTIONS, output_model, parse_answer
from edged.devices.intents import IntentResolver
from edged.devices.intents.mapping import check_value
from edged.devices.intents.score import expand, score_file
from edged.devices.intents.templates import intents_language
from edged.devices.proposal import CommandContext, Proposal
from edged.devices.registry import TYPE_ACTIONS, Param, Registry, load_registry

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
EVAL = ROOT / "edged" / "bench" / "eval"


@pytest.fixture(scope="module")
def resolver() -> IntentResolver:
    return IntentResolver(CONFIG / "sentences")


@pytest.fixture(scope="module")
def home() -> Registry:
    return load_registry(CONFIG / "registry-home.toml")


@pytest.fixture(scope="module")
def plant() -> Registry:
    return load_registry(CONFIG / "registry-plant.toml")


def resolve(
    resolver: IntentResolver, registry: Registry, text: str, language: str = "en", area: str | None = None
) -> Proposal | None:
    return resolver.resolve(registry, CommandContext(text=text, language=language, area=area))


def devices_of(registry: Registry, proposal: Proposal | None) -> set[tuple[str, str, str]]:
    """The proposal's device actions after the shared validation (which also proves it is valid)."""
    assert proposal is not None
    resolved, _say = parse_answer(registry, output_model(registry), proposal.answer_json())
    return {(r.device, r.action, _params(r.params)) for r in resolved}


def _params(params: dict[str, object]) -> str:
    """Parameters as text, numbers as floats (the validation gives 21.0 for a number parameter)."""
    return json.dumps({k: float(v) if isinstance(v, int) else v for k, v in params.items()}, sort_keys=True)


def acts(*items: tuple[str, str] | tuple[str, str, dict[str, object]]) -> set[tuple[str, str, str]]:
    return {(i[0], i[1], _params(i[2] if len(i) > 2 else {})) for i in items}  # type: ignore[misc]


def test_by_name(resolver: IntentResolver, home: Registry) -> None:
    """A device named in full or by an alias; the name wins over "the kitchen's lights"."""
    proposal = resolve(resolver, home, "turn off the kitchen light")
    assert proposal is not None and proposal.resolved_by == "local" and proposal.intent == "HassTurnOff"
    assert devices_of(home, proposal) == acts(("kitchen_ceiling", "turn_off"))
    assert devices_of(home, resolve(resolver, home, "switch on the reading lamp")) == acts(
        ("living_room_lamp", "turn_on")
    )


def test_by_area_gives_area_calls(resolver: IntentResolver, home: Registry) -> None:
    """All lights of a room: one area+type call per device type, expanded by the shared validation."""
    proposal = resolve(resolver, home, "turn on the lights in the bedroom")
    assert proposal is not None
    assert {(c.area, c.type) for c in proposal.calls} == {("bedroom", "dimmer"), ("bedroom", "light")}
    assert devices_of(home, proposal) == acts(("bedroom_ceiling", "turn_on"), ("bedside_lamp", "turn_on"))


def test_area_and_type(resolver: IntentResolver, plant: Registry) -> None:
    """edged's templates: the pumps of an area."""
    proposal = resolve(resolver, plant, "stop the pumps in the tank farm")
    assert proposal is not None and proposal.intent == "EdgedStop"
    assert devices_of(plant, proposal) == acts(("pump_2", "stop"), ("pump_3", "stop"))


def test_all_lights_fit_in_one_answer(resolver: IntentResolver, home: Registry) -> None:
    """Every light in the house: area "all" calls, within the answer's action limit."""
    proposal = resolve(resolver, home, "turn off all the lights")
    assert proposal is not None and len(proposal.calls) <= MAX_ACTIONS
    lights = {d.id for d in home.devices if d.type in ("light", "dimmer", "color_light")}
    assert devices_of(home, proposal) == {(d, "turn_off", "{}") for d in lights}


def test_blinds_by_class_leave_the_garage_door(resolver: IntentResolver, home: Registry) -> None:
    """ "All the blinds" are the covers called blinds or shades, not the garage door."""
    got = devices_of(home, resolve(resolver, home, "close all the blinds"))
    assert got == acts(("living_room_blinds", "close"), ("bedroom_blinds", "close"))


def test_speaker_area(resolver: IntentResolver, home: Registry, plant: Registry) -> None:
    """ "The lights" means the speaker's room; unknown room: only a home with one such device resolves."""
    assert devices_of(home, resolve(resolver, home, "turn on the lights", area="office")) == acts(
        ("office_desk_lamp", "turn_on")
    )
    assert resolve(resolver, home, "turn on the lights") is None  # twelve lights, no room: not a guess
    assert devices_of(plant, resolve(resolver, plant, "turn on the lights")) == acts(("line_lights", "turn_on"))


def test_numbers_in_and_out_of_range(resolver: IntentResolver, home: Registry, plant: Registry) -> None:
    """Values fill the action's parameter; a value outside its range gives no proposal at all."""
    assert devices_of(home, resolve(resolver, home, "set the thermostat to 21 degrees")) == acts(
        ("thermostat", "set_temperature", {"setpoint": 21})
    )
    assert devices_of(home, resolve(resolver, home, "set the kitchen light to fifty percent")) == acts(
        ("kitchen_ceiling", "set_brightness", {"brightness": 50})
    )
    assert resolve(resolver, home, "set the thermostat to 40 degrees") is None  # home thermostat: 5..30
    assert devices_of(plant, resolve(resolver, plant, "set the tank heater to 65 degrees")) == acts(
        ("tank_heater", "set_temperature", {"setpoint": 65})
    )
    assert resolve(resolver, plant, "set the heater to 150 degrees") is None


def test_check_value() -> None:
    """Integers must be whole, numbers on their step, enums one of their values."""
    assert check_value(Param(type="integer", min=0, max=100), 50.0) == 50
    assert check_value(Param(type="integer", min=0, max=100), 19.5) is None
    assert check_value(Param(type="number", min=5, max=30, step=0.5), 19.5) == 19.5
    assert check_value(Param(type="number", min=5, max=30, step=0.5), 19.3) is None
    assert check_value(Param(type="enum", values=["red", "blue"]), "Red") == "red"
    assert check_value(Param(type="enum", values=["red", "blue"]), "green") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("start pump 3", acts(("pump_3", "start"))),
        ("stop the circulation pump", acts(("pump_3", "stop"))),
        ("set pump 3 speed to 40 percent", acts(("pump_3", "set_speed", {"speed": 40}))),
        ("set the conveyor to 1200 rpm", acts(("conveyor", "set_speed", {"rpm": 1200}))),
        ("close valve v1", acts(("inlet_valve", "close"))),
        ("open the drain valve", acts(("drain_valve", "open"))),
        ("stop all pumps", acts(("pump_1", "stop"), ("pump_2", "stop"), ("pump_3", "stop"))),
        ("sound the siren for 10 seconds", acts(("alarm_horn", "sound", {"seconds": 10}))),
    ],
)
def test_plant_templates(resolver: IntentResolver, plant: Registry, text: str, expected: set[object]) -> None:
    """edged's own templates for pumps, motors, valves and named actions."""
    assert devices_of(plant, resolve(resolver, plant, text)) == expected


def test_plant_value_out_of_range(resolver: IntentResolver, plant: Registry) -> None:
    assert resolve(resolver, plant, "sound the siren for 45 seconds") is None  # the horn allows 1..30 s


def test_chinese(resolver: IntentResolver) -> None:
    """Chinese names in the registry, Chinese commands."""
    registry = load_registry(CONFIG / "registry-home-zh.toml")
    assert devices_of(registry, resolve(resolver, registry, "关闭客厅的灯", "zh")) == acts(
        ("living_room_ceiling", "turn_off"), ("living_room_lamp", "turn_off")
    )
    assert devices_of(registry, resolve(resolver, registry, "把温控器温度设置为21度", "zh")) == acts(
        ("thermostat", "set_temperature", {"setpoint": 21})
    )
    assert resolve(resolver, registry, "厨房灯开着吗", "zh") is None


def test_german(resolver: IntentResolver) -> None:
    registry = load_registry(CONFIG / "registry-home-de.toml")
    assert devices_of(registry, resolve(resolver, registry, "Schalte das Küchenlicht aus", "de")) == acts(
        ("kitchen_ceiling", "turn_off")
    )
    assert devices_of(registry, resolve(resolver, registry, "stelle das Thermostat auf 21 Grad", "de")) == acts(
        ("thermostat", "set_temperature", {"setpoint": 21})
    )


def test_question_is_not_a_command(resolver: IntentResolver, home: Registry) -> None:
    """A question matches HassGetState: no proposal, and no lesser reading is tried instead."""
    assert resolve(resolver, home, "is the kitchen light on?") is None


def test_room_the_home_lacks(resolver: IntentResolver, home: Registry) -> None:
    assert resolve(resolver, home, "turn on the lights in the sauna") is None
    assert resolve(resolver, home, "turn on the dishwasher") is None


def test_sensitive_actions_are_proposed_for_confirmation(resolver: IntentResolver, home: Registry) -> None:
    """Unlock and open-garage are proposed; the shared validation marks them for confirmation."""
    for text, device, action in (
        ("unlock the front door", "front_door", "unlock"),
        ("open the garage door", "garage_door", "open"),
    ):
        proposal = resolve(resolver, home, text)
        assert proposal is not None
        resolved, _ = parse_answer(home, output_model(home), proposal.answer_json())
        assert [(r.device, r.action, r.needs_confirmation) for r in resolved] == [(device, action, True)]


def test_long_text_is_passed_on(resolver: IntentResolver, home: Registry) -> None:
    """A text longer than any single command is left to the next resolver without matching."""
    assert resolve(resolver, home, "turn off the kitchen light" + " " * 280) is not None  # spaces are trimmed
    assert resolve(resolver, home, "please, " * 40 + "turn off the kitchen light") is None


def test_unknown_language_logged_once(home: Registry) -> None:
    resolver = IntentResolver(None)
    with capture_logs() as logs:
        assert resolve(resolver, home, "turn off the kitchen light", "xx") is None
        assert resolve(resolver, home, "turn off the kitchen light", "xx") is None
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["intents_language_unknown"]


def test_language_codes() -> None:
    assert intents_language("en-GB") == "en"
    assert intents_language("zh") == "zh-CN"
    assert intents_language("de_DE") == "de"
    assert intents_language("klingon") is None


def test_user_sentences_dir(tmp_path: Path, plant: Registry) -> None:
    """Templates load from the directory given; without it, the site's words are unknown; reload() rereads."""
    assert resolve(IntentResolver(None), plant, "start pump 3") is None
    site = tmp_path / "en"
    site.mkdir()
    (site / "site.yaml").write_text(
        "language: en\nintents:\n  EdgedAction:\n    data:\n      - sentences: ['hush [the] {name}']\n"
        "        slots: {action: silence}\n",
        encoding="utf-8",
    )
    resolver = IntentResolver(tmp_path)
    assert devices_of(plant, resolve(resolver, plant, "hush the siren")) == acts(("alarm_horn", "silence"))
    (site / "site.yaml").write_text("language: en\n", encoding="utf-8")
    assert resolve(resolver, plant, "hush the siren") is not None  # loaded once per language
    resolver.reload()
    assert resolve(resolver, plant, "hush the siren") is None


def test_eval_sets_never_wrong(resolver: IntentResolver) -> None:
    """Over every eval set the local layer either answers exactly or passes the command on."""
    sets = [
        ("home.jsonl", "registry-home.toml", "en"),
        ("plant.jsonl", "registry-plant.toml", "en"),
        ("home-zh.jsonl", "registry-home-zh.toml", "zh"),
        ("home-de.jsonl", "registry-home-de.toml", "de"),
    ]
    for eval_set, registry_file, language in sets:
        registry = load_registry(CONFIG / registry_file)
        scored = score_file(resolver, registry, EVAL / eval_set, language)
        wrong = [(s.text, sorted(s.got)) for s in scored if s.verdict == "wrong"]
        assert wrong == [], eval_set
        exact = sum(s.verdict == "exact" for s in scored)
        print(f"{eval_set}: exact {exact}/{sum(1 for s in scored if s.expect)}")


def test_expand_matches_targets(home: Registry) -> None:
    from edged.devices.proposal import Call

    proposal = Proposal(calls=(Call(action="turn_off", area="kitchen", type="light"),), resolved_by="local")
    assert expand(home, proposal) == {("kitchen_counter", "turn_off", "{}")}


def test_warm_latency(home: Registry) -> None:
    """Cold start and warm latency over ~50 sentences (printed, not asserted)."""
    resolver = IntentResolver(CONFIG / "sentences")
    start = time.perf_counter()
    resolver.warm_up(home)
    cold_ms = (time.perf_counter() - start) * 1000
    texts = [json.loads(line)["text"] for line in (EVAL / "home.jsonl").read_text().splitlines()[:50]]
    times = []
    for text in texts:
        t0 = time.perf_counter()
        resolve(resolver, home, text)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    median, p90 = times[len(times) // 2], times[int(len(times) * 0.9)]
    print(f"\nintents warm-up {cold_ms:.0f} ms; warm over {len(times)} sentences: median {median:.1f} ms, ", end="")
    print(f"p90 {p90:.1f} ms, max {times[-1]:.1f} ms")
    assert len(times) == 50


NEW_TYPES = """
name = "newtypes"
[[areas]]
id = "living_room"
name = "Living room"
[[devices]]
id = "mood"
name = "Mood light"
area = "living_room"
type = "color_light"
command_topic = "z/mood/set"
[[devices]]
id = "robot"
name = "Robot vacuum"
aliases = ["roomba"]
area = "living_room"
type = "vacuum"
command_topic = "z/robot/set"
[[devices]]
id = "movie"
name = "Movie night"
area = "living_room"
type = "scene"
command_topic = "z/movie/set"
"""


@pytest.mark.skipif(
    not {"color_light", "vacuum", "scene"} <= set(TYPE_ACTIONS), reason="the registry has no colour lights yet"
)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("set the mood light to red", ("mood", "set_color", {"color": "red"})),
        ("set the mood light color temperature to 3000 kelvin", ("mood", "set_color_temp", {"kelvin": 3000})),
        ("set the mood light to 40 percent brightness", ("mood", "set_brightness", {"brightness": 40})),
        ("start the robot vacuum", ("robot", "start", {})),
        ("return the roomba to base", ("robot", "return_to_base", {})),
        ("activate movie night", ("movie", "activate", {})),
    ],
)
def test_newer_device_types(
    resolver: IntentResolver, tmp_path: Path, text: str, expected: tuple[str, str, dict[str, object]]
) -> None:
    """Colour lights, vacuums and scenes map to their own actions when the registry has them."""
    path = tmp_path / "registry.toml"
    path.write_text(NEW_TYPES, encoding="utf-8")
    registry = load_registry(path)
    assert devices_of(registry, resolve(resolver, registry, text)) == acts(expected)
