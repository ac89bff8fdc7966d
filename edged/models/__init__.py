"""Model files: where they live, what they hold, pull/list/info, GGUF import, the offline test model."""
