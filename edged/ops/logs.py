"""Logging: structlog events with fields; standard-library loggers (paho, transformers) share the pipeline.

Under systemd's journal (``$JOURNAL_STREAM`` names our stdout): JSON lines with a ``<N>`` syslog
priority prefix, which journald turns into ``PRIORITY=`` (``journalctl -p warning`` works) while
the unit's ``SyslogIdentifier=`` names the process. Elsewhere JSON lines when stdout is not a
terminal (files, CI), readable console output when it is. Fields named like secrets are masked.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

Format = Literal["auto", "json", "journal", "console"]

SECRET_WORDS = ("password", "passwd", "secret", "credential", "api_key", "authorization")
_SECRET_KEY = re.compile("|".join(SECRET_WORDS), re.IGNORECASE)  # one pass per key: this runs for every event
MASK = "**********"
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_per_logger: set[str] = set()  # loggers given their own level, reset on the next apply_levels()


def mask_secrets(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """Mask the value of any field whose name looks like a secret (``mqtt_password``, ``api_key``)."""
    for key in event:
        if _SECRET_KEY.search(key):
            event[key] = MASK
    return event


_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


class JournalRenderer:
    """A JSON line behind a ``<N>`` syslog priority prefix, for journald's stdout stream."""

    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer()

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> str:
        line = self._json(logger, name, event)
        return f"<{_PRIORITY.get(event.get('level', 'info'), 6)}>{line.decode() if isinstance(line, bytes) else line}"


def under_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal stream systemd connected us to (``$JOURNAL_STREAM`` = device:inode)."""
    expected = (os.environ if environ is None else environ).get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both OSError and ValueError
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def _renderer(fmt: Format, stream: TextIO, environ: Mapping[str, str] | None) -> Processor:
    if fmt == "auto":
        fmt = "journal" if under_journal(stream, environ) else "console" if stream.isatty() else "json"
    if fmt == "journal":
        return JournalRenderer()
    return structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()


def _not_paho_stop_noise(record: logging.LogRecord) -> bool:
    """paho 2.x logs an error when its loop runs once more after a clean disconnect; edged logs
    the disconnect itself (mqtt_disconnected), so this line only alarms operators."""
    return not record.getMessage().startswith("Client is not connected. Socket: None")


def apply_levels(level: str, levels: Mapping[str, str] | None = None) -> None:
    """The root level, paho's default (packet lines only at debug), and per-logger overrides."""
    for name in _per_logger:
        logging.getLogger(name).setLevel(logging.NOTSET)
    _per_logger.clear()
    logging.getLogger().setLevel(level.upper())
    # paho logs every packet at DEBUG; keep it at INFO unless edged itself is at DEBUG.
    paho = logging.getLogger("paho")
    paho.setLevel(logging.DEBUG if level == "debug" else logging.INFO)
    if _not_paho_stop_noise not in paho.filters:
        paho.addFilter(_not_paho_stop_noise)
    for name, value in (levels or {}).items():
        logging.getLogger(name).setLevel(value.upper())
        _per_logger.add(name)


class _SysStreamHandler(logging.StreamHandler):
    """Writes to ``sys.stdout`` or ``sys.stderr`` as it is at each record, not as it was at set-up
    (it may be replaced, and the old one closed)."""

    def __init__(self, name: str):
        super().__init__()
        self._sys_attr = name

    @property
    def stream(self) -> TextIO:
        return getattr(sys, self._sys_attr)

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _handler(stream: TextIO | None) -> logging.StreamHandler[TextIO]:
    for name in ("stdout", "stderr"):
        if (stream is None and name == "stdout") or stream is getattr(sys, name):
            return _SysStreamHandler(name)
    return logging.StreamHandler(stream)


def setup_logging(
    level: str = "info",
    fmt: Format = "auto",
    *,
    levels: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    handler = _handler(stream)
    renderer = _renderer(fmt, handler.stream, environ)
    console = isinstance(renderer, structlog.dev.ConsoleRenderer)
    final = [renderer] if console else [structlog.processors.format_exc_info, renderer]
    structlog.configure(
        processors=[*_SHARED, mask_secrets, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder(), mask_secrets],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    logging.getLogger().handlers[:] = [handler]
    apply_levels(level, levels)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
    except ImportError:
        pass
