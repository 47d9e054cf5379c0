"""The boefje producers used directly, through their one protocol."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from kat_scheduler.producers import (
    DueSchedulesProducer,
    ManualPush,
    PlanReport,
    Producer,
    ProducerContext,
    PushRefused,
    TickProducer,
)
from kat_scheduler.sim.oracle import allowed_boefje_tasks
from kat_scheduler.sim.world import World
from kat_scheduler.storage import ScheduleRow, TaskRow
from tests.integration.conftest import WORLD_NOW
from tests.tasks import broker_messages

NOW = WORLD_NOW + timedelta(minutes=5)


@pytest.fixture
def context(producers: ProducerContext) -> ProducerContext:
    """The shared producers' context (tests/integration/conftest.py), under this module's name."""
    return producers


def rows(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        tasks = conn.execute(select(func.count()).select_from(TaskRow)).scalar_one()
        schedules = conn.execute(select(func.count()).select_from(ScheduleRow)).scalar_one()
    return tasks, schedules


def allowed_pair(world: World) -> tuple[str, str, str]:
    return sorted(allowed_boefje_tasks(world, NOW))[0]


def test_every_producer_runs_dry_through_the_protocol_and_changes_nothing(
    context: ProducerContext, world: World, pg_engine: Engine, redis_url: str
) -> None:
    org, boefje, ooi = allowed_pair(world)
    producers: list[Producer[Any]] = [
        TickProducer(context),
        DueSchedulesProducer(context),
        ManualPush(context, org, boefje, ooi),
    ]
    assert len({p.name for p in producers}) == len(producers)
    results = {p.name: p.run(NOW, dry_run=True) for p in producers}
    tick = results["plan-boefjes"]
    assert isinstance(tick, PlanReport) and tick.dry_run
    assert {(c.organisation, c.boefje.id, c.input_ooi) for c in tick.planned} == allowed_boefje_tasks(world, NOW)
    push = results["push"]
    assert push.task_id is None and not push.already_live and push.hash
    assert rows(pg_engine) == (0, 0) and broker_messages(redis_url) == []


def test_the_tick_then_due_schedules_queue_each_allowed_task_once(
    context: ProducerContext, world: World, pg_engine: Engine
) -> None:
    first = TickProducer(context).run(NOW)
    assert first.queued == len(allowed_boefje_tasks(world, NOW)) > 0
    # Nothing is due yet: every planned pair has its next deadline ahead.
    assert DueSchedulesProducer(context).run(NOW + timedelta(minutes=1)).queued == 0
    assert rows(pg_engine)[0] == first.queued


def test_a_dry_manual_push_still_refuses_what_a_real_one_would(context: ProducerContext, world: World) -> None:
    org = world.organisation_ids[0]
    level0 = next(o for o in world.oois(org).values() if o.object_type == "Hostname" and o.scan_level == 0)
    with pytest.raises(PushRefused, match="clearance is never bypassed"):
        ManualPush(context, org, "dns-records", level0.primary_key).run(NOW, dry_run=True)
