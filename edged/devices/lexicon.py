"""Words per language for the rules resolver, shipped as data (``lexicon/<lang>.toml``) and extendable.

A lexicon names verb phrases per action, device kinds per type, filler and question words, units,
colours and relative words. Extra folders may hold ``<lang>.toml`` files whose lists add to the
shipped ones, so a home can teach its own words without code. Text is normalised and split into
words the same way for commands and for registry names, so spans and matches agree.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cn2an
from text_to_num import alpha2digit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SHIPPED = Path(__file__).resolve().parent / "lexicon"
DEFAULT_LANGUAGE = "en"
GAP = "..."  # in a phrase: up to MAX_GAP other words
MAX_GAP = 6
_TEXT2NUM = {"en", "de", "fr", "es", "pt", "it", "nl", "da"}
_ZH_ONE = re.compile(r"(?<![0-9])1(?=[下点些半会个])")  # 一下, 一点: "a little", not the number one
_WORD = re.compile(r"[\u3400-\u9fff]|-?[0-9]+(?:\.[0-9]+)?|°c?|%|[^\W\d_\u3400-\u9fff]+")


@dataclass(frozen=True)
class Word:
    """One normalised word of a text with its character span in that text."""

    text: str
    start: int
    end: int


def normalize(text: str, language: str = DEFAULT_LANGUAGE, *, numbers: bool = True) -> str:
    """Lower case, apostrophes dropped, hyphens as spaces, number words as digits (where supported)."""
    out = re.sub(r"['’`]", "", text.lower()).replace("_", " ")
    out = re.sub(r"-(?!\d)|(?<=\w)-", " ", out)  # hyphens join words; a minus sign stays ("-20")
    out = re.sub(r"(\d),(\d)", r"\1.\2", out) if language != "en" else out
    if not numbers:
        return out
    if language in _TEXT2NUM:
        out = alpha2digit(out, language)
    elif language == "zh":
        with warnings.catch_warnings():  # cn2an warns about numerals it leaves as they are
            warnings.simplefilter("ignore")
            out = _ZH_ONE.sub("一", cn2an.transform(out, "cn2an"))
    return out


def words(text: str) -> list[Word]:
    """The words of normalised text (each CJK character is a word)."""
    return [Word(m.group(0), m.start(), m.end()) for m in _WORD.finditer(text)]


@lru_cache(maxsize=8192)
def phrase_words(phrase: str, language: str = DEFAULT_LANGUAGE, *, numbers: bool = True) -> tuple[str, ...]:
    """A registry name (numbers=True) or lexicon phrase as the words it matches ("..." kept as a gap)."""
    parts = phrase.split(GAP)
    out: list[str] = []
    for i, part in enumerate(parts):
        out += [w.text for w in words(normalize(part, language, numbers=numbers))]
        if i < len(parts) - 1:
            out.append(GAP)
    return tuple(out)


def find_phrase(seq: Sequence[str], phrase: Sequence[str]) -> list[tuple[int, int]]:
    """Every (start, end) word range of ``seq`` matching ``phrase``; a gap matches up to MAX_GAP words."""
    found = []
    for start in range(len(seq)):
        end = _match_at(seq, phrase, start)
        if end is not None:
            found.append((start, end))
    return found


def _match_at(seq: Sequence[str], phrase: Sequence[str], i: int) -> int | None:
    if not phrase:
        return i
    head, rest = phrase[0], phrase[1:]
    if head == GAP:
        for skip in range(1, MAX_GAP + 1):
            end = _match_at(seq, rest, i + skip) if i + skip <= len(seq) else None
            if end is not None:
                return end
        return None
    if i < len(seq) and seq[i] == head:
        return _match_at(seq, rest, i + 1)
    return None


@dataclass(frozen=True)
class Kind:
    """A kind of device people name ("lights"): the words, the registry types, or words of device names."""

    name: str
    words: tuple[tuple[str, ...], ...]
    device_types: frozenset[str]
    name_words: frozenset[str]


Phrases = dict[str, tuple[tuple[str, ...], ...]]


@dataclass(frozen=True)
class Lexicon:
    """The words of one language, as normalised word tuples."""

    language: str
    fillers: frozenset[str]
    questions: frozenset[str]
    question_endings: frozenset[str]  # a last word that makes a question (zh 吗)
    weak_verbs: frozenset[tuple[str, ...]]  # verbs that count only when no other is said ("on", "off")
    unsupported: tuple[tuple[str, ...], ...]  # negation, exceptions, alternatives, times: not for the rules
    unknown_nouns: frozenset[str]
    here: tuple[tuple[str, ...], ...]
    everywhere: tuple[tuple[str, ...], ...]
    current: tuple[tuple[str, ...], ...]
    absolute: frozenset[str]  # a word before a number that makes it the value to set ("to 30")
    numbers: dict[str, float]
    units: Phrases
    colors: Phrases
    color_temps: dict[int, tuple[tuple[str, ...], ...]]
    relative: Phrases  # small, max, min, half, halve, double
    up: Phrases  # dimension ("any", "brightness", ...) -> phrases
    down: Phrases
    kinds: dict[str, Kind]
    actions: Phrases  # action name (or "set") -> verb phrases


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = _merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            out[key] = old + [v for v in value if v not in old]
        else:
            out[key] = value
    return out


def _read(language: str, extra_dirs: Iterable[Path]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for folder in (SHIPPED, *extra_dirs):
        path = Path(folder) / f"{language}.toml"
        if path.is_file():
            data = _merge(data, tomllib.loads(path.read_text(encoding="utf-8")))
    return data


@lru_cache(maxsize=16)
def load_lexicon(language: str = DEFAULT_LANGUAGE, extra_dirs: tuple[Path, ...] = ()) -> Lexicon:
    """The lexicon of ``language`` (English when none is shipped), extended by ``extra_dirs``."""
    if not any((Path(d) / f"{language}.toml").is_file() for d in (SHIPPED, *extra_dirs)):
        language = DEFAULT_LANGUAGE
    return _build(language, _read(language, extra_dirs))


def _build(language: str, data: dict[str, Any]) -> Lexicon:
    def ph(items: Iterable[str]) -> tuple[tuple[str, ...], ...]:
        return tuple(
            sorted({phrase_words(p, language, numbers=False) for p in items} - {()}, key=lambda p: (-len(p), p))
        )

    def table(section: dict[str, Any]) -> Phrases:
        return {str(k): ph(v) for k, v in section.items() if isinstance(v, list)}

    relative = data.get("relative", {})
    return Lexicon(
        language=language,
        fillers=frozenset(w for f in data.get("fillers", []) for w in phrase_words(f, language, numbers=False)),
        questions=frozenset(w for f in data.get("questions", []) for w in phrase_words(f, language, numbers=False)),
        question_endings=frozenset(
            w for f in data.get("question_endings", []) for w in phrase_words(f, language, numbers=False)
        ),
        weak_verbs=frozenset(ph(data.get("weak_verbs", []))),
        unsupported=ph(data.get("unsupported", [])),
        unknown_nouns=frozenset(
            w for f in data.get("unknown_nouns", []) for w in phrase_words(f, language, numbers=False)
        ),
        here=ph(data.get("here", [])),
        everywhere=ph(data.get("everywhere", [])),
        current=ph(data.get("current", [])),
        absolute=frozenset(w for f in data.get("absolute", []) for w in phrase_words(f, language, numbers=False)),
        numbers={
            " ".join(phrase_words(k.replace("_", " "), language, numbers=False)): float(v)
            for k, v in data.get("numbers", {}).items()
        },
        units=table(data.get("units", {})),
        colors=table(data.get("colors", {})),
        color_temps={int(k): ph(v) for k, v in data.get("color_temps", {}).items()},
        relative=table(relative),
        up=table(relative.get("up", {})),
        down=table(relative.get("down", {})),
        kinds={
            name: Kind(
                name,
                ph(spec.get("words", [])),
                frozenset(spec.get("device_types", [])),
                frozenset(spec.get("name_words", [])),
            )
            for name, spec in data.get("types", {}).items()
        },
        actions=table(data.get("actions", {})),
    )
