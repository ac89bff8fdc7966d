"""parse_request and Result: the MQTT contract, version 1."""

from __future__ import annotations

import json
import re

import pytest

from edged.protocol import ID_PATTERN, ErrorCode, Limits, RequestError, Result, parse_confirm, parse_request

LIMITS = Limits(max_payload_bytes=4096, max_text_chars=100, max_context_bytes=200)


def parse(payload: bytes | str, limits: Limits = LIMITS):
    return parse_request(payload.encode() if isinstance(payload, str) else payload, limits)


def error_of(payload: bytes | str, limits: Limits = LIMITS) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse(payload, limits)
    return info.value


def test_plain_text_becomes_text() -> None:
    """A payload that is not a JSON object is the request text, verbatim."""
    req = parse("turn on the kitchen light")
    assert req.text == "turn on the kitchen light"
    assert req.session is None and req.think is None and req.context is None


def test_json_object_fields() -> None:
    """Every field of a JSON object request is parsed."""
    req = parse(
        json.dumps(
            {
                "id": "req-1",
                "text": "why is it hot?",
                "session": "user@home/kitchen",
                "think": False,
                "include_reasoning": True,
                "reply_to": "app/replies/1",
                "context": {"temp_c": 31.5},
                "deadline_ms": 5000,
            }
        )
    )
    assert (req.id, req.text, req.session) == ("req-1", "why is it hot?", "user@home/kitchen")
    assert req.think is False and req.include_reasoning is True
    assert req.reply_to == "app/replies/1"
    assert req.context == {"temp_c": 31.5}
    assert req.deadline_ms == 5000


def test_leading_whitespace_before_object_is_json() -> None:
    """Whitespace before '{' still makes the payload a JSON object."""
    assert parse('  \n{"text": "hi"}').text == "hi"


@pytest.mark.parametrize("payload", [b"hello", b'{"text": "hello"}'])
def test_id_generated_when_absent(payload: bytes) -> None:
    """A request without an id gets a fresh one that matches the id pattern."""
    first, second = parse(payload), parse(payload)
    assert first.id is not None and re.fullmatch(ID_PATTERN, first.id)
    assert first.id != second.id


def test_given_id_is_kept() -> None:
    """A caller's id is not replaced."""
    assert parse('{"id": "abc:1.2_x-y", "text": "t"}').id == "abc:1.2_x-y"


@pytest.mark.parametrize("payload", ["[1, 2, 3]", "42", '"quoted"', "null"])
def test_non_object_json_without_brace_is_text(payload: str) -> None:
    """JSON that does not start with '{' (array, number, string) is plain text."""
    assert parse(payload).text == payload


@pytest.mark.parametrize("payload", ['{"text": "x"', "{not json}", '{"text": "x"} trailing', "{"])
def test_bad_json(payload: str) -> None:
    """A payload starting with '{' that is not valid JSON is bad_json."""
    assert error_of(payload).code is ErrorCode.BAD_JSON


def test_huge_integer_is_bad_json() -> None:
    """An integer with 5001 digits is refused as bad_json instead of crashing."""
    err = error_of('{"text": "x", "deadline_ms": 1' + "0" * 5000 + "}", Limits(10**6, 100, 200))
    assert err.code is ErrorCode.BAD_JSON


@pytest.mark.parametrize("field", ["context", "text"])
def test_deeply_nested_json_is_refused(field: str) -> None:
    """10000 levels of '[' inside an object value raise RequestError, not RecursionError."""
    nested = "[" * 10000 + "]" * 10000
    payload = '{"text": "x", "context": {"a": ' + nested + "}}" if field == "context" else '{"text": ' + nested + "}"
    err = error_of(payload, Limits(10**6, 100, 10**6))
    assert err.code is ErrorCode.BAD_JSON


def test_unclosed_deep_nesting_is_refused() -> None:
    """10000 unclosed '[' inside an object value raise RequestError too."""
    err = error_of('{"text": "x", "context": {"a": ' + "[" * 10000 + "}}", Limits(10**6, 100, 10**6))
    assert err.code is ErrorCode.BAD_JSON


@pytest.mark.parametrize("payload", [b"\xff\xfe", b"caf\xe9", b'{"text": "\xc3"}'])
def test_invalid_utf8(payload: bytes) -> None:
    """A payload that is not UTF-8 is bad_encoding."""
    assert error_of(payload).code is ErrorCode.BAD_ENCODING


@pytest.mark.parametrize("payload", ["", "   \n\t", '{"text": ""}', '{"text": "  "}'])
def test_empty_or_blank_text(payload: str) -> None:
    """Empty or whitespace-only text is empty_text."""
    assert error_of(payload).code is ErrorCode.EMPTY_TEXT


def test_missing_text() -> None:
    """A JSON object without text is missing_text."""
    assert error_of('{"id": "a1"}').code is ErrorCode.MISSING_TEXT


def test_text_too_long() -> None:
    """Text over max_text_chars is text_too_long, for plain text and JSON alike."""
    assert parse("x" * 100).text == "x" * 100
    assert error_of("x" * 101).code is ErrorCode.TEXT_TOO_LONG
    assert error_of(json.dumps({"text": "y" * 101})).code is ErrorCode.TEXT_TOO_LONG


def test_payload_too_large() -> None:
    """A payload over max_payload_bytes is refused before it is decoded."""
    limits = Limits(max_payload_bytes=256, max_text_chars=10_000, max_context_bytes=200)
    assert error_of(b"\xff" * 257, limits).code is ErrorCode.PAYLOAD_TOO_LARGE
    assert parse(b"a" * 256, limits).text == "a" * 256


def test_unknown_field() -> None:
    """A field outside the contract is unknown_field."""
    err = error_of('{"text": "x", "temperature": 0.2}')
    assert err.code is ErrorCode.UNKNOWN_FIELD
    assert "temperature" in err.message


@pytest.mark.parametrize(
    "fields",
    [
        {"think": "yes"},
        {"think": 1},
        {"deadline_ms": "5"},
        {"deadline_ms": 1.5},
        {"deadline_ms": 0},
        {"include_reasoning": "true"},
        {"context": [1, 2]},
        {"session": "has space"},
    ],
)
def test_wrong_type_or_value(fields: dict) -> None:
    """Fields of the wrong type or out of range are bad_type (no coercion)."""
    assert error_of(json.dumps({"text": "x", **fields})).code is ErrorCode.BAD_TYPE


def test_text_of_wrong_type() -> None:
    """A non-string text is bad_type, not missing_text."""
    assert error_of('{"text": 5}').code is ErrorCode.BAD_TYPE


@pytest.mark.parametrize("bad_id", ["has space", "x" * 65, "", "slash/id", 12])
def test_bad_id(bad_id: object) -> None:
    """An id outside the id pattern is bad_id."""
    assert error_of(json.dumps({"id": bad_id, "text": "x"})).code is ErrorCode.BAD_ID


@pytest.mark.parametrize(
    "reply_to",
    ["replies/+/x", "replies/#", "a\x00b", "", "t" * 513, "a\x01b", "a\x85b", "a\ud800b", "a\uffffb", "$SYS/x"],
)
def test_bad_reply_to(reply_to: str) -> None:
    """A reply_to that is not a publishable topic is bad_reply_to."""
    assert error_of(json.dumps({"text": "x", "reply_to": reply_to})).code is ErrorCode.BAD_REPLY_TO


def test_context_too_large() -> None:
    """A context over max_context_bytes (as compact JSON) is context_too_large."""
    assert parse(json.dumps({"text": "x", "context": {"k": "v" * 150}})).context is not None
    err = error_of(json.dumps({"text": "x", "context": {"k": "v" * 200}}))
    assert err.code is ErrorCode.CONTEXT_TOO_LARGE


def test_error_carries_salvaged_id_and_reply_to() -> None:
    """An invalid request still tells where to answer when its id and reply_to are valid."""
    err = error_of(json.dumps({"id": "r-7", "reply_to": "app/out", "text": "x", "think": "yes"}))
    assert err.code is ErrorCode.BAD_TYPE
    assert (err.id, err.reply_to) == ("r-7", "app/out")


def test_salvage_on_limit_errors() -> None:
    """Limit errors found after validation also carry the id and reply_to."""
    err = error_of(json.dumps({"id": "r-8", "reply_to": "app/out", "text": "x" * 101}))
    assert err.code is ErrorCode.TEXT_TOO_LONG
    assert (err.id, err.reply_to) == ("r-8", "app/out")


def test_salvage_drops_invalid_parts() -> None:
    """An invalid reply_to is not salvaged, while the valid id still is."""
    err = error_of(json.dumps({"id": "r-9", "reply_to": "app/#", "text": "x"}))
    assert err.code is ErrorCode.BAD_REPLY_TO
    assert (err.id, err.reply_to) == ("r-9", None)
    err = error_of(json.dumps({"id": "bad id", "reply_to": "app/out", "text": "x"}))
    assert (err.id, err.reply_to) == (None, "app/out")


def test_result_json_omits_none_but_keeps_usage_and_timing() -> None:
    """Result.to_json drops None fields and always includes usage and timing_ms."""
    data = json.loads(Result(id="a1", status="ok").to_json())
    assert data == {
        "id": "a1",
        "status": "ok",
        "usage": {
            "prompt_tokens": 0,
            "cached_tokens": 0,
            "completion_tokens": 0,
            "reasoning_tokens": 0,
            "forced_tokens": 0,
        },
        "timing_ms": {"queue": 0.0, "prefill": 0.0, "decode": 0.0, "total": 0.0, "mask": 0.0},
    }


def test_result_json_keeps_set_fields() -> None:
    """Fields that are set, including nested ones, appear in the JSON."""
    data = json.loads(Result(id="a2", kind="query", status="ok", mode="think", result={"text": "hi"}).to_json())
    assert data["kind"] == "query" and data["mode"] == "think" and data["result"] == {"text": "hi"}
    assert "reasoning" not in data and "error" not in data and "model" not in data


def test_confirm_takes_the_bare_token_as_text() -> None:
    """A plain-text confirm payload is the token, stripped."""
    assert parse_confirm(b"  tok-12345678 \n", LIMITS).token == "tok-12345678"


@pytest.mark.parametrize("payload", ['{"text": 5}', '{"text": null}', '{"text": ["tok-12345678"]}'])
def test_confirm_with_a_text_that_is_not_a_string_is_refused(payload: str) -> None:
    """A confirm object whose only field is a non-string text is a structured error, not a crash."""
    with pytest.raises(RequestError) as info:
        parse_confirm(payload.encode(), LIMITS)
    assert info.value.code in (ErrorCode.UNKNOWN_FIELD, ErrorCode.BAD_TYPE)
