"""Device-command prompts: the registry as a static, cacheable system prompt, then the request."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from edged.devices.registry import Device, Param, Registry
from edged.prompts import Turn, user_content

DEVICE_SYSTEM = (
    "You are edged, the controller of the devices listed below. Turn the user's request into actions "
    "for these devices only. Answer with one JSON object: "
    '{"actions": [{"device": "<device id>", "action": "<action>", "params": {...}}], "say": "<short sentence>"}. '
    "For every device of a type in an area, use "
    '{"area": "<area id or all>", "type": "<type>", "action": ..., "params": {...}}. '
    "Numbers stay within the ranges shown. If the request is not about these devices, or is unclear, "
    "answer with no actions and say why in one sentence."
)


def _param_text(name: str, p: Param) -> str:
    if p.type in ("integer", "number"):
        lo, hi = p.bounds
        return f"{name} {lo:g}-{hi:g}{(' ' + p.unit) if p.unit else ''}"
    if p.type == "enum":
        return f"{name} one of {'/'.join(p.choices)}"
    return f"{name} {p.type}"


def device_catalogue(registry: Registry) -> str:
    """The registry as compact lines: static, so it belongs in the cacheable system prompt."""
    areas = "; ".join(f"{a.id} ({', '.join([a.name, *a.aliases])})" for a in registry.areas)
    lines = [f"Areas: {areas}", "Devices (id: name, aliases | area | type | actions):"]
    for d in registry.devices:
        lines.append(f"- {d.id}: {', '.join([d.name, *d.aliases])} | {d.area} | {d.type} | {actions_text(d)}")
    return "\n".join(lines)


def actions_text(device: Device) -> str:
    """A device's actions with their parameter ranges: ``stop, set_speed(speed 0-100 %)``."""
    return ", ".join(
        f"{n}({', '.join(_param_text(k, p) for k, p in a.params.items())})" if a.params else n
        for n, a in device.all_actions().items()
    )


def _example_value(p: Param) -> int | float | str | bool:
    if p.type == "integer":
        return int(sum(p.bounds) // 2)
    if p.type == "number":
        return float(sum(p.bounds) / 2)
    return p.choices[0] if p.type == "enum" else (True if p.type == "boolean" else "x")


def device_examples(registry: Registry) -> str:
    """Worked examples drawn from the registry itself: one simple action, one with a parameter, one refusal."""
    lines = ["Examples:"]
    simple = next(((d, n) for d in registry.devices for n, a in d.all_actions().items() if not a.params), None)
    if simple:
        d, n = simple
        answer = {
            "actions": [{"device": d.id, "action": n, "params": {}}],
            "say": f"Done: {n.replace('_', ' ')} {d.name}.",
        }
        lines.append(f"User: {n.replace('_', ' ')} the {d.name.lower()}\nAnswer: {json.dumps(answer)}")
    with_param = next(((d, n, a) for d in registry.devices for n, a in d.all_actions().items() if a.params), None)
    if with_param:
        d, n, a = with_param
        params = {k: _example_value(p) for k, p in a.params.items()}
        words = " ".join(f"{k} {v}" for k, v in params.items())
        answer = {"actions": [{"device": d.id, "action": n, "params": params}], "say": f"{d.name}: {words}."}
        lines.append(f"User: set the {d.name.lower()} {words}\nAnswer: {json.dumps(answer)}")
    refusal = {"actions": [], "say": "I can only control the devices listed."}
    lines.append(f"User: what is the capital of France?\nAnswer: {json.dumps(refusal)}")
    return "\n".join(lines)


def device_messages(
    registry: Registry,
    text: str,
    *,
    states: Mapping[str, str],
    context: Mapping[str, object] | None = None,
    history: Iterable[Turn] = (),
    lead: str = "",
) -> list[dict[str, str]]:
    """A device command: registry first (static), then history, then ``lead`` (the linker's candidates,
    see :mod:`edged.devices.grounding`), current states and the request."""
    system = f"{DEVICE_SYSTEM}\n\n{device_catalogue(registry)}\n\n{device_examples(registry)}"
    messages = [{"role": "system", "content": system}]
    for turn in history:
        messages += [{"role": "user", "content": turn.user}, {"role": "assistant", "content": turn.answer}]
    known = {d.id for d in registry.devices}
    current = "; ".join(f"{k}: {v}" for k, v in sorted(states.items()) if k in known)
    content = user_content(text, context)
    head = "\n".join(x for x in (lead, f"Current states: {current}" if current else "") if x)
    messages.append({"role": "user", "content": f"{head}\n\n{content}" if head else content})
    return messages
