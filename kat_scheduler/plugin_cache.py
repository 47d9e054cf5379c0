"""Katalogus plugin lists per organisation, cached for a short time.

Event handlers see thousands of events a second for the same few organisations; asking
Katalogus for the plugin list on every event would put one HTTP call per event on the hot path.
Entries live ``ttl`` seconds (``SCHEDULER_KATALOGUS_CACHE_TTL``), so a plugin enabled or
disabled in Katalogus takes effect within that time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from kat_scheduler.clients import KatalogusClient
from kat_scheduler.models.plugins import Boefje, Normalizer

T = TypeVar("T")


class PluginCache:
    def __init__(self, katalogus: KatalogusClient, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.katalogus = katalogus
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[float, object]] = {}

    def boefjes(self, org: str) -> list[Boefje]:
        return self._get(("boefje", org), lambda: self.katalogus.boefjes(org))

    def normalizers(self, org: str) -> list[Normalizer]:
        return self._get(("normalizer", org), lambda: self.katalogus.normalizers(org))

    def invalidate(self, org: str | None = None) -> None:
        with self._lock:
            if org is None:
                self._entries.clear()
            else:
                for key in [k for k in self._entries if k[1] == org]:
                    del self._entries[key]

    def _get(self, key: tuple[str, str], fetch: Callable[[], list[T]]) -> list[T]:
        now = self.clock()
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self.ttl:
            return entry[1]  # type: ignore[return-value]
        value = fetch()
        with self._lock:
            self._entries[key] = (now, value)
        return value
