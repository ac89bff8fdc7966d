"""Hypothesis strategies for hostile and malformed payloads (shared by the intake and daemon fuzz tests)."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from edged.protocol import _unpublishable

# Strings that look like topics, filters or broker-reserved names: in fields they must stay data.
TOPIC_SHAPED = [
    "#",
    "+",
    "+/+",
    "a/#",
    "/",
    "//",
    "$SYS/broker/uptime",
    "$share/g/edged/x/command",
    "edged/+/command",
    "edged/other/command",
    "zigbee2mqtt/porch_light/set",
    "a\x00b",
    "a\x01b",
    "a\x7fb",
    "a\u0085b",
    "a\ufffeb",
    "\U0010ffff",
    "a\ud800b",
    "t" * 600,
    "reply/\u2028/x",
]
# Valid topics a reply must never go to: plain ones, a device's command topic, another node's inputs and results.
HOSTILE_REPLY_TOPICS = ["a", "zigbee2mqtt/x/set", "edged/other-node/command", "edged/other-node/result/x"]
CONTROL = "".join(chr(c) for c in [*range(0, 32), 127, *range(0x80, 0xA0)])

weird_text = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=CONTROL, min_size=1, max_size=50),
    st.sampled_from(TOPIC_SHAPED),
    st.text(
        alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=4
    ),  # lone surrogates
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    weird_text,
    st.integers(min_value=10**20, max_value=10**40),
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(weird_text, inner, max_size=4), max_leaves=12
)

FIELDS = [
    "id",
    "text",
    "session",
    "think",
    "include_reasoning",
    "reply_to",
    "context",
    "deadline_ms",
    "dispatch",
    "client",
    "priority",
    "token",
]


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=True).encode()  # ensure_ascii: lone surrogates survive as \ud800 escapes


@st.composite
def request_objects(draw: st.DrawFn, reply_topics: list[str]) -> bytes:
    """A JSON object with contract fields holding good or hostile values (and sometimes an unknown field)."""
    body: dict[str, object] = {}
    for name in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=6)):
        body[name] = draw(json_values)
    if draw(st.booleans()):
        body["text"] = draw(st.one_of(st.just("turn on the porch light"), weird_text))
    if "reply_to" in body and draw(st.booleans()):
        body["reply_to"] = draw(st.sampled_from([*reply_topics, *HOSTILE_REPLY_TOPICS]))  # valid; allowed or not
    return _dumps(body)


def deep_nesting(depth: int) -> bytes:
    return b'{"text": "x", "context": {"a": ' + b"[" * depth + b"]" * depth + b"}}"


def huge_number(digits: int) -> bytes:
    return b'{"text": "x", "deadline_ms": 1' + b"0" * digits + b', "context": {"n": -9' + b"9" * digits + b"}}"


def enormous_context(size: int) -> bytes:
    return _dumps({"id": "big", "text": "x", "context": {"blob": "z" * size}})


def payloads(reply_topics: list[str]) -> st.SearchStrategy[bytes]:
    """Every kind of hostile payload the fuzz tests throw at edged."""
    return st.one_of(
        st.binary(max_size=512),  # random bytes
        st.binary(min_size=1, max_size=64).map(lambda b: b"\xff" + b + b"\xc0"),  # invalid UTF-8
        st.binary(max_size=64).map(lambda b: b"{" + b),  # broken JSON
        st.text(alphabet=CONTROL, max_size=64).map(lambda t: t.encode()),  # control characters as plain text
        st.sampled_from(TOPIC_SHAPED).map(lambda t: t.encode("utf-8", "surrogatepass")),  # topic-shaped text
        st.integers(min_value=1, max_value=200_000).map(deep_nesting),
        st.integers(min_value=30, max_value=6_000).map(huge_number),
        st.sampled_from([10, 60_000, 70_000, 300_000]).map(
            enormous_context
        ),  # under/over the context and payload limits
        json_values.map(_dumps),  # any JSON value (arrays, numbers, strings at top level)
        request_objects(reply_topics),
    )


user_properties = st.lists(
    st.tuples(
        st.sampled_from(["client", "priority", "x"]), st.one_of(st.sampled_from(["panel-1", "high", "low"]), weird_text)
    ),
    max_size=3,
).map(
    lambda props: [(k, v) for k, v in props if not any(_unpublishable(c) for c in v)]
)  # the broker drops a client sending these
