"""Per-session conversation memory: final answers only, bounded in turns, tokens and idle time."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from edged.prompts import Turn
from edged.protocol import Mode


def session_key(session: str, reply_topic: str, client: str | None) -> str:
    """A session belongs to its caller: the key a request names, within its reply tree (the reply topic without
    its last level) and its claimed client. Another caller who knows the key reaches another session, unless
    it also names this caller's reply tree, which the broker's ACL can keep it from reading."""
    tree = reply_topic.rsplit("/", 1)[0]
    return f"{tree}\0{client or ''}\0{session}"


@dataclass
class Session:
    turns: list[Turn] = field(default_factory=list)
    switch: Mode | None = None  # the last /think or /no_think seen in this session
    used_at: float = 0.0


class SessionStore:
    """Thread-safe; the least recently used session is dropped when ``max_sessions`` is reached."""

    def __init__(
        self,
        *,
        max_turns: int,
        max_tokens: int,
        idle_s: float,
        max_sessions: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._max_turns = max_turns
        self._max_tokens = max_tokens
        self._idle_s = idle_s
        self._max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, key: str) -> Session:
        """The live session for ``key`` (a fresh one if it never existed or has expired)."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            session = self._sessions.pop(key, None) or Session()
            session.used_at = now
            self._sessions[key] = session
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
            return session

    def remember(self, key: str, *, switch: Mode | None, turn: Turn | None) -> None:
        session = self.get(key)
        with self._lock:
            if switch is not None:
                session.switch = switch
            if turn is not None:
                session.turns.append(turn)
                self._trim(session)

    def _trim(self, session: Session) -> None:
        while session.turns and (
            len(session.turns) > self._max_turns or sum(t.tokens for t in session.turns) > self._max_tokens
        ):
            session.turns.pop(0)

    def _expire(self, now: float) -> None:
        while self._sessions:
            key, oldest = next(iter(self._sessions.items()))
            if now - oldest.used_at < self._idle_s:
                return
            del self._sessions[key]
