"""Spoken requests into single commands: strip wake words and politeness, split at joining words.

"hey edged, could you turn off the kitchen light and then open the blinds please" becomes
``["turn off the kitchen light", "open the blinds"]``. A split is only a proposal: the pipeline
keeps it when every part resolves on its own, so "play rock and roll" stays whole.
"""

from __future__ import annotations

import re

MAX_PARTS = 4

_WAKE = re.compile(r"^\s*(?:(?:hey|hi|ok|okay|hallo|hei)\s+)?edged\b[\s,.:;!]*", re.IGNORECASE)
_LEAD_EN = re.compile(
    r"^\s*(?:(?:um+|uh+|er+|so|well|oh|okay|ok|alright|right)\b[\s,]*)*"
    r"(?:(?:please|pls|kindly)\b[\s,]*|(?:can|could|would|will)\s+you\s+(?:please\s+)?|"
    r"i\s+(?:would|'d)\s+like\s+(?:you\s+)?to\s+|i\s+want\s+(?:you\s+)?to\s+|i\s+need\s+you\s+to\s+|"
    r"(?:go\s+ahead\s+and|just)\s+)*",
    re.IGNORECASE,
)
_TAIL_EN = re.compile(
    r"[\s,]*(?:\b(?:please|pls|thanks|thank\s+you|thx|for\s+me|now|right\s+now|if\s+you\s+can|cheers)\b[\s,.!?]*)*$",
    re.IGNORECASE,
)
_PUNCT_END = re.compile(r"[\s.!?。！？]+$")

# Joiners between commands, per language: tried in order, the first that splits into resolvable parts wins.
_JOINERS: dict[str, tuple[str, ...]] = {
    "en": (r"\s*[,;]?\s*\b(?:and\s+then|and\s+also|and|then|also|after\s+that|plus)\b\s*", r"\s*[;,]\s*", r"\.\s+"),
    "de": (r"\s*[,;]?\s*\b(?:und\s+dann|und|dann|danach|außerdem|ausserdem)\b\s*", r"\s*[;,]\s*", r"\.\s+"),
    "zh": (r"\s*(?:然后|并且|而且|再|和|、|，|,|；|;|。)\s*",),
}


def clean(text: str, language: str = "en") -> str:
    """The command without wake word, fillers, politeness and closing punctuation (English forms only)."""
    out = _WAKE.sub("", text.strip())
    if language.startswith("en"):
        out = _TAIL_EN.sub("", _LEAD_EN.sub("", out))
    return _PUNCT_END.sub("", out).strip(" ,")


def candidate_splits(text: str, language: str = "en") -> list[list[str]]:
    """Ways to read ``text`` as several commands, most specific joiner first; each has 2..MAX_PARTS parts."""
    base = clean(text, language)
    found: list[list[str]] = []
    for joiner in _JOINERS.get(language.split("-")[0], _JOINERS["en"]):
        parts = [clean(p, language) for p in re.split(joiner, base, flags=re.IGNORECASE)]
        parts = [p for p in parts if p]
        if 1 < len(parts) <= MAX_PARTS and parts not in found:
            found.append(parts)
    return found


_VERB = re.compile(
    r"^((?:turn|switch|shut|power)\s+(?:on|off)|(?:set|dim|open|close|lock|unlock|start|stop|play|pause)\b)",
    re.IGNORECASE,
)


def carry_verb(previous: str, part: str) -> str | None:
    """'turn off the kitchen light and the fan': the second part borrows the first one's verb."""
    if _VERB.match(part):
        return None
    verb = _VERB.match(previous)
    return f"{verb.group(1)} {part}" if verb else None
