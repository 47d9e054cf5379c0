"""The simulated history holds the cases the rules must get right, and the oracle judges them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from croniter import croniter

from kat_scheduler.sim import WorldConfig, generate_world
from kat_scheduler.sim.oracle import allowed_boefje_tasks, unfinished_runs
from kat_scheduler.sim.records import BoefjeDef
from kat_scheduler.sim.world import World

WORLD_NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TICK = WORLD_NOW + timedelta(minutes=5)
STALL = 420.0


def world(seed: int = 11) -> World:
    return generate_world(WorldConfig(seed=seed, organisations=3, oois_per_org=400, boefjes=12, now=WORLD_NOW))


def newest_runs(w: World) -> dict[tuple[str, str, str], tuple[datetime | None, datetime | None]]:
    newest = {}
    for org in w.organisation_ids:
        for run in w.runs(org):  # by start, ascending: the last one per pair is the newest
            if run.input_ooi is not None:
                newest[(org, run.boefje_id, run.input_ooi)] = (run.started_at, run.ended_at)
    return newest


def clears(w: World, triple: tuple[str, str, str]) -> bool:
    org, boefje_id, pk = triple
    boefje, ooi = w.plugin(boefje_id), w.get_ooi(org, pk)
    assert isinstance(boefje, BoefjeDef) and ooi is not None
    return (
        w.is_enabled(org, boefje_id)
        and not boefje.run_on
        and boefje.scan_level <= (ooi.level if ooi.scan_profile_type != "empty" else 0)
    )


def test_some_newest_runs_are_still_running_and_some_died() -> None:
    counts = unfinished_runs(world(), TICK, STALL)
    assert counts["running"] >= 5 and counts["stalled"] >= 2


def test_the_oracle_allows_a_stalled_pair_and_not_a_running_one() -> None:
    w = world()
    allowed = allowed_boefje_tasks(w, TICK, stall_age_seconds=STALL)
    running = stalled = 0
    for triple, (started, ended) in newest_runs(w).items():
        if ended is not None or started is None or not clears(w, triple):
            continue
        if TICK - started < timedelta(seconds=STALL):
            assert triple not in allowed
            running += 1
        else:
            assert triple in allowed
            stalled += 1
    assert running and stalled


def test_a_longer_stall_age_makes_a_dead_run_a_running_one() -> None:
    w = world()
    short = allowed_boefje_tasks(w, TICK, stall_age_seconds=STALL)
    long = allowed_boefje_tasks(w, TICK, stall_age_seconds=86400)
    assert long < short


def test_cron_pairs_whose_last_run_is_inside_the_grace_but_before_the_last_cron_time_are_allowed() -> None:
    w = world()
    allowed = allowed_boefje_tasks(w, TICK, stall_age_seconds=STALL)
    cases = 0
    for triple, (_, ended) in newest_runs(w).items():
        boefje = w.plugin(triple[1])
        cron = getattr(boefje, "cron", None)
        if not cron or ended is None or not clears(w, triple):
            continue
        last_cron = croniter(cron, TICK).get_prev(datetime)
        if TICK - ended < timedelta(days=1) and ended < last_cron:
            assert triple in allowed
            cases += 1
    assert cases >= 3


def test_the_cases_are_the_same_for_the_same_seed_and_leave_other_runs_alone() -> None:
    first, second = world(), world()
    assert [r.id for r in first.runs("org01")] == [r.id for r in second.runs("org01")]
    ended = [r for r in first.runs("org01") if r.ended_at is not None]
    assert len(ended) > 0.9 * len(first.runs("org01"))
