"""Device control: prompt and schema from the registry, then validate, dispatch or hold for confirmation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import BaseModel

from edged.devices.actions import ALL_AREAS, GROUNDED_SAY, MAX_SAY, InvalidAnswer, Resolved, output_model, parse_answer
from edged.devices.confirmations import Confirmations, TokenError, reply_tree
from edged.devices.grounding import Grounding, ground, grounding_text, knows_words_of
from edged.devices.pipeline import CommandPipeline
from edged.devices.prompts import device_messages
from edged.devices.proposal import CommandContext, ResolvedBy, Resolver
from edged.devices.registry import Registry, RegistryStore
from edged.devices.state import DeviceStates
from edged.prompts import Turn
from edged.protocol import ErrorCode, ErrorInfo, Status
from edged.settings import CommandSettings, SamplingSettings

log = structlog.get_logger("edged.commands")

Publish = Callable[[str, bytes], bool | None]  # False: the broker refused it (or never confirmed it)
# (request id, reply topic, [(topic, payload)]) -> None to go ahead (claimed), else what an earlier run already sent
Claim = Callable[[str, str, list[tuple[str, bytes]]], list[tuple[str, bytes]] | None]


@dataclass
class DeviceResult:
    """What a device command or confirmation came to: its status and result object, the error if any,
    and the actions sent to devices."""

    status: Status
    result: dict[str, Any]
    code: str | None = None
    message: str | None = None
    dispatched: list[Resolved] = field(default_factory=list)

    def error_info(self) -> ErrorInfo | None:
        return ErrorInfo(code=ErrorCode(self.code), message=self.message or "") if self.code else None


class DeviceControl:
    def __init__(
        self,
        store: RegistryStore,
        states: DeviceStates,
        confirmations: Confirmations,
        publish: Publish,
        *,
        dispatch_default: bool = True,
        constrain: bool = True,
        claim: Claim | None = None,
        commands: CommandSettings | None = None,
        resolvers: Sequence[Resolver] | None = None,
    ):
        """``constrain=False`` is for evaluation only: the model writes freely and the JSON is fished out.
        ``resolvers``: the layers before the model (default: sentence templates, then registry rules)."""
        self.constrain = constrain
        self.store = store
        self.states = states
        self.confirmations = confirmations
        self.commands = commands or CommandSettings()
        self.pipeline = CommandPipeline(default_resolvers() if resolvers is None else resolvers)
        self._publish = publish
        self._dispatch_default = dispatch_default
        self._claim = claim
        self._models: dict[str, tuple[type[BaseModel], dict[str, Any]]] = {}
        self._grounded: dict[tuple[object, ...], dict[str, Any]] = {}

    def schema_for(self, registry: Registry) -> tuple[type[BaseModel], dict[str, Any]]:
        """The answer model and its JSON Schema, built once per registry version."""
        if registry.version not in self._models:
            model = output_model(registry)
            self._models = {registry.version: (model, model.model_json_schema())}
            self._grounded = {}
        return self._models[registry.version]

    def warm_up(self) -> float:
        """Build the resolvers' matchers and the answer model before the first request; seconds taken."""
        registry = self.store.get()
        self.schema_for(registry)
        return self.pipeline.warm_up(registry, [self.commands.language]) if self.commands.local else 0.0

    def sampling(self, base: SamplingSettings) -> SamplingSettings:
        """Command decoding: greedy by default (``commands.temperature``)."""
        return base.model_copy(update={"temperature": self.commands.temperature})

    def context(self, registry: Registry, text: str, *, language: str | None, area: str | None) -> CommandContext:
        return CommandContext(
            text=text,
            language=language or self.commands.language,
            area=area_id(registry, area),
            states=self.states.json_snapshot(),
        )

    def try_resolve(
        self,
        request_id: str,
        text: str,
        *,
        language: str | None = None,
        area: str | None = None,
        dispatch: bool | None,
        reply_topic: str = "",
    ) -> DeviceResult | None:
        """The finished outcome of a command that needs no generation, else None (ask the model).

        Resolved by templates or rules: validated, confirmed and dispatched exactly like a model
        answer. Naming nothing in the registry: refused as not_understood without the model."""
        if not self.commands.local:
            return None
        registry = self.store.get()
        command = self.context(registry, text, language=language, area=area)
        resolution = self.pipeline.resolve(registry, command)
        if resolution is None:
            return self._unlinked(registry, command, request_id)
        proposal = resolution.proposal()
        outcome = self.outcome(
            registry,
            request_id,
            proposal.answer_json(),
            dispatch=dispatch,
            reply_topic=reply_topic,
            resolved_by=proposal.resolved_by,
        )
        if outcome.code is not None:  # a resolver proposed what the registry refuses: the model decides
            log.error("resolver_answer_invalid", id=request_id, answer=proposal.answer_json(), error=outcome.message)
            return None
        outcome.result["intent"] = resolution.intent
        outcome.result["say"] = outcome.result.get("say") or spoken_summary(registry, outcome.result["actions"])
        log.info("command_resolved", id=request_id, resolved_by=proposal.resolved_by, intent=resolution.intent)
        return outcome

    def _unlinked(self, registry: Registry, command: CommandContext, request_id: str) -> DeviceResult | None:
        """Refuse a command whose words name no device or area of the registry, or a device it does not
        have ("pump 7" beside Pumps 1-3), without the model: it would pick the nearest device (needs the linker)."""
        if not self.commands.grounded or not knows_words_of(command.language):
            return None
        grounding = ground(registry, command)
        if grounding is None or not grounding.names_nothing_here:
            return None
        if grounding.unknown_devices:
            say = f"There is no {' or '.join(grounding.unknown_devices)} here."
        else:
            say = "That is not something the devices here can do."
        result: dict[str, Any] = {"actions": [], "say": say, "resolved_by": "rules", "reason": grounding.refusal}
        if grounding.unknown:
            result["unknown"] = list(grounding.unknown)
        log.info("command_refused", id=request_id, reason=grounding.refusal, unknown=list(grounding.unknown))
        return DeviceResult("rejected", result, "not_understood", say)

    def prepare(
        self,
        text: str,
        *,
        context: Mapping[str, Any] | None,
        history: Iterable[Turn],
        language: str | None = None,
        area: str | None = None,
    ) -> tuple[Registry, list[dict[str, str]], dict[str, Any] | None]:
        """The model path: messages (grounded in the linker's candidates) and the answer grammar."""
        registry = self.store.get()
        schema = self.schema_for(registry)[1] if self.constrain else None
        command = self.context(registry, text, language=language, area=area)
        grounding = ground(registry, command) if self.commands.grounded else None
        lead = grounding_text(registry, grounding, command.area)
        messages = device_messages(
            registry, text, states=self.states.snapshot(), context=context, history=history, lead=lead
        )
        if schema is not None and grounding is not None and grounding.devices:
            schema = self._grounded_schema(registry, grounding) or schema
        return registry, messages, schema

    def _grounded_schema(self, registry: Registry, grounding: Grounding) -> dict[str, Any] | None:
        """Only the candidates (area targets: the named rooms, or "all" when no room was named and the linking
        is not confident); values fixed to those heard when linking is confident.
        The model can still answer with no action, which is a refusal (not_understood)."""
        values = grounding.values if grounding.confident else {}
        key = (registry.version, grounding.device_ids(), grounding.area_ids(), tuple(sorted(values.items())))
        if key not in self._grounded:
            if len(self._grounded) > 64:
                self._grounded.clear()
            areas = grounding.area_ids() | ({ALL_AREAS} if not grounding.areas and not grounding.confident else set())
            types = {d.type for d in registry.devices if d.id in grounding.device_ids()}
            try:
                model = output_model(
                    registry,
                    devices=grounding.device_ids(),
                    areas=areas,
                    types=types,
                    values=values,
                    say_max=GROUNDED_SAY,
                )
            except ValueError:  # nothing of the registry left to name: the full grammar
                return None
            self._grounded[key] = model.model_json_schema()
        return self._grounded[key]

    def outcome(
        self,
        registry: Registry,
        request_id: str,
        answer: str,
        *,
        dispatch: bool | None,
        reply_topic: str = "",
        resolved_by: ResolvedBy = "model",
        command: CommandContext | None = None,
    ) -> DeviceResult:
        """Validate an answer and dispatch it; ``command``: the model's request, checked against its linking."""
        model, _ = self.schema_for(registry)
        if (
            not self.constrain and resolved_by == "model"
        ):  # free text gets the benefit of the doubt: the outermost {...}
            start, end = answer.find("{"), answer.rfind("}")
            answer = answer[start : end + 1] if 0 <= start < end else answer
        try:
            actions, say = parse_answer(registry, model, answer)
        except InvalidAnswer as exc:  # e.g. cut short by max_tokens: never guess
            return DeviceResult(
                "rejected", {"actions": [], "text": answer, "resolved_by": resolved_by}, "invalid_answer", str(exc)
            )
        if actions and resolved_by == "model" and _opposed(actions):
            actions, say = [], "The answer turned a device both ways; nothing was done."
        if actions and command is not None and self._ambiguous(registry, command, actions):
            actions, say = [], "Several devices match; say which one, or the room."
        if not actions:
            result = {"actions": [], "say": say, "resolved_by": resolved_by}
            return DeviceResult("rejected", result, "not_understood", say or "no device action found")
        return self._dispatch(registry, request_id, actions, say, dispatch, reply_topic, resolved_by)

    def _ambiguous(self, registry: Registry, command: CommandContext, actions: list[Resolved]) -> bool:
        """A model answer that picks some of several devices the words fit equally, with no room named
        or known ("sing me a song": the TV or the kids' speaker?): not a confident answer."""
        grounding = ground(registry, command) if self.commands.grounded else None
        if grounding is None or grounding.empty or grounding.confident or grounding.areas:
            return False
        chosen = {a.device for a in actions}
        types = {d.type for d in registry.devices if d.id in chosen}
        fitting = {d for d, _s in grounding.devices if registry.device(d).type in types}
        return len(fitting) > 1 and not fitting <= chosen

    def _dispatch(
        self,
        registry: Registry,
        request_id: str,
        actions: list[Resolved],
        say: str,
        dispatch: bool | None,
        reply_topic: str,
        resolved_by: ResolvedBy,
    ) -> DeviceResult:
        send = self._dispatch_default and dispatch is not False  # a request may turn dispatch off, never on
        held = [a for a in actions if a.needs_confirmation]
        now = [a for a in actions if not a.needs_confirmation and send and a.topic]
        commands = [(a.topic, a.payload) for a in now if a.topic]
        earlier = self._claim(request_id, reply_topic, commands) if commands and self._claim else None
        if earlier is not None:  # run again after a crash that came after the dispatch: never send twice
            log.warning("dispatch_already_done", id=request_id, commands=len(earlier))
            now = []
        now = [a for a in now if a.topic and self._publish(a.topic, a.payload) is not False]
        listed = [{**a.describe(), "dispatched": a in now, "needs_confirmation": a.needs_confirmation} for a in actions]
        result: dict[str, Any] = {
            "actions": listed,
            "say": say,
            "registry": registry.version,
            "resolved_by": resolved_by,
        }
        if earlier is not None:
            result["already_dispatched"] = [{"topic": t, "payload": p.decode(errors="replace")} for t, p in earlier]
        if not held or not send:  # a dry run only shows which actions would need confirmation
            return DeviceResult("ok", result, dispatched=now)
        token = self.confirmations.hold(request_id, held, scope=reply_tree(reply_topic), version=registry.version)
        result["confirmation"] = {
            "token": token,
            "expires_in_s": self.confirmations.ttl_s,
            "actions": [a.describe() for a in held],
        }
        return DeviceResult("needs_confirmation", result, dispatched=now)

    def confirm(self, token: str, *, reply_topic: str | None = None) -> DeviceResult:
        """Dispatch exactly the actions held under ``token``, once, for the caller (reply tree) it was issued to."""
        scope = reply_tree(reply_topic) if reply_topic is not None else None
        try:
            pending = self.confirmations.redeem(token, scope=scope, version=self.store.get().version)
        except TokenError as exc:
            return DeviceResult("error", {}, exc.code, str(exc))
        for action in pending.actions:
            if action.topic:
                self._publish(action.topic, action.payload)
        listed = [{**a.describe(), "dispatched": bool(a.topic)} for a in pending.actions]
        log.info("confirmed", request=pending.request_id, actions=len(listed))
        return DeviceResult(
            "ok", {"confirmed": pending.request_id, "actions": listed}, dispatched=list(pending.actions)
        )


def area_id(registry: Registry, area: str | None) -> str | None:
    """The registry area a request's ``area`` names (id, name or alias, any case); None if none."""
    if not area:
        return None
    wanted = " ".join(area.replace("_", " ").lower().split())
    for a in registry.areas:
        if wanted in {a.id.replace("_", " "), a.name.lower(), *(x.lower() for x in a.aliases)}:
            return a.id
    log.info("unknown_area", area=area)
    return None


def default_resolvers() -> list[Resolver]:
    """Sentence templates, then rules over the registry: the layers installed in this build."""
    found: list[Resolver] = []
    try:
        from edged.devices.intents import IntentResolver

        found.append(IntentResolver())
    except ImportError:
        log.info("resolver_missing", layer="local")
    try:
        from edged.devices.rules import RulesResolver  # type: ignore[import-not-found, unused-ignore]

        found.append(RulesResolver())
    except ImportError:
        log.info("resolver_missing", layer="rules")
    return found


def spoken_summary(registry: Registry, actions: list[dict[str, Any]]) -> str:
    """A short sentence for what was resolved: "Turn off: Living room ceiling light, Floor lamp."."""
    names = {d.id: d.name for d in registry.devices}
    groups: dict[str, list[str]] = {}
    for a in actions:
        values = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in a["params"].values())
        groups.setdefault(" ".join(x for x in (a["action"].replace("_", " "), values) if x), []).append(
            names.get(a["device"], a["device"])
        )
    text = "; ".join(f"{what.capitalize()}: {', '.join(who)}" for what, who in groups.items())
    return (text + ".")[:MAX_SAY] if text else ""


OPPOSITES = {("turn_on", "turn_off"), ("open", "close"), ("lock", "unlock"), ("play", "pause"), ("start", "stop")}


def _opposed(actions: list[Resolved]) -> bool:
    """One device told both ways in one answer (on and off): a small model's hedge, not an answer."""
    done: dict[str, set[str]] = {}
    for a in actions:
        done.setdefault(a.device, set()).add(a.action)
    return any({x, y} <= names for names in done.values() for x, y in OPPOSITES)
