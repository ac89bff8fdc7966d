"""Reload: read the configuration again, validate it first, and say what applies now and what needs a restart.

:func:`reread` and :func:`plan` decide (pure); :class:`Reloader` hands a valid outcome to the
daemon's ``apply`` and reports it (log, systemd ``RELOADING=1``/``READY=1``). A refused
configuration leaves the running one untouched. Settings are compared by dotted path
(``requests.max_text_chars``); outcomes name paths, never values, so secrets stay out of logs
and results. A device registry, when edged has one, reloads through the same path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import structlog
from pydantic import ValidationError

from edged.ops.sdnotify import Notifier
from edged.protocol import AdminResult, ErrorCode, ErrorInfo
from edged.settings import Settings, error_lines

log = structlog.get_logger("edged.reload")

# Settings a running daemon takes over (dotted prefixes): ``Daemon._apply`` hands each of them on, or the
# code that uses it reads the current settings every time. Every other setting is read at start-up only
# (the engine, the registry and its discovery, diagnostics, telemetry, the bus, sessions, ...): a change
# to it is reported under ``restart_required`` and the running value kept. A new setting therefore
# needs a restart until it is wired into ``_apply`` and named here.
APPLIED_LIVE = (
    "shutdown_grace_s",
    "model.think",
    "model.no_think",
    "requests.max_text_chars",
    "requests.max_context_bytes",
    "requests.dedupe_window_s",
    "requests.dedupe_max_rows",
    "requests.default_deadline_ms",
    "requests.include_reasoning",
    "requests.rate_limit",
    "requests.reply_prefixes",
    "commands",
    "log.level",
    "log.levels",
    "health",
    "stats",
)
_MISSING = object()


@dataclass(frozen=True)
class ReloadPlan:
    """A reload, decided: the settings that run from now on, and which changed paths apply or wait."""

    settings: Settings  # what runs after the reload: the old settings if refused
    changed: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def result(self, request_id: str) -> AdminResult:
        """The answer to ``{base}/admin/reload``."""
        return AdminResult(
            id=request_id,
            action="reload",
            status="ok" if self.ok else "error",
            changed=self.changed,
            applied=self.applied,
            restart_required=self.restart_required,
            error=None if self.ok else ErrorInfo(code=ErrorCode.INVALID_CONFIG, message=self.error or ""),
        )


class Reloader:
    """Re-reads settings with ``load`` and hands valid ones to ``apply``; tells systemd and the log."""

    def __init__(self, load: Callable[[], Settings], apply: Callable[[Settings], None], notifier: Notifier):
        self._load = load
        self._apply = apply
        self._notifier = notifier

    def __call__(self, current: Settings) -> ReloadPlan:
        self._notifier.reloading()
        outcome = reread(current, self._load)
        if outcome.ok:
            self._apply(outcome.settings)
            log.info(
                "reload_done",
                changed=outcome.changed,
                applied=outcome.applied,
                restart_required=outcome.restart_required,
            )
            if outcome.restart_required:
                log.warning("reload_needs_restart", settings=outcome.restart_required)
        else:
            log.error("reload_failed", error=outcome.error, kept="running configuration")
        self._notifier.ready("reloaded" if outcome.ok else "reload failed: running configuration kept")
        return outcome


def needs_restart(path: str) -> bool:
    return not any(path == p or path.startswith(p + ".") for p in APPLIED_LIVE)


def changed_paths(old: Settings, new: Settings) -> list[str]:
    return sorted(_diff(old.model_dump(), new.model_dump(), ""))


def reread(current: Settings, load: Callable[[], Settings]) -> ReloadPlan:
    """Load and validate new settings; on any error keep ``current`` and say why."""
    try:
        new = load()
    except ValidationError as exc:
        return ReloadPlan(current, error="; ".join(error_lines(exc)))
    except (OSError, ValueError) as exc:  # missing file, TOML syntax error
        return ReloadPlan(current, error=f"{type(exc).__name__}: {exc}")
    return plan(current, new)


def plan(old: Settings, new: Settings) -> ReloadPlan:
    """What changed, what applies now, and the settings to run with (restart-only ones kept as they were)."""
    changed = changed_paths(old, new)
    restart = [p for p in changed if needs_restart(p)]
    applied = [p for p in changed if not needs_restart(p)]
    effective = _take_live(old, new) if restart else new
    return ReloadPlan(effective, changed, applied, restart)


def _take_live(old: Settings, new: Settings) -> Settings:
    """The running settings with only the live ones taken from ``new``."""
    data, after = old.model_dump(), new.model_dump()
    for path in APPLIED_LIVE:
        *parents, leaf = path.split(".")
        target, source = data, after
        for part in parents:
            target, source = target[part], source[part]
        target[leaf] = source[leaf]
    return Settings.model_validate(data)


def _diff(a: object, b: object, prefix: str) -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a.keys() | b.keys():
            yield from _diff(a.get(key, _MISSING), b.get(key, _MISSING), f"{prefix}.{key}" if prefix else str(key))
    elif a != b:
        yield prefix
