"""Serving requests: intake, ledger, routing, sessions, rate limits, progress, reload, delivery."""
