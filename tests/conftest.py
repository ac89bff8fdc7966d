"""Shared fixtures: the real broker on 127.0.0.1:1883 and the tiny offline Qwen3 model."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from edged.bus.mqtt import Inbound
from edged.engine.blas import preload_blas
from edged.settings import Settings


def route_logs_to_pytest() -> None:
    """structlog events become standard-library log records, which pytest captures per test and shows with a
    failure. structlog's default prints to stdout instead: a line from a daemon's thread that lands while pytest
    is writing its report goes straight to the terminal, between the test results."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


# The root logger always has a handler, so a record outside a test (no capture then) is dropped, never printed
# to stderr by logging's last resort.
_NO_LAST_RESORT = logging.NullHandler()
logging.getLogger().addHandler(_NO_LAST_RESORT)
route_logs_to_pytest()
preload_blas("auto")  # as `edged run` does, before anything imports mlx


@pytest.fixture(autouse=True)
def _logs_stay_with_pytest() -> Iterator[None]:
    """A test that runs edged's own log set-up (a CLI entry point, the log tests) gets pytest's routing back after:
    edged's stream handler goes, pytest's capture handlers and the null handler stay."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in before and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    if _NO_LAST_RESORT not in root.handlers:
        root.addHandler(_NO_LAST_RESORT)
    root.setLevel(level)
    route_logs_to_pytest()


BROKER = ("127.0.0.1", 1883)
CACHE = Path(os.environ.get("EDGED_TEST_CACHE", Path(__file__).resolve().parent.parent / ".cache"))

# Small budgets keep generation on the random-weight model short.
TEST_MODEL = {
    "name": "tiny-qwen3-random",
    "seed": 0,
    "think": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 24, "thinking_budget": 12},
    "no_think": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_tokens": 12},
}


@pytest.fixture(scope="session")
def broker() -> tuple[str, int]:
    with socket.socket() as s:
        s.settimeout(2)
        if s.connect_ex(BROKER) != 0:
            pytest.fail("no MQTT broker on 127.0.0.1:1883: run scripts/ensure-broker")
    return BROKER


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from edged.models.testmodel import build_test_model

    return build_test_model(CACHE / "models" / "tiny-qwen3")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct imported from the PyPI GGUF, once per cache."""
    from edged.models.store import ensure_demo_model

    return ensure_demo_model(CACHE / "models" / "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smol_engine(smollm2_dir: Path):
    """SmolLM2 loaded once, greedy for commands so behaviour tests are deterministic."""
    from edged.engine.mlx import MlxEngine
    from edged.settings import ModelSettings

    return MlxEngine(ModelSettings(path=str(smollm2_dir), name="SmolLM2-135M-Instruct", seed=0))


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path):
    """One loaded engine shared by the in-process daemons (they run one at a time)."""
    from edged.engine.mlx import MlxEngine
    from edged.settings import ModelSettings

    return MlxEngine(ModelSettings(path=str(tiny_model_dir), **TEST_MODEL))


# One porch light on ``{prefix}/porch_light/set``: the device of the kill -9 tests of `edged run`.
PORCH_REGISTRY = """
name = "crash"
[[areas]]
id = "porch"
name = "Porch"
[[devices]]
id = "porch_light"
name = "Porch light"
area = "porch"
type = "light"
command_topic = "{prefix}/porch_light/set"
"""
# SmolLM2, greedy for commands: "turn on the porch light" reliably becomes a dispatched action
# (the random model's don't). Environment for `edged run`; EDGED_MODEL__PATH is the caller's.
SMOL_GREEDY_ENV = {
    "EDGED_MODEL__NAME": "SmolLM2-135M-Instruct",
    "EDGED_MODEL__NO_THINK__TEMPERATURE": "0",
    "EDGED_MODEL__NO_THINK__TOP_P": "1",
    "EDGED_MODEL__NO_THINK__TOP_K": "0",
    "EDGED_MODEL__NO_THINK__MAX_TOKENS": "160",
}


def inbound(topic: str, payload: bytes | dict[str, Any], **fields: Any) -> Inbound:
    """A message as the bus hands it to intake: QoS 1, fresh (not retained, not a redelivery), no MQTT 5
    properties; a dict payload is sent as JSON. ``fields`` set any other field of :class:`Inbound`."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    defaults: dict[str, Any] = {
        "retained": False,
        "dup": False,
        "response_topic": None,
        "correlation_data": None,
        "expiry_s": None,
        "received_at": time.monotonic(),
        "mid": 1,
        "qos": 1,
    }
    return Inbound(topic=topic, payload=body, **{**defaults, **fields})


def make_settings(tiny_model_dir: Path, **overrides: Any) -> Settings:
    node = overrides.pop("node_id", f"t-{uuid.uuid4().hex[:10]}")
    mqtt = {"session_expiry_s": 120, **overrides.pop("mqtt", {})}
    model = {"path": str(tiny_model_dir), **TEST_MODEL, **overrides.pop("model", {})}
    # Free-text queries unless a test asks for diagnoses: the random model's short budget cannot finish a JSON one.
    diagnostics = {"structured": False, **overrides.pop("diagnostics", {})}
    state_dir = overrides.pop("state_dir", None) or tempfile.mkdtemp(
        prefix="edged-state-"
    )  # each daemon its own ledger
    return Settings(node_id=node, mqtt=mqtt, model=model, diagnostics=diagnostics, state_dir=state_dir, **overrides)


@pytest.fixture
def start_daemon(broker, engine, tiny_model_dir) -> Iterator[Callable[..., Any]]:
    """Start in-process daemons on the shared engine; each is stopped at the end of the test."""
    from edged.app import Daemon

    started: list[Daemon] = []
    max_batch = engine.scheduler.max_batch

    def start(
        settings: Settings | None = None, *, own_engine: bool = False, use_engine: Any = None, **overrides: Any
    ) -> Daemon:
        """``own_engine``: load the model with these settings (load-time options); ``use_engine``: this one."""
        from edged.engine.mlx import MlxEngine

        factory = (lambda s: MlxEngine(s.model)) if own_engine else (lambda _s: Lent(use_engine or engine))
        settings = settings or make_settings(tiny_model_dir, **overrides)
        if not own_engine and use_engine is None:
            share_engine(engine, settings)
        daemon = Daemon(settings, factory)
        daemon.start()
        started.append(daemon)
        assert daemon.ready.wait(15), "daemon did not come online"
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
    engine.scheduler.max_batch = max_batch


class Lent:
    """A session engine lent to one daemon: the daemon's stop() closes the engine it was given, and the
    tests after it still need this one."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def close(self) -> None:
        pass


def share_engine(engine: Any, settings: Settings) -> None:
    """The shared engine was loaded with the default scheduler: give it this daemon's batch size (the
    generations in flight per priority), as if it had been loaded with these settings."""
    engine.scheduler.max_batch = settings.model.scheduler.max_batch


@pytest.fixture
def client_for(broker) -> Iterator[Callable[..., Any]]:
    from edged.bus.client import EdgedClient

    clients: list[EdgedClient] = []

    def connect(base: str, **kwargs: Any) -> EdgedClient:
        client = EdgedClient(base, host=broker[0], port=broker[1], **{"timeout": 30, **kwargs})
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


class NotifySocket:
    """A real sd_notify socket, as systemd creates for a Type=notify unit: records each datagram."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="sdn")  # short: AF_UNIX paths are limited to ~104 bytes
        self.path = os.path.join(self._dir, "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)  # so the reader notices close()
        self._closed = threading.Event()
        self._cond = threading.Condition()
        self.messages: list[tuple[float, dict[str, str]]] = []  # (time.monotonic(), {KEY: value})
        threading.Thread(target=self._read, name="notify-socket", daemon=True).start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._cond:
                self.messages.append((time.monotonic(), fields))
                self._cond.notify_all()

    def wait_for(self, key: str, value: str | None = None, *, after: int = 0, timeout: float = 30) -> int:
        """Index of the first message from ``after`` on that has ``key`` (equal to ``value`` if given)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.messages)):
                    got = self.messages[i][1].get(key)
                    if got is not None and (value is None or got == value):
                        return i
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    raise TimeoutError(f"no {key}={value or '*'} on the notify socket within {timeout} s")

    def count(self) -> int:
        with self._cond:
            return len(self.messages)

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()
