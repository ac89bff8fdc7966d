"""Logs are structlog events; standard-library loggers (paho, transformers) go through the same pipeline."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import uuid

import structlog

from edged.ops.logs import MASK, setup_logging, under_journal


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_when_not_a_terminal():
    """Not a terminal: one JSON object per event, with level, logger, timestamp and the event's fields."""
    out = _Pipe()
    setup_logging("info", "auto", stream=out)
    structlog.get_logger("edged.test").info("request_done", id="r1", total_ms=12.5)
    logging.getLogger("paho").info("Sending %s (m%d)", "PUBLISH", 7)
    logging.getLogger("transformers.tokenization").warning("slow tokenizer")
    ours, paho, hf = _lines(out)
    assert ours == {
        **ours,
        "event": "request_done",
        "id": "r1",
        "total_ms": 12.5,
        "level": "info",
        "logger": "edged.test",
    }
    assert paho["event"] == "Sending PUBLISH (m7)" and paho["logger"] == "paho"
    assert hf["level"] == "warning" and hf["logger"] == "transformers.tokenization"
    assert all("timestamp" in e for e in (ours, paho, hf))


def test_console_when_a_terminal_and_level_filtering():
    """A terminal gets readable lines, not JSON; events below the level are dropped."""
    out = _Tty()
    setup_logging("warning", "auto", stream=out)
    structlog.get_logger("edged.test").info("hidden_event")
    structlog.get_logger("edged.test").warning("shown_event", code="busy")
    text = out.getvalue()
    assert "hidden_event" not in text and "shown_event" in text and "code" in text
    assert not text.lstrip().startswith("{")


def test_paho_packet_debug_is_quiet_at_info():
    """At info level, paho's per-packet debug lines are not emitted."""
    out = _Pipe()
    setup_logging("info", "json", stream=out)
    logging.getLogger("paho").debug("Received PUBACK (Mid: 3)")
    assert out.getvalue() == ""


def test_levels_per_logger_and_reset_on_reapply():
    """log.levels raises or lowers single loggers; applying levels again (a reload) drops the old overrides."""
    from edged.ops.logs import apply_levels

    out = _Pipe()
    setup_logging("info", "json", levels={"edged.bus": "debug", "paho": "warning"}, stream=out)
    structlog.get_logger("edged.bus").debug("bus_detail")
    structlog.get_logger("edged.app").debug("app_detail")
    logging.getLogger("paho").info("Received CONNACK")
    assert [e["event"] for e in _lines(out)] == ["bus_detail"]
    apply_levels("info", {})
    structlog.get_logger("edged.bus").debug("bus_detail_after_reload")
    logging.getLogger("paho").info("Received PUBACK")
    assert [e["event"] for e in _lines(out)] == ["bus_detail", "Received PUBACK"]


def test_journal_format_under_systemd_journal_stream(tmp_path):
    """$JOURNAL_STREAM naming our stdout: JSON lines behind a <N> syslog priority prefix for journald."""
    path = tmp_path / "journal"
    with path.open("w") as stream:
        st = os.fstat(stream.fileno())
        setup_logging("info", "auto", stream=stream, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        structlog.get_logger("edged.test").info("request_done", id="r1")
        structlog.get_logger("edged.test").warning("reload_needs_restart", settings=["mqtt.host"])
        logging.getLogger("paho").error("Connection lost")
    lines = path.read_text().splitlines()
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>"]
    assert json.loads(lines[0][3:])["event"] == "request_done" and json.loads(lines[2][3:])["logger"] == "paho"
    assert not under_journal(_Pipe(), {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})  # another stream: plain JSON
    assert not under_journal(path.open(), {"JOURNAL_STREAM": "1:2"})


def test_fields_named_like_secrets_are_masked():
    """A field called *password*/*secret*/*credential*/api_key is masked; token counts are not secrets."""
    out = _Pipe()
    setup_logging("info", "json", stream=out)
    structlog.get_logger("edged.test").info("connect", mqtt_password="hunter2", api_key="k", completion_tokens=5)
    logging.getLogger("paho").info("login", extra={"password": "hunter2"})
    ours, paho = _lines(out)
    assert ours["mqtt_password"] == ours["api_key"] == MASK and ours["completion_tokens"] == 5
    assert paho["password"] == MASK and "hunter2" not in out.getvalue()


def test_edged_run_under_journald_never_logs_its_password(broker, tiny_model_dir, tmp_path, client_for, notify_socket):
    """A real run at debug level with a password, a request and a reload that changes it: journal lines, no secret."""
    from proc import RUN_TIMEOUT, Edged, write_config

    node_id = f"lg-{uuid.uuid4().hex[:8]}"
    secrets = [f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"]

    def config_with(secret: str) -> None:
        config = write_config(tmp_path / "edged.toml", tiny_model_dir, node_id)
        text = config.read_text().replace("[mqtt]\n", f'[mqtt]\nusername = "edged"\npassword = "{secret}"\n')
        config.write_text(text.replace('format = "json"', 'format = "auto"\nlevel = "debug"'))

    config_with(secrets[0])
    log_path = tmp_path / "edged.log"
    log_path.touch()
    st = os.stat(log_path)
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "NOTIFY_SOCKET": notify_socket.path}
    c = client_for(f"edged/{node_id}", timeout=RUN_TIMEOUT)
    edged = Edged(tmp_path / "edged.toml", log_path, env=env, direct=True)  # its stdout is the journal stream
    try:
        notify_socket.wait_for("READY", "1", timeout=RUN_TIMEOUT)
        assert c.request("command", {"text": "lights on"})["status"] == "ok"
        config_with(secrets[1])
        edged.proc.send_signal(signal.SIGHUP)
        notify_socket.wait_for("READY", "1", after=notify_socket.wait_for("RELOADING", "1"))
        assert edged.stop() == 0
    finally:
        if edged.proc.poll() is None:
            edged.stop(signal.SIGKILL)
    text = log_path.read_text()
    assert all(secret not in text for secret in secrets)
    lines = text.splitlines()
    assert lines and all(line.startswith("<") and line[3] == "{" for line in lines), lines[:3]
    events = [json.loads(line[3:]) for line in lines]
    restart = next(e for e in events if e["event"] == "reload_needs_restart")
    assert restart["settings"] == ["mqtt.password"] and lines[events.index(restart)].startswith("<4>")
    assert any(e["logger"] == "paho" and e["level"] == "debug" for e in events)  # packet lines were there to leak


def test_events_in_the_test_suite_are_log_records_pytest_captures(caplog):
    """In the tests, edged's events reach pytest as log records (shown with a failure), not as printed lines."""
    structlog.get_logger("edged.test").info("captured_event", n=1)
    assert [r.name for r in caplog.records if "captured_event" in r.getMessage()] == ["edged.test"]
