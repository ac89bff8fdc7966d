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
from edged.devices.proposal import Call, CommandContext
from edged.devices.registry import CLEAN_AREA, Action, Device, Registry
from edged.devices.slots import Slots
from edged.devices.values import has_value, open_close, value_for, valued_action

ALL = "all"
# When the verb's own action is missing on a device, the nearest one it has.
FALLBACK: dict[str, tuple[str, ...]] = {
    "turn_on": ("start", "open", "activate", "play"),
    "turn_off": ("stop", "close", "pause"),
    "start": ("turn_on", "open", "activate", "play"),
    "stop": ("turn_off", "close", "pause"),
    "activate": ("turn_on", "start"),
    "clean_area": ("start",),
    "open": ("unlock",),  # "open the front door lock"
}
# Units a said number may carry for a parameter's unit; a number without a unit fits any but kelvin.
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
    verb: tuple[str, ...] = ()
    reason: str = ""

    @classmethod
    def build(
        cls,
        registry: Registry,
        command: CommandContext,
        lex: Lexicon,
        linking: Linking,
        devices: Sequence[Mention],
        slots: Slots,
        verb: Sequence[str],
    ) -> Plan:
        base = cls(slots=slots, words=tuple(w.text for w in linking.words), verb=tuple(verb))
        areas = _areas(linking)
        if linking.here is not None and not linking.here.ref:
            return base.fail("speaker_area_unknown")
        if devices:
            return base.named(registry, lex, linking, devices, areas)
        return base.kinds(registry, lex, linking, command, areas)

    def fail(self, reason: str) -> Plan:
        return Plan(slots=self.slots, words=self.words, verb=self.verb, reason=reason)

    def but(self, devices: Sequence[Device], scope: str | None = None, **kw: object) -> Plan:
        return Plan(tuple(devices), scope, slots=self.slots, words=self.words, verb=self.verb, **kw)  # type: ignore[arg-type]

    def one_of(self, lex: Lexicon, linking: Linking, pool: Sequence[Device], scope: str | None) -> Plan:
        """A singular kind word ("the lamp") means the one device named with it, else the one the action
        fits; a plural means all of them."""
        said = [linking.words[m.first].text for m in linking.types if m.last - m.first == 1]
        singular = [w for w in said if any((w + "s",) in k.words for k in lex.kinds.values())]
        if len(pool) < 2 or not singular or len(singular) != len(said):
            return self.but(pool, scope)
        named = [d for d in pool if set(singular) & _name_words(d, lex)]
        return self.but(named) if len(named) == 1 else self.but(pool, scope, single=True)

    def able(self, pool: Sequence[Device]) -> list[Device]:
        """Without a value, the devices of a kind that have the verb's own action ("unlock the door")."""
        if not self.verb or has_value(self.slots):
            return list(pool)
        return [d for d in pool if set(self.verb) & set(d.all_actions())]

    def named(
        self, registry: Registry, lex: Lexicon, linking: Linking, devices: Sequence[Mention], areas: list[str]
    ) -> Plan:
        spans = {(m.first, m.last) for m in devices}
        if len(spans) < len(devices):
            return self.fail("ambiguous_name")
        found = [registry.device(m.ref) for m in devices]
        group = _alias_group(registry, lex, linking, devices)
        if group is not None:
            return self.fail("area_disagrees") if set(areas) - {group[0]} else self.but(group[1], group[0])
        if any(d.zones for d in found) and len(areas) == 1:
            return self.but(found, clean=areas[0])
        if areas and any(d.area not in areas for d in found):
            return self.fail("area_disagrees")
        return self.but(found, one_by_one=True)

    def kinds(
        self, registry: Registry, lex: Lexicon, linking: Linking, command: CommandContext, areas: list[str]
    ) -> Plan:
        pool = self.able(list({d.id: d for m in linking.types for d in _of_kind(registry, lex, m.ref)}.values()))
        if not linking.types:
            vacuums = [d for d in registry.devices if d.zones]
            if CLEAN_AREA in self.verb and len(areas) == 1 and len(vacuums) == 1:  # "clean the kitchen"
                return self.but(vacuums, clean=areas[0])
            if areas and linking.everywhere is not None:  # "turn everything off in the bedroom"
                return self.but([d for d in registry.devices if d.area in areas], areas[0], everything=True)
            if areas:
                return self.but([d for d in registry.devices if d.area in areas], areas[0], single=True)
            if linking.everywhere is not None:
                return self.but(registry.devices, ALL, everything=True)
            if command.area:  # "brighter please": the one device in the speaker's area it fits
                return self.but([d for d in registry.devices if d.area == command.area], command.area, single=True)
            return self.fail("no_target")
        if any(d.zones for d in pool) and len(areas) == 1:
            vacuums = [d for d in pool if d.zones]
            return self.but(vacuums, clean=areas[0]) if len(vacuums) == 1 else self.fail("ambiguous_kind")
        if areas:
            return self.one_of(
                lex, linking, [d for d in pool if d.area in areas], areas[0] if len(areas) == 1 else None
            )
        if linking.everywhere is not None:
            return self.but(pool, ALL)
        if command.area and any(d.area == command.area for d in pool):
            return self.one_of(lex, linking, [d for d in pool if d.area == command.area], command.area)
        if len(pool) > 1:  # "the extractor": the one device whose name has the kind word said
            said = {linking.words[m.first].text for m in linking.types if m.last - m.first == 1}
            pool = [d for d in pool if said & _name_words(d, lex)] or pool
        return self.but(pool) if len(pool) == 1 else self.fail("ambiguous_kind")


def _areas(linking: Linking) -> list[str]:
    found = [m.ref for m in linking.areas]
    if linking.here is not None and linking.here.ref:
        found.append(linking.here.ref)
    return list(dict.fromkeys(found))


def _name_words(d: Device, lex: Lexicon) -> set[str]:
    return {w for n in (d.name, *d.aliases) for w in phrase_words(n, lex.language)}


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


def _actions_for(device: Device, verb: Sequence[str], *, fallback: bool = True) -> list[str]:
    have = {name for name, a in device.all_actions().items() if not a.params}
    for name in verb:
        if name in have:
            return [name]
    for name in verb if fallback else ():
        for other in FALLBACK.get(name, ()):
            if other in have:
                return [other]
    return []


def _call(device: Device, command: CommandContext, plan: Plan, verb: Sequence[str]) -> Call | None:
    slots = plan.slots
    if has_value(slots):
        plain = open_close(device, slots)
        if plain is not None:
            return Call(action=plain, device=device.id)
        picked = valued_action(device, slots, plan.words, verb)
        if picked is None:
            return None
        value = value_for(picked[1], picked[2], slots, command.states.get(device.id))
        return None if value is None else Call(action=picked[0], params={picked[1]: value}, device=device.id)
    names = _actions_for(device, verb, fallback=plan.one_by_one)  # no "open" for "turn it on" in a room
    return Call(action=names[0], device=device.id) if names else None


def choose_action(
    registry: Registry, command: CommandContext, plan: Plan, verb: Sequence[str]
) -> tuple[list[Call], str]:
    """The calls for a plan, or no calls and the reason."""
    if not verb and not has_value(plan.slots):
        return [], "no_verb"
    if plan.clean is not None:
        ok = all(plan.clean in (d.zones or []) for d in plan.devices) and (
            not verb or CLEAN_AREA in verb or "start" in verb
        )
        calls = [Call(action=CLEAN_AREA, params={"area": plan.clean}, device=d.id) for d in plan.devices]
        return (calls, "") if ok and calls else ([], "cannot_clean_there")
    if plan.everything:
        verb = [a for a in verb if a in EVERYWHERE_ACTIONS]  # "turn off everything" stops no pump
        if not verb:
            return [], "everything_only_off"
    maybe = [_call(d, command, plan, verb) for d in plan.devices]
    if plan.one_by_one and any(c is None for c in maybe):
        return [], "action_not_available"
    found = [c for c in maybe if c is not None]
    if plan.single and len(found) != 1:
        return [], "area_ambiguous" if found else "action_not_available"
    if not found:
        return [], "action_not_available"
    return group_calls(registry, found, None if plan.single else plan.scope), ""


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
