"""Real processes for tests: `edged run` (config file, environment, JSON log events) and a private Mosquitto."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

RUN_TIMEOUT = 60


def write_config(path: Path, model_dir: Path, node_id: str, extra: str = "") -> Path:
    """A config for the tiny model, the ledger beside it; ``extra`` is TOML appended at the end (more sections)."""
    path.write_text(
        f"""
node_id = "{node_id}"
shutdown_grace_s = 30
state_dir = "{path.parent / "state"}"

[mqtt]
session_expiry_s = 300

[model]
path = "{model_dir}"
name = "tiny-qwen3-random"
seed = 0

[model.think]
temperature = 0.6
top_p = 0.95
top_k = 20
max_tokens = 64
thinking_budget = 32

[diagnostics]
structured = false  # free-text queries: 64 tokens of a random model cannot finish a diagnosis

[log]
format = "json"
"""
        + extra
    )
    return path


class Edged:
    """One `edged run` process with its config; what it logs goes to ``log_path`` and wakes ``wait_event``.

    ``direct``: edged writes to the file itself (its stdout *is* that file, as under journald's
    stream); then there is nothing to wake ``wait_event``.
    """

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None, *, direct: bool = False):
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}, **(env or {})}
        self.log_path = log_path
        self._log = log_path.open("ab")
        self._logged = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edged.cli", "run", "--config", str(config)],
            stdout=self._log if direct else subprocess.PIPE,
            stderr=self._log if direct else subprocess.STDOUT,
            env=env,
        )
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        if self.proc.stdout is None:  # direct
            self.proc.wait()
            self._log.close()
            return
        for line in self.proc.stdout:
            with self._logged:
                self._log.write(line)
                self._log.flush()
                self._logged.notify_all()
        self._log.close()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(RUN_TIMEOUT)
        self._drainer.join(RUN_TIMEOUT)  # everything it logged is in the file
        return code

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]

    def wait_event(self, check, timeout: float = RUN_TIMEOUT, what: str = "event"):
        """Wait until ``check()`` (reading ``events()``) returns something true; woken by each line edged logs."""
        with self._logged:
            if not (found := self._logged.wait_for(check, timeout)):
                raise TimeoutError(f"no {what} within {timeout} s")
            return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """A private broker on its own port. Without ``persistent`` a restart forgets every session; with it,
    sessions and queued QoS 1 messages are saved in ``workdir`` on every change and survive a restart.

    ``lines`` collects what the broker logs (connections, TLS errors, ACL denials).
    """

    def __init__(
        self, port: int, workdir: Path, extra_conf: str = "allow_anonymous true\n", *, persistent: bool = False
    ):
        self.port = port
        self.conf = workdir / "mosquitto.conf"
        saved = (
            (
                f"persistence true\npersistence_location {workdir}/\nautosave_on_changes true\nautosave_interval 1\n"
                f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            )
            if persistent
            else ""
        )  # as root: keep root, to write in workdir
        self.conf.write_text(f"listener {port} 127.0.0.1\nlog_dest stderr\n{saved}{extra_conf}")
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self._logged = threading.Condition()

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:  # wait for the broker to say it listens, not for a fixed time
            self.lines.append(line)
            if " running" in line:  # printed once the listeners are open ("Opening ..." comes before)
                threading.Thread(target=self._drain, daemon=True).start()  # keep the pipe drained
                return
        raise RuntimeError(f"mosquitto exited before listening: {''.join(self.lines)}")

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._logged:
                self.lines.append(line)
                self._logged.notify_all()

    def wait_logged(self, check, timeout: float, what: str):
        """Wait until ``check()`` (reading ``lines``) returns something true; woken by each new log line."""
        with self._logged:
            if not (found := self._logged.wait_for(check, timeout)):
                raise TimeoutError(f"no {what} within {timeout} s")
            return found

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM saves the persistent state first; SIGKILL is a crash (only what autosave wrote survives)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is read or answered (a hung broker)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


def quick_work(queue_size: int = 16) -> str:
    """Config tables (for ``write_config``'s ``extra``): a request queue of ``queue_size``, commands of a few tokens."""
    return f"""
[requests]
queue_size = {queue_size}

[model.no_think]
temperature = 0.7
top_p = 0.8
top_k = 20
max_tokens = 8
"""


def secure_broker_conf(
    *,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    password_file: Path | None = None,
    acl_file: Path | None = None,
    require_certificate: bool = True,
) -> str:
    """Mosquitto settings for a TLS listener (1.2 or newer) with client certificates, passwords and an ACL."""
    lines = [
        # As root, mosquitto would switch to its own user, which cannot read the test's files.
        f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        f"cafile {ca_file}",
        f"certfile {cert_file}",
        f"keyfile {key_file}",
        "tls_version tlsv1.2",
        f"require_certificate {'true' if require_certificate else 'false'}",
        "allow_anonymous false",
    ]
    if password_file is not None:
        lines.append(f"password_file {password_file}")
    if acl_file is not None:
        lines.append(f"acl_file {acl_file}")
    return "\n".join(lines) + "\n"


def password_file(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file (hashed by ``mosquitto_passwd``)."""
    path.write_text("")
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True, capture_output=True)
    return path
