"""Katalogus plugin lists per organisation, cached for a short time.

Event handlers see thousands of events a second for the same few organisations; asking
Katalogus for the plugin list on every event would put one HTTP call per event on the hot path.
Entries live ``ttl`` seconds (``SCHEDULER_KATALOGUS_CACHE_TTL``), so a plugin enabled or
disabled in Katalogus takes effect within that time.

A batch of events names many organisations at once, and after a start or once the entries
expire most of them must be fetched: :meth:`PluginCache.prefetch` fetches those concurrently
(up to :data:`PREFETCH_THREADS` at a time), so a cold batch waits about one round trip, not one
per organisation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from kat_scheduler.clients import KatalogusClient
from kat_scheduler.models.plugins import Boefje, Normalizer

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: Katalogus requests in flight at once while prefetching (the client's pool holds 10 connections).
PREFETCH_THREADS = 8


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

    def prefetch(self, kind: str, orgs: Iterable[str]) -> int:
        """Fetch the ``kind`` (``boefje`` or ``normalizer``) lists of ``orgs`` not cached, concurrently.

        Returns how many were fetched. A failed fetch is only logged here: the next
        :meth:`boefjes` or :meth:`normalizers` call for that organisation asks again and raises,
        where the caller handles it (an unknown organisation, Katalogus down).
        """
        fetchers = {"boefje": self.katalogus.boefjes, "normalizer": self.katalogus.normalizers}
        if kind not in fetchers:
            raise ValueError(f"unknown plugin kind {kind!r}; expected one of {sorted(fetchers)}")
        fetch = fetchers[kind]
        now = self.clock()
        with self._lock:
            missing = sorted({org for org in orgs if not self._fresh(self._entries.get((kind, org)), now)})
        if len(missing) < 2:
            return 0  # one request gains nothing from a thread; the caller's own call makes it
        fetched = 0
        with ThreadPoolExecutor(min(PREFETCH_THREADS, len(missing)), thread_name_prefix="katalogus") as pool:
            for org, future in [(org, pool.submit(fetch, org)) for org in missing]:
                try:
                    value = future.result()
                except Exception as exc:  # raised again by the caller's own call, which handles it
                    logger.debug("prefetching the %s list of %s failed: %s", kind, org, exc)
                    continue
                with self._lock:
                    self._entries[(kind, org)] = (now, value)
                fetched += 1
        return fetched

    def _fresh(self, entry: tuple[float, object] | None, now: float) -> bool:
        return entry is not None and now - entry[0] < self.ttl

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
        if entry is not None and self._fresh(entry, now):
            return entry[1]  # type: ignore[return-value]
        value = fetch()
        with self._lock:
            self._entries[key] = (now, value)
        return value
