"""Diagnostic queries: telemetry windows, edged's own statistics, the diagnosis schema, a simulator."""
