"""SessionStore bounds: turns, tokens, idle time and number of sessions."""

from __future__ import annotations

from edged.prompts import Turn
from edged.service.sessions import SessionStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(clock: FakeClock, **overrides: float) -> SessionStore:
    bounds = {"max_turns": 3, "max_tokens": 100, "idle_s": 60.0, "max_sessions": 3, **overrides}
    return SessionStore(clock=clock, **bounds)  # type: ignore[arg-type]


def turn(n: int, tokens: int = 10) -> Turn:
    return Turn(user=f"q{n}", answer=f"a{n}", tokens=tokens)


def users(s: SessionStore, key: str) -> list[str]:
    return [t.user for t in s.get(key).turns]


def test_new_session_is_empty() -> None:
    """An unknown key gives an empty session with no switch."""
    s = store(FakeClock())
    session = s.get("k")
    assert session.turns == [] and session.switch is None
    assert len(s) == 1


def test_turns_bound() -> None:
    """Only the last max_turns turns are kept."""
    s = store(FakeClock())
    for n in range(5):
        s.remember("k", switch=None, turn=turn(n))
    assert users(s, "k") == ["q2", "q3", "q4"]


def test_token_bound_drops_oldest_first() -> None:
    """When the token total exceeds max_tokens, the oldest turns go first."""
    s = store(FakeClock(), max_turns=10, max_tokens=100)
    s.remember("k", switch=None, turn=turn(1, 40))
    s.remember("k", switch=None, turn=turn(2, 40))
    assert users(s, "k") == ["q1", "q2"]
    s.remember("k", switch=None, turn=turn(3, 30))
    assert users(s, "k") == ["q2", "q3"]
    assert sum(t.tokens for t in s.get("k").turns) <= 100


def test_turn_larger_than_budget_is_not_kept() -> None:
    """A single turn over max_tokens leaves the history empty."""
    s = store(FakeClock(), max_tokens=100)
    s.remember("k", switch=None, turn=turn(1, 101))
    assert s.get("k").turns == []


def test_idle_expiry_gives_fresh_session() -> None:
    """A session unused for idle_s is forgotten, switch and history alike."""
    clock = FakeClock()
    s = store(clock, idle_s=60.0)
    s.remember("k", switch="no_think", turn=turn(1))
    clock.now += 59.0
    assert users(s, "k") == ["q1"]  # use refreshes the idle timer
    clock.now += 59.0
    assert s.get("k").switch == "no_think"
    clock.now += 60.0
    session = s.get("k")
    assert session.turns == [] and session.switch is None


def test_idle_expiry_of_other_sessions() -> None:
    """Idle sessions are dropped from the store when any session is used."""
    clock = FakeClock()
    s = store(clock, idle_s=60.0)
    s.get("old")
    clock.now += 61.0
    s.get("new")
    assert len(s) == 1


def test_max_sessions_evicts_least_recently_used() -> None:
    """At max_sessions, the least recently used session is dropped."""
    clock = FakeClock()
    s = store(clock, max_sessions=2)
    s.remember("a", switch=None, turn=turn(1))
    clock.now += 1
    s.remember("b", switch=None, turn=turn(2))
    clock.now += 1
    s.get("a")  # a is now more recent than b
    clock.now += 1
    s.get("c")
    assert len(s) == 2
    assert users(s, "a") == ["q1"]
    assert users(s, "b") == []  # b was evicted and comes back fresh


def test_remember_keeps_switch() -> None:
    """The last switch is kept; remembering None leaves it unchanged."""
    s = store(FakeClock())
    s.remember("k", switch="no_think", turn=None)
    assert s.get("k").switch == "no_think"
    s.remember("k", switch=None, turn=turn(1))
    assert s.get("k").switch == "no_think"
    s.remember("k", switch="think", turn=None)
    assert s.get("k").switch == "think"
    assert users(s, "k") == ["q1"]


def test_history_stores_final_answer() -> None:
    """A turn holds the user text and the final answer only."""
    s = store(FakeClock())
    s.remember("k", switch=None, turn=Turn(user="lights?", answer="All off.", tokens=5))
    (only,) = s.get("k").turns
    assert (only.user, only.answer, only.tokens) == ("lights?", "All off.", 5)
    assert not hasattr(only, "reasoning")


def test_sessions_are_separate() -> None:
    """Turns remembered for one key do not appear in another."""
    s = store(FakeClock())
    s.remember("a", switch="think", turn=turn(1))
    assert s.get("b").turns == [] and s.get("b").switch is None
