"""What scan-profile mutations and raw files turn into (handlers called directly; the consumer
that feeds them from RabbitMQ is tested in test_event_consumer.py and test_listener.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, Row, func, select, text, update

from kat_scheduler.clients import KATClients
from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.dispatch.publishing import OutgoingMessage, Publisher, PublishError, make_publisher
from kat_scheduler.events.consumer import TransientError
from kat_scheduler.events.handlers import MutationHandler, RawFileHandler
from kat_scheduler.models import RawFileReceived, ScanProfileMutation, SchedulerId, TaskStatus
from kat_scheduler.planning.candidates import new_boefje_schedule
from kat_scheduler.producers import TickProducer
from kat_scheduler.rules.identity import boefje_task_hash, normalizer_task_hash
from kat_scheduler.rules.timing import next_deadline
from kat_scheduler.settings import Settings
from kat_scheduler.sim.events import world_mutations
from kat_scheduler.sim.oracle import allowed_event_tasks
from kat_scheduler.sim.world import World
from kat_scheduler.storage import ScheduleRow, ScheduleStore, TaskRow, TaskStore, UnpublishedTask
from kat_scheduler.storage.bytes_runs import BytesRunStore
from kat_scheduler.storage.object_events import ObjectEventStore
from tests.events import expected_boefjes, profile_mutation, raw_file_event
from tests.factories import BoefjeMetaFactory

NOW = datetime(2026, 6, 1, 12, 5, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_bytes_runs(pg_engine: Engine) -> None:
    """Bytes' runs kept by an earlier test's tick (same world, same hashes) are not this test's."""
    with pg_engine.begin() as conn:
        conn.execute(text("DELETE FROM bytes_runs"))  # DELETE, not TRUNCATE: as pg_engine (tests/conftest.py)
        conn.execute(text("DELETE FROM bytes_histories"))


@pytest.fixture
def stores(pg_engine: Engine) -> tuple[TaskStore, ScheduleStore]:
    return TaskStore(pg_engine), ScheduleStore(pg_engine)


@pytest.fixture
def publisher(planner_settings: Settings):
    publisher = make_publisher(planner_settings)
    yield publisher
    publisher.close()


@pytest.fixture
def mutations(clients: KATClients, stores, publisher, planner_settings) -> MutationHandler:
    tasks, schedules = stores
    plugins = PluginCache(clients.katalogus, ttl=60)
    return MutationHandler(plugins, tasks, schedules, publisher, planner_settings, clock=lambda: NOW)


@pytest.fixture
def raw_files(clients: KATClients, stores, publisher, planner_settings) -> RawFileHandler:
    tasks, schedules = stores
    plugins = PluginCache(clients.katalogus, ttl=60)
    return RawFileHandler(plugins, tasks, schedules, publisher, planner_settings, clock=lambda: NOW)


def planned_hostname(producers, world) -> tuple[str, Any]:
    """The world planned at ``NOW``; the first organisation and one of its hostnames at level 2 or more."""
    TickProducer(producers).run(NOW)
    org = world.organisation_ids[0]
    return org, next(o for o in world.oois(org).values() if o.object_type == "Hostname" and o.scan_level >= 2)


def handler_at(mutations: MutationHandler, when: datetime) -> MutationHandler:
    """A handler like ``mutations`` whose clock stands at ``when``."""
    publisher = mutations.dispatcher.publisher
    assert publisher is not None
    return MutationHandler(
        mutations.plugins,
        mutations.tasks,
        mutations.schedules,
        publisher,
        mutations.settings,
        clock=lambda: when,
    )


def tasks_on(engine: Engine, pk: str, status: TaskStatus = TaskStatus.QUEUED) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(TaskRow.plugin_id, TaskRow.band).where(TaskRow.input_ooi == pk, TaskRow.status == status)
        ).all()
    return {plugin: band for plugin, band in rows}


def test_a_new_hostname_gets_every_enabled_boefje_its_level_clears_at_band_1(mutations, world, pg_engine) -> None:
    org = world.organisation_ids[0]
    pk = "Hostname|internet|brand-new.example.nl"
    assert mutations("scan_profile_mutations", [profile_mutation(org, pk, 2)]) == []
    queued = tasks_on(pg_engine, pk)
    assert set(queued) == expected_boefjes(world, org, "Hostname", 2, "create")
    assert queued and set(queued.values()) == {1}


def test_a_scan_level_1_boefje_never_runs_on_a_level_0_hostname(mutations, world, pg_engine) -> None:
    org = world.organisation_ids[0]
    pk = "Hostname|internet|level-zero.example.nl"
    mutations("scan_profile_mutations", [profile_mutation(org, pk, 0)])
    assert all(world.plugin(b).scan_level == 0 for b in tasks_on(pg_engine, pk))


def test_the_same_mutation_twice_queues_nothing_more(mutations, world, pg_engine) -> None:
    org = world.organisation_ids[0]
    pk = "Hostname|internet|twice.example.nl"
    mutations("scan_profile_mutations", [profile_mutation(org, pk, 2)])
    first = tasks_on(pg_engine, pk)
    mutations("scan_profile_mutations", [profile_mutation(org, pk, 2, "update")])
    assert tasks_on(pg_engine, pk) == first


def test_a_level_decrease_cancels_what_the_object_no_longer_clears(mutations, world, pg_engine) -> None:
    org = world.organisation_ids[0]
    pk = "IPAddressV4|internet|198.51.100.77"  # nmap needs level 2, shodan level 1
    mutations("scan_profile_mutations", [profile_mutation(org, pk, 4)])
    before = tasks_on(pg_engine, pk)
    mutations("scan_profile_mutations", [profile_mutation(org, pk, 1, "update")])
    after = tasks_on(pg_engine, pk)
    assert set(after) == {b for b in before if world.plugin(b).scan_level <= 1}
    cancelled = tasks_on(pg_engine, pk, TaskStatus.CANCELLED)
    assert set(cancelled) == {b for b in before if world.plugin(b).scan_level > 1}
    assert cancelled, "the world should have boefjes above level 1 for addresses"


# --- batches planned before the batch before them is written: the plan is pure, the writes read ---


def test_a_batch_planned_before_the_last_is_written_does_not_queue_its_pairs_again(mutations, world, pg_engine) -> None:
    org = world.organisation_ids[0]
    pk = "Hostname|internet|twice-in-a-row.example.nl"
    first = mutations.plan("scan_profile_mutations", [profile_mutation(org, pk, 4)])
    second = mutations.plan(
        "scan_profile_mutations", [profile_mutation(org, pk, 4, "update")]
    )  # before first is written
    first()()
    ran = tasks_on(pg_engine, pk)
    assert ran
    with pg_engine.begin() as conn:  # the workers run them before the second batch is written
        conn.execute(update(TaskRow).where(TaskRow.input_ooi == pk).values(status=TaskStatus.COMPLETED, ended_at=NOW))
    second()()
    assert not set(ran) & set(tasks_on(pg_engine, pk))  # not queued again: the second plan took them as live


def test_a_batch_planned_before_a_level_drop_is_written_plans_as_if_the_drop_had_happened(
    mutations, producers, world, pg_engine
) -> None:
    TickProducer(producers).run(NOW)  # pairs with schedules in the future and queued tasks
    org = world.organisation_ids[0]
    known = next(
        o
        for o in world.oois(org).values()
        if o.object_type == "IPAddressV4" and o.scan_level >= 2 and schedules_on(pg_engine, o.primary_key)
    )
    before = tasks_on(pg_engine, known.primary_key)
    assert any(world.plugin(b).scan_level > 1 for b in before)
    drop = mutations.plan("scan_profile_mutations", [profile_mutation(org, known.primary_key, 1, "update")])
    back = mutations.plan(
        "scan_profile_mutations", [profile_mutation(org, known.primary_key, known.scan_level, "update")]
    )
    drop()()  # cancels what level 1 does not clear and disables those schedules ...
    back()()  # ... which the level coming back queues again, as if the batches had run one by one
    requeued = tasks_on(pg_engine, known.primary_key)
    assert {b for b in before if world.plugin(b).scan_level > 1} <= set(requeued)
    after = schedules_on(pg_engine, known.primary_key)
    assert all(after[b].enabled for b in requeued if b in after)


def test_a_task_that_finishes_after_the_plan_saw_it_live_is_not_queued_again(
    mutations, producers, world, pg_engine
) -> None:
    org, known = planned_hostname(producers, world)
    queued = tasks_on(pg_engine, known.primary_key)
    assert queued
    later = NOW + timedelta(days=30)  # every schedule due, but the tasks are live when planned
    handler = handler_at(mutations, later)
    write = handler.plan(
        "scan_profile_mutations", [profile_mutation(org, known.primary_key, known.scan_level, "update")]
    )
    with pg_engine.begin() as conn:  # the workers finish them before the batch is written
        conn.execute(update(TaskRow).values(status=TaskStatus.COMPLETED, ended_at=later))
    write()()
    assert not set(queued) & set(tasks_on(pg_engine, known.primary_key))


def test_a_delete_written_before_the_batch_before_it_is_sent_still_leaves_its_schedules_disabled(
    mutations, producers, world, pg_engine, monkeypatch
) -> None:
    org, known = planned_hostname(producers, world)
    with pg_engine.begin() as conn:  # every task long done, every schedule due
        conn.execute(update(TaskRow).values(status=TaskStatus.COMPLETED, ended_at=NOW))
    handler = handler_at(mutations, NOW + timedelta(days=30))
    upsert = handler.schedules.upsert

    def slow_upsert(*args: Any, **kwargs: Any) -> None:  # a slow database widens any race
        time.sleep(0.3)
        upsert(*args, **kwargs)

    monkeypatch.setattr(handler.schedules, "upsert", slow_upsert)
    send_update = handler.plan("scan_profile_mutations", [profile_mutation(org, known.primary_key, 4, "update")])()
    write_delete = handler.plan("scan_profile_mutations", [profile_mutation(org, known.primary_key, None, "delete")])
    sends: list[Any] = []
    writing = threading.Thread(target=lambda: sends.append(write_delete()))
    writing.start()
    writing.join(0.5)
    assert writing.is_alive()  # the delete's writes wait for the update to be sent ...
    send_update()  # ... which moves its pairs' deadlines (enabling their schedules) first
    writing.join(10)
    assert not writing.is_alive()
    sends[0]()

    assert tasks_on(pg_engine, known.primary_key) == {}
    schedules = schedules_on(pg_engine, known.primary_key)
    assert schedules and not any(row.enabled for row in schedules.values())


class RefusingPublisher:
    """A broker that is down: nothing is ever published."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.calls = 0

    def prepare(self, messages: Sequence[OutgoingMessage]) -> list[OutgoingMessage]:
        return self.publisher.prepare(messages)

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        self.calls += 1
        raise PublishError("broker down", certain=True)


def test_a_failed_publish_frees_every_claim_of_its_batch_and_the_batch_comes_back(
    mutations, stores, publisher, world, pg_engine, planner_settings
) -> None:
    tasks, schedules = stores
    refusing = RefusingPublisher(publisher)
    small_spans = planner_settings.model_copy(update={"batch_size": 2})  # several claims a batch
    handler = MutationHandler(mutations.plugins, tasks, schedules, refusing, small_spans, clock=lambda: NOW)  # type: ignore[arg-type]
    org = world.organisation_ids[0]
    pk = "Hostname|internet|broker-down.example.nl"
    expected = expected_boefjes(world, org, "Hostname", 4, "create")
    assert len(expected) > 2

    send = handler.plan("scan_profile_mutations", [profile_mutation(org, pk, 4)])()
    assert set(tasks_on(pg_engine, pk)) == expected  # claimed, every span
    with pytest.raises(TransientError, match="publishing failed"):
        send()

    assert refusing.calls == 1  # the first span failed; the rest were never tried ...
    assert tasks_on(pg_engine, pk) == {}  # ... and every row is free again
    with pg_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(UnpublishedTask)).scalar_one() == 0
    mutations("scan_profile_mutations", [profile_mutation(org, pk, 4)])  # the batch again, the broker back
    assert set(tasks_on(pg_engine, pk)) == expected


def schedules_on(engine: Engine, pk: str) -> dict[str, Row[Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(ScheduleRow).where(ScheduleRow.input_ooi == pk)).all()
    return {row.plugin_id: row for row in rows}


def test_a_delete_cancels_the_objects_queued_tasks_and_disables_its_schedules(
    mutations, producers, world, pg_engine
) -> None:
    TickProducer(producers).run(NOW)  # the world's objects get tasks and schedules
    org = world.organisation_ids[0]
    known = next(o for o in world.oois(org).values() if o.object_type == "Hostname" and o.scan_level >= 2)
    assert tasks_on(pg_engine, known.primary_key) and schedules_on(pg_engine, known.primary_key)
    mutations("scan_profile_mutations", [profile_mutation(org, known.primary_key, None, "delete")])
    assert tasks_on(pg_engine, known.primary_key) == {}
    assert not any(row.enabled for row in schedules_on(pg_engine, known.primary_key).values())


def test_a_new_object_gets_its_schedules_from_its_first_run_at_the_next_tick(
    mutations, producers, world, pg_engine, planner_settings
) -> None:
    org = world.organisation_ids[0]
    known = next(o for o in world.oois(org).values() if o.object_type == "Hostname" and o.scan_level >= 2)
    pk = known.primary_key
    mutations("scan_profile_mutations", [profile_mutation(org, pk, known.scan_level)])
    queued = tasks_on(pg_engine, pk)
    assert queued and schedules_on(pg_engine, pk) == {}  # the event writes no schedule for a new pair
    ran = NOW + timedelta(minutes=10)
    with pg_engine.begin() as conn:
        conn.execute(
            update(TaskRow)
            .where(TaskRow.input_ooi == pk)
            .values(status=TaskStatus.COMPLETED, started_at=ran, ended_at=ran)
        )

    tick = ran + timedelta(minutes=1)
    TickProducer(producers).run(tick)

    schedules = schedules_on(pg_engine, pk)
    periodic = {b for b in queued if not world.plugin(b).run_on}  # run_on boefjes have no schedule
    assert periodic and set(schedules) == periodic
    in_grace = []
    for boefje_id in periodic:
        boefje = world.plugin(boefje_id)
        expected = new_boefje_schedule(org, boefje, pk, schedules[boefje_id].hash, ran, planner_settings)
        if expected.deadline_at is not None and expected.deadline_at > tick:  # within grace: not run again
            assert schedules[boefje_id].deadline_at == expected.deadline_at, boefje_id
            assert boefje_id not in tasks_on(pg_engine, pk)
            in_grace.append(boefje_id)
    assert in_grace


def test_an_event_moves_the_deadline_of_a_pair_it_queues_that_has_a_schedule(
    mutations, producers, world, pg_engine
) -> None:
    org, known = planned_hostname(producers, world)
    before = schedules_on(pg_engine, known.primary_key)
    later = NOW + timedelta(days=30)  # every schedule is due, every task long done
    with pg_engine.begin() as conn:
        conn.execute(update(TaskRow).values(status=TaskStatus.COMPLETED, ended_at=NOW))
    handler = handler_at(mutations, later)
    handler("scan_profile_mutations", [profile_mutation(org, known.primary_key, known.scan_level, "update")])
    after = schedules_on(pg_engine, known.primary_key)
    requeued = {b for b in tasks_on(pg_engine, known.primary_key) if b in before}
    assert requeued
    assert all(after[b].deadline_at > later for b in requeued)


def test_an_event_for_a_pair_still_queued_queues_nothing_and_keeps_its_deadline(
    mutations, producers, world, pg_engine
) -> None:
    org, known = planned_hostname(producers, world)  # every eligible pair: a schedule and a queued task
    before = schedules_on(pg_engine, known.primary_key)
    queued = tasks_on(pg_engine, known.primary_key)
    assert queued and set(queued) <= set(before)
    later = NOW + timedelta(days=30)  # every schedule is due, but the tasks never ran
    handler = handler_at(mutations, later)
    handler("scan_profile_mutations", [profile_mutation(org, known.primary_key, known.scan_level, "update")])
    with pg_engine.connect() as conn:
        rows = conn.execute(select(TaskRow.plugin_id).where(TaskRow.input_ooi == known.primary_key)).scalars().all()
    assert sorted(b for b in rows if b in queued) == sorted(queued)  # still one task per planned pair
    after = schedules_on(pg_engine, known.primary_key)
    assert {b: after[b].deadline_at for b in queued} == {b: before[b].deadline_at for b in queued}
    assert handler.stats.skipped["already live"] == len(queued)


def test_a_cancelled_task_is_never_started(mutations, world, pg_engine, stores) -> None:
    tasks, _ = stores
    org = world.organisation_ids[0]
    pk = "Hostname|internet|cancel-me.example.nl"
    mutations("scan_profile_mutations", [profile_mutation(org, pk, 2)])
    with pg_engine.connect() as conn:
        task_id = conn.execute(select(TaskRow.id).where(TaskRow.input_ooi == pk).limit(1)).scalar_one()
    mutations("scan_profile_mutations", [profile_mutation(org, pk, None, "delete")])
    assert tasks.start(task_id, worker="w") is None


def test_an_object_within_its_schedule_is_not_run_again(mutations, producers, world, pg_engine) -> None:
    TickProducer(producers).run(NOW)  # every eligible pair now has a schedule in the future
    with pg_engine.begin() as conn:  # ... and its task ran
        conn.execute(update(TaskRow).values(status=TaskStatus.COMPLETED, ended_at=NOW))
    org = world.organisation_ids[0]
    known = next(o for o in world.oois(org).values() if o.object_type == "Hostname" and o.scan_level >= 2)
    before = tasks_on(pg_engine, known.primary_key)
    mutations("scan_profile_mutations", [profile_mutation(org, known.primary_key, known.scan_level, "update")])
    after = tasks_on(pg_engine, known.primary_key)
    run_on_update = {b.id for b in world.boefjes if b.run_on and "update" in b.run_on}
    # Periodic boefjes are within their schedule: nothing new. Boefjes that run on updates do run.
    assert {b: band for b, band in after.items() if b not in run_on_update} == before
    assert mutations.stats.skipped["within grace period"] > 0


def test_run_on_boefjes_run_only_on_their_operation(mutations, world, pg_engine) -> None:
    run_on = [b for b in world.boefjes if b.run_on and b.consumes]
    if not run_on:
        pytest.skip("the generated world has no run_on boefje")
    boefje = run_on[0]
    org = next(o for o in world.organisation_ids if world.is_enabled(o, boefje.id))
    object_type = boefje.consumes[0]
    for operation in ("create", "update"):
        pk = f"{object_type}|internet|run-on-{operation}.example.nl"
        mutations("scan_profile_mutations", [profile_mutation(org, pk, 4, operation)])
        assert (boefje.id in tasks_on(pg_engine, pk)) == (operation in boefje.run_on)


def test_events_of_an_unknown_organisation_are_rejected_not_dropped(mutations) -> None:
    rejected = mutations("scan_profile_mutations", [profile_mutation("no-such-org", "Hostname|internet|x.nl", 2)])
    assert [r.index for r in rejected] == [0]
    assert "no-such-org" in rejected[0].reason


def test_katalogus_down_is_a_transient_error(mutations, kat, world) -> None:
    kat.inject_fault("katalogus", status=503, times=None)
    with pytest.raises(TransientError):
        mutations("scan_profile_mutations", [profile_mutation(world.organisation_ids[0], "Hostname|internet|y.nl", 2)])


def test_a_burst_of_mutations_asks_katalogus_once_per_organisation(mutations, kat, world, pg_engine) -> None:
    org = world.organisation_ids[0]
    kat.reset_counts()
    batch = [profile_mutation(org, f"Hostname|internet|burst-{n}.example.nl", 2) for n in range(200)]
    for start in range(0, 200, 50):
        mutations("scan_profile_mutations", batch[start : start + 50])
    assert kat.request_counts.get("katalogus", 0) == 1
    assert kat.request_counts.get("octopoes", 0) == 0 and kat.request_counts.get("bytes", 0) == 0
    assert mutations.stats.queued == 200 * len(expected_boefjes(world, org, "Hostname", 2, "create"))


# --- normalizers ---------------------------------------------------------------------------


def normalizer_rows(engine: Engine) -> list[Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(select(TaskRow).where(TaskRow.scheduler_id == SchedulerId.NORMALIZER)).all())


def test_a_raw_file_gets_one_task_per_enabled_normalizer_consuming_its_type(raw_files, world, pg_engine) -> None:
    org = world.organisation_ids[0]
    boefje_id = "dns-records"
    mime = f"boefje/{boefje_id}"
    event = raw_file_event(org, boefje_id, [mime, mime, "boefje/dns-records-1.0"], NOW)
    raw_files("raw_file_received", [event])
    rows = normalizer_rows(pg_engine)
    expected = {n.id for n in world.normalizers if world.is_enabled(org, n.id) and mime in n.consumes}
    assert {r.plugin_id for r in rows} == expected
    for row in rows:
        assert row.hash == normalizer_task_hash(row.plugin_id, str(event.raw_data.boefje_meta.id), org)
        assert row.data["raw_data"]["id"] == str(event.raw_data.id)
        assert row.data["normalizer"]["id"] == row.plugin_id


def test_an_error_raw_file_gets_no_normalizer(raw_files, world, pg_engine) -> None:
    org = world.organisation_ids[0]
    raw_files("raw_file_received", [raw_file_event(org, "dns-records", ["boefje/dns-records", "error/boefje"], NOW)])
    assert normalizer_rows(pg_engine) == []
    assert raw_files.stats.skipped["error raw file"] == 1


def test_the_same_raw_file_twice_is_normalized_once(raw_files, world, pg_engine) -> None:
    org = world.organisation_ids[0]
    event = raw_file_event(org, "dns-records", ["boefje/dns-records"], NOW)
    raw_files("raw_file_received", [event])
    raw_files("raw_file_received", [event])
    rows = normalizer_rows(pg_engine)
    assert len(rows) == len({r.hash for r in rows}) >= 1


def test_cron_decides_on_the_event_path_too(mutations, world, pg_engine) -> None:
    """dns-zone runs at 04:00 daily: a run that ended before the last 04:00 is due again inside the
    default grace period (a day); one that ended after it waits for the next 04:00."""
    org = world.organisation_ids[0]
    dns_zone = world.plugin("dns-zone")
    assert dns_zone is not None and dns_zone.cron == "0 4 * * *" and world.is_enabled(org, "dns-zone")
    before_cron = "DNSZone|internet|ran-before-four.example.nl"
    after_cron = "DNSZone|internet|ran-after-four.example.nl"
    mutations("scan_profile_mutations", [profile_mutation(org, before_cron, 2), profile_mutation(org, after_cron, 2)])
    assert "dns-zone" in tasks_on(pg_engine, before_cron) and "dns-zone" in tasks_on(pg_engine, after_cron)
    ended = {before_cron: datetime(2026, 6, 1, 13, 0, tzinfo=UTC), after_cron: datetime(2026, 6, 2, 4, 30, tzinfo=UTC)}
    with pg_engine.begin() as conn:
        for pk, at in ended.items():
            conn.execute(
                update(TaskRow)
                .where(TaskRow.input_ooi == pk)
                .values(status=TaskStatus.COMPLETED, started_at=at, ended_at=at)
            )
    at_five = datetime(2026, 6, 2, 5, 0, tzinfo=UTC)  # within a day of both runs
    handler = handler_at(mutations, at_five)
    handler(
        "scan_profile_mutations",
        [profile_mutation(org, before_cron, 2, "update"), profile_mutation(org, after_cron, 2, "update")],
    )

    assert "dns-zone" in tasks_on(pg_engine, before_cron)  # cron time passed: due
    assert "dns-zone" not in tasks_on(pg_engine, after_cron)
    assert handler.stats.skipped["before its next cron time"] == 1
    handler.bookkeeper.flush()
    assert schedules_on(pg_engine, after_cron)["dns-zone"].deadline_at == datetime(2026, 6, 3, 4, 0, tzinfo=UTC)


# --- Bytes' history on the event path: objects below clearance at the tick, then raised ------------


def below_clearance(world: World, count: int) -> list[tuple[str, str, str]]:
    """``count`` (org, boefje, object) pairs of the first organisation on distinct objects that the
    boefje (enabled, periodic, no cron) does not clear, and that have no run in Bytes."""
    org = world.organisation_ids[0]
    pairs: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for boefje in sorted(world.boefjes, key=lambda b: b.id):
        if not world.is_enabled(org, boefje.id) or not boefje.consumes or boefje.run_on or boefje.cron:
            continue
        for ooi in sorted(world.oois(org).values(), key=lambda o: o.primary_key):
            if (
                ooi.object_type in boefje.consumes
                and ooi.level < boefje.scan_level
                and ooi.primary_key not in seen
                and world.last_run(org, boefje.id, ooi.primary_key) is None
            ):
                pairs.append((org, boefje.id, ooi.primary_key))
                seen.add(ooi.primary_key)
                if len(pairs) == count:
                    return pairs
    raise AssertionError(f"the world has fewer than {count} such pairs")


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


def raise_to_4(mutations: MutationHandler, pairs: Sequence[tuple[str, str, str]]) -> None:
    mutations("scan_profile_mutations", [profile_mutation(org, pk, 4, "update") for org, _, pk in pairs])


def test_a_raise_on_an_object_whose_bytes_run_ended_inside_the_grace_period_queues_nothing_and_schedules_it(
    mutations, producers, world, pg_engine
) -> None:
    inside, never = below_clearance(world, 2)
    ended = NOW - timedelta(hours=14)  # the default grace period is a day
    bytes_run(world, inside, ended - timedelta(seconds=30), ended)
    TickProducer(producers).run(NOW)  # lists the boefje's history in Bytes, the object below clearance
    assert inside[1] not in tasks_on(pg_engine, inside[2])

    raise_to_4(mutations, [inside, never])

    assert inside[1] not in tasks_on(pg_engine, inside[2])
    assert never[1] in tasks_on(pg_engine, never[2])  # no run in Bytes: queued
    assert mutations.stats.skipped["within grace period"] >= 1
    mutations.bookkeeper.flush()
    boefje = mutations.plugins.boefjes(inside[0])
    deadline = schedules_on(pg_engine, inside[2])[inside[1]].deadline_at
    assert deadline == next_deadline(
        next(b for b in boefje if b.id == inside[1]),
        ended,
        hash_=boefje_task_hash(inside[1], inside[0], inside[2]),
        default_seconds=mutations.settings.grace_period,
        jitter=mutations.settings.schedule_jitter,
    )
    assert deadline > NOW


def test_a_raise_on_an_object_its_boefje_is_running_on_in_bytes_queues_nothing_and_a_stalled_one_queues(
    mutations, producers, world, pg_engine
) -> None:
    running, stalled = below_clearance(world, 2)
    bytes_run(world, running, NOW - timedelta(minutes=2), None)
    bytes_run(world, stalled, NOW - timedelta(hours=2), None)  # older than the stall age: it died
    TickProducer(producers).run(NOW)

    raise_to_4(mutations, [running, stalled])

    assert running[1] not in tasks_on(pg_engine, running[2])
    assert mutations.stats.skipped["running in Bytes"] == 1
    assert stalled[1] in tasks_on(pg_engine, stalled[2])


def test_a_plugins_own_interval_decides_on_a_raise_in_place_of_the_default_grace(
    mutations, producers, world, pg_engine
) -> None:
    """shodan runs weekly (interval 10080 min), ssl-certificates every 12 hours (720); the default
    grace period is a day. A shodan run that ended three days ago is not due again, an
    ssl-certificates run that ended 14 hours ago is."""
    org = next(
        o for o in world.organisation_ids if world.is_enabled(o, "shodan") and world.is_enabled(o, "ssl-certificates")
    )
    assert world.plugin("shodan").interval == 10080 and world.plugin("ssl-certificates").interval == 720
    weekly = (org, "shodan", "IPAddressV4|internet|198.51.100.77")
    twice_a_day = (org, "ssl-certificates", "Website|internet|198.51.100.78|tcp|443|https|interval.example.nl")
    world.add_ooi(org, "IPAddressV4", weekly[2], level=0)  # both boefjes need level 1
    world.add_ooi(org, "Website", twice_a_day[2], level=0)
    for pair, ended in ((weekly, NOW - timedelta(days=3)), (twice_a_day, NOW - timedelta(hours=14))):
        bytes_run(world, pair, ended - timedelta(seconds=30), ended)
    TickProducer(producers).run(NOW)  # lists both boefjes' history in Bytes, the objects below clearance

    raise_to_4(mutations, [weekly, twice_a_day])

    assert "shodan" not in tasks_on(pg_engine, weekly[2])
    assert mutations.stats.skipped["within grace period"] == 1
    assert "ssl-certificates" in tasks_on(pg_engine, twice_a_day[2])
    mutations.bookkeeper.flush()
    assert schedules_on(pg_engine, weekly[2])["shodan"].deadline_at > NOW + timedelta(days=3)


def reported(org: str, pair: tuple[str, str, str], started: datetime, ended: datetime | None) -> RawFileReceived:
    """A raw file of a run of ``pair`` that Bytes got (from any runner), as Bytes announces it."""
    event = raw_file_event(org, pair[1], ["text/plain"], NOW)
    meta = event.raw_data.boefje_meta
    meta.input_ooi, meta.started_at, meta.ended_at = pair[2], started, ended
    return event


def test_a_run_bytes_got_after_the_tick_is_known_to_a_raise_through_its_raw_file(
    mutations, raw_files, producers, world, pg_engine
) -> None:
    """Another runner ran the boefje after the tick listed its history in Bytes (no task of ours):
    the raw file's BoefjeMeta tells the listener, so a raise two hours later keeps the grace period;
    a late raw file of an older run does not hide the newer one."""
    pair, untouched = below_clearance(world, 2)
    TickProducer(producers).run(NOW)  # lists the boefje's history in Bytes: nothing for either pair yet
    ended = NOW - timedelta(hours=2)

    raw_files("raw_file_received", [reported(pair[0], pair, ended - timedelta(minutes=1), ended)])
    raw_files(
        "raw_file_received",
        [reported(pair[0], pair, NOW - timedelta(days=3), NOW - timedelta(days=3) + timedelta(minutes=1))],
    )
    raise_to_4(mutations, [pair, untouched])

    assert pair[1] not in tasks_on(pg_engine, pair[2])
    assert mutations.stats.skipped["within grace period"] >= 1
    assert untouched[1] in tasks_on(pg_engine, untouched[2])
    hash_ = boefje_task_hash(pair[1], pair[0], pair[2])
    assert BytesRunStore(pg_engine).newest([hash_])[hash_].ended_at == ended


def test_a_cron_boefje_follows_cron_on_a_raise_too(mutations, producers, world, pg_engine) -> None:
    """dns-zone runs at 04:00 daily; NOW is 12:05. A Bytes run that ended at 03:50 is due (a cron
    time passed since), one that ended at 04:10 waits for tomorrow's 04:00, both inside a day's grace."""
    org = world.organisation_ids[0]
    assert world.is_enabled(org, "dns-zone")
    before, after = [(org, "dns-zone", f"DNSZone|internet|cron-{name}.example.nl") for name in ("before", "after")]
    for _, _, pk in (before, after):
        world.add_ooi(org, "DNSZone", pk, level=0)  # dns-zone needs level 1
    for pair, at in (
        (before, datetime(2026, 6, 1, 3, 50, tzinfo=UTC)),
        (after, datetime(2026, 6, 1, 4, 10, tzinfo=UTC)),
    ):
        bytes_run(world, pair, at - timedelta(seconds=30), at)
    TickProducer(producers).run(NOW)

    raise_to_4(mutations, [before, after])

    assert "dns-zone" in tasks_on(pg_engine, before[2])
    assert "dns-zone" not in tasks_on(pg_engine, after[2])
    assert mutations.stats.skipped["before its next cron time"] == 1
    mutations.bookkeeper.flush()
    assert schedules_on(pg_engine, after[2])["dns-zone"].deadline_at == datetime(2026, 6, 2, 4, 0, tzinfo=UTC)


def test_a_raise_after_the_tick_decides_as_the_tick_would_for_every_object_of_the_world(
    mutations, producers, world, pg_engine
) -> None:
    """Every object of the world raised to level 4 after a tick: what is queued is what the
    simulation's oracle allows on the event path (the world's own history of ended, running and
    dead runs included)."""
    TickProducer(producers).run(NOW)
    with pg_engine.connect() as conn:
        ticked = {tuple(r) for r in conn.execute(select(TaskRow.organisation, TaskRow.plugin_id, TaskRow.input_ooi))}
    bodies = world_mutations(world, operation="update", level=4)
    expected = allowed_event_tasks(
        world,
        bodies,
        now=NOW,
        stall_age_seconds=mutations.settings.effective_bytes_stall_age,
    )
    mutations("scan_profile_mutations", [ScanProfileMutation.model_validate(b) for b in bodies])
    with pg_engine.connect() as conn:
        queued = {tuple(r) for r in conn.execute(select(TaskRow.organisation, TaskRow.plugin_id, TaskRow.input_ooi))}
    assert queued - ticked == expected


def test_a_run_seen_going_that_ended_after_the_tick_is_seen_ended_by_the_next_tick_past_its_stall_age(
    mutations, producers, world, pg_engine
) -> None:
    """Bytes shows a run going at the tick; it ends a minute later. The next tick after its stall
    age lists the boefje's history again (no pair of it needed Bytes), so a raise then waits the
    grace period from that end instead of taking the run for dead."""
    (pair,) = below_clearance(world, 1)
    started = NOW - timedelta(minutes=2)
    bytes_run(world, pair, started, None)
    TickProducer(producers).run(NOW)
    ended = NOW + timedelta(minutes=1)
    bytes_run(world, pair, started + timedelta(seconds=1), ended)  # Bytes' newest run now: it ended
    later = NOW + timedelta(minutes=10)  # past the stall age (7 minutes) of the run seen going
    TickProducer(producers).run(later)

    handler = handler_at(mutations, later)
    raise_to_4(handler, [pair])

    assert pair[1] not in tasks_on(pg_engine, pair[2])
    assert handler.stats.skipped["within grace period"] >= 1


def test_a_create_that_failed_and_comes_back_after_its_objects_delete_queues_nothing(
    mutations, stores, publisher, clients, world, pg_engine, planner_settings
) -> None:
    """One listener: a create fails (the broker is down) and goes back on the queue; the object's
    delete, after it on the queue, is handled meanwhile. When the create comes back, the object
    is gone from Octopoes, and nothing is queued for it. A listener without failures trusts its
    own order and asks Octopoes nothing."""
    tasks, schedules = stores
    order = ObjectEventStore(pg_engine, "the-listener")
    refusing = RefusingPublisher(publisher)

    def handler(broker: Any, order: ObjectEventStore = order) -> MutationHandler:
        plugins, settings = mutations.plugins, planner_settings
        return MutationHandler(
            plugins, tasks, schedules, broker, settings, clock=lambda: NOW, octopoes=clients.octopoes, order=order
        )

    org = world.organisation_ids[0]
    pk = "Hostname|internet|created-then-deleted.example.nl"  # not in Octopoes: deleted by now
    with pytest.raises(TransientError, match="publishing failed"):
        handler(refusing)("scan_profile_mutations", [profile_mutation(org, pk, 2)])
    listener = handler(publisher)
    listener("scan_profile_mutations", [profile_mutation(org, pk, None, "delete")])
    listener("scan_profile_mutations", [profile_mutation(org, pk, 2)])  # the failed batch, back

    assert tasks_on(pg_engine, pk) == {}
    assert listener.stats.contested == 2  # after the failure, the delete and the create came back

    steady = handler(publisher, ObjectEventStore(pg_engine, "a-listener-without-failures"))
    kept = "Hostname|internet|created-twice.example.nl"  # not in Octopoes either: asked, it would withdraw
    steady("scan_profile_mutations", [profile_mutation(org, kept, 2)])
    steady("scan_profile_mutations", [profile_mutation(org, kept, 2)])
    assert set(tasks_on(pg_engine, kept)) == expected_boefjes(world, org, "Hostname", 2, "create")
    assert steady.stats.contested == 0


def test_a_create_delivered_again_after_its_objects_delete_was_handled_queues_nothing(
    mutations, stores, publisher, clients, world, pg_engine, planner_settings
) -> None:
    """A listener killed mid-batch: the broker delivers its events again, to a listener that has
    handled later events of their objects meanwhile (here, the same one). A create delivered
    again after its object's delete finds the object gone from Octopoes and queues nothing."""
    tasks, schedules = stores
    listener = MutationHandler(
        mutations.plugins,
        tasks,
        schedules,
        publisher,
        planner_settings,
        clock=lambda: NOW,
        octopoes=clients.octopoes,
        order=ObjectEventStore(pg_engine, "the-listener"),
    )
    org = world.organisation_ids[0]
    pk = "Hostname|internet|delivered-again.example.nl"  # not in Octopoes: deleted by now
    listener("scan_profile_mutations", [profile_mutation(org, pk, None, "delete")])
    again = profile_mutation(org, pk, 2)
    again.redelivered = True  # as the listener marks it (the broker's redelivered flag)
    listener("scan_profile_mutations", [again])

    assert tasks_on(pg_engine, pk) == {}
    assert listener.stats.contested == 1


def test_deadlines_left_for_after_the_send_are_not_written_for_an_object_another_listener_handled_since(
    mutations, producers, clients, world, pg_engine
) -> None:
    org, known = planned_hostname(producers, world)
    before = schedules_on(pg_engine, known.primary_key)
    later = NOW + timedelta(days=30)  # every schedule is due, every task long done
    with pg_engine.begin() as conn:
        conn.execute(update(TaskRow).values(status=TaskStatus.COMPLETED, ended_at=NOW))
    publisher = mutations.dispatcher.publisher
    assert publisher is not None

    def listener(name: str) -> MutationHandler:
        order = ObjectEventStore(pg_engine, name)
        return MutationHandler(
            mutations.plugins,
            mutations.tasks,
            mutations.schedules,
            publisher,
            mutations.settings,
            clock=lambda: later,
            octopoes=clients.octopoes,
            order=order,
        )

    a, b = listener("a"), listener("b")
    send = a.plan("scan_profile_mutations", [profile_mutation(org, known.primary_key, known.scan_level, "update")])()
    assert b.order is not None
    b.order.enter({(org, known.primary_key): "delete"}).release()  # b handles the object meanwhile
    send()  # a's tasks go out; their schedules' new deadlines are b's to write now, not a's

    requeued = {boefje for boefje in tasks_on(pg_engine, known.primary_key) if boefje in before}
    assert requeued
    after = schedules_on(pg_engine, known.primary_key)
    assert {x: after[x].deadline_at for x in requeued} == {x: before[x].deadline_at for x in requeued}
