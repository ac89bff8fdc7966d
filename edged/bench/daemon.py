"""``edged run`` as its own process for the benchmark: generated config, readiness, peak memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edged.bus.client import EdgedClient

START_TIMEOUT_S = 600  # model load included (a 4B model from a cold disk)


@dataclass(frozen=True)
class DaemonConfig:
    model_path: str
    model_name: str
    registry: Path
    node_id: str
    host: str
    port: int
    max_tokens: int  # non-thinking budget: commands (and queries on models without a thinking mode)
    think_max_tokens: int
    thinking_budget: int
    engine: str = "auto"  # model.engine: mlx | llamacpp | auto

    def toml(self) -> str:
        # Greedy commands so edged and the baselines generate the same text; thinking is never greedy.
        return f"""node_id = "{self.node_id}"
shutdown_grace_s = 60

[mqtt]
host = "{self.host}"
port = {self.port}
session_expiry_s = 0

[model]
path = {json.dumps(self.model_path)}
name = {json.dumps(self.model_name)}
engine = "{self.engine}"
seed = 0

[model.no_think]
temperature = 0.0
max_tokens = {self.max_tokens}

[model.think]
temperature = 0.6
max_tokens = {self.think_max_tokens}
thinking_budget = {self.thinking_budget}

[requests]
queue_size = 64

[devices]
registry = {json.dumps(str(self.registry))}
dispatch = false

[diagnostics]
progress_interval_s = 0.5

[stats]
interval_s = 1

[log]
format = "json"
level = "info"
"""


class BenchDaemon:
    """One ``python -m edged.cli run`` process; its log goes to a file beside the config."""

    def __init__(self, toml: str, node_id: str, workdir: Path):
        self.base = f"edged/{node_id}"
        self.config_path = workdir / "edged-bench.toml"
        self.config_path.write_text(toml)
        self.log_path = workdir / "edged-bench.log"
        self._log = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edged.cli", "run", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=self._log,
            env=env,
        )

    def wait_online(self, client: EdgedClient, timeout: float = START_TIMEOUT_S) -> float:
        """Seconds until ``{base}/status`` said online (model loaded); raises if the process died first."""
        started = time.monotonic()
        client.subscribe(f"{self.base}/status")
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"edged exited with {self.proc.returncode} before going online; see {self.log_path}")
            try:
                client.wait_for(lambda m: m.topic == f"{self.base}/status" and m.json().get("state") == "online", 1.0)
                return time.monotonic() - started
            except TimeoutError:
                continue
        raise TimeoutError(f"edged not online after {timeout:.0f} s; see {self.log_path}")

    def peak_rss_mb(self) -> float | None:
        """The process's high-water resident memory (Linux ``VmHWM``); None where /proc is missing."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode
