"""``edged ask`` against a real daemon on the real broker (tiny Qwen3: the text is nonsense, the plumbing real)."""

from __future__ import annotations

import io
import json
import re
import socket
from pathlib import Path

import pytest

from edged import ask
from edged.cli import _parser
from tests.conftest import make_settings

REGISTRY = Path(__file__).parent / "data" / "registry-small.toml"
STATUSES = "ok|rejected|needs_confirmation|error|timeout"


def run_ask(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = ask.main(_parser().parse_args(["ask", *argv]), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def daemon(start_daemon, tiny_model_dir):
    settings = make_settings(
        tiny_model_dir, devices={"registry": REGISTRY, "dispatch": False}, diagnostics={"progress_interval_s": 0.001}
    )
    return start_daemon(settings)


def where(daemon, broker) -> list[str]:
    return ["--base", daemon.base, "--host", broker[0], "--port", str(broker[1]), "--timeout", "60"]


def test_ask_json_prints_the_published_result(daemon, broker):
    """--json: the result exactly as edged published it, for the command sent; exit code follows the status."""
    code, out, _ = run_ask("turn on the porch light", "--json", *where(daemon, broker))
    result = json.loads(out)
    assert result["kind"] == "command"
    assert re.fullmatch(STATUSES, result["status"])
    assert code == (0 if result["status"] in ("ok", "needs_confirmation") else 1)
    assert "timing_ms" in result and result["timing_ms"]["total"] > 0


def test_ask_prints_status_actions_and_timings(daemon, broker):
    """The readable form: a status line naming the request, then device actions or the error, then timings."""
    code, out, _ = run_ask("turn on the porch light", "--dry-run", *where(daemon, broker))
    lines = out.splitlines()
    assert re.match(rf"^({STATUSES}) \(command [0-9a-f]{{16}}", lines[0]), out
    assert lines[-1].startswith("timing: ") and "total" in lines[-1] and "completion" in lines[-1]
    assert "actions:" in lines or any(line.startswith("error: ") for line in lines), out
    assert lines[0].endswith("resolved by local)"), out  # a sentence template: no model ran
    assert "  porch_light turn_on(): not sent (dry run)" in lines, out
    assert not any(line.startswith("model: ") for line in lines), out


def test_ask_query_with_think_shows_progress_and_reasoning(daemon, broker):
    """A query: progress lines on stderr while it runs (stderr is not a terminal: one line each), reasoning printed."""
    code, out, err = run_ask("why is pump 3 loud?", "--query", "--think", *where(daemon, broker))
    assert re.search(r"^(started|thinking): \d+ tokens, \d+\.\d s$", err, re.M), err
    assert out.startswith(("ok (query", "error (query", "timeout (query")), out
    code_json, out_json, _ = run_ask("why is pump 3 loud?", "--query", "--think", "--json", *where(daemon, broker))
    assert json.loads(out_json)["mode"] == "think"


def test_ask_confirm_sends_the_token_and_prints_the_refusal(daemon, broker):
    """--confirm goes to {base}/confirm; an unknown token comes back as an error, printed with its code."""
    code, out, _ = run_ask("--confirm", "nosuchtoken123", *where(daemon, broker))
    assert code == 1
    assert re.search(r"^error: [a-z_]+: ", out, re.M), out


def test_ask_without_a_broker_says_so():
    """No broker on the port: a clear message and exit code 2, no traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run_ask("hello", "--host", "127.0.0.1", "--port", str(port), "--base", "edged/x")
    assert code == 2
    assert "cannot reach the broker" in err


def test_render_shows_confirmation_token_and_reasoning():
    """needs_confirmation: each action's state and the command that confirms the held ones."""
    result = {
        "id": "abc",
        "kind": "command",
        "status": "needs_confirmation",
        "result": {
            "actions": [
                {
                    "device": "front_door",
                    "action": "unlock",
                    "params": {},
                    "dispatched": False,
                    "needs_confirmation": True,
                },
                {
                    "device": "porch_light",
                    "action": "turn_on",
                    "params": {"brightness": 40},
                    "dispatched": True,
                    "needs_confirmation": False,
                },
            ],
            "say": "Unlocking needs a yes.",
            "confirmation": {"token": "tok12345", "expires_in_s": 120, "actions": []},
        },
        "reasoning": "first\nsecond",
        "usage": {"prompt_tokens": 10, "cached_tokens": 8, "completion_tokens": 3},
        "timing_ms": {"queue": 1, "prefill": 5, "decode": 9, "total": 16},
    }
    lines = ask.render(result, reasoning=True)
    assert lines[0] == "needs_confirmation (command abc)"
    assert "  front_door unlock(): needs confirmation" in lines
    assert "  porch_light turn_on(brightness=40): dispatched" in lines
    assert "confirm within 120 s with: edged ask --confirm tok12345" in lines
    assert lines[lines.index("reasoning:") + 1 :][:2] == ["  first", "  second"]
    assert (
        lines[-1]
        == "timing: queue 1 ms, prefill 5 ms, decode 9 ms, total 16 ms; tokens: prompt 10 (cached 8), completion 3"
    )
    assert "reasoning:" not in ask.render(result, reasoning=False)


def test_request_body_carries_area_session_and_dry_run():
    """The flags become request fields of contract v1 (area: round 2)."""
    args = _parser().parse_args(["ask", "lights on", "--area", "kitchen", "--session", "s1", "--dry-run", "--think"])
    kind, body = ask.request_body(args, "id1")
    assert kind == "command"
    assert body == {
        "id": "id1",
        "text": "lights on",
        "think": True,
        "include_reasoning": True,
        "area": "kitchen",
        "session": "s1",
        "dispatch": False,
    }
