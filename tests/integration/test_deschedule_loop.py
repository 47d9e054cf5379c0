"""Deschedule through the whole cycle with real processes: a worker runs the simulated boefje that
deschedules; the simulated Bytes stores its raw file tagged ``openkat/deschedule`` and emits
``raw_file_received`` on RabbitMQ; the listener disables the pair's schedule, cancels the pair's
queued task (whose message a worker then drops unrun) and queues the file's normalizer; no tick
queues the pair again, as the oracle says."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from kat_scheduler.models import SchedulerId, TaskStatus
from kat_scheduler.producers import ManualPush, ProducerContext, TickProducer
from kat_scheduler.queues import Queue
from kat_scheduler.rules import SkipReason
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.sim import WorldConfig, generate_world
from kat_scheduler.sim.bridge import EventBridge
from kat_scheduler.sim.deschedule import DESCHEDULE_BOEFJE, DESCHEDULE_NORMALIZER, deschedules
from kat_scheduler.sim.oracle import allowed_boefje_tasks, descheduled_pairs
from kat_scheduler.sim.world import World
from kat_scheduler.storage import ScheduleStore, TaskRow
from tests.closed_loop import closed_loop, worker_env
from tests.conftest import vhost_name
from tests.events import drop_our_queues
from tests.integration.conftest import WORLD_NOW
from tests.vhosts import own_vhost
from tests.workers import celery_worker, start_listener, stop, wait_for

VHOST = vhost_name("deschedule")


@pytest.fixture
def world() -> World:
    """The integration tests' world, with the boefje that deschedules."""
    return generate_world(
        WorldConfig(seed=11, organisations=2, oois_per_org=120, boefjes=12, now=WORLD_NOW, deschedule_boefje=True)
    )


@pytest.fixture
def loop_events_url(events_amqp_base: str) -> Iterator[str]:
    url = own_vhost(events_amqp_base, VHOST)
    drop_our_queues(url)
    yield url
    drop_our_queues(url)


def completed_normalizers(engine: Engine, input_ooi: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(func.count())
            .select_from(TaskRow)
            .where(
                TaskRow.scheduler_id == SchedulerId.NORMALIZER,
                TaskRow.plugin_id == DESCHEDULE_NORMALIZER.id,
                TaskRow.input_ooi == input_ooi,
                TaskRow.status == TaskStatus.COMPLETED,
            )
        ).scalar_one()


def test_a_boefje_that_deschedules_its_object_is_never_queued_on_it_again(
    kat, world, producers, loop_events_url, postgres_uri, redis_url, pg_engine, tmp_path
) -> None:
    org = world.organisation_ids[0]
    addresses = [
        o.primary_key
        for o in world.oois(org).values()
        if o.object_type in DESCHEDULE_BOEFJE.consumes and o.scan_level >= DESCHEDULE_BOEFJE.scan_level
    ]
    gone = next(pk for pk in addresses if deschedules(DESCHEDULE_BOEFJE.id, pk))
    kept = next(pk for pk in addresses if not deschedules(DESCHEDULE_BOEFJE.id, pk))
    schedules = ScheduleStore(pg_engine)

    def settled() -> bool:
        row = schedules.get_by_hash(boefje_task_hash(DESCHEDULE_BOEFJE.id, org, gone))
        return (
            row is not None
            and row.descheduled_at is not None
            and completed_normalizers(pg_engine, gone) == 1
            and completed_normalizers(pg_engine, kept) == 1
        )

    with closed_loop(kat, world, loop_events_url, postgres_uri, redis_url, tmp_path) as loop:
        for pk in (gone, kept):
            assert ManualPush(producers, org, DESCHEDULE_BOEFJE.id, pk).run(datetime.now(UTC)).task_id
        assert wait_for(settled, timeout=60), loop.logs()

    row = schedules.get_by_hash(boefje_task_hash(DESCHEDULE_BOEFJE.id, org, gone))
    assert row is not None and not row.enabled
    assert row.disabled_reason is not None and row.disabled_reason.startswith("descheduled by boefje internetdb")
    assert schedules.get_by_hash(boefje_task_hash(DESCHEDULE_BOEFJE.id, org, kept)) is None
    assert descheduled_pairs(world) == {(org, DESCHEDULE_BOEFJE.id, gone)}

    # Days later both pairs' grace is long over: the tick plans the kept one and not the other, as the oracle says.
    later = datetime.now(UTC) + timedelta(days=3)
    report = TickProducer(producers, [org]).run(later, dry_run=True)
    planned = {
        (c.organisation, c.boefje.id, c.input_ooi) for c in report.planned if c.boefje.id == DESCHEDULE_BOEFJE.id
    }
    allowed = {t for t in allowed_boefje_tasks(world, later) if t[0] == org and t[1] == DESCHEDULE_BOEFJE.id}
    assert (org, DESCHEDULE_BOEFJE.id, kept) in planned
    assert (org, DESCHEDULE_BOEFJE.id, gone) not in planned | allowed
    assert report.skipped[SkipReason.DESCHEDULED] == 1
    assert planned == allowed


def task_row(engine: Engine, task_id: uuid.UUID) -> TaskRow:
    with engine.connect() as conn:
        return conn.execute(select(TaskRow).where(TaskRow.id == task_id)).one()  # type: ignore[return-value]


def test_a_deschedule_file_cancels_the_pairs_queued_task_in_the_listener_and_no_worker_runs_it(
    kat, world, producers: ProducerContext, loop_events_url, postgres_uri, redis_url, pg_engine, tmp_path: Path
) -> None:
    """A worker runs the boefje on an object it deschedules; its ``raw_file_received`` waits on
    RabbitMQ while the worker stops and the pair is pushed again (a task queued, its message on the
    broker). The listener then starts, disables the pair's schedule and cancels that task; a
    worker started after it takes the cancelled task's message and drops it: the boefje never runs
    on the object again, and the first run's normalizer runs."""
    org = world.organisation_ids[0]
    gone = next(
        o.primary_key
        for o in world.oois(org).values()
        if o.object_type in DESCHEDULE_BOEFJE.consumes
        and o.scan_level >= DESCHEDULE_BOEFJE.scan_level
        and deschedules(DESCHEDULE_BOEFJE.id, o.primary_key)
    )
    hash_ = boefje_task_hash(DESCHEDULE_BOEFJE.id, org, gone)
    env = worker_env(kat, postgres_uri, redis_url, QUEUE_URI=loop_events_url)
    queues = [Queue.BOEFJES.value, Queue.NORMALIZERS.value]
    schedules = ScheduleStore(pg_engine)
    publisher = producers.publisher
    assert publisher is not None

    def push() -> uuid.UUID:
        task_id = ManualPush(producers, org, DESCHEDULE_BOEFJE.id, gone).run(datetime.now(UTC)).task_id
        assert task_id is not None
        return task_id

    with EventBridge(loop_events_url) as bridge:
        world.add_listener(bridge)
        try:
            with celery_worker("kat_scheduler", queues, env, concurrency=2, log_file=tmp_path / "first.log"):
                ran = push()
                assert wait_for(lambda: task_row(pg_engine, ran).status == TaskStatus.COMPLETED, timeout=30), (
                    tmp_path / "first.log"
                ).read_text()[-4000:]
                assert wait_for(lambda: bridge.published >= 1, timeout=10)  # its raw file's event, on RabbitMQ
            queued = push()  # no worker now: the task waits on the broker
            assert task_row(pg_engine, queued).status == TaskStatus.QUEUED

            with open(tmp_path / "listener.log", "wb") as log:
                listener = start_listener(kat, loop_events_url, postgres_uri, redis_url, log)
                try:
                    assert wait_for(lambda: task_row(pg_engine, queued).status == TaskStatus.CANCELLED, timeout=30), (
                        tmp_path / "listener.log"
                    ).read_text()[-4000:]
                    schedule = schedules.get_by_hash(hash_)
                    assert schedule is not None and not schedule.enabled and schedule.descheduled_at is not None
                    # The cancelled task's message is still on the broker.
                    assert publisher.queue_depth(Queue.BOEFJES.value) == 1

                    with celery_worker("kat_scheduler", queues, env, concurrency=2, log_file=tmp_path / "second.log"):
                        assert wait_for(
                            lambda: (
                                completed_normalizers(pg_engine, gone) == 1
                                and publisher.queue_depth(Queue.BOEFJES.value) == 0
                            ),
                            timeout=30,
                        ), (tmp_path / "second.log").read_text()[-4000:]
                finally:
                    stop(listener)
        finally:
            world.remove_listener(bridge)

    cancelled = task_row(pg_engine, queued)
    assert cancelled.status == TaskStatus.CANCELLED and cancelled.started_at is None
    assert [run.id for run in world.runs(org, DESCHEDULE_BOEFJE.id, gone) if run.id in (ran, queued)] == [ran]
    assert descheduled_pairs(world) == {(org, DESCHEDULE_BOEFJE.id, gone)}
