"""Broker-specific publishers behind :mod:`kat_scheduler.publisher` (which holds the public API)."""
