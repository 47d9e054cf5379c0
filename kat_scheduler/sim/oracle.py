"""What KAT's rules allow in a simulated world, computed straight from the world's records.

An independent second implementation of the rules (it shares no code with
``kat_scheduler.rules`` or the planner), used by tests and benchmarks to check that a tick
queued exactly the right set: (organisation, boefje id, input object) triples.

For a first tick (no history of the scheduler's own), a pair is allowed when the boefje is
enabled, runs periodically (``consumes`` set, no ``run_on``), consumes the object's type and its
clearance is met, and Bytes' newest run of the pair (the latest ``started_at``):

* does not exist; or
* has no end and started at least ``stall_age_seconds`` ago (the run died); a younger one without
  an end is running: not allowed; or
* ended, and for a boefje with ``cron``, a cron time came after that end and not after ``now``;
  for one without, its ``interval`` minutes (else the default grace) have passed since that end.

A pair its boefje descheduled (:func:`descheduled_pairs`: Bytes holds a raw file of a run of the
pair tagged ``openkat/deschedule``) is never allowed: it is not due again until an operator says so.

:func:`allowed_event_tasks` models the event path: what a storm of scan-profile mutations may
queue right after such a first tick (see there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter

from kat_scheduler.sim.deschedule import DESCHEDULE_MIME_TYPE
from kat_scheduler.sim.world import World

Triple = tuple[str, str, str]

#: The scheduler's default stall age: its default hard time limit (360 s) plus running slack (60 s).
DEFAULT_STALL_AGE_SECONDS = 420.0


def _due_by_bytes(
    world: World, org: str, boefje: Any, primary_key: str, now: datetime, default_grace: timedelta, stall_age: timedelta
) -> bool:
    """Whether Bytes' newest run of the pair lets it run at ``now`` (none, died, or grace/cron over)."""
    last = world.last_run(org, boefje.id, primary_key)
    if last is None:
        return True
    if last.ended_at is None:
        return last.started_at is None or last.started_at + stall_age <= now
    if boefje.cron:
        return bool(croniter(boefje.cron, last.ended_at).get_next(datetime) <= now)
    grace = timedelta(minutes=boefje.interval) if boefje.interval else default_grace
    return now - last.ended_at >= grace


def bytes_state(
    world: World, org: str, boefje: Any, primary_key: str, now: datetime, default_grace: timedelta, stall_age: timedelta
) -> str:
    """What Bytes' newest run of the pair says at ``now``: ``"no run"``, ``"running"``, ``"stalled"``,
    ``"not due"`` (ended inside its grace period, or before the next cron time) or ``"due"``."""
    last = world.last_run(org, boefje.id, primary_key)
    if last is None:
        return "no run"
    if last.ended_at is None and last.started_at is not None:
        return "stalled" if last.started_at + stall_age <= now else "running"
    return "due" if _due_by_bytes(world, org, boefje, primary_key, now, default_grace, stall_age) else "not due"


def descheduled_pairs(world: World) -> set[Triple]:
    """Every (org, boefje, object) whose boefje descheduled it: a raw file of one of the pair's runs
    in Bytes is tagged ``openkat/deschedule``."""
    found: set[Triple] = set()
    for raw in world.raw_files():
        if DESCHEDULE_MIME_TYPE not in raw.mime_types:
            continue
        run = world.boefje_meta(raw.boefje_meta_id)
        if run is not None and run.input_ooi is not None:
            found.add((run.organization, run.boefje_id, run.input_ooi))
    return found


def allowed_boefje_tasks(
    world: World,
    now: datetime,
    default_grace_seconds: int = 86400,
    stall_age_seconds: float = DEFAULT_STALL_AGE_SECONDS,
) -> set[Triple]:
    """Every (org, boefje, object) a first planning tick at ``now`` may queue."""
    allowed: set[Triple] = set()
    descheduled = descheduled_pairs(world)
    stall_age = timedelta(seconds=stall_age_seconds)
    for org in world.organisation_ids:
        boefjes = [b for b in world.boefjes if world.is_enabled(org, b.id) and b.consumes and not b.run_on]
        for ooi in world.oois(org).values():
            level = ooi.level if ooi.scan_profile_type != "empty" else 0
            for b in boefjes:
                if ooi.object_type not in b.consumes or b.scan_level > level:
                    continue
                if (org, b.id, ooi.primary_key) in descheduled:
                    continue
                if _due_by_bytes(
                    world, org, b, ooi.primary_key, now, timedelta(seconds=default_grace_seconds), stall_age
                ):
                    allowed.add((org, b.id, ooi.primary_key))
    return allowed


def allowed_event_tasks(
    world: World,
    mutations: Iterable[Mapping[str, Any]],
    *,
    now: datetime,
    default_grace_seconds: int = 86400,
    stall_age_seconds: float = DEFAULT_STALL_AGE_SECONDS,
) -> set[Triple]:
    """Every (org, boefje, object) that ``mutations`` (``scan_profile_mutations`` bodies) may queue at
    ``now``, after one first tick on the world as it is (and nothing else since).

    That tick queued or gave a schedule to every pair eligible then, so those are not queued again
    (a queued task is live, or has run since; a schedule's deadline is when the pair is due, which
    the storm is assumed to come before). A ``create`` or ``update`` at a level makes the pairs it
    clears eligible: a boefje with ``run_on`` only on its operation and always (its runs come from
    events; Bytes is not asked), any other periodic boefje when it was not eligible at the tick and
    Bytes' newest run of the pair lets it run at ``now`` (as in :func:`allowed_boefje_tasks`). A
    ``delete`` queues nothing. Each object's mutations count as a union (a storm raises once).
    """
    return set(_event_pairs(world, mutations, now, default_grace_seconds, stall_age_seconds, allowed_only=True))


def raised_pairs(
    world: World,
    mutations: Iterable[Mapping[str, Any]],
    *,
    now: datetime,
    default_grace_seconds: int = 86400,
    stall_age_seconds: float = DEFAULT_STALL_AGE_SECONDS,
) -> dict[str, int]:
    """How many periodic pairs ``mutations`` make eligible that were not at the first tick, by what
    Bytes' newest run says at ``now`` (:func:`bytes_state`): the cases the event path must get right."""
    counts: dict[str, int] = {}
    for state in _event_pairs(
        world, mutations, now, default_grace_seconds, stall_age_seconds, allowed_only=False
    ).values():
        counts[state] = counts.get(state, 0) + 1
    return counts


def _event_pairs(
    world: World,
    mutations: Iterable[Mapping[str, Any]],
    now: datetime,
    default_grace_seconds: int,
    stall_age_seconds: float,
    *,
    allowed_only: bool,
) -> dict[Triple, str]:
    """The pairs of :func:`allowed_event_tasks` (``allowed_only``), or every periodic pair the
    mutations newly make eligible, each with its :func:`bytes_state` (``"event"`` for ``run_on``)."""
    pairs: dict[Triple, str] = {}
    descheduled = descheduled_pairs(world)
    stall_age = timedelta(seconds=stall_age_seconds)
    default_grace = timedelta(seconds=default_grace_seconds)
    for body in mutations:
        value = body.get("value")
        operation = body["operation"]
        if operation == "delete" or not value:
            continue
        org, primary_key = body["client_id"], body["primary_key"]
        object_type = value["object_type"]
        level = value["scan_profile"]["level"] if value.get("scan_profile") else 0
        ooi = world.get_ooi(org, primary_key)
        level_at_tick = (ooi.level if ooi.scan_profile_type != "empty" else 0) if ooi is not None else -1
        for b in world.boefjes:
            if not world.is_enabled(org, b.id) or object_type not in b.consumes or b.scan_level > level:
                continue
            if (org, b.id, primary_key) in descheduled:
                continue
            if b.run_on:
                if operation in b.run_on and allowed_only:
                    pairs[(org, b.id, primary_key)] = "event"
                continue
            if b.scan_level <= level_at_tick:
                continue  # the tick's: queued or scheduled
            state = bytes_state(world, org, b, primary_key, now, default_grace, stall_age)
            if not allowed_only or state in ("no run", "stalled", "due"):
                pairs[(org, b.id, primary_key)] = state
    return pairs


def unfinished_runs(
    world: World, now: datetime, stall_age_seconds: float = DEFAULT_STALL_AGE_SECONDS
) -> dict[str, int]:
    """How many pairs' newest run has no end, by ``"running"`` and ``"stalled"`` at ``now``."""
    counts: dict[str, int] = {"running": 0, "stalled": 0}
    stall_age = timedelta(seconds=stall_age_seconds)
    for org in world.organisation_ids:
        newest: dict[tuple[str, str | None], datetime | None] = {}
        ends: dict[tuple[str, str | None], datetime | None] = {}
        for run in world.runs(org):
            newest[(run.boefje_id, run.input_ooi)] = run.started_at
            ends[(run.boefje_id, run.input_ooi)] = run.ended_at
        for key, started in newest.items():
            if ends[key] is None and started is not None:
                counts["running" if started + stall_age > now else "stalled"] += 1
    return counts
