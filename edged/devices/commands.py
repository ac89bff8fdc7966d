"""Device control: prompt and schema from the registry, then validate, dispatch or hold for confirmation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import structlog
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaValue

from edged.devices.actions import InvalidAnswer, Resolved, output_model, parse_answer
from edged.devices.confirmations import Confirmations, TokenError, reply_tree
from edged.devices.prompts import device_messages
from edged.devices.registry import Registry, RegistryStore
from edged.devices.state import DeviceStates
from edged.prompts import Turn
from edged.protocol import ErrorCode, ErrorInfo, Status

log = structlog.get_logger("edged.commands")

Publish = Callable[[str, bytes], bool | None]  # False: the broker refused it (or never confirmed it)
# (request id, reply topic, [(topic, payload)]) -> None to go ahead (claimed), else what an earlier run already sent
Claim = Callable[[str, str, list[tuple[str, bytes]]], list[tuple[str, bytes]] | None]


@dataclass
class Outcome:
    status: Status
    result: dict[str, object]
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
    ):
        """``constrain=False`` is for evaluation only: the model writes freely and the JSON is fished out."""
        self.constrain = constrain
        self.store = store
        self.states = states
        self.confirmations = confirmations
        self._publish = publish
        self._dispatch_default = dispatch_default
        self._claim = claim
        self._models: dict[str, tuple[type[BaseModel], JsonSchemaValue]] = {}

    def schema_for(self, registry: Registry) -> tuple[type[BaseModel], JsonSchemaValue]:
        """The answer model and its JSON Schema, built once per registry version."""
        if registry.version not in self._models:
            model = output_model(registry)
            self._models = {registry.version: (model, model.model_json_schema())}
        return self._models[registry.version]

    def prepare(
        self, text: str, *, context: Mapping[str, object] | None, history: Iterable[Turn]
    ) -> tuple[Registry, list[dict[str, str]], JsonSchemaValue | None]:
        registry = self.store.get()
        messages = device_messages(registry, text, states=self.states.snapshot(), context=context, history=history)
        return registry, messages, self.schema_for(registry)[1] if self.constrain else None

    def outcome(
        self, registry: Registry, request_id: str, answer: str, *, dispatch: bool | None, reply_topic: str = ""
    ) -> Outcome:
        model, _ = self.schema_for(registry)
        if not self.constrain:  # give free text the benefit of the doubt: the outermost {...}
            start, end = answer.find("{"), answer.rfind("}")
            answer = answer[start : end + 1] if 0 <= start < end else answer
        try:
            actions, say = parse_answer(registry, model, answer)
        except InvalidAnswer as exc:  # e.g. cut short by max_tokens: never guess
            return Outcome("rejected", {"actions": [], "text": answer}, "invalid_answer", str(exc))
        if not actions:
            return Outcome("rejected", {"actions": [], "say": say}, "not_understood", say or "no device action found")
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
        result: dict[str, object] = {"actions": listed, "say": say, "registry": registry.version}
        if earlier is not None:
            result["already_dispatched"] = [{"topic": t, "payload": p.decode(errors="replace")} for t, p in earlier]
        if not held or not send:  # a dry run only shows which actions would need confirmation
            return Outcome("ok", result, dispatched=now)
        token = self.confirmations.hold(request_id, held, scope=reply_tree(reply_topic), version=registry.version)
        result["confirmation"] = {
            "token": token,
            "expires_in_s": self.confirmations.ttl_s,
            "actions": [a.describe() for a in held],
        }
        return Outcome("needs_confirmation", result, dispatched=now)

    def confirm(self, token: str, *, reply_topic: str | None = None) -> Outcome:
        """Dispatch exactly the actions held under ``token``, once, for the caller (reply tree) it was issued to."""
        scope = reply_tree(reply_topic) if reply_topic is not None else None
        try:
            pending = self.confirmations.redeem(token, scope=scope, version=self.store.get().version)
        except TokenError as exc:
            return Outcome("error", {}, exc.code, str(exc))
        for action in pending.actions:
            if action.topic:
                self._publish(action.topic, action.payload)
        listed = [{**a.describe(), "dispatched": bool(a.topic)} for a in pending.actions]
        log.info("confirmed", request=pending.request_id, actions=len(listed))
        return Outcome("ok", {"confirmed": pending.request_id, "actions": listed}, dispatched=list(pending.actions))
