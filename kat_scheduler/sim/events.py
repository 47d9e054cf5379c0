"""The bodies of the two events KAT publishes, storms of them, and a recorder for tests.

An event sink is any ``Callable[[str, dict], None]`` called as ``sink(queue_name, body)``
with the plain JSON body KAT would publish on that queue.

:func:`world_mutations` and :func:`world_raw_files` build many bodies about one world's objects
and boefje runs: what ``kat-scheduler sim publish-mutations`` / ``publish-raw`` send, so tests
and benchmarks can build exactly the same events in-process.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from itertools import cycle, islice, zip_longest
from typing import TYPE_CHECKING, Any, TypeVar

from kat_scheduler.sim.records import DECLARED, EMPTY, OOIRecord

if TYPE_CHECKING:
    from kat_scheduler.sim.world import World


#: The mime type Bytes adds to the raw file of a failed boefje run (it gets no normalizer).
ERROR_MIME_TYPE = "error/boefje"
MUTATION_OPERATIONS: tuple[str, ...] = ("create", "update", "delete")

EventSink = Callable[[str, dict[str, Any]], None]
T = TypeVar("T")


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


# -- storms: many events about one world ----------------------------------------------------


def world_mutations(
    world: World,
    count: int | None = None,
    *,
    organisation: str | None = None,
    operation: str = "create",
    level: int | None = None,
) -> list[dict[str, Any]]:
    """``count`` mutation bodies about the world's objects (``None``: each object once).

    Objects are taken round-robin over the organisations (or from ``organisation`` only) in
    world order, starting over when ``count`` exceeds them. ``level`` replaces the object's level
    in the event (an empty profile then becomes a declared one above level 0); the world itself
    is not changed.
    """
    if operation not in MUTATION_OPERATIONS:
        raise ValueError(f"operation must be one of {MUTATION_OPERATIONS}, not {operation!r}")
    if level is not None and not 0 <= level <= 4:
        raise ValueError(f"level must be 0-4, not {level}")
    per_org = [[(org, ooi) for ooi in world.oois(org).values()] for org in _organisations(world, organisation)]
    return [
        scan_profile_mutation(operation, org, ooi.primary_key, ooi if level is None else _at_level(ooi, level))
        for org, ooi in _take(_round_robin(per_org), count, "objects")
    ]


def world_raw_files(
    world: World,
    count: int | None = None,
    *,
    organisation: str | None = None,
    error_fraction: float = 0.0,
    created_at: datetime | None = None,
) -> list[dict[str, Any]]:
    """``count`` ``raw_file_received`` bodies for the world's boefje runs (``None``: each run once).

    Runs are taken as objects are in :func:`world_mutations`. Every raw file gets a new id and
    is tagged ``boefje/<id>``; an evenly spread ``error_fraction`` of them also ``error/boefje``.
    ``created_at`` defaults to the world's clock.
    """
    if not 0.0 <= error_fraction <= 1.0:
        raise ValueError(f"error_fraction must be between 0 and 1, not {error_fraction}")
    per_org = [world.runs(org) for org in _organisations(world, organisation)]
    bodies = []
    for index, run in enumerate(_take(_round_robin(per_org), count, "boefje runs")):
        failed = int((index + 1) * error_fraction) > int(index * error_fraction)
        mime_types = (f"boefje/{run.boefje_id}", ERROR_MIME_TYPE) if failed else (f"boefje/{run.boefje_id}",)
        meta = world.render_boefje_meta(run)
        when = created_at or world.clock()
        bodies.append(raw_file_received(run.organization, str(uuid.uuid4()), meta, mime_types, when))
    return bodies


def _organisations(world: World, organisation: str | None) -> list[str]:
    if organisation is None:
        return world.organisation_ids
    if world.organisation(organisation) is None:
        raise ValueError(f"unknown organisation {organisation!r}; the world has {', '.join(world.organisation_ids)}")
    return [organisation]


def _round_robin(groups: Sequence[Sequence[T]]) -> list[T]:
    """The first of every group, then the second of every group, and so on."""
    gap: Any = object()
    return [item for row in zip_longest(*groups, fillvalue=gap) for item in row if item is not gap]


def _take(items: list[T], count: int | None, what: str) -> list[T]:
    if count is None:
        return items
    if count and not items:
        raise ValueError(f"the world has no {what} to publish events about")
    return list(islice(cycle(items), count))


def _at_level(ooi: OOIRecord, level: int) -> OOIRecord:
    profile = DECLARED if ooi.scan_profile_type == EMPTY and level > 0 else ooi.scan_profile_type
    return replace(ooi, scan_profile_type=profile, level=level)


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
