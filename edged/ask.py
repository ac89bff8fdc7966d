"""``edged ask``: one request to a running edged over MQTT, its result printed for people (or as JSON).

The request goes to ``{base}/command`` (or ``{base}/query`` with ``--query``) with a fresh id; the
answer comes back on ``{base}/result/{id}``. While a query runs, edged publishes
``{base}/progress/{id}``; those messages drive a progress line on stderr.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from edged.protocol import new_id

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 2
DEFAULT_TIMEOUT_S = 120.0


def add_parser(sub: Any) -> None:
    """Register ``edged ask`` on the CLI's subparsers."""
    p = sub.add_parser("ask", help="send one command (or --query) to a running edged and print the result")
    p.add_argument("text", nargs="?", help='what to ask, e.g. "turn off the kitchen light"')
    p.add_argument("--query", action="store_true", help="a diagnostic query ({base}/query) instead of a command")
    p.add_argument("--think", action="store_true", help="think first and print the reasoning")
    p.add_argument("--json", action="store_true", help="print the result JSON exactly as edged published it")
    p.add_argument("--area", help="the room you are in, for 'turn on the lights'")
    p.add_argument("--session", help="a conversation key, for follow-ups")
    p.add_argument("--dry-run", action="store_true", help="commands: resolve, but send nothing to devices")
    p.add_argument("--confirm", metavar="TOKEN", help="confirm actions held by an earlier needs_confirmation result")
    p.add_argument("--node", help="edged's node id (default: from the configuration, else this host's name)")
    p.add_argument("--base", help="edged's base topic (default: edged/<node>)")
    p.add_argument("--host", help="MQTT broker (default: from the configuration, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="MQTT port (default: from the configuration, else 1883)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for the result")
    p.add_argument("--config", type=Path, help="read broker and node from this edged configuration")


@dataclass(frozen=True)
class Target:
    base: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None


def target(args: argparse.Namespace) -> Target:
    """Where to send: flags first, then the configuration edged itself would read, then defaults."""
    from edged.settings import Settings, load_settings, sanitise_node_id

    try:
        s = load_settings(args.config)
    except (FileNotFoundError, ValidationError):
        if args.config is not None:
            raise
        s = Settings()
    if args.node:
        s = s.model_copy(update={"node_id": sanitise_node_id(args.node)})
    base = args.base or (f"edged/{s.node_id}" if args.node else s.base)
    tls = s.mqtt.tls.context() if s.mqtt.tls.enabled else None
    host, port = args.host or s.mqtt.host, args.port or s.mqtt.port
    return Target(base, host, port, s.mqtt.username, s.mqtt.resolved_password(), tls)


def request_body(args: argparse.Namespace, request_id: str) -> tuple[str, dict[str, Any]]:
    """(topic suffix, JSON body) of the request the arguments describe."""
    if args.confirm:
        return "confirm", {"id": request_id, "token": args.confirm}
    body: dict[str, Any] = {"id": request_id, "text": args.text}
    if args.think:
        body["think"] = True
        body["include_reasoning"] = True
    for key in ("area", "session"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    if args.dry_run:
        body["dispatch"] = False
    return ("query" if args.query else "command"), body


class ProgressLine:
    """One line on ``stream`` that follows ``{base}/progress/{id}``: rewritten in place on a terminal."""

    def __init__(self, stream: IO[str]):
        self._stream = stream
        self._tty = stream.isatty()
        self.shown = 0

    def update(self, progress: dict[str, Any]) -> None:
        phase = "thinking" if progress.get("phase") == "generating" else str(progress.get("phase", "working"))
        line = f"{phase}: {progress.get('tokens', 0)} tokens, {float(progress.get('elapsed_ms', 0)) / 1000:.1f} s"
        self._stream.write(f"\r\x1b[2K{line}" if self._tty else f"{line}\n")
        self._stream.flush()
        self.shown += 1

    def close(self) -> None:
        if self._tty and self.shown:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()


def exchange(client: Any, kind: str, body: dict[str, Any], timeout: float, progress: ProgressLine) -> dict[str, Any]:
    """Publish the request and return its result, showing progress messages as they come."""
    base, rid = client.base, body["id"]
    result_topic, progress_topic = f"{base}/result/{rid}", f"{base}/progress/{rid}"
    client.subscribe(result_topic)
    client.subscribe(progress_topic)
    seen = client.count()
    client.publish(f"{base}/{kind}", json.dumps(body))
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            msg = client.nth(seen, timeout=left)
            seen += 1
            if msg.topic == result_topic:
                return dict(msg.json())
            if msg.topic == progress_topic:
                progress.update(msg.json())
    finally:
        progress.close()


def _action_line(action: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in (action.get("params") or {}).items())
    if action.get("needs_confirmation"):
        state = "needs confirmation"
    elif action.get("dispatched"):
        state = "dispatched"
    else:
        state = "not sent (dry run)"
    return f"  {action.get('device')} {action.get('action')}({params}): {state}"


def _timing_line(result: dict[str, Any]) -> str:
    t, u = result.get("timing_ms") or {}, result.get("usage") or {}
    parts = [f"{k} {float(t[k]):.0f} ms" for k in ("queue", "prefill", "decode", "total") if t.get(k)]
    tokens = f"prompt {u.get('prompt_tokens', 0)} (cached {u.get('cached_tokens', 0)}), "
    tokens += f"completion {u.get('completion_tokens', 0)}"
    return f"timing: {', '.join(parts) or 'n/a'}; tokens: {tokens}"


def render(result: dict[str, Any], *, reasoning: bool) -> list[str]:
    """The result as lines for people: status, actions, what to say, reasoning, timings."""
    head = f"{result.get('status')} ({result.get('kind') or 'request'} {result.get('id')}"
    body = result.get("result") or {}
    head += f", resolved by {body['resolved_by']})" if body.get("resolved_by") else ")"
    lines = [head]
    if result.get("error"):
        lines.append(f"error: {result['error'].get('code')}: {result['error'].get('message')}")
    actions = body.get("actions") or []
    if actions:
        lines.append("actions:")
        lines += [_action_line(a) for a in actions]
    confirmation = body.get("confirmation")
    if confirmation:
        lines.append(
            f"confirm within {confirmation.get('expires_in_s')} s with: edged ask --confirm {confirmation.get('token')}"
        )
    said = (result.get("error") or {}).get("message")
    for key in ("say", "text"):
        if body.get(key) and body[key] != said:
            lines.append(f"{key}: {body[key]}")
    lines += _diagnosis_lines(body)
    if reasoning and result.get("reasoning"):
        lines += ["reasoning:", *(f"  {line}" for line in str(result["reasoning"]).strip().splitlines())]
    if result.get("model"):
        lines.append(f"model: {result['model']}")
    lines.append(_timing_line(result))
    return lines


DIAGNOSIS_KEYS = ("summary", "likely_cause", "cause", "confidence", "severity", "recommended_actions", "evidence")


def _diagnosis_lines(body: dict[str, Any]) -> list[str]:
    lines = []
    for key in DIAGNOSIS_KEYS:
        value = body.get(key)
        if value in (None, "", []):
            continue
        if isinstance(value, list):
            lines += [f"{key}:", *(f"  - {v if isinstance(v, str) else json.dumps(v)}" for v in value)]
        else:
            lines.append(f"{key}: {value}")
    return lines


def main(args: argparse.Namespace, *, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    from edged.bus.client import EdgedClient

    out, err = out or sys.stdout, err or sys.stderr
    if not args.text and not args.confirm:
        err.write("edged ask: say what to ask, or --confirm TOKEN\n")
        return EXIT_UNREACHABLE
    where = target(args)
    kind, body = request_body(args, new_id())
    try:
        with EdgedClient(
            where.base,
            host=where.host,
            port=where.port,
            username=where.username,
            password=where.password,
            tls=where.tls,
        ) as client:
            result = exchange(client, kind, body, args.timeout, ProgressLine(err))
    except (OSError, TimeoutError, PermissionError) as exc:
        what = "no result" if isinstance(exc, TimeoutError) else "cannot reach the broker"
        err.write(f"edged ask: {what} ({where.host}:{where.port}, {where.base}): {exc or 'timed out'}\n")
        return EXIT_UNREACHABLE
    if args.json:
        out.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    else:
        out.write("\n".join(render(result, reasoning=args.think)) + "\n")
    return EXIT_OK if result.get("status") in ("ok", "needs_confirmation") else EXIT_FAILED
