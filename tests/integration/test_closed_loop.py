"""The whole KAT cycle with real processes: a boefje worker stores raw data in the simulated
Bytes, which emits raw_file_received; the listener queues a normalizer; its observation adds
objects to the simulated Octopoes, which emits scan_profile_mutations; the listener queues
boefjes for the new objects, which the worker runs. The graph grows by itself."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, func, select

from kat_scheduler.models import SchedulerId, TaskStatus
from kat_scheduler.producers import ManualPush
from kat_scheduler.storage import TaskRow
from tests.closed_loop import closed_loop
from tests.conftest import vhost_name
from tests.events import drop_our_queues
from tests.vhosts import own_vhost
from tests.workers import wait_for

VHOST = vhost_name("loop")


@pytest.fixture
def loop_events_url(events_amqp_base: str) -> Iterator[str]:
    url = own_vhost(events_amqp_base, VHOST)
    drop_our_queues(url)
    yield url
    drop_our_queues(url)


def count(engine: Engine, *conditions) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(TaskRow).where(*conditions)).scalar_one()


def test_a_pushed_boefje_grows_the_simulated_graph_through_the_whole_cycle(
    kat, world, producers, loop_events_url, postgres_uri, redis_url, pg_engine, tmp_path
) -> None:
    org = next(o for o in world.organisation_ids if world.is_enabled(o, "dns-records"))
    hostname = next(
        o for o in world.oois(org).values() if o.object_type == "Hostname" and o.scan_level >= 2
    ).primary_key
    objects_before = len(world.oois(org))

    def grew() -> bool:
        return (
            count(pg_engine, TaskRow.scheduler_id == SchedulerId.NORMALIZER, TaskRow.status == TaskStatus.COMPLETED)
            >= 1
            and len(world.oois(org)) > objects_before
            and count(pg_engine, TaskRow.scheduler_id == SchedulerId.BOEFJE, TaskRow.status == TaskStatus.COMPLETED)
            >= 2
        )

    with closed_loop(kat, world, loop_events_url, postgres_uri, redis_url, tmp_path) as loop:
        pushed = ManualPush(producers, org, "dns-records", hostname).run(datetime.now(UTC))
        assert pushed.task_id is not None
        assert wait_for(grew, timeout=60), loop.logs()

    # The pushed task ran; new objects came from the observation; boefjes ran on them.
    with pg_engine.connect() as conn:
        pushed_row = conn.execute(select(TaskRow.status).where(TaskRow.id == pushed.task_id)).scalar_one()
        derived = (
            conn.execute(
                select(TaskRow.input_ooi).where(
                    TaskRow.scheduler_id == SchedulerId.BOEFJE, TaskRow.input_ooi != hostname
                )
            )
            .scalars()
            .all()
        )
    assert pushed_row == TaskStatus.COMPLETED
    new_objects = set(world.oois(org)) - {hostname}
    assert any(ref in new_objects for ref in derived)
    assert any(o.source == hostname for o in world.observations)
