"""Device actions: the model's output schema built from a registry, and what a valid output means.

One set of pydantic models is both the JSON Schema the decoder is constrained by and the parser
that validates the decoded text again (defence in depth). Area targets ("all lights in the
kitchen") are expanded to devices deterministically; each action's safety policy says whether
it may be dispatched now or needs confirmation.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from edged.devices.registry import Action, Device, Param, Registry, on_step
from edged.typeforms import any_of, one_of

MAX_ACTIONS = 6
MAX_SAY = 160
GROUNDED_SAY = 48  # grounded answers: the candidates are known, a short sentence is enough
ALL_AREAS = "all"


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _param_type(p: Param, heard: Any = None) -> Any:
    if heard is not None and _fits(p, heard):  # grounded: the value the words carry, and no other
        return Literal[int(heard) if p.type == "integer" else heard]
    if p.type == "integer":
        return Annotated[int, Field(ge=int(p.min), le=int(p.max))]  # type: ignore[arg-type]
    if p.type == "number":  # bounded precision: unbounded decimals let sampling run on digits forever
        return Annotated[
            float,
            Field(ge=p.min, le=p.max, json_schema_extra={"multipleOf": p.step}),
            AfterValidator(functools.partial(_check_step, step=p.step)),
        ]
    if p.type == "boolean":
        return bool
    if p.type == "enum":
        return one_of(p.values or ())
    return Annotated[str, Field(max_length=p.max_length)]


def _check_step(value: float, step: float) -> float:
    if not on_step(value, step):
        raise ValueError(f"must be a multiple of {step}")
    return round(value, 6)


def _fits(p: Param, value: Any) -> bool:
    if p.type in ("integer", "number") and isinstance(value, (int, float)) and not isinstance(value, bool):
        whole = p.type == "number" or float(value).is_integer()
        return whole and p.min <= value <= p.max and (p.type == "integer" or on_step(value, p.step))  # type: ignore[operator]
    if p.type == "enum":
        return value in (p.values or ())
    return p.type == "boolean" and isinstance(value, bool)


def _params_model(name: str, action: Action, values: Mapping[str, Any] | None = None) -> type[BaseModel]:
    heard = values or {}
    fields = {p: (_param_type(spec, heard.get(p)), ...) for p, spec in action.params.items()}
    return create_model(name, __base__=_Closed, **fields)  # type: ignore[call-overload]


def _camel(*parts: str) -> str:
    return "".join(p.replace("_", " ").title().replace(" ", "") for p in parts)


def _groups(registry: Registry) -> dict[tuple[str, str, str], Action]:
    """(area, type, action) targets whose devices agree on the action's parameters."""
    groups: dict[tuple[str, str, str], list[Action]] = {}
    spread = {t: {d.area for d in registry.devices if d.type == t} for t in {d.type for d in registry.devices}}
    for d in registry.devices:
        for name, action in d.all_actions().items():
            for area in (d.area, ALL_AREAS) if len(spread[d.type]) > 1 else (d.area,):
                groups.setdefault((area, d.type, name), []).append(action)
    return {key: acts[0] for key, acts in sorted(groups.items()) if all(a.params == acts[0].params for a in acts)}


def device_action_models(devices: Iterable[Device], values: Mapping[str, Any] | None = None) -> list[type[BaseModel]]:
    """One model per (device, action): ``{"device": id, "action": name, "params": {...}}``."""
    items: list[type[BaseModel]] = []
    for d in devices:
        for name, action in d.all_actions().items():
            tag = _camel(d.id, name)
            items.append(
                create_model(
                    f"Do{tag}",
                    __base__=_Closed,
                    device=(one_of([d.id]), ...),
                    action=(one_of([name]), ...),
                    params=(_params_model(f"{tag}Params", action, values), ...),
                )
            )
    return items


def output_model(
    registry: Registry,
    *,
    devices: Collection[str] | None = None,
    areas: Collection[str] | None = None,
    types: Collection[str] | None = None,
    values: Mapping[str, Any] | None = None,
    say_max: int = MAX_SAY,
) -> type[BaseModel]:
    """The model of a command answer for this registry: ``{"actions": [...], "say": "..."}``.

    Grounded: only ``devices`` by id, only area targets in ``areas`` of ``types``, parameters fixed to ``values``
    where the words carried one that fits (the answer is then a subset of the full model's)."""
    chosen = [d for d in registry.devices if devices is None or d.id in devices]
    items = device_action_models(chosen, values)
    for (area, dtype, name), action in _groups(registry).items():
        if (areas is not None and area not in areas) or (types is not None and dtype not in types):
            continue
        tag = _camel(area, dtype, name)
        items.append(
            create_model(
                f"All{tag}",
                __base__=_Closed,
                area=(one_of([area]), ...),
                type=(one_of([dtype]), ...),
                action=(one_of([name]), ...),
                params=(_params_model(f"All{tag}Params", action, values), ...),
            )
        )
    if not items:
        if devices is None and areas is None:  # no devices (yet, while discovery runs): only an empty answer
            say = (str, Field(max_length=MAX_SAY))
            return create_model("CommandAnswer", __base__=_Closed, actions=(list[str], Field(max_length=0)), say=say)
        raise ValueError("a grounded answer model needs at least one device or area")
    item = any_of(items)
    return create_model(
        "CommandAnswer",
        __base__=_Closed,
        actions=(list[item], Field(max_length=MAX_ACTIONS)),  # type: ignore[valid-type]  # noqa: UP007 (a union built at run time)
        say=(str, Field(max_length=min(say_max, MAX_SAY))),
    )


@dataclass(frozen=True)
class Resolved:
    """One device action, validated, expanded, with its policy and rendered payload."""

    device: str
    action: str
    params: dict[str, Any]
    topic: str | None
    payload: bytes
    needs_confirmation: bool

    def describe(self) -> dict[str, Any]:
        return {"device": self.device, "action": self.action, "params": self.params}


class InvalidAnswer(ValueError):
    pass


def parse_answer(registry: Registry, model: type[BaseModel], text: str) -> tuple[list[Resolved], str]:
    """Validate the decoded text against the registry's model and resolve it into device actions."""
    try:
        answer = model.model_validate_json(text)
    except ValidationError as exc:
        raise InvalidAnswer(f"answer does not match the registry schema: {exc.error_count()} error(s)") from exc
    resolved: list[Resolved] = []
    seen: set[tuple[str, str, str]] = set()
    for item in answer.actions:  # type: ignore[attr-defined]
        params = item.params.model_dump()
        devices = (
            [registry.device(item.device)]
            if hasattr(item, "device")
            else registry.targets(item.area, item.type, item.action)
        )
        for device in devices:
            key = (device.id, item.action, json.dumps(params, sort_keys=True))
            if key not in seen:  # "lights off, and the kitchen light off" is one action, once
                seen.add(key)
                resolved.append(_resolve(device, item.action, params))
    return resolved, answer.say  # type: ignore[attr-defined]


def _resolve(device: Device, name: str, params: dict[str, Any]) -> Resolved:
    action = device.all_actions()[name]
    return Resolved(
        device=device.id,
        action=name,
        params=params,
        topic=action.topic or device.command_topic,
        payload=render_payload(action.payload, action.template_values(params)),
        needs_confirmation=needs_confirmation(action, params),
    )


def needs_confirmation(action: Action, params: dict[str, Any]) -> bool:
    if action.confirm:
        return True
    rule = action.confirm_if
    if rule is None:
        return False
    value = params[rule.param]
    return (rule.above is not None and value > rule.above) or (rule.below is not None and value < rule.below)


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _fill(value: Any, params: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, params) for v in value]
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole and whole.group(1) in params:
            return params[whole.group(1)]  # keeps the parameter's JSON type
        return _PLACEHOLDER.sub(lambda m: str(params.get(m.group(1), m.group(0))), value)
    return value


def render_payload(template: dict[str, Any] | str, params: dict[str, Any]) -> bytes:
    """A dict template becomes JSON with typed values; a string template is filled as text."""
    filled = _fill(template, params)
    return (filled if isinstance(filled, str) else json.dumps(filled, separators=(",", ":"))).encode()
