"""The bodies of the two events KAT publishes, and a recorder for tests.

An event sink is any ``Callable[[str, dict], None]`` called as ``sink(queue_name, body)``
with the plain JSON body KAT would publish on that queue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kat_scheduler.sim.records import OOIRecord

SCAN_PROFILE_MUTATIONS = "scan_profile_mutations"
RAW_FILE_RECEIVED = "raw_file_received"

EventSink = Callable[[str, dict[str, Any]], None]


def scan_profile_mutation(operation: str, organisation: str, primary_key: str, ooi: OOIRecord | None) -> dict[str, Any]:
    """A ``scan_profile_mutations`` body; ``ooi`` is ``None`` for a delete."""
    return {
        "operation": operation,
        "primary_key": primary_key,
        "client_id": organisation,
        "value": ooi.mutation_value() if ooi is not None and operation != "delete" else None,
    }


def raw_file_received(
    organisation: str,
    raw_id: str,
    boefje_meta: dict[str, Any],
    mime_types: tuple[str, ...],
    created_at: datetime,
) -> dict[str, Any]:
    """A ``raw_file_received`` body."""
    return {
        "event_id": "raw_file_received",
        "created_at": created_at.isoformat(),
        "organization": organisation,
        "raw_data": {
            "id": raw_id,
            "boefje_meta": boefje_meta,
            "mime_types": [{"value": mime_type} for mime_type in mime_types],
            "secure_hash": None,
            "hash_retrieval_link": None,
        },
    }


class EventRecorder:
    """A thread-safe event sink that keeps every event, for tests.

    >>> recorder = EventRecorder()
    >>> kat = SimulatedKAT(world, event_sink=recorder)
    >>> recorder.wait_for("raw_file_received", count=1)
    """

    def __init__(self) -> None:
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._condition = threading.Condition()

    def __call__(self, queue: str, body: dict[str, Any]) -> None:
        with self._condition:
            self._events.append((queue, body))
            self._condition.notify_all()

    @property
    def events(self) -> list[tuple[str, dict[str, Any]]]:
        with self._condition:
            return list(self._events)

    def bodies(self, queue: str) -> list[dict[str, Any]]:
        with self._condition:
            return [body for name, body in self._events if name == queue]

    def clear(self) -> None:
        with self._condition:
            self._events.clear()

    def wait_for(self, queue: str, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` events arrived on ``queue``; returns them all."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                bodies = [body for name, body in self._events if name == queue]
                remaining = deadline - time.monotonic()
                if len(bodies) >= count or remaining <= 0:
                    return bodies
                self._condition.wait(remaining)
