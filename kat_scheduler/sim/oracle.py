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
"""

from __future__ import annotations

from datetime import datetime, timedelta

from croniter import croniter

from kat_scheduler.sim.world import World

Triple = tuple[str, str, str]

#: The scheduler's default stall age: its default hard time limit (360 s) plus running slack (60 s).
DEFAULT_STALL_AGE_SECONDS = 420.0


def allowed_boefje_tasks(
    world: World,
    now: datetime,
    default_grace_seconds: int = 86400,
    stall_age_seconds: float = DEFAULT_STALL_AGE_SECONDS,
) -> set[Triple]:
    """Every (org, boefje, object) a first planning tick at ``now`` may queue."""
    allowed: set[Triple] = set()
    stall_age = timedelta(seconds=stall_age_seconds)
    for org in world.organisation_ids:
        boefjes = [b for b in world.boefjes if world.is_enabled(org, b.id) and b.consumes and not b.run_on]
        for ooi in world.oois(org).values():
            level = ooi.level if ooi.scan_profile_type != "empty" else 0
            for b in boefjes:
                if ooi.object_type not in b.consumes or b.scan_level > level:
                    continue
                last = world.last_run(org, b.id, ooi.primary_key)
                if last is not None and last.ended_at is None and last.started_at is not None:
                    if last.started_at + stall_age > now:
                        continue  # still running under some runner
                elif last is not None and last.ended_at is not None:
                    if b.cron:
                        if croniter(b.cron, last.ended_at).get_next(datetime) > now:
                            continue
                    else:
                        grace = (
                            timedelta(minutes=b.interval) if b.interval else timedelta(seconds=default_grace_seconds)
                        )
                        if now - last.ended_at < grace:
                            continue
                allowed.add((org, b.id, ooi.primary_key))
    return allowed


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
