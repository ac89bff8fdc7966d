"""Local command resolution with sentence templates (hassil + Home Assistant intents)."""

from edged.devices.intents.matcher import IntentResolver

__all__ = ["IntentResolver"]
