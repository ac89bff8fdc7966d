"""Validated configuration: TOML file, then ``EDGED_*`` environment variables, then overrides.

Precedence (highest first): explicit overrides (tests, CLI), environment variables
(``EDGED_MQTT__HOST``; ``__`` separates nesting levels), the TOML file, defaults.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from edged.bus.tls import client_context
from edged.diagnostics.telemetry import TelemetrySettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = structlog.get_logger("edged.settings")
CONFIG_ENV = "EDGED_CONFIG"
DEFAULT_CONFIG_PATHS = (Path("/etc/edged/edged.toml"), Path("~/.config/edged/edged.toml"))


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The state directory: ``$STATE_DIRECTORY`` (systemd ``StateDirectory=``), else ``$XDG_STATE_HOME/edged``,
    else ``~/.local/state/edged``."""
    env = os.environ if environ is None else environ
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    return Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "edged"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def sanitise_node_id(name: str) -> str:
    """Lower-case a host name and keep only ``[a-z0-9_-]`` (other characters become ``-``)."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")
    return cleaned or "edged"


def _readable_file(v: Path | None, what: str) -> Path | None:
    if v is None:
        return None
    path = v.expanduser()
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None
    return path


class TlsSettings(_Section):
    """TLS to the broker: server verification, optionally a client certificate (mutual TLS)."""

    enabled: bool = Field(False, description="connect with TLS (the broker's TLS listener, usually port 8883)")
    ca_file: Path | None = Field(
        None, description="CA certificate(s) (PEM) for the broker's certificate; default: the system's"
    )
    cert_file: Path | None = Field(None, description="client certificate (PEM) for mutual TLS; needs key_file")
    key_file: Path | None = Field(None, description="the client certificate's private key (PEM, unencrypted; mode 600)")
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="oldest TLS version accepted")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _readable_file(v, info.field_name or "file")

    @model_validator(mode="after")
    def _check(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set cert_file and key_file together (mutual TLS needs both)")
        if not self.enabled and (self.ca_file or self.cert_file):
            raise ValueError(
                "TLS files are set but enabled = false: set enabled = true (edged never falls back to plain text)"
            )
        if self.enabled:
            try:
                self.context()
            except ssl.SSLError as exc:
                raise ValueError(f"cannot use the TLS files: {exc}") from None
        return self

    def context(self) -> ssl.SSLContext:
        return client_context(
            ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file, min_version=self.min_version
        )


class MqttSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = Field(None, description="stable id for the persistent session; default edged-{node_id}")
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = Field(None, description="file whose first line is the password")
    password_credential: str = Field(
        "mqtt-password",
        description="without password/password_file: this file in $CREDENTIALS_DIRECTORY (systemd LoadCredential=)",
    )

    @field_validator("password_file")
    @classmethod
    def _readable(cls, v: Path | None) -> Path | None:
        if v is not None:
            try:
                first = v.expanduser().read_text(encoding="utf-8").splitlines()[:1]
            except OSError as exc:
                raise ValueError(f"cannot read password_file: {exc.strerror}") from None
            if not first or not first[0]:
                raise ValueError("password_file is empty: its first line must be the password")
        return v

    keepalive_s: int = Field(30, ge=5, le=3600)
    session_expiry_s: int = Field(86400, ge=0, description="how long the broker keeps requests while edged is down")
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(60.0, gt=0)
    publish_timeout_s: float = Field(10.0, gt=0, description="wait for the broker's PUBACK of a result")
    receive_maximum: int = Field(
        64,
        ge=1,
        le=65535,
        description="MQTT 5: requests the broker may have in flight to edged; the rest wait at the broker",
    )
    shared_group: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="share requests with other instances: $share/<group>/{base}/command, ...",
    )
    tls: TlsSettings = TlsSettings()

    @model_validator(mode="after")
    def _check(self) -> MqttSettings:
        if self.shared_group is not None and self.protocol != "5":
            raise ValueError("shared_group needs protocol 5 (shared subscriptions are an MQTT 5 feature)")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set either password or password_file, not both")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self

    def resolved_password(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The password: ``password``, else ``password_file``, else the systemd credential; an empty file means none."""
        if self.password is not None:
            return self.password.get_secret_value()
        path = (
            self.password_file.expanduser()
            if self.password_file is not None
            else _credential(self.password_credential, environ)
        )
        if path is None:
            return None
        lines = path.read_text(encoding="utf-8").splitlines()
        return lines[0] if lines and lines[0] else None


def _credential(name: str, environ: Mapping[str, str] | None) -> Path | None:
    directory = (os.environ if environ is None else environ).get("CREDENTIALS_DIRECTORY")
    path = Path(directory) / name if directory else None
    return path if path is not None and path.is_file() else None


class SamplingSettings(_Section):
    temperature: float = Field(ge=0)
    top_p: float = Field(ge=0, le=1)
    top_k: int = Field(ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    presence_penalty: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(ge=1, description="output budget, thinking included")
    thinking_budget: int | None = Field(
        None, ge=1, description="think mode: after this many tokens edged closes the thinking block itself"
    )

    @model_validator(mode="after")
    def _budget_fits(self) -> SamplingSettings:
        if self.thinking_budget is not None and self.thinking_budget >= self.max_tokens:
            raise ValueError("thinking_budget must be smaller than max_tokens, to leave room for the answer")
        return self


class ThinkSampling(SamplingSettings):
    """Qwen3 card, thinking mode. Never greedy."""

    temperature: float = Field(0.6, gt=0, description="> 0: greedy decoding makes thinking mode loop")
    top_p: float = Field(0.95, ge=0, le=1)
    top_k: int = Field(20, ge=0)
    max_tokens: int = Field(4096, ge=1)
    thinking_budget: int | None = Field(3072, ge=1)


class NoThinkSampling(SamplingSettings):
    """Qwen3 card, non-thinking mode."""

    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.8, ge=0, le=1)
    top_k: int = Field(20, ge=0)
    max_tokens: int = Field(256, ge=1)


class SchedulerSettings(_Section):
    """How the engine shares the model between requests in flight (see ``edged.engine.scheduler``)."""

    max_batch: int = Field(
        8, ge=1, le=64, description="generations of one priority decoded together; also requests in flight per priority"
    )
    fair_share: int = Field(
        8, ge=1, description="a waiting lower-priority generation gets a step after this many steps of higher ones"
    )
    prefill_chunk: int = Field(
        128, ge=8, description="prompt tokens per prefill step: bounds how long a new command waits"
    )
    jump_forward: bool = Field(
        True, description="append tokens the answer grammar forces without sampling, fed as one chunk"
    )


class ModelSettings(_Section):
    path: str = Field(
        "Qwen/Qwen3-4B-MLX-4bit",
        description="MLX model directory, a repo id already in the local HF cache, or a GGUF file (or its directory)",
    )
    engine: Literal["auto", "mlx", "llamacpp"] = Field(
        "auto", description="auto: MLX on Apple silicon, llama.cpp for a GGUF model elsewhere when installed"
    )
    name: str | None = Field(None, description="name reported in results; default the path's last component")
    seed: int | None = Field(None, description="fix the sampling seed (tests, benchmarks)")
    dtype: Literal["auto", "keep", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weight format at load: auto picks the fastest for this machine"
    )
    blas: str = Field("auto", description="Linux: 'auto' loads OpenBLAS when installed, 'off', or a library path")
    long_context: bool = Field(False, description="apply YaRN rope scaling at load (costs quality on short texts)")
    yarn_factor: float = Field(4.0, gt=1)
    yarn_original_context: int | None = Field(None, ge=1, description="default: the model's max_position_embeddings")
    max_context: int | None = Field(None, ge=16, description="cap the context below the model's (memory)")
    prefix_cache_mb: int = Field(
        512, ge=0, description="KV cache of reused prompt prefixes and session history (LRU); 0 = off"
    )
    warm_up: bool = Field(
        True, description="before going online, prefill each kind's static prompt and build the grammar"
    )
    scheduler: SchedulerSettings = SchedulerSettings()
    think: ThinkSampling = ThinkSampling()
    no_think: NoThinkSampling = NoThinkSampling()

    def display_name(self) -> str:
        return self.name or Path(self.path.rstrip("/")).name


class RateLimitSettings(_Section):
    per_minute: float = Field(gt=0, description="requests per minute each client may send, on average")
    burst: int = Field(10, ge=1, description="requests a client may send at once after a quiet spell")
    max_clients: int = Field(10_000, ge=1, description="clients tracked; the least recently seen is forgotten")


class RequestSettings(_Section):
    max_text_chars: int = Field(8000, ge=1)
    max_payload_bytes: int = Field(256 * 1024, ge=256)
    dedupe_window_s: float = Field(
        86400,
        gt=0,
        description="a request id seen again this soon is a duplicate: answered from the ledger, never run twice",
    )
    dedupe_max_rows: int = Field(
        10_000, ge=100, description="requests the ledger remembers at most (oldest forgotten first)"
    )
    max_context_bytes: int = Field(64 * 1024, ge=0)
    queue_size: int = Field(16, ge=1, description="requests waiting for the model; more get status error/busy")
    default_deadline_ms: int | None = Field(None, ge=1)
    include_reasoning: bool = Field(False, description="put the thinking text in results by default")
    rate_limit: RateLimitSettings | None = Field(
        None,
        description="per-client token bucket (client field or MQTT 5 user property); "
        "requests without one share a bucket",
    )
    reply_prefixes: list[str] = Field(
        default_factory=lambda: ["{base}/result/", "edged/inbox/"],
        min_length=1,
        description="a reply_to or MQTT 5 Response Topic must start with one of these ({base} is replaced)",
    )

    @field_validator("reply_prefixes")
    @classmethod
    def _prefixes(cls, v: list[str]) -> list[str]:
        for prefix in v:
            if not prefix.endswith("/") or prefix.startswith(("$", "/")) or any(c in prefix for c in "+#\0"):
                raise ValueError(f"reply prefix {prefix[:80]!r}: must end with '/', without wildcards or a leading '$'")
        return v


class SessionSettings(_Section):
    max_turns: int = Field(8, ge=0, description="question/answer pairs kept per session")
    max_tokens: int = Field(4096, ge=0, description="history tokens kept per session (oldest dropped first)")
    idle_s: float = Field(1800, gt=0, description="a session unused this long is forgotten")
    max_sessions: int = Field(1024, ge=1)


class DeviceSettings(_Section):
    registry: Path | None = Field(None, description="device registry TOML; commands need one to control devices")
    dispatch: bool = Field(True, description="publish device commands; false = dry run (per request: dispatch)")
    confirm_ttl_s: float = Field(120, gt=0, description="how long a needs_confirmation token stays valid")
    discover: list[Literal["zigbee2mqtt", "homeassistant"]] = Field(
        default_factory=list,
        description="also take devices from zigbee2mqtt's bridge/devices and Home Assistant MQTT discovery",
    )
    zigbee2mqtt_base: str = Field("zigbee2mqtt", description="zigbee2mqtt's base topic")
    homeassistant_prefix: str = Field("homeassistant", description="Home Assistant's discovery prefix")
    confirm_setpoint_above: float = Field(
        25.0, description="discovered climate devices: a setpoint above this (°C) needs confirmation"
    )

    @field_validator("registry")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.expanduser().is_file():
            raise ValueError(f"registry file not found: {v}")
        return v.expanduser() if v else v


class CommandSettings(_Section):
    """How spoken commands become device actions: templates and rules first, the model for the rest."""

    language: str = Field(
        "en", pattern=r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$", description="language of commands that do not name one"
    )
    local: bool = Field(True, description="resolve with sentence templates and registry rules before the model")
    grounded: bool = Field(
        True, description="model path: name the linked devices first and restrict the answer grammar to them"
    )
    temperature: float = Field(
        0.0,
        ge=0,
        description="command decoding; 0 = greedy, a departure from Qwen3's no_think 0.7: "
        "a device answer wants the most likely reading, not variety",
    )


class DiagnosticSettings(_Section):
    structured: bool = Field(True, description="queries answer with the diagnosis schema (after thinking)")
    telemetry_tokens: int = Field(
        800, ge=50, description="prompt tokens for sensor summaries and raw readings (summaries always fit)"
    )
    max_sensors: int = Field(10, ge=1, description="sensors summarised for one question")
    progress_interval_s: float = Field(1.0, ge=0, description="{base}/progress/{id} while a query runs; 0 = off")


LogLevel = Literal["debug", "info", "warning", "error"]


class LogSettings(_Section):
    level: LogLevel = "info"
    format: Literal["auto", "json", "journal", "console"] = Field(
        "auto", description="auto: journal under systemd's journal, JSON lines when not a terminal, else console"
    )
    levels: dict[str, LogLevel] = Field(
        default_factory=dict, description='per logger, e.g. {"edged.bus" = "debug", "paho" = "warning"}'
    )


class HealthSettings(_Section):
    stuck_after_s: float = Field(
        300, gt=0, description="a request without a new token this long: state degraded, systemd watchdog pings stop"
    )
    check_interval_s: float = Field(
        5, gt=0, description="how often health is checked (more often if WATCHDOG_USEC asks)"
    )


class StatsSettings(_Section):
    interval_s: float = Field(60, gt=0, description="how often {base}/stats is published (retained)")
    window_s: float = Field(300, gt=0, description="latency percentiles and tokens/s cover this many recent seconds")


class MetricsSettings(_Section):
    prometheus_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="serve Prometheus metrics on this port (0: any free port); needs edged[metrics]",
    )
    host: str = Field("127.0.0.1", description="address the metrics server binds to; keep it on loopback")


class HomeAssistantSettings(_Section):
    discovery: bool = Field(False, description="publish Home Assistant MQTT discovery for edged's status and stats")
    discovery_prefix: str = "homeassistant"


class AdminSettings(_Section):
    reload_topic: bool = Field(False, description="accept reload requests on {base}/admin/reload")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDGED_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    node_id: str = Field(default_factory=lambda: sanitise_node_id(socket.gethostname()))
    base_topic: str | None = Field(None, description="default edged/{node_id}")
    shutdown_grace_s: float = Field(30.0, ge=0, description="how long SIGTERM waits for the request in progress")
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="the request ledger; default $STATE_DIRECTORY, else $XDG_STATE_HOME/edged",
    )
    mqtt: MqttSettings = MqttSettings()
    model: ModelSettings = ModelSettings()
    requests: RequestSettings = RequestSettings()
    sessions: SessionSettings = SessionSettings()
    devices: DeviceSettings = DeviceSettings()
    commands: CommandSettings = CommandSettings()
    diagnostics: DiagnosticSettings = DiagnosticSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    log: LogSettings = LogSettings()
    health: HealthSettings = HealthSettings()
    stats: StatsSettings = StatsSettings()
    metrics: MetricsSettings = MetricsSettings()
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()
    admin: AdminSettings = AdminSettings()

    @model_validator(mode="after")
    def _check_topics(self) -> Settings:
        if sanitise_node_id(self.node_id) != self.node_id:
            raise ValueError(f"node_id must match [a-z0-9_-]+, e.g. {sanitise_node_id(self.node_id)!r}")
        if self.base_topic is not None and (
            not self.base_topic or any(c in self.base_topic for c in "#+\0") or self.base_topic.endswith("/")
        ):
            raise ValueError("base_topic must be non-empty, without wildcards and without a trailing '/'")
        if self.mqtt.shared_group is not None and self.base_topic is None:
            raise ValueError(
                "mqtt.shared_group needs base_topic: the instances of a group share it (node_id tells them apart)"
            )
        return self

    @property
    def base(self) -> str:
        return self.base_topic or f"edged/{self.node_id}"

    def instance_topic(self, name: str) -> str:
        """This instance's topic (status, stats): ``{base}/{name}``; ``{base}/{name}/{node_id}`` in a shared group."""
        return f"{self.base}/{name}/{self.node_id}" if self.mqtt.shared_group else f"{self.base}/{name}"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edged-{self.node_id}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def find_config_file(explicit: Path | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file to read: ``--config``, else ``$EDGED_CONFIG``, else the first default path that exists."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        path = explicit.expanduser()
    elif env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV]).expanduser()
    else:
        return next((p.expanduser() for p in DEFAULT_CONFIG_PATHS if p.expanduser().is_file()), None)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return path


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Read and validate settings; raises ``pydantic.ValidationError`` or ``FileNotFoundError``.

    ``overrides`` go to pydantic-settings as init arguments (section dicts, validated there)."""
    path = find_config_file(config)
    if path is None:
        return Settings(**overrides)
    with_file = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}})
    return with_file(**overrides)


def warn_exposed_secret(config: Path | None) -> bool:
    """Log ``mqtt_password_readable`` (once logging is set up) when the config file sets ``mqtt.password``
    and users other than its owner and group may read it."""
    path = find_config_file(config)
    if path is None or not exposed_secret(path):
        return False
    log.warning(
        "mqtt_password_readable",
        path=str(path),
        hint="the file holds mqtt.password and others may read it: chmod 600, or use password_file",
    )
    return True


def exposed_secret(path: Path) -> bool:
    """True when ``path`` sets ``mqtt.password`` inline and users other than its owner and group may read it."""
    try:
        readable = bool(path.stat().st_mode & stat.S_IROTH)
        data = tomllib.loads(path.read_text(encoding="utf-8")) if readable else {}
    except (OSError, ValueError):
        return False
    mqtt = data.get("mqtt")
    return readable and isinstance(mqtt, dict) and "password" in mqtt


def error_lines(exc: ValidationError) -> list[str]:
    """One ``field.path: message`` line per validation error."""
    return [f"{'.'.join(str(p) for p in e['loc']) or '(settings)'}: {e['msg']}" for e in exc.errors(include_url=False)]
