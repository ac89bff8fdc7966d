"""edged: a local-LLM daemon for the edge (MQTT in, MLX model, JSON out)."""

__version__ = "0.1.0"
