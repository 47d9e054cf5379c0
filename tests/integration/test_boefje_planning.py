"""The boefje producers against the simulated KAT over HTTP, PostgreSQL and Redis."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from croniter import croniter
from sqlalchemy import Engine, delete, func, select, text, update

from kat_scheduler.dispatch.publishing import BrokerError
from kat_scheduler.models import TaskStatus
from kat_scheduler.planning.dry_run import render_plan
from kat_scheduler.producers import DueSchedulesProducer, TickProducer
from kat_scheduler.rules import SkipReason
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.timing import next_deadline
from kat_scheduler.sim.oracle import allowed_boefje_tasks
from kat_scheduler.sim.world import World
from kat_scheduler.storage import ScheduleRow, TaskRow, UnpublishedTask
from kat_scheduler.storage.bytes_runs import BytesRunStore, SeenRun
from tests.factories import BoefjeMetaFactory
from tests.integration.conftest import WORLD_NOW
from tests.tasks import broker_messages

NOW = WORLD_NOW + timedelta(minutes=5)


@pytest.fixture(autouse=True)
def no_bytes_runs(pg_engine: Engine) -> None:
    """Bytes' runs kept by an earlier test's tick (same world, same hashes) are not this test's."""
    with pg_engine.begin() as conn:
        conn.execute(text("DELETE FROM bytes_runs"))
        conn.execute(text("DELETE FROM bytes_histories"))


def queued_triples(engine: Engine) -> list[tuple[str, str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(TaskRow.organisation, TaskRow.plugin_id, TaskRow.input_ooi).where(
                TaskRow.status == TaskStatus.QUEUED
            )
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def test_a_tick_queues_exactly_the_tasks_the_rules_allow(producers, world, pg_engine, redis_url) -> None:
    report = TickProducer(producers).run(NOW)
    expected = allowed_boefje_tasks(world, NOW)
    assert expected, "the world should allow some tasks"
    queued = queued_triples(pg_engine)
    assert len(queued) == len(set(queued))
    assert set(queued) == expected
    assert report.queued == len(expected)
    assert not report.errors
    # Row before message: one message per row, each published, with the row id as Celery id.
    messages = broker_messages(redis_url)
    assert len(messages) == len(expected)
    with pg_engine.connect() as conn:
        ids = {str(i) for i in conn.execute(select(TaskRow.id)).scalars()}
        assert conn.execute(select(func.count()).select_from(UnpublishedTask)).scalar_one() == 0
    assert {m["headers"]["id"] for m in messages} == ids


def test_a_second_tick_queues_nothing_new(producers, pg_engine) -> None:
    first = TickProducer(producers).run(NOW)
    second = TickProducer(producers).run(NOW + timedelta(minutes=1))
    assert first.queued > 0
    assert second.queued == 0
    assert second.skipped[SkipReason.SCHEDULED] >= first.queued
    assert len(queued_triples(pg_engine)) == first.queued


def test_a_planned_pair_gets_a_schedule_for_its_next_run(producers, pg_engine) -> None:
    report = TickProducer(producers).run(NOW)
    with pg_engine.connect() as conn:
        deadlines = conn.execute(select(ScheduleRow.deadline_at)).scalars().all()
    assert len(deadlines) >= report.queued
    assert all(d > NOW for d in deadlines)


def test_racing_ticks_queue_each_task_once(planner_settings, kat, pg_engine, world) -> None:
    from kat_scheduler.dispatch.publishing import make_publisher
    from kat_scheduler.producers import ProducerContext
    from kat_scheduler.storage import ScheduleStore, TaskStore
    from tests.integration.conftest import make_clients

    reports = []
    barrier = threading.Barrier(3)

    def tick() -> None:
        clients = make_clients(kat)
        publisher = make_publisher(planner_settings)
        producers = ProducerContext(
            clients, TaskStore(pg_engine), ScheduleStore(pg_engine), planner_settings, publisher
        )
        barrier.wait()
        reports.append(TickProducer(producers).run(NOW))
        publisher.close()
        clients.close()

    threads = [threading.Thread(target=tick) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    queued = queued_triples(pg_engine)
    assert len(queued) == len(set(queued)) == len(allowed_boefje_tasks(world, NOW))
    assert sum(r.queued for r in reports) == len(queued)


def test_a_dry_run_explains_and_changes_nothing(producers, world, pg_engine, redis_url) -> None:
    report = TickProducer(producers).run(NOW, dry_run=True)
    planned = {(c.organisation, c.boefje.id, c.input_ooi) for c in report.planned}
    assert planned == allowed_boefje_tasks(world, NOW)
    assert report.skipped[SkipReason.CLEARANCE] > 0
    assert report.skipped[SkipReason.NOT_ENABLED] > 0
    assert queued_triples(pg_engine) == []
    assert broker_messages(redis_url) == []


def test_malformed_data_for_one_organisation_is_logged_and_the_others_are_planned(
    producers, kat, world, pg_engine, caplog
) -> None:
    broken = world.organisation_ids[1]
    kat.inject_fault(
        "octopoes",
        status=200,
        body=b'{"count": 1, "items": "nope"}',
        times=None,
        path_prefix=f"/{broken}/objects",
    )
    report = TickProducer(producers).run(NOW)
    assert set(report.errors) == {broken}
    assert broken in caplog.text
    expected = {t for t in allowed_boefje_tasks(world, NOW) if t[0] != broken}
    assert set(queued_triples(pg_engine)) == expected


def test_an_object_whose_key_the_database_cannot_store_is_skipped_and_the_rest_of_its_organisation_planned(
    producers, kat, world, pg_engine, caplog
) -> None:
    org = world.organisation_ids[0]
    too_long = "Hostname|internet|" + "x" * 1100 + ".nl"
    world.add_ooi(org, "Hostname", too_long, level=4, scan_profile_type="declared")
    report = TickProducer(producers).run(NOW)
    assert report.errors == {}
    assert f"octopoes: organisation {org}: object 'Hostname|internet|xxx" in caplog.text
    expected = {t for t in allowed_boefje_tasks(world, NOW) if t[2] != too_long}
    assert set(queued_triples(pg_engine)) == expected
    assert any(t[0] == org for t in expected)
    assert report.skipped[SkipReason.INVALID_OBJECT] == 1


def test_a_plugin_with_an_invalid_cron_is_skipped_and_its_siblings_planned(
    producers, clients, kat, world, pg_engine, caplog
) -> None:
    org = world.organisation_ids[0]
    planned = {t for t in allowed_boefje_tasks(world, NOW) if t[0] == org}
    bad = sorted({boefje for _, boefje, _ in planned})[0]
    listing = clients.katalogus.session.get(f"{kat.katalogus_url}/v1/organisations/{org}/plugins").json()
    for plugin in listing:
        if plugin["id"] == bad:
            plugin["cron"] = "not a cron"
    kat.inject_fault(
        "katalogus", status=200, body=json.dumps(listing).encode(), times=None, path_prefix=f"/v1/organisations/{org}/"
    )

    dry = TickProducer(producers, [org]).run(NOW, dry_run=True)
    assert (
        f"SKIPPED plugin {bad} of {org}, it does not validate: boefje.cron: invalid cron expression 'not a cron' "
        "(it does not parse, or never comes)" in (list(render_plan(dry)))
    )
    report = TickProducer(producers, [org]).run(NOW)

    assert report.errors == {} and report.skipped[SkipReason.INVALID_PLUGIN] == 1
    assert set(queued_triples(pg_engine)) == {t for t in planned if t[1] != bad}
    assert any(t[1] != bad for t in planned)


def test_bands_follow_the_rankers(producers) -> None:
    report = TickProducer(producers).run(NOW, dry_run=True)
    never_run = [c for c in report.planned if c.rank.reason == "never run"]
    reruns = [c for c in report.planned if c.rank.reason.startswith("re-run")]
    assert never_run and reruns
    assert {c.rank.band for c in never_run} == {2}
    assert all(3 <= c.rank.band <= 8 for c in reruns)
    # Most urgent first in the plan.
    assert [c.rank.band for c in report.planned] == sorted(c.rank.band for c in report.planned)


def test_an_organisation_adds_at_most_its_cap_per_tick(producers, world) -> None:
    producers.settings = producers.settings.model_copy(update={"org_cap_per_tick": 5})
    report = TickProducer(producers).run(NOW)
    assert report.queued == 5 * len(world.organisation_ids)
    assert report.skipped[SkipReason.ORG_CAP] > 0
    # The rest is found again next tick.
    assert TickProducer(producers).run(NOW).queued == 5 * len(world.organisation_ids)


def test_organisations_take_turns_within_a_band(producers, world) -> None:
    report = TickProducer(producers).run(NOW, dry_run=True)
    band2 = [c.organisation for c in report.planned if c.rank.band == 2]
    first_round = band2[: len(world.organisation_ids)]
    assert sorted(first_round) == sorted(world.organisation_ids)


def test_backpressure_adds_only_urgent_bands_when_the_queue_is_deep(producers) -> None:
    producers.settings = producers.settings.model_copy(update={"queue_depth_limit_boefjes": 1, "backpressure_band": 2})
    first = TickProducer(producers).run(NOW)  # the queue is empty: everything goes
    assert first.queued > 1 and not first.backpressure
    # Make every pair due again by forgetting the schedules; now the queue is deep.
    producers.schedules.engine.dispose()
    with producers.tasks.engine.begin() as conn:
        conn.execute(update(TaskRow).values(status=TaskStatus.COMPLETED, ended_at=NOW - timedelta(days=30)))
        conn.execute(delete(ScheduleRow))
    second = TickProducer(producers).run(NOW)
    assert second.backpressure and second.queue_depth is not None and second.queue_depth >= first.queued
    assert second.skipped[SkipReason.BACKPRESSURE] > 0
    assert all(c.rank.band <= 2 for c in second.planned)


def unreadable_depth(queue: str) -> int:
    """The broker cannot say how deep ``queue`` is (and quotes its URL, password and all)."""
    raise BrokerError(f"queue depth of {queue!r}: Error 111 connecting to redis://:s3cret@127.0.0.1:6379/0")


def test_backpressure_holds_the_low_bands_back_when_the_queue_depth_cannot_be_read(
    producers, pg_engine, monkeypatch, caplog
) -> None:
    producers.settings = producers.settings.model_copy(update={"backpressure_band": 2})
    monkeypatch.setattr(producers.publisher, "queue_depth", unreadable_depth)
    with caplog.at_level(logging.WARNING, logger="kat_scheduler"):
        report = TickProducer(producers).run(NOW)
    assert report.backpressure and report.max_band == 2 and report.queue_depth is None
    assert report.skipped[SkipReason.BACKPRESSURE] > 0
    assert report.queued > 0 and all(c.rank.band <= 2 for c in report.planned)
    with pg_engine.connect() as conn:
        assert max(conn.execute(select(TaskRow.band)).scalars()) <= 2
    # Said, with the queue and the error, never the password.
    warning = next(r.getMessage() for r in caplog.records if "backpressure" in r.getMessage())
    assert "queue boefjes could not be read" in warning and "Error 111" in warning
    assert report.queue_depth_error is not None and "Error 111" in report.queue_depth_error
    assert "s3cret" not in caplog.text and "s3cret" not in report.queue_depth_error
    shown = list(render_plan(report))
    assert any(
        line.startswith("queue depth (boefjes): unknown, could not be read (BrokerError: ")
        and line.endswith("BACKPRESSURE: only bands <= 2 added")
        for line in shown
    ), shown
    assert not any("s3cret" in line for line in shown)


def never_run_schedule(engine: Engine, world: World, plugin_id: str = "dns-records") -> Any:
    """The schedule of a pair of ``plugin_id`` the tick queued because it never ran: no run of it
    in Bytes, so nothing but our own task decides when it is due again. The first by organisation
    and object, whichever order the rows lie in."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(ScheduleRow)
            .join(TaskRow, TaskRow.hash == ScheduleRow.hash)
            .where(ScheduleRow.plugin_id == plugin_id, TaskRow.status == TaskStatus.QUEUED)
            .order_by(ScheduleRow.organisation, ScheduleRow.input_ooi)
        ).all()
    never_run = [r for r in rows if world.last_run(r.organisation, r.plugin_id, r.input_ooi) is None]
    assert never_run, f"the tick should have queued a {plugin_id} pair that never ran"
    return never_run[0]


def one_schedule_due(engine: Engine, world: World, due: datetime) -> Any:
    """Finish the run of one planned pair two days ago and make its schedule due at ``due``: a
    dns-records pair that never ran in Bytes (no cron, a day's grace), so two days later it is due."""
    boefje = world.plugin("dns-records")
    assert boefje is not None and not getattr(boefje, "cron", None) and not getattr(boefje, "interval", None)
    schedule = never_run_schedule(engine, world)
    with engine.begin() as conn:
        conn.execute(
            update(TaskRow)
            .where(TaskRow.hash == schedule.hash)
            .values(status=TaskStatus.COMPLETED, ended_at=NOW - timedelta(days=2))
        )
        conn.execute(update(ScheduleRow).where(ScheduleRow.id == schedule.id).values(deadline_at=due))
    return schedule


def test_a_due_schedule_is_queued_and_its_deadline_advanced(producers, world, pg_engine) -> None:
    TickProducer(producers).run(NOW)
    schedule = one_schedule_due(pg_engine, world, NOW - timedelta(hours=1))
    later = NOW + timedelta(minutes=10)
    report = DueSchedulesProducer(producers).run(later)
    assert report.queued == 1
    assert report.planned[0].hash == schedule.hash and report.planned[0].rank.band in range(3, 9)
    row = producers.schedules.get_by_hash(schedule.hash)
    assert row.deadline_at > later
    with pg_engine.connect() as conn:
        live = conn.execute(
            select(TaskRow.schedule_id).where(TaskRow.hash == schedule.hash, TaskRow.status == TaskStatus.QUEUED)
        ).scalar_one()
    assert live == schedule.id


def test_due_schedules_wait_while_the_queue_is_deep_and_are_queued_once_it_is_not(producers, world, pg_engine) -> None:
    TickProducer(producers).run(NOW)  # nothing consumes: the queue is deep from here on
    due = NOW - timedelta(hours=1)
    schedule = one_schedule_due(pg_engine, world, due)
    later = NOW + timedelta(minutes=10)
    deep = producers.settings.model_copy(update={"queue_depth_limit_boefjes": 1, "backpressure_band": 2})
    producers.settings, shallow = deep, producers.settings

    held = DueSchedulesProducer(producers).run(later)
    assert held.backpressure and held.queued == 0 and held.skipped[SkipReason.BACKPRESSURE] == 1
    assert producers.schedules.get_by_hash(schedule.hash).deadline_at == due  # still due

    producers.settings = shallow
    queued = DueSchedulesProducer(producers).run(later)
    assert queued.queued == 1 and producers.schedules.get_by_hash(schedule.hash).deadline_at > later


def test_due_schedules_wait_while_the_queue_depth_cannot_be_read(producers, world, pg_engine, monkeypatch) -> None:
    TickProducer(producers).run(NOW)
    due = NOW - timedelta(hours=1)
    schedule = one_schedule_due(pg_engine, world, due)
    producers.settings = producers.settings.model_copy(update={"backpressure_band": 2})
    later = NOW + timedelta(minutes=10)
    with monkeypatch.context() as broker_down:
        broker_down.setattr(producers.publisher, "queue_depth", unreadable_depth)
        held = DueSchedulesProducer(producers).run(later)
    assert held.backpressure and held.queue_depth is None and held.queue_depth_error
    assert held.queued == 0 and held.skipped[SkipReason.BACKPRESSURE] == 1
    assert producers.schedules.get_by_hash(schedule.hash).deadline_at == due  # still due
    assert DueSchedulesProducer(producers).run(later).queued == 1  # the depth reads again: the queue is shallow


def test_a_schedule_whose_plugin_was_disabled_is_disabled(producers, world, pg_engine) -> None:
    TickProducer(producers).run(NOW)
    schedule = never_run_schedule(pg_engine, world)
    with pg_engine.begin() as conn:
        conn.execute(update(ScheduleRow).values(deadline_at=NOW - timedelta(hours=1)))
        conn.execute(update(TaskRow).values(status=TaskStatus.COMPLETED, ended_at=NOW - timedelta(days=2)))
    world.set_plugin_enabled(schedule.organisation, schedule.plugin_id, False)
    report = DueSchedulesProducer(producers).run(NOW + timedelta(minutes=1))
    row = producers.schedules.get_by_hash(schedule.hash)
    assert not row.enabled and row.disabled_reason == str(SkipReason.NOT_ENABLED)
    assert report.schedules_disabled >= 1
    assert all(c.boefje.id != schedule.plugin_id or c.organisation != schedule.organisation for c in report.planned)


def test_a_schedule_whose_plugin_does_not_validate_is_left_alone_until_it_does(
    producers, clients, kat, world, pg_engine
) -> None:
    TickProducer(producers).run(NOW)
    schedule = one_schedule_due(pg_engine, world, NOW - timedelta(hours=1))
    org = schedule.organisation
    listing = clients.katalogus.session.get(f"{kat.katalogus_url}/v1/organisations/{org}/plugins").json()
    for plugin in listing:
        if plugin["id"] == schedule.plugin_id:
            plugin["cron"] = "not a cron"
    kat.inject_fault(
        "katalogus", status=200, body=json.dumps(listing).encode(), times=None, path_prefix=f"/v1/organisations/{org}/"
    )

    held = DueSchedulesProducer(producers).run(NOW + timedelta(minutes=1))
    row = producers.schedules.get_by_hash(schedule.hash)
    assert row.enabled and row.deadline_at == NOW - timedelta(hours=1), "an invalid plugin is not a gone plugin"
    assert held.skipped[SkipReason.INVALID_PLUGIN] == 1 and held.queued == 0

    kat.clear_faults()
    assert DueSchedulesProducer(producers).run(NOW + timedelta(minutes=1)).queued == 1


def test_a_boefje_enabled_again_is_planned_again_and_its_schedule_reenabled(producers, world, pg_engine) -> None:
    TickProducer(producers).run(NOW)
    # a pair the first tick queued (not one it found within grace in Bytes' history) with a day's
    # grace: its run ended two days ago, so once enabled again it is due
    schedule = never_run_schedule(pg_engine, world)
    with pg_engine.begin() as conn:
        conn.execute(update(ScheduleRow).values(deadline_at=NOW - timedelta(hours=1)))
        conn.execute(update(TaskRow).values(status=TaskStatus.COMPLETED, ended_at=NOW - timedelta(days=2)))
    world.set_plugin_enabled(schedule.organisation, schedule.plugin_id, False)
    DueSchedulesProducer(producers).run(NOW + timedelta(minutes=1))
    assert not producers.schedules.get_by_hash(schedule.hash).enabled

    # Katalogus sends no event when a plugin is enabled: the periodic tick must find the pair again.
    world.set_plugin_enabled(schedule.organisation, schedule.plugin_id, True)
    report = TickProducer(producers).run(NOW + timedelta(minutes=2))
    assert schedule.hash in {c.hash for c in report.planned}
    row = producers.schedules.get_by_hash(schedule.hash)
    assert row.enabled and row.disabled_reason is None
    assert row.deadline_at > NOW + timedelta(minutes=2)


def test_a_schedule_whose_object_lost_its_clearance_is_disabled(producers, world, pg_engine) -> None:
    TickProducer(producers).run(NOW)
    schedule = never_run_schedule(pg_engine, world, "nmap")
    assert world.plugin("nmap").scan_level > 0, "the test needs a boefje an object at level 0 does not clear"
    with pg_engine.begin() as conn:
        conn.execute(update(ScheduleRow).values(deadline_at=NOW - timedelta(hours=1)))
        conn.execute(update(TaskRow).values(status=TaskStatus.COMPLETED, ended_at=NOW - timedelta(days=2)))
    world.set_scan_level(schedule.organisation, schedule.input_ooi, 0)
    DueSchedulesProducer(producers).run(NOW + timedelta(minutes=1))
    row = producers.schedules.get_by_hash(schedule.hash)
    assert not row.enabled and row.disabled_reason == str(SkipReason.CLEARANCE)


def test_planning_several_organisations_at_once_plans_what_one_at_a_time_does(
    planner_settings, clients, pg_engine
) -> None:
    from kat_scheduler.producers import ProducerContext
    from kat_scheduler.storage import ScheduleStore, TaskStore

    def planned(threads: int) -> list[tuple[str, str, str | None, int]]:
        settings = planner_settings.model_copy(update={"plan_threads": threads})
        producers = ProducerContext(clients, TaskStore(pg_engine), ScheduleStore(pg_engine), settings)
        report = TickProducer(producers).run(NOW, dry_run=True)
        return [(c.organisation, c.boefje.id, c.input_ooi, c.rank.band) for c in report.planned]

    one_by_one = planned(1)
    assert len({org for org, *_ in one_by_one}) > 1
    assert planned(4) == one_by_one


def test_an_object_listed_twice_by_octopoes_is_queued_once_and_the_tick_completes(
    producers, world, pg_engine, redis_url, monkeypatch
) -> None:
    octopoes = producers.clients.octopoes
    listing = octopoes.iter_objects

    def repeating(*args, **kwargs):  # offset paging while objects are added repeats some
        first = None
        for page in listing(*args, **kwargs):
            first = first or page
            yield page
        if first:
            yield first[:3]

    monkeypatch.setattr(octopoes, "iter_objects", repeating)
    report = TickProducer(producers).run(NOW)
    assert not report.errors
    expected = allowed_boefje_tasks(world, NOW)
    queued = queued_triples(pg_engine)
    assert sorted(queued) == sorted(expected)
    assert len(broker_messages(redis_url)) == len(expected)
    with pg_engine.connect() as conn:
        scheduled = conn.execute(select(ScheduleRow.hash)).scalars().all()
    assert len(scheduled) == len(set(scheduled)) >= len(expected)


def test_a_long_tick_publishes_in_rounds_before_the_reaper_would_take_its_claims_for_lost(
    planner_settings, clients, pg_engine, redis_url, world
) -> None:
    from kat_scheduler.dispatch.publishing import make_publisher
    from kat_scheduler.producers import ProducerContext
    from kat_scheduler.storage import ScheduleStore, TaskStore

    settings = planner_settings.model_copy(update={"unpublished_after": 0.6, "plan_threads": 1})
    publisher = make_publisher(settings)
    tick = TickProducer(ProducerContext(clients, TaskStore(pg_engine), ScheduleStore(pg_engine), settings, publisher))
    real = tick.plan_org

    first_org_then: dict[str, int] = {}

    def slow_plan_org(org: str, now: datetime):  # Octopoes slow to list each organisation
        plan = real(org, now)
        time.sleep(0.25)
        if org == world.organisation_ids[-1]:  # how far the first organisation's tasks are by now
            first = world.organisation_ids[0]
            with pg_engine.connect() as conn:
                mine = select(TaskRow.id).where(TaskRow.organisation == first)
                first_org_then["claimed"] = conn.execute(select(func.count()).select_from(mine.subquery())).scalar_one()
                first_org_then["unpublished"] = conn.execute(
                    select(func.count()).where(UnpublishedTask.task_id.in_(mine))
                ).scalar_one()
        return plan

    tick.plan_org = slow_plan_org  # type: ignore[method-assign,assignment]
    try:
        report = tick.run(NOW)
    finally:
        publisher.close()
    # The first organisation's tasks went out (and were marked) before the last one was planned ...
    assert first_org_then["claimed"] > 0 and first_org_then["unpublished"] == 0
    # ... and still each task exactly once, all marked.
    assert report.queued == len(allowed_boefje_tasks(world, NOW)) == len(broker_messages(redis_url))
    with pg_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(UnpublishedTask)).scalar_one() == 0


def test_a_tick_that_fails_partway_publishes_what_it_claimed_before_it_fails(
    producers, world, pg_engine, redis_url, monkeypatch
) -> None:
    broken = world.organisation_ids[2]
    tick = TickProducer(producers)
    real = tick.plan_org

    def failing(org: str, now: datetime):
        if org == broken:
            raise RuntimeError("the database went away")
        return real(org, now)

    monkeypatch.setattr(tick, "plan_org", failing)
    with pytest.raises(RuntimeError, match="went away"):
        tick.run(NOW)
    with pg_engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(TaskRow)).scalar_one()
        unpublished = conn.execute(select(func.count()).select_from(UnpublishedTask)).scalar_one()
    assert rows > 0 and unpublished == 0
    assert len(broker_messages(redis_url)) == rows


# --- Bytes' runs without an end, cron, and due schedules: the one rules core on each path ---------


def never_run_pairs(world: World, count: int, *, cron: bool = False) -> list[tuple[str, str, str]]:
    """``count`` pairs the rules allow at ``NOW`` that have no run in Bytes (of a cron boefje or not)."""
    pairs = sorted(
        t
        for t in allowed_boefje_tasks(world, NOW)
        if world.last_run(*t) is None and bool(getattr(world.plugin(t[1]), "cron", None)) == cron
    )
    assert len(pairs) >= count
    return pairs[:count]


def bytes_run(world: World, pair: tuple[str, str, str], started: datetime, ended: datetime | None) -> None:
    org, boefje_id, pk = pair
    world.add_boefje_meta(
        BoefjeMetaFactory(
            organization=org,
            boefje={"id": boefje_id, "version": None},
            input_ooi=pk,
            started_at=started,
            ended_at=ended,
        )
    )


def test_a_boefje_running_in_bytes_is_not_queued_again_and_one_whose_run_died_is(producers, world, pg_engine) -> None:
    running, stalled = never_run_pairs(world, 2)
    bytes_run(world, running, NOW - timedelta(days=10), NOW - timedelta(days=10, seconds=-30))
    bytes_run(world, running, NOW - timedelta(minutes=2), None)  # the newest: started, no end
    bytes_run(world, stalled, NOW - timedelta(days=10), NOW - timedelta(days=10, seconds=-30))
    bytes_run(world, stalled, NOW - timedelta(hours=2), None)  # older than the stall age: it died
    expected = allowed_boefje_tasks(world, NOW, stall_age_seconds=producers.settings.effective_bytes_stall_age)
    assert running not in expected and stalled in expected

    dry = TickProducer(producers).run(NOW, dry_run=True)
    reasons = {(c.organisation, c.boefje.id, c.input_ooi): c.rank.reason for c in dry.planned}
    assert running not in reasons and reasons[stalled] == "stalled run in Bytes"
    assert dry.skipped[SkipReason.RUNNING] >= 1
    shown = "\n".join(render_plan(dry))
    assert "stalled run in Bytes" in shown and "running in Bytes:" in shown

    report = TickProducer(producers).run(NOW)
    assert set(queued_triples(pg_engine)) == expected
    assert report.queued == len(expected)
    # The running pair's schedule counts from its start; the next tick leaves it to the schedule.
    org, boefje_id, pk = running
    row = producers.schedules.get_by_hash(boefje_task_hash(boefje_id, org, pk))
    boefje = producers.clients.katalogus.plugin(org, boefje_id)
    assert row.deadline_at == next_deadline(
        boefje,
        NOW - timedelta(minutes=2),
        hash_=row.hash,
        default_seconds=producers.settings.grace_period,
        jitter=producers.settings.schedule_jitter,
    )
    assert TickProducer(producers).run(NOW + timedelta(minutes=30)).queued == 0


def test_the_stall_age_is_a_setting(producers, world, pg_engine) -> None:
    (pair,) = never_run_pairs(world, 1)
    bytes_run(world, pair, NOW - timedelta(hours=2), None)
    producers.settings = producers.settings.model_copy(update={"bytes_stall_age": 3 * 3600})
    assert producers.settings.effective_bytes_stall_age == 3 * 3600
    expected = allowed_boefje_tasks(world, NOW, stall_age_seconds=3 * 3600)
    assert pair not in expected

    report = TickProducer(producers).run(NOW)
    assert set(queued_triples(pg_engine)) == expected
    assert report.skipped[SkipReason.RUNNING] >= 1


def test_a_cron_boefje_whose_last_run_is_inside_the_grace_but_before_the_last_cron_time_is_queued(
    producers, world, pg_engine
) -> None:
    due, waiting = never_run_pairs(world, 2, cron=True)
    boefje = world.plugin(due[1])
    assert boefje is not None and boefje.cron
    cron = boefje.cron
    last_cron = croniter(cron, NOW).get_prev(datetime)
    assert NOW - last_cron < timedelta(days=1), "the test needs a cron time within the grace period"
    before, after = last_cron - timedelta(minutes=10), last_cron + timedelta(minutes=10)
    bytes_run(world, due, before - timedelta(seconds=30), before)
    bytes_run(world, waiting, after - timedelta(seconds=30), after)

    report = TickProducer(producers).run(NOW)
    queued = set(queued_triples(pg_engine))
    assert due in queued and waiting not in queued
    assert queued == allowed_boefje_tasks(world, NOW)
    assert report.skipped[SkipReason.CRON] >= 1


def test_a_due_schedule_whose_pair_ran_since_is_not_queued_and_waits_its_grace_from_that_run(
    producers, world, pg_engine
) -> None:
    TickProducer(producers).run(NOW)
    schedule = never_run_schedule(pg_engine, world)
    with pg_engine.begin() as conn:
        ran = NOW + timedelta(hours=1)  # a run since (an event's, a manual one): inside a day's grace
        conn.execute(
            update(TaskRow)
            .where(TaskRow.hash == schedule.hash)
            .values(status=TaskStatus.COMPLETED, started_at=ran, ended_at=ran)
        )
        conn.execute(update(ScheduleRow).where(ScheduleRow.id == schedule.id).values(deadline_at=NOW))
    later = NOW + timedelta(hours=3)
    report = DueSchedulesProducer(producers).run(later)
    assert schedule.hash not in {c.hash for c in report.planned}
    assert report.skipped[SkipReason.GRACE] == 1
    boefje = producers.clients.katalogus.plugin(schedule.organisation, "dns-records")
    assert producers.schedules.get_by_hash(schedule.hash).deadline_at == next_deadline(
        boefje,
        ran,
        hash_=schedule.hash,
        default_seconds=producers.settings.grace_period,
        jitter=producers.settings.schedule_jitter,
    )


def test_a_due_schedule_whose_pair_runs_in_bytes_is_not_queued_and_one_whose_run_stalled_is(
    producers, world, pg_engine
) -> None:
    TickProducer(producers).run(NOW)
    schedule = never_run_schedule(pg_engine, world)
    with pg_engine.begin() as conn:
        conn.execute(delete(TaskRow).where(TaskRow.hash == schedule.hash))  # no run of ours: Bytes' decides
        conn.execute(update(ScheduleRow).where(ScheduleRow.id == schedule.id).values(deadline_at=NOW))
    later = NOW + timedelta(hours=3)
    started = later - timedelta(minutes=2)
    seen = BytesRunStore(pg_engine)
    pair = (schedule.hash, schedule.organisation, schedule.plugin_id, schedule.input_ooi)
    seen.record([SeenRun(*pair, started_at=started, ended_at=None)], later)

    report = DueSchedulesProducer(producers).run(later)
    assert schedule.hash not in {c.hash for c in report.planned}
    assert report.skipped[SkipReason.RUNNING] == 1
    boefje = producers.clients.katalogus.plugin(schedule.organisation, "dns-records")
    assert producers.schedules.get_by_hash(schedule.hash).deadline_at == next_deadline(
        boefje,
        started,
        hash_=schedule.hash,
        default_seconds=producers.settings.grace_period,
        jitter=producers.settings.schedule_jitter,
    )

    died = later - timedelta(seconds=producers.settings.effective_bytes_stall_age + 60)
    seen.record([SeenRun(*pair, started_at=died, ended_at=None)], later + timedelta(seconds=1))
    with pg_engine.begin() as conn:
        conn.execute(update(ScheduleRow).where(ScheduleRow.id == schedule.id).values(deadline_at=later))
    report = DueSchedulesProducer(producers).run(later + timedelta(seconds=1))
    assert {c.hash: c.rank.reason for c in report.planned}[schedule.hash] == "stalled run in Bytes"
    with pg_engine.connect() as conn:
        queued = conn.execute(select(TaskRow.status).where(TaskRow.hash == schedule.hash)).scalars().all()
    assert queued == [TaskStatus.QUEUED]


def test_a_due_schedule_of_a_cron_boefje_is_queued_once_a_cron_time_passed_inside_the_grace(
    producers, world, pg_engine
) -> None:
    TickProducer(producers).run(NOW)
    schedule = never_run_schedule(pg_engine, world, "dns-zone")
    with pg_engine.begin() as conn:
        ran = datetime(2026, 6, 1, 13, 0, tzinfo=NOW.tzinfo)
        conn.execute(
            update(TaskRow)
            .where(TaskRow.hash == schedule.hash)
            .values(status=TaskStatus.COMPLETED, started_at=ran, ended_at=ran)
        )
        conn.execute(update(ScheduleRow).where(ScheduleRow.id == schedule.id).values(deadline_at=NOW))
    at_five = datetime(2026, 6, 2, 5, 0, tzinfo=NOW.tzinfo)  # 04:00 passed, a day's grace has not
    report = DueSchedulesProducer(producers).run(at_five)
    assert schedule.hash in {c.hash for c in report.planned}
    assert report.skipped[SkipReason.GRACE] == report.skipped[SkipReason.CRON] == 0


def bytes_runs_kept(engine: Engine) -> dict[tuple[str, str, str], tuple[datetime | None, datetime | None]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT organisation, plugin_id, input_ooi, started_at, ended_at FROM bytes_runs"))
        return {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}


def test_a_tick_keeps_bytes_newest_run_of_every_object_it_lists_the_history_of_eligible_or_not(
    producers, world, pg_engine
) -> None:
    org = world.organisation_ids[0]
    low = next(
        (org, b.id, o.primary_key)
        for b in sorted(world.boefjes, key=lambda b: b.id)
        if world.is_enabled(org, b.id) and b.consumes and not b.run_on and not b.cron and b.scan_level > 0
        for o in sorted(world.oois(org).values(), key=lambda o: o.primary_key)
        if o.object_type in b.consumes and o.level < b.scan_level
    )
    started = NOW - timedelta(minutes=1)
    bytes_run(world, low, started, None)  # below clearance: not a pair of the tick's, running in Bytes

    report = TickProducer(producers).run(NOW)

    kept = bytes_runs_kept(pg_engine)
    assert kept[low] == (started, None)
    # Every object of every history the tick listed: the world's newest runs back to the horizon.
    assert report.bytes_runs_recorded == len(kept) > 0
    for (o, boefje_id, pk), (start, end) in list(kept.items())[:200]:
        newest = world.last_run(o, boefje_id, pk)
        assert newest is not None and (newest.started_at, newest.ended_at) == (start, end)


def test_a_boefje_no_object_clears_still_has_its_history_listed_once(producers, world, pg_engine, kat) -> None:
    """nuclei-cve needs level 4; with every object of the world below it, no pair asks for its
    history, yet the first tick lists it (a raise later must know it) and the next one does not."""
    for org in world.organisation_ids:
        for ooi in list(world.oois(org).values()):
            if ooi.level >= 4:
                world.set_scan_level(org, ooi.primary_key, 3)
    TickProducer(producers).run(NOW)
    with pg_engine.connect() as conn:
        listed = set(conn.execute(text("SELECT organisation, plugin_id FROM bytes_histories")).all())
    wanted = {(org, "nuclei-cve") for org in world.organisation_ids if world.is_enabled(org, "nuclei-cve")}
    assert wanted and wanted <= listed
    kat.reset_counts()
    TickProducer(producers).run(NOW + timedelta(seconds=30))  # the world's running runs are running still
    assert kat.request_counts.get("bytes", 0) == 0
