"""The oracle of the event path: what a storm of mutations may queue right after a first tick."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kat_scheduler.sim import WorldConfig, generate_world
from kat_scheduler.sim.events import world_mutations
from kat_scheduler.sim.oracle import allowed_boefje_tasks, allowed_event_tasks, raised_pairs
from kat_scheduler.sim.records import BoefjeDef
from kat_scheduler.sim.world import World

WORLD_NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
STORM = WORLD_NOW + timedelta(minutes=5)
STALL = 420.0


def world() -> World:
    return generate_world(WorldConfig(seed=11, organisations=3, oois_per_org=400, boefjes=12, now=WORLD_NOW))


def test_raising_every_object_makes_pairs_eligible_that_bytes_shows_ended_in_grace_running_or_dead() -> None:
    w = world()
    counts = raised_pairs(w, world_mutations(w, operation="update", level=4), now=STORM, stall_age_seconds=STALL)
    assert counts["not due"] > 0 and counts["running"] > 0 and counts["stalled"] > 0 and counts["no run"] > 0


def test_a_storm_after_a_tick_queues_no_pair_of_the_ticks_and_only_what_bytes_lets_run() -> None:
    w = world()
    bodies = world_mutations(w, operation="update", level=4)
    allowed = allowed_event_tasks(w, bodies, now=STORM, stall_age_seconds=STALL)
    ticked = allowed_boefje_tasks(w, STORM, stall_age_seconds=STALL)
    assert allowed and not allowed & ticked
    for org, boefje_id, pk in allowed:
        boefje = w.plugin(boefje_id)
        assert isinstance(boefje, BoefjeDef)
        if boefje.run_on:
            continue  # runs on its operation; Bytes is not asked
        last = w.last_run(org, boefje_id, pk)
        if last is not None and last.ended_at is None and last.started_at is not None:
            assert STORM - last.started_at >= timedelta(seconds=STALL)  # died; a younger one is running
        if last is not None and last.ended_at is not None and not boefje.cron:
            grace = timedelta(minutes=boefje.interval) if boefje.interval else timedelta(days=1)
            assert STORM - last.ended_at >= grace


def test_updates_at_the_objects_own_levels_queue_only_run_on_boefjes_and_a_delete_nothing() -> None:
    w = world()
    same = allowed_event_tasks(w, world_mutations(w, operation="update"), now=STORM, stall_age_seconds=STALL)
    assert same and all(getattr(w.plugin(b), "run_on", None) for _, b, _ in same)
    assert allowed_event_tasks(w, world_mutations(w, operation="delete"), now=STORM) == set()
