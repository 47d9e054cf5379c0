"""What KAT's rules allow in a simulated world, computed straight from the world's records.

An independent second implementation of the rules (it shares no code with
``kat_scheduler.eligibility`` or the planner), used by tests and benchmarks to check that a tick
queued exactly the right set: (organisation, boefje id, input object) triples.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from croniter import croniter

from kat_scheduler.sim.world import World

Triple = tuple[str, str, str]


def allowed_boefje_tasks(world: World, now: datetime, default_grace_seconds: int = 86400) -> set[Triple]:
    """Every (org, boefje, object) a first planning tick at ``now`` may queue."""
    allowed: set[Triple] = set()
    for org in world.organisation_ids:
        boefjes = [b for b in world.boefjes if world.is_enabled(org, b.id) and b.consumes and not b.run_on]
        for ooi in world.oois(org).values():
            level = ooi.level if ooi.scan_profile_type != "empty" else 0
            for b in boefjes:
                if ooi.object_type not in b.consumes or b.scan_level > level:
                    continue
                last = world.last_run(org, b.id, ooi.primary_key)
                if last is not None and last.ended_at is not None:
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
