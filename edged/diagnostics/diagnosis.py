"""Diagnostic queries: the prompt with edged's sensor summaries, and the schema the answer is held to."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from edged.devices.actions import device_action_models
from edged.devices.prompts import actions_text
from edged.devices.registry import Device, Registry
from edged.diagnostics.summaries import Summary, citable, relevant, subject, summarise
from edged.diagnostics.telemetry import Series, TelemetryStore
from edged.prompts import Turn, user_content
from edged.typeforms import any_of, list_of, one_of

DIAGNOSIS_SYSTEM = (
    "You are edged, a diagnostic assistant for machines and sensors. Think about the question and the "
    "sensor summaries (computed by edged from live readings), then answer with one JSON object: "
    '{"summary": one sentence, "severity": "ok"|"info"|"warning"|"critical", '
    '"findings": [{"sensor": sensor id, "value": a number from the summaries, "note": why it matters}], '
    '"likely_causes": [{"cause": ..., "confidence": 0 to 1}] most likely first, '
    '"recommended_actions": [{"action": ..., "do": optional, one of the registry actions offered, as '
    '{"device": ..., "action": ..., "params": {...}}}], "data_gaps": [what is missing or stale]}. '
    "Cite only sensors and numbers given to you. edged never runs a recommended action; people decide."
)

MAX_RAW = 20  # raw readings per sensor at most
RAW_LABEL = "recent (s ago: value): "
Text = Annotated[str, Field(max_length=80)]
Number = Annotated[float, Field(ge=-1e6, le=1e6, json_schema_extra={"multipleOf": 0.001})]
Severity = Literal["ok", "info", "warning", "critical"]
Confidence = Annotated[float, Field(ge=0, le=1, json_schema_extra={"multipleOf": 0.05})]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Cause(_Closed):
    cause: Text
    confidence: Confidence


class Step(_Closed):
    action: Text


def _step_model(devices: Sequence[Device]) -> type[BaseModel]:
    """A recommended step; with devices, optionally one of their registry actions (never dispatched)."""
    if not devices:
        return Step
    do = any_of([*device_action_models(devices), None])
    return create_model("Step", __base__=_Closed, action=(Text, ...), do=(do, None))


def _finding_model(cite: Mapping[str, Sequence[float]]) -> Any:
    """A finding names a shown sensor and cites one of the numbers shown for it, exactly."""
    models = [
        create_model(
            f"Finding{i}",
            __base__=_Closed,
            sensor=(one_of([key]), ...),
            value=(one_of(numbers), ...),
            note=(Text, ...),
        )
        for i, (key, numbers) in enumerate(cite.items())
        if numbers
    ]
    if not models:  # nothing shown: free text within bounds
        return create_model(
            "Finding",
            __base__=_Closed,
            sensor=(Annotated[str, Field(max_length=48)], ...),
            value=(Number, ...),
            note=(Text, ...),
        )
    return any_of(models)


def diagnosis_model(cite: Mapping[str, Sequence[float]], devices: Sequence[Device] = ()) -> type[BaseModel]:
    """The answer model for the sensors shown (each with the numbers shown for it): a finding can only
    cite those, ``recommended_actions[].do`` only the registry actions of ``devices``."""
    finding = _finding_model(cite)
    return create_model(
        "Diagnosis",
        __base__=_Closed,
        summary=(Annotated[str, Field(max_length=160)], ...),
        severity=(Severity, ...),
        findings=(list_of(finding), Field(max_length=4)),
        likely_causes=(list[Cause], Field(max_length=3)),
        recommended_actions=(list_of(_step_model(devices)), Field(max_length=3)),
        data_gaps=(list[Text], Field(max_length=3)),
    )


def telemetry_block(
    chosen: list[Summary], series: list[Series], *, budget_tokens: int, count: Callable[[str], int]
) -> str:
    """Summaries first; then raw readings newest first, a round across all sensors at a time, while
    ``budget_tokens`` (counted with the model's tokenizer) lasts."""
    if not chosen:
        return ""
    lines = ["Sensor summaries (computed by edged):", *(s.line() for s in chosen)]
    used = count("\n".join(lines))
    by_key = {s.key: s for s in series}
    pieces: dict[str, list[str]] = {}
    for summary in chosen:
        samples = by_key[summary.key].samples[-MAX_RAW:]
        if samples:
            newest = samples[-1][0]
            pieces[summary.key] = [f"{newest - t:.0f}: {v:.4g}" for t, v in reversed(samples)]
    taken = dict.fromkeys(pieces, 0)
    for i in range(MAX_RAW):
        for key, mine in pieces.items():
            if i >= len(mine):
                continue
            cost = count(mine[i]) + 1 + (count(f"\n{key} {RAW_LABEL}") if i == 0 else 0)
            if used + cost > budget_tokens:
                return "\n".join(lines + _raw_lines(pieces, taken))
            used += cost
            taken[key] += 1
    return "\n".join(lines + _raw_lines(pieces, taken))


def _raw_lines(pieces: dict[str, list[str]], taken: dict[str, int]) -> list[str]:
    return [f"{key} {RAW_LABEL}" + ", ".join(mine[: taken[key]]) for key, mine in pieces.items() if taken[key]]


def actions_block(devices: Sequence[Device]) -> str:
    if not devices:
        return ""
    lines = ["Registry actions you may recommend (edged never runs them):"]
    return "\n".join([*lines, *(f"- {d.id}: {actions_text(d)}" for d in devices)])


def diagnosis_messages(
    text: str, *, telemetry: str, context: Mapping[str, object] | None, history: Iterable[Turn] = (), actions: str = ""
) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": DIAGNOSIS_SYSTEM}]
    for turn in history:
        messages += [{"role": "user", "content": turn.user}, {"role": "assistant", "content": turn.answer}]
    # the data first, the question last: small models answer the last thing they read
    content = "\n\n".join(part for part in (actions, telemetry, f"Question: {user_content(text, context)}") if part)
    messages.append({"role": "user", "content": content})
    return messages


def _names(registry: Registry) -> dict[str, list[str]]:
    """How a question may name each device: its name, aliases, and its area's id, name and aliases."""
    areas = {a.id: [a.id, a.name, *a.aliases] for a in registry.areas}
    return {d.id: [d.name, *d.aliases, *areas.get(d.area, [])] for d in registry.devices}


SEVERITIES = ("ok", "info", "warning", "critical")


def severity_floor(chosen: Sequence[Summary]) -> str:
    """The least severity edged's own numbers allow: a reading outside its declared normal range is at
    least a warning; a stale or unusual sensor at least info."""
    if any(c.out_of_range for c in chosen):
        return "warning"
    return "info" if any(c.abnormal for c in chosen) else "ok"


@dataclass(frozen=True)
class Prepared:
    """One diagnostic query, ready to run."""

    model: type[BaseModel]  # the answer schema
    messages: list[dict[str, str]]
    sensors: list[str]  # shown to the model
    abnormal: list[str]  # of those, flagged by edged's own numbers (out of range, stale, unusual)
    floor: str = "ok"  # severity_floor() of the shown sensors

    def outcome(self, answer: str) -> tuple[dict[str, object] | None, str | None]:
        """The query's result (the validated diagnosis, its severity raised to the floor if the model
        rated lower, and what edged saw), or why the answer is not a diagnosis."""
        try:
            diagnosis = self.model.model_validate_json(answer).model_dump()
        except ValidationError as exc:
            return None, f"the answer is not a valid diagnosis: {exc.error_count()} error(s)"
        result: dict[str, object] = {
            "diagnosis": diagnosis,
            "sensors": self.sensors,
            "abnormal": self.abnormal,
            "severity_floor": self.floor,
        }
        said = diagnosis["severity"]
        if SEVERITIES.index(said) < SEVERITIES.index(self.floor):
            diagnosis["severity"] = self.floor
            result["notes"] = [f"severity raised from {said} to {self.floor}: edged flagged {', '.join(self.abnormal)}"]
        return result, None


class Diagnostics:
    """Builds diagnostic prompts from live telemetry and checks the structured answer."""

    def __init__(
        self,
        store: TelemetryStore | None,
        *,
        budget_tokens: int,
        max_sensors: int,
        count_tokens: Callable[[str], int] = lambda text: len(text) // 3 + 1,
        registry: Callable[[], Registry | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ):
        """``count_tokens``: the model's tokenizer (the default guesses from the length)."""
        self.store = store
        self._registry = registry
        self._budget = budget_tokens
        self._count = count_tokens
        self._max_sensors = max_sensors
        self._clock = clock

    def prepare(self, text: str, *, context: Mapping[str, object] | None, history: Iterable[Turn]) -> Prepared:
        series = self.store.series() if self.store else []
        now = self._clock()
        registry = self._registry()
        chosen = relevant(
            [summarise(s, now) for s in series],
            series,
            text,
            context,
            limit=self._max_sensors,
            names=_names(registry) if registry is not None else None,
        )
        block = telemetry_block(chosen, series, budget_tokens=self._budget, count=self._count)
        keys = [c.key for c in chosen]
        by_key = {s.key: s for s in series}
        owners = {subject(by_key[k]) for k in keys}
        devices = [d for d in registry.devices if d.id in owners] if registry is not None else []
        messages = diagnosis_messages(
            text, telemetry=block, context=context, history=history, actions=actions_block(devices)
        )
        cite = {c.key: citable(c) for c in chosen}
        abnormal = [c.key for c in chosen if c.abnormal]
        return Prepared(diagnosis_model(cite, devices), messages, keys, abnormal, severity_floor(chosen))
