"""Sentence templates per language: Home Assistant's shared intents merged with the user's own YAML files.

User files use hassil's format (``language``, ``intents``, ``lists``, ``expansion_rules``) and may
extend HA intents or add new ones; they live in ``<sentences_dir>/<language>/*.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
import yaml
from hassil import Intents, RangeSlotList, SlotList, merge_dict
from home_assistant_intents import get_intents, get_languages

log = structlog.get_logger("edged.intents")
DEFAULT_SENTENCES_DIR = Path("config/sentences")
_ALIASES = {"zh": "zh-CN", "zh-hans": "zh-CN", "zh-hant": "zh-TW", "pt-pt": "pt", "nb-no": "nb", "no": "nb"}


def intents_language(language: str) -> str | None:
    """The Home Assistant intents language for a request's language code ("en-GB" -> "en", "zh" -> "zh-CN")."""
    known = {code.lower(): code for code in get_languages()}
    code = language.strip().replace("_", "-").lower()
    for candidate in (code, _ALIASES.get(code, ""), code.split("-")[0], _ALIASES.get(code.split("-")[0], "")):
        if candidate.lower() in known:
            return known[candidate.lower()]
    return None


def user_files(sentences_dir: Path | None, language: str, hass_language: str) -> list[Path]:
    """The user's template files for a language, looked up under the request's code and HA's code."""
    if sentences_dir is None:
        return []
    names = dict.fromkeys((language, hass_language, hass_language.split("-")[0]))
    return sorted({f for name in names for f in (sentences_dir / name).glob("*.yaml")})


def load_intents(language: str, sentences_dir: Path | None) -> Intents | None:
    """HA intents for the language merged with the user's files; None when HA has no such language."""
    hass_language = intents_language(language)
    if hass_language is None:
        return None
    data: dict[str, Any] | None = get_intents(hass_language)
    if data is None:
        return None
    files = user_files(sentences_dir, language, hass_language)
    for path in files:
        with path.open(encoding="utf-8") as handle:
            extra = yaml.safe_load(handle) or {}
        extra.pop("language", None)
        merge_dict(data, extra)
    log.info("intents_loaded", language=language, intents_language=hass_language, user_files=[str(f) for f in files])
    return Intents.from_dict(data)


def prepare_numbers(intents: Intents) -> int:
    """Build the number-word tables of every range list now (hassil builds each on first use, up to ~100 ms).

    Uses hassil's module-level cache; with a hassil that lays it out differently this does nothing
    and the tables are built on first use as before. Returns how many tables were built.
    """
    try:
        from hassil import string_matcher
        from hassil.string_matcher import _build_range_trie  # private: hassil offers no public warm-up

        cache = string_matcher._RANGE_TRIE_CACHE
    except (ImportError, AttributeError):
        return 0
    lists: list[SlotList] = [*intents.slot_lists.values()]
    lists += [sl for intent in intents.intents.values() for data in intent.data for sl in data.slot_lists.values()]
    built = 0
    for rl in lists:
        if isinstance(rl, RangeSlotList) and rl.words:
            language = rl.words_language or intents.language
            key = (rl.start, rl.stop, rl.step, rl.fraction_type)
            if key not in cache[language]:
                cache[language][key] = _build_range_trie(language, rl)
                built += 1
    return built
