"""A registry store whose registry is the file's merged with devices discovered on the bus.

Discovered devices join and leave while edged runs; each change is validated and logged like a file
reload (``registry_loaded`` / ``registry_reload_failed``), and an invalid result keeps the registry in force.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import structlog

from edged.devices.discovery.common import Discovered
from edged.devices.discovery.merge import Merged, merge
from edged.devices.registry import Registry, RegistryStore

log = structlog.get_logger("edged.registry")


class DiscoveringStore(RegistryStore):
    """Same interface as :class:`RegistryStore` (``get``, ``current``, ``reload``, ``state_topics``), file optional."""

    def __init__(self, path: Path | None, *, on_change: Callable[[Registry], None] = lambda _r: None):
        self.path = path  # type: ignore[assignment]
        self._on_change = on_change
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._file = RegistryStore(path, on_change=self._file_changed) if path else None
        self._found: dict[tuple[str, str], list[Discovered]] = {}
        self.last_error: str | None = None
        merged = merge(self._file.current if self._file else None, [])
        self.current, self.sources = merged.registry, merged.sources

    def _file_changed(self, _registry: Registry) -> None:
        self._recompose("file")

    def get(self) -> Registry:
        if self._file is not None:
            self._file.get()  # a changed file recomposes through its on_change
        return self.current

    def reload(self, stamp: tuple[int, int] | None = None) -> bool:
        if self._file is not None and not self._file.reload(stamp):
            self.last_error = self._file.last_error
            return False
        return self._recompose("file")

    def replace(self, source: str, scope: str, found: list[Discovered]) -> bool:
        """What ``source`` announced under ``scope`` (a bridge, a config topic) is now ``found`` (empty: gone)."""
        with self._lock:
            if found:
                self._found[(source, scope)] = found
            elif self._found.pop((source, scope), None) is None:
                return False
        return self._recompose(source)

    def discovered(self) -> list[Discovered]:
        with self._lock:
            return self._all_found()

    def _recompose(self, cause: str) -> bool:
        with self._lock:
            before = self.current
            try:
                merged: Merged = merge(self._file.current if self._file else None, self._all_found())
            except ValueError as exc:
                self.last_error = str(exc)
                log.error("registry_reload_failed", source=cause, error=str(exc), kept=before.version)
                return False
            if merged.registry.version == before.version:
                return False
            self.current, self.sources, self.last_error = merged.registry, merged.sources, None
        old, new = {d.id for d in before.devices}, {d.id for d in merged.registry.devices}
        log.info(
            "registry_loaded",
            source=cause,
            version=merged.registry.version,
            devices=len(new),
            added=sorted(new - old),
            removed=sorted(old - new),
        )
        with self._changed:
            self._changed.notify_all()
        self._on_change(merged.registry)
        return True

    def wait_until(self, done: Callable[[Registry], bool], timeout: float) -> bool:
        """Wait (bounded) until the registry in force satisfies ``done``; True if it does."""
        with self._changed:
            return self._changed.wait_for(lambda: done(self.current), timeout)

    def _all_found(self) -> list[Discovered]:
        return [d for items in self._found.values() for d in items]
