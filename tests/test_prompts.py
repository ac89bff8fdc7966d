"""Chat messages: order, context rendering and the static system prompt."""

from __future__ import annotations

import json

from edged.prompts import Turn, build_messages, user_content


def test_message_order() -> None:
    """System first, then each history turn as a user/assistant pair, then the user text."""
    history = [Turn("q1", "a1", 3), Turn("q2", "a2", 3)]
    messages = build_messages("query", "q3", history=history)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in messages[1:]] == ["q1", "a1", "q2", "a2", "q3"]


def test_no_history() -> None:
    """Without history there is just the system prompt and the user text."""
    messages = build_messages("command", "lights off")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == "lights off"


def test_context_is_compact_sorted_json() -> None:
    """Context follows the text as compact JSON with sorted keys."""
    context = {"zone": "kitchen", "temp_c": 31.5, "door": {"open": True, "b": "é"}}
    content = build_messages("query", "too hot?", context=context)[-1]["content"]
    text, _, data = content.partition("\n\nContext (JSON):\n")
    assert text == "too hot?"
    assert data == '{"door":{"b":"é","open":true},"temp_c":31.5,"zone":"kitchen"}'
    assert json.loads(data) == context


def test_empty_context_is_omitted() -> None:
    """An empty or missing context leaves the text unchanged."""
    assert user_content("hi", None) == "hi"
    assert user_content("hi", {}) == "hi"


def test_context_only_on_last_message() -> None:
    """History turns are not given the current context."""
    messages = build_messages("query", "now?", context={"a": 1}, history=[Turn("before", "ok", 2)])
    assert messages[1]["content"] == "before"
    assert messages[-1]["content"].endswith('{"a":1}')


def test_system_prompt_by_kind_and_static() -> None:
    """Each kind has its own system prompt, identical across calls."""
    cmd1 = build_messages("command", "a")[0]
    cmd2 = build_messages("command", "b", context={"x": 1}, history=[Turn("u", "v", 1)])[0]
    query = build_messages("query", "a")[0]
    assert cmd1 == cmd2
    assert cmd1["role"] == query["role"] == "system"
    assert cmd1["content"] != query["content"]
    assert "JSON" in cmd1["content"]
