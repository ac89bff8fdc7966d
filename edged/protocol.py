"""The MQTT contract, version 1: request and result payloads as pydantic models.

Everything a caller sends is parsed by :func:`parse_request`; everything edged answers is a
:class:`Result`. Errors carry a machine-readable :class:`ErrorCode`.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Literal, TypeGuard, TypeVar, Union, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

CONTRACT_VERSION = 1
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
SESSION_PATTERN = r"^[A-Za-z0-9_.:@/-]{1,128}$"
LANGUAGE_PATTERN = r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$"
AREA_PATTERN = r"^[^\x00-\x1f]{1,64}$"  # an area id, name or alias of the registry
MAX_TOPIC_CHARS = 512
MAX_DEADLINE_MS = 24 * 3600 * 1000

Kind = Literal["command", "query", "confirm"]
Mode = Literal["no_think", "think"]
Priority = Literal["high", "normal", "low"]  # scheduling class; commands default to high, queries to normal
PRIORITIES: tuple[Priority, ...] = get_args(Priority)  # most urgent first: the engine's scheduler serves them so
Status = Literal["ok", "error", "rejected", "needs_confirmation", "timeout"]
_M = TypeVar("_M", bound=BaseModel)
# A JSON document as json.loads returns it; read one with isinstance checks, or validate it with a model.
JSON = Union[str, int, float, bool, None, list["JSON"], dict[str, "JSON"]]  # noqa: UP007 (recursive alias)
JSONObject = dict[str, JSON]


def is_priority(value: str) -> TypeGuard[Priority]:
    """True when ``value`` names a scheduling class."""
    return value in PRIORITIES


class ErrorCode(str, Enum):
    """Machine-readable ``error.code`` values. Stable: callers switch on them."""

    BAD_ENCODING = "bad_encoding"  # payload is not UTF-8
    BAD_JSON = "bad_json"  # starts with '{' but is not a JSON object
    PAYLOAD_TOO_LARGE = "payload_too_large"
    MISSING_TEXT = "missing_text"
    EMPTY_TEXT = "empty_text"
    TEXT_TOO_LONG = "text_too_long"
    UNKNOWN_FIELD = "unknown_field"
    BAD_TYPE = "bad_type"  # a field has the wrong type or value
    BAD_ID = "bad_id"
    BAD_REPLY_TO = "bad_reply_to"
    CONTEXT_TOO_LARGE = "context_too_large"
    UNKNOWN_TOPIC = "unknown_topic"
    BUSY = "busy"  # the queue in front of the model is full
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"  # a {base}/cancel request stopped it
    CONTEXT_OVERFLOW = "context_overflow"  # the prompt does not fit the model's context
    NOT_UNDERSTOOD = "not_understood"  # with status rejected: the model named no device action
    INVALID_ANSWER = "invalid_answer"  # the answer did not validate against its schema (e.g. cut short)
    TOKEN_UNKNOWN = "token_unknown"  # confirm: no pending confirmation has this token
    TOKEN_USED = "token_used"
    TOKEN_EXPIRED = "token_expired"
    GENERATION_FAILED = "generation_failed"
    INTERNAL = "internal"
    INVALID_CONFIG = "invalid_config"  # admin/reload: the new configuration was refused, the old one kept
    RATE_LIMITED = "rate_limited"  # this client sent more than its share; try again later


def valid_topic(topic: str) -> bool:
    """True for a topic a result may be published to: bounded, no wildcards, not ``$``-reserved, and
    no character a broker may treat as a malformed packet (it would disconnect edged)."""
    return (
        0 < len(topic) <= MAX_TOPIC_CHARS
        and not topic.startswith("$")
        and not any(c in topic for c in "+#")
        and not any(_unpublishable(c) for c in topic)
    )


def _unpublishable(c: str) -> bool:
    """Controls (C0, DEL, C1), surrogates and non-characters: MQTT says a topic should not hold them,
    and Mosquitto disconnects a client that publishes to such a topic."""
    n = ord(c)
    return n < 0x20 or 0x7F <= n <= 0x9F or 0xD800 <= n <= 0xDFFF or 0xFDD0 <= n <= 0xFDEF or (n & 0xFFFE) == 0xFFFE


def _check_reply_to(v: str | None) -> str | None:
    if v is not None and not valid_topic(v):
        raise ValueError(
            f"reply_to must be a topic of 1-{MAX_TOPIC_CHARS} chars, not starting with '$', "
            "without '+', '#' or control characters"
        )
    return v


ReplyTo = Annotated[str | None, AfterValidator(_check_reply_to)]


def new_id() -> str:
    return uuid.uuid4().hex[:16]


class Request(BaseModel):
    """A command or query, as sent by a caller. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = Field(None, pattern=ID_PATTERN)
    text: str = Field(min_length=1)
    session: str | None = Field(None, pattern=SESSION_PATTERN)
    think: bool | None = None
    include_reasoning: bool | None = None
    reply_to: ReplyTo = None
    context: dict[str, object] | None = None
    deadline_ms: int | None = Field(None, ge=1, le=MAX_DEADLINE_MS)
    dispatch: bool | None = None  # commands: false = dry run, nothing is sent to devices
    client: str | None = Field(
        None, pattern=ID_PATTERN
    )  # who is asking (rate limits); MQTT 5 user property "client" too
    priority: Priority | None = None  # MQTT 5 user property "priority" too
    language: str | None = Field(None, pattern=LANGUAGE_PATTERN)  # commands: default settings commands.language
    area: str | None = Field(None, pattern=AREA_PATTERN)  # commands: the speaker's room; MQTT 5 user property "area"

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is blank")
        return v


class ConfirmRequest(BaseModel):
    """A ``{base}/confirm`` payload: the token from a needs_confirmation result."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = Field(None, pattern=ID_PATTERN)
    token: str = Field(min_length=8, max_length=64)
    reply_to: ReplyTo = None


class ErrorInfo(BaseModel):
    code: ErrorCode
    message: str


class Usage(BaseModel):
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    forced_tokens: int = 0  # of completion_tokens: appended because the output grammar allowed nothing else


class Timing(BaseModel):
    queue: float = 0.0
    prefill: float = 0.0
    decode: float = 0.0  # includes mask
    total: float = 0.0
    mask: float = 0.0  # computing constrained-decoding masks


class Result(BaseModel):
    """What edged publishes for every request: exactly one per request."""

    id: str
    kind: Kind | None = None
    status: Status
    mode: Mode | None = None
    result: dict[str, object] | None = None
    reasoning: str | None = None
    error: ErrorInfo | None = None
    model: str | None = None
    usage: Usage = Field(default_factory=Usage)  # a factory: a default instance would be deep-copied per result
    timing_ms: Timing = Field(default_factory=Timing)
    replayed: bool | None = Field(
        None, description="true: a copy of a request answered before; the stored result, not run again"
    )

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class AdminRequest(BaseModel):
    """A request on ``{base}/admin/<action>``: an empty payload or this JSON object."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = Field(None, pattern=ID_PATTERN)
    reply_to: ReplyTo = None


class AdminResult(BaseModel):
    """The answer to an admin request; ``reload`` lists changed settings by dotted path, never their values."""

    id: str
    kind: Literal["admin"] = "admin"
    action: str
    status: Literal["ok", "error"]
    changed: list[str] = []
    applied: list[str] = []
    restart_required: list[str] = []
    error: ErrorInfo | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int
    max_text_chars: int
    max_context_bytes: int


class RequestError(Exception):
    """A request that cannot be served; carries what is known about where to answer."""

    def __init__(self, code: ErrorCode, message: str, *, id: str | None = None, reply_to: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id
        self.reply_to = reply_to


def parse_request(payload: bytes, limits: Limits) -> Request:
    """Decode a payload: a JSON object, or plain UTF-8 text that becomes ``text``."""
    data = _decode(payload, limits)
    hints = _salvage(data)
    request = _validate(Request, data, hints)
    _check_limits(request, limits, hints)
    if request.id is None:
        request = request.model_copy(update={"id": new_id()})
    return request


def parse_confirm(payload: bytes, limits: Limits) -> ConfirmRequest:
    """Decode a ``{base}/confirm`` payload (a JSON object, or the bare token as text)."""
    data = _decode(payload, limits)
    text = data.get("text")
    if list(data) == ["text"] and isinstance(text, str):
        data = {"token": text.strip()}
    confirm = _validate(ConfirmRequest, data, _salvage(data))
    return confirm if confirm.id else confirm.model_copy(update={"id": new_id()})


def parse_cancel(payload: bytes, limits: Limits) -> str:
    """The request id a ``{base}/cancel`` payload names (``{"id": ...}`` or the bare id)."""
    data = _decode(payload, limits)
    named = data.get("id", data.get("text"))
    target = named.strip() if isinstance(named, str) else None
    if set(data) - {"id", "text"} or not target or not re.fullmatch(ID_PATTERN, target):
        raise RequestError(ErrorCode.BAD_ID, 'cancel takes {"id": "<request id>"} or the bare id')
    return target


def _decode(payload: bytes, limits: Limits) -> JSONObject:
    if len(payload) > limits.max_payload_bytes:
        raise RequestError(
            ErrorCode.PAYLOAD_TOO_LARGE, f"payload is {len(payload)} bytes; limit {limits.max_payload_bytes}"
        )
    try:
        body = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(ErrorCode.BAD_ENCODING, f"payload is not UTF-8: {exc.reason} at byte {exc.start}") from None
    return _as_object(body)


def _as_object(body: str) -> JSONObject:
    if not body.lstrip().startswith("{"):
        return {"text": body}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # ValueError also covers huge integers
        raise RequestError(ErrorCode.BAD_JSON, f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(ErrorCode.BAD_JSON, "JSON payload must be an object")
    return data


def _salvage(data: JSONObject) -> dict[str, str | None]:
    """The id and reply_to of an invalid request, where they are valid themselves."""
    raw_id, raw_reply = data.get("id"), data.get("reply_to")
    good_id = raw_id if isinstance(raw_id, str) and re.fullmatch(ID_PATTERN, raw_id) else None
    good_reply = raw_reply if isinstance(raw_reply, str) and valid_topic(raw_reply) else None
    return {"id": good_id, "reply_to": good_reply}


def _validate(model: type[_M], data: JSONObject, hints: dict[str, str | None]) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in errors)
        raise RequestError(_code_for(errors[0]), details, **hints) from None


def _code_for(error: ErrorDetails) -> ErrorCode:
    field = error["loc"][0] if error["loc"] else None
    if error["type"] == "extra_forbidden":
        return ErrorCode.UNKNOWN_FIELD
    if field == "id":
        return ErrorCode.BAD_ID
    if field == "reply_to":
        return ErrorCode.BAD_REPLY_TO
    if field == "text":
        if error["type"] == "missing":
            return ErrorCode.MISSING_TEXT
        if error["type"] in ("string_too_short", "value_error"):
            return ErrorCode.EMPTY_TEXT
    return ErrorCode.BAD_TYPE


def _check_limits(request: Request, limits: Limits, hints: dict[str, str | None]) -> None:
    if len(request.text) > limits.max_text_chars:
        raise RequestError(
            ErrorCode.TEXT_TOO_LONG, f"text has {len(request.text)} characters; limit {limits.max_text_chars}", **hints
        )
    if request.context is not None:
        size = len(json.dumps(request.context, separators=(",", ":")).encode())
        if size > limits.max_context_bytes:
            raise RequestError(
                ErrorCode.CONTEXT_TOO_LARGE,
                f"context is {size} bytes as JSON; limit {limits.max_context_bytes}",
                **hints,
            )


def parse_admin(payload: bytes) -> AdminRequest:
    """An admin request: empty, or a JSON object with optional ``id`` and ``reply_to``."""
    body = payload.decode("utf-8", errors="replace").strip()
    if body and not body.startswith("{"):
        raise RequestError(ErrorCode.BAD_JSON, "admin payload must be empty or a JSON object")
    data = _as_object(body) if body else {}
    request = _validate(AdminRequest, data, _salvage(data))
    return request if request.id else request.model_copy(update={"id": new_id()})
