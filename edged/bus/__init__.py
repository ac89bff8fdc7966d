"""MQTT transport: the only package that imports paho. Knows topics and bytes, not models."""
