"""Which devices a command means, and which of their actions with which values (the rules resolver's core).

Targets, in order: devices named (a "kitchen lights" alias in an area with several lights means
them all); a device kind in the named areas, in the speaker's area ("in here", or ``command.area``
when only a kind is named), or everywhere ("all the lights"); an area alone when exactly one of its
devices can do the action ("dim the hallway to 30 percent"). A kind with several devices and no
area is ambiguous. The action is the verb's (with fallbacks: "start the irrigation" opens a valve),
or, when a value is said, the one action whose single parameter the value fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from edged.devices.lexicon import Lexicon, phrase_words
from edged.devices.linking import Linking, Mention
from edged.devices.proposal import Call, CommandContext, ParamValue
from edged.devices.registry import CLEAN_AREA, Action, Device, Param, Registry
from edged.devices.relative import change, within
from edged.devices.slots import Slots, extract

ALL = "all"
# When the verb's own action is missing on a device, the nearest one it has.
FALLBACK: dict[str, tuple[str, ...]] = {
    "turn_on": ("start", "open", "activate", "play"),
    "turn_off": ("stop", "close", "pause"),
    "start": ("turn_on", "open", "activate", "play"),
    "stop": ("turn_off", "close", "pause"),
    "activate": ("turn_on", "start"),
    "clean_area": ("start",),
}
# Units a said number may carry for a parameter's unit; a number without a unit fits any but kelvin.
UNIT_OK = {"%": {"%", None}, "°C": {"°C", None}, "rpm": {"rpm", None}, "s": {"s", None}}
# What relative words are about, as parameter names.
DIMENSION = {
    "brightness": {"brightness"},
    "volume": {"volume"},
    "temperature": {"setpoint", "kelvin"},
    "speed": {"speed", "rpm"},
    "position": {"position", "opening"},
}
OPENING = {"position", "opening"}  # the parameters "open ... to 30 percent" means
EVERYWHERE_ACTIONS = {"turn_off"}  # "turn off everything": the one action "everything" may take without a kind


@dataclass(frozen=True)
class Plan:
    """The devices a command targets and the values it carries; ``reason`` says why there are none."""

    devices: tuple[Device, ...] = ()
    scope: str | None = None  # area id or "all" when the devices are a kind in an area (group calls possible)
    single: bool = False  # an area alone: exactly one of its devices must fit the action
    clean: str | None = None  # a vacuum's target area
    one_by_one: bool = False  # devices named one by one: each must have the action
    everything: bool = False  # "everything" without a kind
    slots: Slots = field(default_factory=Slots)
    words: tuple[str, ...] = ()
    reason: str = ""

    @property
    def used_words(self) -> frozenset[int]:
        return self.slots.used

    @classmethod
    def build(
        cls, registry: Registry, command: CommandContext, lex: Lexicon, linking: Linking, devices: Sequence[Mention]
    ) -> Plan:
        slots = extract(lex, linking.words, skip=linking.covered())
        base = cls(slots=slots, words=tuple(w.text for w in linking.words))
        areas = _areas(linking)
        if linking.here is not None and not linking.here.ref:
            return base.fail("speaker_area_unknown")
        if devices:
            return base.named(registry, lex, linking, devices, areas)
        return base.kinds(registry, lex, linking, command, areas)

    def fail(self, reason: str) -> Plan:
        return Plan(slots=self.slots, words=self.words, reason=reason)

    def but(self, devices: Sequence[Device], scope: str | None = None, **kw: object) -> Plan:
        return Plan(tuple(devices), scope, slots=self.slots, words=self.words, **kw)  # type: ignore[arg-type]

    def named(
        self, registry: Registry, lex: Lexicon, linking: Linking, devices: Sequence[Mention], areas: list[str]
    ) -> Plan:
        spans = {(m.first, m.last) for m in devices}
        if len(spans) < len(devices):
            return self.fail("ambiguous_name")
        found = [registry.device(m.ref) for m in devices]
        group = _alias_group(registry, lex, linking, devices)
        if group is not None:
            return self.but(group[1], group[0])
        if any(d.zones for d in found) and len(areas) == 1:
            return self.but(found, clean=areas[0])
        if areas and any(d.area not in areas for d in found):
            return self.fail("area_disagrees")
        return self.but(found, one_by_one=True)

    def kinds(
        self, registry: Registry, lex: Lexicon, linking: Linking, command: CommandContext, areas: list[str]
    ) -> Plan:
        pool = list({d.id: d for m in linking.types for d in _of_kind(registry, lex, m.ref)}.values())
        if not linking.types:
            if areas:
                return self.but([d for d in registry.devices if d.area in areas], areas[0], single=True)
            if linking.everywhere is not None:
                return self.but(registry.devices, ALL, everything=True)
            return self.fail("no_target")
        if any(d.zones for d in pool) and len(areas) == 1:
            vacuums = [d for d in pool if d.zones]
            return self.but(vacuums, clean=areas[0]) if len(vacuums) == 1 else self.fail("ambiguous_kind")
        if areas:
            return self.but([d for d in pool if d.area in areas], areas[0] if len(areas) == 1 else None)
        if linking.everywhere is not None:
            return self.but(pool, ALL)
        if command.area and any(d.area == command.area for d in pool):
            return self.but([d for d in pool if d.area == command.area], command.area)
        return self.but(pool) if len(pool) == 1 else self.fail("ambiguous_kind")


def _areas(linking: Linking) -> list[str]:
    found = [m.ref for m in linking.areas]
    if linking.here is not None and linking.here.ref:
        found.append(linking.here.ref)
    return list(dict.fromkeys(found))


def _of_kind(registry: Registry, lex: Lexicon, kind_name: str) -> list[Device]:
    """Devices of the kind's types, or named with its name words; "blinds" leaves out a cover named "door"."""
    kind = lex.kinds[kind_name]
    mine = {w for p in kind.words for w in p} | kind.name_words
    others = {w for k in lex.kinds.values() if k is not kind for p in k.words for w in p} - mine

    def said(d: Device) -> set[str]:
        return {w for n in (d.name, *d.aliases) for w in phrase_words(n, lex.language)}

    return [
        d
        for d in registry.devices
        if (d.type in kind.device_types and not (said(d) & others and not said(d) & mine)) or said(d) & kind.name_words
    ]


def _alias_group(
    registry: Registry, lex: Lexicon, linking: Linking, devices: Sequence[Mention]
) -> tuple[str, list[Device]] | None:
    """ "the kitchen lights" (area + plural kind) means every light there, even when one device has that alias."""
    if len(devices) != 1:
        return None
    m = devices[0]
    said = [w.text for w in linking.words[m.first : m.last]]
    kind = next((k for k in lex.kinds.values() if (said[-1],) in k.words and said[-1].endswith("s")), None)
    area = next(
        (a for a in registry.areas for n in (a.name, *a.aliases) if tuple(said[:-1]) == phrase_words(n, lex.language)),
        None,
    )
    if kind is None or area is None:
        return None
    members = [d for d in _of_kind(registry, lex, kind.name) if d.area == area.id]
    return (area.id, members) if len(members) > 1 else None


def _actions_for(device: Device, verb: Sequence[str]) -> list[str]:
    have = device.all_actions()
    for name in verb:
        if name in have:
            return [name]
    for name in verb:
        for other in FALLBACK.get(name, ()):
            if other in have:
                return [other]
    return []


def _fits(pname: str, param: Param, slots: Slots) -> bool:
    if slots.color is not None:
        return param.type == "enum" and slots.color in (param.values or [])
    if param.type not in ("integer", "number"):
        return False
    if slots.kelvin is not None:
        return param.unit == "K"
    if param.unit == "K" and slots.dimension != "temperature":
        return False
    said = slots.value()
    if said is not None and said.unit is not None and said.unit not in UNIT_OK.get(param.unit or "", {None}):
        return False
    return slots.dimension is None or pname in DIMENSION.get(slots.dimension, {pname})


def _valued(device: Device, slots: Slots, words: Sequence[str], verb: Sequence[str]) -> tuple[str, str, Param] | None:
    """The one action of ``device`` with a single parameter that the said value fits."""
    options = [
        (name, pname, p)
        for name, a in device.all_actions().items()
        if len(a.params) == 1 and name != CLEAN_AREA
        for pname, p in a.params.items()
        if _fits(pname, p, slots)
    ]
    for narrow in (
        lambda o: o[0] in verb,
        lambda o: o[1] in words,
        lambda o: o[0] in device.actions,
        lambda o: o[1] in OPENING and bool({"open", "close"} & set(verb)),
    ):
        if len(options) > 1 and any(narrow(o) for o in options):
            options = [o for o in options if narrow(o)]
    return options[0] if len(options) == 1 else None


def _value(pname: str, param: Param, slots: Slots, state: str | None) -> ParamValue | None:
    if slots.color is not None:
        return slots.color
    if slots.kelvin is not None:
        return slots.kelvin if within(slots.kelvin, param) else None
    said = slots.value()
    if slots.relative or slots.extreme is not None:
        if said is not None and said.absolute and slots.factor is None:
            return _absolute(said.value, param)
        found = change(pname, param, slots, state)
        return None if found is None else _typed(found.value, param)
    return None if said is None else _absolute(said.value, param)


def _absolute(value: float, param: Param) -> ParamValue | None:
    return _typed(value, param) if within(value, param) else None


def _typed(value: float, param: Param) -> ParamValue:
    return int(value) if param.type == "integer" or value == int(value) else value


def _has_value(slots: Slots) -> bool:
    return bool(slots.numbers or slots.color or slots.kelvin or slots.relative or slots.extreme)


def _open_close(device: Device, slots: Slots) -> str | None:
    """ "raise the blinds", "lower the shades": open or close when no amount is said."""
    if slots.direction is None or slots.numbers or slots.small or slots.extreme:
        return None
    name = "open" if slots.direction == "up" else "close"
    return name if name in device.all_actions() else None


def _call(device: Device, command: CommandContext, plan: Plan, verb: Sequence[str]) -> Call | None:
    slots = plan.slots
    if _has_value(slots):
        plain = _open_close(device, slots)
        if plain is not None:
            return Call(action=plain, device=device.id)
        picked = _valued(device, slots, plan.words, verb)
        if picked is None:
            return None
        value = _value(picked[1], picked[2], slots, command.states.get(device.id))
        return None if value is None else Call(action=picked[0], params={picked[1]: value}, device=device.id)
    names = [n for n in _actions_for(device, verb) if not device.all_actions()[n].params]
    return Call(action=names[0], device=device.id) if names else None


def choose_action(
    registry: Registry, command: CommandContext, plan: Plan, verb: Sequence[str]
) -> tuple[list[Call], str]:
    """The calls for a plan, or no calls and the reason."""
    if not verb and not _has_value(plan.slots):
        return [], "no_verb"
    if plan.clean is not None:
        ok = all(plan.clean in (d.zones or []) for d in plan.devices) and (
            not verb or CLEAN_AREA in verb or "start" in verb
        )
        calls = [Call(action=CLEAN_AREA, params={"area": plan.clean}, device=d.id) for d in plan.devices]
        return (calls, "") if ok and calls else ([], "cannot_clean_there")
    if plan.everything and not set(verb) & EVERYWHERE_ACTIONS:
        return [], "everything_only_off"
    calls = [_call(d, command, plan, verb) for d in plan.devices]
    if plan.one_by_one and any(c is None for c in calls):
        return [], "action_not_available"
    found = [c for c in calls if c is not None]
    if plan.single and len(found) != 1:
        return [], "area_ambiguous" if found else "action_not_available"
    if not found:
        return [], "action_not_available"
    return group_calls(registry, found, plan.scope), ""


def group_calls(registry: Registry, calls: Sequence[Call], scope: str | None) -> list[Call]:
    """Calls on every device of a type in the scope become one area call; the rest stay device calls."""
    if scope is None or len({(c.action, tuple(sorted(c.params.items()))) for c in calls}) != 1:
        return list(calls)
    first = calls[0]
    chosen = {c.device for c in calls}
    out: list[Call] = []
    for dtype in dict.fromkeys(registry.device(c.device or "").type for c in calls):
        mine = [c for c in calls if registry.device(c.device or "").type == dtype]
        area = _group_area(registry, scope, dtype)
        members = registry.targets(area, dtype, first.action)
        if {d.id for d in members} <= chosen and len(members) == len(mine) and _same_params(members, first.action):
            out.append(Call(action=first.action, params=first.params, area=area, type=dtype))
        else:
            out.extend(mine)
    return out


def _group_area(registry: Registry, scope: str, dtype: str) -> str:
    if scope != ALL:
        return scope
    areas = {d.area for d in registry.devices if d.type == dtype}
    return ALL if len(areas) > 1 else next(iter(areas))


def _same_params(devices: Sequence[Device], action: str) -> bool:
    specs: list[Action] = [d.all_actions()[action] for d in devices]
    return all(a.params == specs[0].params for a in specs)
