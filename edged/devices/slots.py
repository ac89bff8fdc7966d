"""Values a command carries: numbers with units, colours, colour temperatures, relative words.

Numbers come as digits or words (number words are turned into digits by ``text2num`` during
normalisation, small ones and fractions by the lexicon), each with its unit ("%", "°C", "K", "rpm",
"s") when one follows. Words inside a linked device name ("pump 1") are not values. A number
after a "current" phrase ("the light is at 40 percent, ...") is the device's value now, and the
next one is the change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from edged.devices.lexicon import Lexicon, Word, find_phrase

Direction = Literal["up", "down"]
Extreme = Literal["max", "min", "half"]


@dataclass(frozen=True)
class Number:
    """A number said in the command, with its unit and word range [first, last) (unit included)."""

    value: float
    unit: str | None
    first: int
    last: int
    absolute: bool  # "to 30": a target value; otherwise maybe a change ("by 5", "20 more")


@dataclass(frozen=True)
class Slots:
    """The values of one command; word indices refer to ``Linking.words``."""

    numbers: tuple[Number, ...] = ()
    color: str | None = None  # a colour enum value ("purple", "warm_white")
    kelvin: int | None = None  # a white said as a temperature ("cool white", "4000 K")
    direction: Direction | None = None
    dimension: str | None = None  # what the relative word is about: brightness, volume, temperature, speed
    small: bool = False  # "a bit", "a little"
    extreme: Extreme | None = None  # "full", "lowest", "halfway"
    factor: float | None = None  # "halve" 0.5, "double" 2
    current: Number | None = None  # the value the speaker says the device has now
    used: frozenset[int] = frozenset()  # word indices the values came from

    @property
    def relative(self) -> bool:
        return self.direction is not None or self.factor is not None

    def value(self) -> Number | None:
        """The number to set or change by: the last one that is not the stated current value."""
        rest = [n for n in self.numbers if n is not self.current]
        return rest[-1] if rest else None


def _number(lex: Lexicon, seq: Sequence[str], i: int) -> tuple[float, int] | None:
    try:
        return float(seq[i]), i + 1
    except ValueError:
        pass
    for phrase, value in sorted(lex.numbers.items(), key=lambda kv: -len(kv[0])):
        words = phrase.split()
        if list(seq[i : i + len(words)]) == words:
            return value, i + len(words)
    return None


def _unit(lex: Lexicon, seq: Sequence[str], i: int) -> tuple[str | None, int]:
    for unit, phrases in lex.units.items():
        for p in phrases:
            if tuple(seq[i : i + len(p)]) == p:
                return unit, i + len(p)
    return None, i


def _numbers(lex: Lexicon, seq: Sequence[str], skip: set[int]) -> list[Number]:
    found: list[Number] = []
    i = 0
    while i < len(seq):
        got = None if i in skip else _number(lex, seq, i)
        if got is None:
            i += 1
            continue
        value, end = got
        unit, end = _unit(lex, seq, end)
        absolute = i > 0 and seq[i - 1] in lex.absolute
        found.append(Number(value, unit, i, end, absolute))
        i = end
    return found


def _hits(seq: Sequence[str], table: dict[str, tuple[tuple[str, ...], ...]]) -> list[tuple[str, int, int]]:
    return [(key, f, la) for key, phrases in table.items() for p in phrases for f, la in find_phrase(seq, p)]


def _direction(
    lex: Lexicon, seq: Sequence[str], skip: set[int], verb: set[int]
) -> tuple[Direction | None, str | None, set[int]]:
    """Up or down, and about what; not from words of a name ("wake up routine") or from part of a longer verb
    ("lock up"; a verb that is itself a direction, "dim", counts)."""
    ups, downs = _hits(seq, lex.up), _hits(seq, lex.down)
    hits = [("up", *h) for h in ups] + [("down", *h) for h in downs]
    hits = [
        h
        for h in hits
        if not set(range(h[2], h[3])) & skip and not (h[3] - h[2] < len(verb) and set(range(h[2], h[3])) <= verb)
    ]
    if not hits:
        return None, None, set()
    specific = [h for h in hits if h[1] != "any"]
    way, dim, _f, _l = (specific or hits)[0]
    return way, (dim if dim != "any" else None), {i for h in hits for i in range(h[2], h[3])}  # type: ignore[return-value]


def _colour(lex: Lexicon, seq: Sequence[str], verb: set[int]) -> tuple[str | None, int | None, set[int]]:
    temps = [(int(k), f, la) for k, ps in lex.color_temps.items() for p in ps for f, la in find_phrase(seq, p)]
    temp_words = {i for _k, f, la in temps for i in range(f, la)} | verb
    colours = [h for h in _hits(seq, lex.colors) if not set(range(h[1], h[2])) & temp_words]
    kelvin = max(temps, key=lambda t: t[2] - t[1])[0] if temps else None
    colour = max(colours, key=lambda h: h[2] - h[1])[0] if colours else None
    return colour, kelvin, temp_words | {i for h in colours for i in range(h[1], h[2])}


def _current(lex: Lexicon, seq: Sequence[str], numbers: list[Number], relative: bool) -> Number | None:
    if not numbers or (len(numbers) < 2 and not relative):
        return None
    first = numbers[0]
    said = any(la == first.first for p in lex.current for _f, la in find_phrase(seq[: first.first], p))
    return first if said else None


def extract(
    lex: Lexicon,
    ws: Sequence[Word],
    *,
    skip: frozenset[int] | set[int] = frozenset(),
    verb: frozenset[int] | set[int] = frozenset(),
) -> Slots:
    """The values in the words of a command; ``skip`` holds linked names, ``verb`` the verb's words
    ("warm up" is no colour)."""
    seq = [w.text for w in ws]
    numbers = _numbers(lex, seq, set(skip))
    direction, dimension, dir_used = _direction(lex, seq, set(skip), set(verb))
    colour, kelvin, colour_used = _colour(lex, seq, set(verb) | set(skip))
    rel = {key: find_phrase(seq, p) for key, ps in lex.relative.items() for p in ps if find_phrase(seq, p)}
    extreme = next((k for k in ("max", "min", "half") if k in rel), None)
    factor = 0.5 if "halve" in rel else 2.0 if "double" in rel else None
    k_numbers = [n for n in numbers if n.unit == "K"]
    used = {i for n in numbers for i in range(n.first, n.last)} | dir_used | colour_used
    used |= {i for spans in rel.values() for f, la in spans for i in range(f, la)}
    return Slots(
        numbers=tuple(n for n in numbers if n.unit != "K"),
        color=colour,
        kelvin=int(k_numbers[-1].value) if k_numbers else kelvin,
        direction=direction if factor is None else None,
        dimension=dimension,
        small="small" in rel,
        extreme=extreme,
        factor=factor,
        current=_current(lex, seq, numbers, direction is not None or factor is not None),
        used=frozenset(used),
    )
