"""Soft switches and the precedence of the thinking mode."""

from __future__ import annotations

import pytest

from edged.service.router import route, split_soft_switch


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("why is the pump loud /think", ("why is the pump loud", "think")),
        ("lights off /no_think", ("lights off", "no_think")),
        ("lights off /no_think  \n\t", ("lights off", "no_think")),
        ("lights off\n/think", ("lights off", "think")),
        ("/think", ("", "think")),
    ],
)
def test_trailing_switch_is_split(text: str, expected: tuple) -> None:
    """A trailing /think or /no_think is removed and reported."""
    assert split_soft_switch(text) == expected


@pytest.mark.parametrize(
    "text",
    ["/think why is the pump loud", "use /no_think mode please", "foo/think", "lights off /thinking", "x /Think"],
)
def test_no_switch(text: str) -> None:
    """A switch that is not a separate word at the very end is left alone."""
    assert split_soft_switch(text) == (text, None)


def test_text_that_is_only_a_switch_keeps_its_text() -> None:
    """A text of just '/think' is not emptied, though the switch applies."""
    r = route("command", "/think", think=None, remembered=None)
    assert (r.mode, r.text, r.switch) == ("think", "/think", "think")


@pytest.mark.parametrize(("kind", "mode"), [("command", "no_think"), ("query", "think")])
def test_topic_default(kind: str, mode: str) -> None:
    """Without any switch, commands run no_think and queries think."""
    r = route(kind, "hello", think=None, remembered=None)
    assert (r.mode, r.text, r.switch) == (mode, "hello", None)


def test_remembered_switch_beats_topic_default() -> None:
    """A switch remembered by the session overrides the topic default."""
    assert route("query", "hello", think=None, remembered="no_think").mode == "no_think"
    assert route("command", "hello", think=None, remembered="think").mode == "think"


def test_soft_switch_beats_remembered() -> None:
    """A switch in the text overrides the remembered one."""
    r = route("query", "hello /think", think=None, remembered="no_think")
    assert (r.mode, r.text, r.switch) == ("think", "hello", "think")


@pytest.mark.parametrize(("think", "mode"), [(True, "think"), (False, "no_think")])
def test_explicit_field_beats_everything(think: bool, mode: str) -> None:
    """The request's think field wins over text switch, memory and topic."""
    opposite = "no_think" if think else "think"
    r = route("query" if not think else "command", f"hello /{opposite}", think=think, remembered=opposite)
    assert r.mode == mode
    assert r.text == "hello"  # the switch is still stripped from the text
    assert r.switch == opposite  # and still reported, for the session to remember
