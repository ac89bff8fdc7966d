"""The request ledger: which requests edged took on, answered and dispatched, kept across restarts.

The broker delivers a request again when edged did not acknowledge it (a crash, a lost
connection), and a caller may send the same request twice. The ledger, a SQLite file in the
state directory, knows each request by its id and reply topic for ``window_s`` seconds, so a
copy is never run twice: a copy of a request still in progress is acknowledged together with
the original, a copy of an answered one gets the stored result again (or, when the broker
already confirmed that result and only the request's acknowledgement was lost, nothing), and a
request that an earlier run took on and never answered is run again. Device commands are
claimed here in a committed transaction before they are published, so a request run again
after a crash never dispatches them a second time.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import structlog

from edged.bus.mqtt import Inbound

log = structlog.get_logger("edged.ledger")

PRUNE_EVERY = 64  # new requests between two prunes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT NOT NULL, reply_topic TEXT NOT NULL,
    state TEXT NOT NULL,            -- accepted | done
    run TEXT NOT NULL,              -- the process run that took it on
    sent INTEGER NOT NULL DEFAULT 0, -- the broker confirmed the result
    result BLOB, updated REAL NOT NULL,
    digest TEXT NOT NULL DEFAULT '', -- what was asked (topic and payload): a copy has the same
    PRIMARY KEY (id, reply_topic)
);
CREATE INDEX IF NOT EXISTS requests_updated ON requests (updated);
CREATE TABLE IF NOT EXISTS dispatches (
    id TEXT NOT NULL, reply_topic TEXT NOT NULL, seq INTEGER NOT NULL,
    topic TEXT NOT NULL, payload BLOB NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (id, reply_topic, seq)
);
"""


def ledger_path(state_dir: Path, client_id: str) -> Path:
    """One ledger per MQTT session (client id): redeliveries come back to the same session."""
    return state_dir / f"ledger-{re.sub(r'[^A-Za-z0-9_.-]', '_', client_id)}.sqlite3"


class Verdict(Enum):
    NEW = "new"  # run it
    RESUMED = "resumed"  # an earlier run took it on and ended before answering: run it again
    PENDING = "pending"  # in progress in this run: acknowledged together with the original
    ANSWERED = "answered"  # a broker redelivery whose result the broker had confirmed: acknowledge only
    REPLAY = "replay"  # answered before: publish the stored result again
    CONFLICT = "conflict"  # the id (and reply topic) of another request still in the window: refuse it


@dataclass(frozen=True)
class Admit:
    verdict: Verdict
    result: bytes | None = None  # the stored result, for REPLAY


class Ledger:
    """One SQLite connection used under a lock; every write is committed before the call returns."""

    def __init__(self, path: Path, *, window_s: float, max_rows: int, clock: Callable[[], float] = time.time):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.window_s = window_s
        self.max_rows = max_rows
        self.run = uuid.uuid4().hex  # tells this process's requests from a crashed one's
        self._clock = clock
        self._lock = threading.Lock()
        self._followers: dict[tuple[str, str], list[Inbound]] = {}  # copies to acknowledge with the original
        self._new_since_prune = 0
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a dispatch claim must outlive a power cut too
        self._db.executescript(_SCHEMA)
        self.prune()
        log.info("ledger_opened", path=str(path), window_s=window_s, max_rows=max_rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def configure(self, *, window_s: float, max_rows: int) -> None:
        self.window_s, self.max_rows = window_s, max_rows

    # -- requests --------------------------------------------------------------------------
    def admit(
        self, request_id: str, reply_topic: str, *, redelivered: bool, origin: Inbound | None = None, digest: str = ""
    ) -> Admit:
        """What to do with a request that just arrived; ``origin`` (the message) is kept if it is a PENDING copy.

        ``digest`` names what was asked (topic and payload): a copy has the same one; another request
        that reuses the id within the window does not, and is a CONFLICT rather than a copy."""
        key = (request_id, reply_topic)
        now = self._clock()
        with self._lock:
            row = self._db.execute(
                "SELECT state, run, sent, result, updated, digest FROM requests WHERE id=? AND reply_topic=?", key
            ).fetchone()
            if row is not None and row[4] < now - self.window_s:
                row = None  # outside the window: a new request that reuses an old id
            if row is not None and digest and row[5] and digest != row[5]:
                return Admit(Verdict.CONFLICT)
            if row is None:
                self._db.execute(
                    "INSERT OR REPLACE INTO requests (id, reply_topic, state, run, updated, digest) "
                    "VALUES (?, ?, 'accepted', ?, ?, ?)",
                    (*key, self.run, now, digest),
                )
                self._db.execute("DELETE FROM dispatches WHERE id=? AND reply_topic=?", key)
                self._new_since_prune += 1
                verdict = Admit(Verdict.NEW)
            else:
                verdict = self._verdict(key, row, redelivered, origin)
        if self._new_since_prune >= PRUNE_EVERY:
            self.prune()
        return verdict

    def _verdict(self, key: tuple[str, str], row: tuple[Any, ...], redelivered: bool, origin: Inbound | None) -> Admit:
        state, run, sent, result = row[:4]
        if state == "accepted" and run != self.run:
            self._db.execute(
                "UPDATE requests SET run=?, updated=? WHERE id=? AND reply_topic=?", (self.run, self._clock(), *key)
            )
            return Admit(Verdict.RESUMED)
        if state == "accepted" or (not sent and run == self.run):
            if origin is not None:
                self._followers.setdefault(key, []).append(origin)
            return Admit(Verdict.PENDING)
        if sent and redelivered:
            return Admit(Verdict.ANSWERED)
        return Admit(Verdict.REPLAY, bytes(result))

    def settle(self, request_id: str, reply_topic: str, result: bytes | None) -> None:
        """Store the result before it is published; ``None``: the request was refused unrun (busy), forget it."""
        with self._lock:
            if result is None:
                self._db.execute("DELETE FROM requests WHERE id=? AND reply_topic=?", (request_id, reply_topic))
            else:
                self._db.execute(
                    "INSERT INTO requests (id, reply_topic, state, run, sent, result, updated) "
                    "VALUES (?, ?, 'done', ?, 0, ?, ?) "
                    "ON CONFLICT (id, reply_topic) DO UPDATE SET state='done', run=excluded.run, sent=0, "
                    "result=excluded.result, updated=excluded.updated",  # keeps the digest
                    (request_id, reply_topic, self.run, result, self._clock()),
                )

    def confirmed(self, request_id: str, reply_topic: str) -> list[Inbound]:
        """The broker confirmed the result: remember that, and return the copies to acknowledge now."""
        key = (request_id, reply_topic)
        with self._lock:
            self._db.execute("UPDATE requests SET sent=1 WHERE id=? AND reply_topic=?", key)
            return self._followers.pop(key, [])

    def state(self, request_id: str, reply_topic: str) -> str | None:
        """``accepted``, ``done``, ``sent`` or None (for tests and tools)."""
        with self._lock:
            row = self._db.execute(
                "SELECT state, sent FROM requests WHERE id=? AND reply_topic=?", (request_id, reply_topic)
            ).fetchone()
        return None if row is None else "sent" if row[1] else row[0]

    # -- device commands -------------------------------------------------------------------
    def claim(
        self, request_id: str, reply_topic: str, commands: list[tuple[str, bytes]]
    ) -> list[tuple[str, bytes]] | None:
        """Claim the right to publish ``commands`` for this request: None if granted (committed),
        else the commands an earlier run already published for it (publish nothing)."""
        key = (request_id, reply_topic)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                earlier = self._db.execute(
                    "SELECT topic, payload FROM dispatches WHERE id=? AND reply_topic=? ORDER BY seq", key
                ).fetchall()
                if not earlier:
                    now = self._clock()
                    self._db.executemany(
                        "INSERT INTO dispatches (id, reply_topic, seq, topic, payload, at) VALUES (?, ?, ?, ?, ?, ?)",
                        [(*key, i, t, p, now) for i, (t, p) in enumerate(commands)],
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [(t, bytes(p)) for t, p in earlier] if earlier else None

    # -- housekeeping ----------------------------------------------------------------------
    def prune(self) -> int:
        """Forget requests older than the window, then the oldest beyond ``max_rows``; returns how many went."""
        cutoff = self._clock() - self.window_s
        with self._lock:
            self._new_since_prune = 0
            gone = self._db.execute("DELETE FROM requests WHERE updated < ?", (cutoff,)).rowcount
            gone += self._db.execute(
                "DELETE FROM requests WHERE rowid IN "
                "(SELECT rowid FROM requests ORDER BY updated DESC LIMIT -1 OFFSET ?)",
                (self.max_rows,),
            ).rowcount
            self._db.execute(
                "DELETE FROM dispatches WHERE NOT EXISTS "
                "(SELECT 1 FROM requests r WHERE r.id = dispatches.id AND r.reply_topic = dispatches.reply_topic)"
            )
        if gone:
            log.info("ledger_pruned", rows=gone)
        return gone
