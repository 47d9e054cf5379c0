"""Planning tasks on the ``scheduler`` queue, ticked by beat.

``kat.scheduler.plan_boefjes`` fans out one ``plan_boefjes_for_org`` task per group of
organisations (``SCHEDULER_PLAN_ORGS_PER_TASK``), so many scheduler workers share a tick;
within a group, organisations are interleaved when publishing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init

from kat_scheduler.planning.boefjes import PlanReport
from kat_scheduler.queues import Queue, TaskName, broker_priority, transport_of
from kat_scheduler.runtime import get_runtime, reset_runtime

logger = logging.getLogger(__name__)

#: Planning tasks run at a middling band: they never wait behind a backlog of anything else.
PLANNING_BAND = 2


@worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    reset_runtime()


def summary(report: PlanReport) -> dict[str, Any]:
    """A JSON-able account of a tick, the task's result (and what Flower shows)."""
    return {
        "organisations": len(report.organisations),
        "planned": len(report.planned),
        "claimed": report.dispatch.claimed,
        "queued": report.dispatch.published,
        "unclaimed": report.dispatch.unclaimed,
        "skipped": {str(k): v for k, v in sorted(report.skipped.items())},
        "errors": report.errors,
        "queue_depth": report.queue_depth,
        "backpressure": report.backpressure,
        "schedules_created": report.schedules_created,
        "schedules_advanced": report.schedules_advanced,
        "schedules_disabled": report.schedules_disabled,
        "timings": {k: round(v, 3) for k, v in report.timings.items()},
        "last_published_at": report.last_published_at.isoformat() if report.last_published_at else None,
    }


@shared_task(name=TaskName.PLAN_BOEFJES.value, ignore_result=True)
def plan_boefjes() -> int:
    """Beat's tick: fan out the organisations to planning tasks; returns how many tasks it sent."""
    runtime = get_runtime()
    organisations = runtime.planner().organisations()
    size = runtime.settings.plan_orgs_per_task
    priority = broker_priority(PLANNING_BAND, transport_of(runtime.settings.broker_url))
    groups = [organisations[i : i + size] for i in range(0, len(organisations), size)]
    for group in groups:
        plan_boefjes_for_org.apply_async(
            kwargs={"organisations": group},
            queue=Queue.SCHEDULER.value,
            priority=priority,
            expires=runtime.settings.plan_interval,
        )
    logger.info("tick: %d organisations in %d planning tasks", len(organisations), len(groups))
    return len(groups)


@shared_task(name=TaskName.PLAN_BOEFJES_FOR_ORG.value)
def plan_boefjes_for_org(organisations: list[str]) -> dict[str, Any]:
    report = get_runtime().planner().plan(organisations, now=datetime.now(UTC))
    result = summary(report)
    logger.info("planned %s: %s", ",".join(organisations), result)
    return result


@shared_task(name=TaskName.REAP.value)
def reap() -> dict[str, int]:
    """Repair what crashes leave behind (see kat_scheduler.workers.reaper)."""
    from kat_scheduler.workers.reaper import Reaper

    runtime = get_runtime()
    return Reaper(runtime.tasks, runtime.publisher, runtime.settings).reap(datetime.now(UTC)).as_dict()


@shared_task(name=TaskName.QUEUE_DUE_SCHEDULES.value)
def queue_due_schedules() -> dict[str, Any]:
    report = get_runtime().planner().queue_due(now=datetime.now(UTC))
    result = summary(report)
    logger.info("due schedules: %s", result)
    return result
