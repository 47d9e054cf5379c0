"""Deschedule through the whole cycle with real processes: a worker runs the simulated boefje that
deschedules; the simulated Bytes stores its raw file tagged ``openkat/deschedule`` and emits
``raw_file_received`` on RabbitMQ; the listener disables the pair's schedule and queues the
file's normalizer; no tick queues the pair again, as the oracle says."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select

from kat_scheduler.models import SchedulerId, TaskStatus
from kat_scheduler.producers import ManualPush, TickProducer
from kat_scheduler.rules import SkipReason
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.sim import WorldConfig, generate_world
from kat_scheduler.sim.deschedule import DESCHEDULE_BOEFJE, DESCHEDULE_NORMALIZER, deschedules
from kat_scheduler.sim.oracle import allowed_boefje_tasks, descheduled_pairs
from kat_scheduler.sim.world import World
from kat_scheduler.storage import ScheduleStore, TaskRow
from tests.closed_loop import closed_loop
from tests.conftest import vhost_name
from tests.events import drop_our_queues
from tests.integration.conftest import WORLD_NOW
from tests.vhosts import own_vhost
from tests.workers import wait_for

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
