"""Progress bars of long commands: drawn with an ETA when wanted, silent otherwise."""

from __future__ import annotations

import io
import re

import numpy as np

from edged.models.gguf_import import convert_weights
from edged.ops.progressbar import ENV, bar, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_shows_count_rate_and_time_left(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    out = Terminal()
    assert list(progress(range(5), desc="eval", unit="case", stream=out)) == [0, 1, 2, 3, 4]
    last = out.getvalue().split("\r")[-1]
    assert re.search(r"eval: 100%.*5/5 \[\d\d:\d\d<\d\d:\d\d", last), last  # elapsed<remaining


def test_no_bar_when_not_a_terminal_unless_forced(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    quiet = io.StringIO()
    assert list(progress([1, 2], desc="x", stream=quiet)) == [1, 2] and quiet.getvalue() == ""
    monkeypatch.setenv(ENV, "always")
    forced = io.StringIO()
    list(progress([1, 2], desc="x", stream=forced))
    assert "2/2" in forced.getvalue()
    monkeypatch.setenv(ENV, "never")
    off = Terminal()
    with bar(total=3, desc="y", stream=off) as b:
        b.update(3)
    assert off.getvalue() == ""


def test_gguf_conversion_draws_a_bar_per_tensor(monkeypatch, capsys):
    """The converter's loop is the one the bar follows: one step per tensor, on stderr."""
    monkeypatch.setenv(ENV, "always")
    raw = {f"blk.{i}.ffn_up.weight": np.zeros((2, 2), dtype=np.float32) for i in range(3)}
    out = convert_weights("qwen3", raw, {})
    assert len(out) == 3
    err = capsys.readouterr().err
    assert re.search(r"converting: 100%.*3/3 \[", err), err
