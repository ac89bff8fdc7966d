"""Devices: the registry, the actions it allows, command resolution, confirmations and device state."""
