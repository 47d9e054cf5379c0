"""Planning tasks on the ``scheduler`` queue, ticked by beat.

``kat.scheduler.plan_boefjes`` fans out one ``plan_boefjes_for_org`` task per group of
organisations (``SCHEDULER_PLAN_ORGS_PER_TASK``), so many scheduler workers share a tick;
within a group, organisations are interleaved when publishing.

``kat.scheduler.queue_due_schedules`` queues the due schedules of every scheduler: report
schedules (:mod:`kat_scheduler.producers.reports`, held for a pop) and boefje schedules
(:class:`~kat_scheduler.producers.DueSchedulesProducer`).

Each beat-ticked task records its run in ``producer_runs`` (``kat-scheduler status`` shows them);
for ``plan_boefjes`` that is the fan-out, not the planning tasks it sends.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import shared_task
from celery.signals import worker_init, worker_process_init

from kat_scheduler.models.producers import ProducerName
from kat_scheduler.producers import DueSchedulesProducer, PlanReport, TickProducer
from kat_scheduler.producers.middleware import run_producer
from kat_scheduler.producers.recording import recorded_run
from kat_scheduler.producers.reports import ReportProducer
from kat_scheduler.queues import Queue, TaskName, broker_priority, transport_of
from kat_scheduler.runtime.collector import tune_collector
from kat_scheduler.runtime.resources import get_runtime, reset_runtime
from kat_scheduler.storage.producers import ProducerRunStore

logger = logging.getLogger(__name__)

#: Planning tasks run at a middling band: they never wait behind a backlog of anything else.
PLANNING_BAND = 2


@worker_init.connect
def _started(**_: Any) -> None:
    tune_collector()  # before the pool forks: its processes share the frozen start-up objects


@worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    reset_runtime()
    tune_collector()


def summary(report: PlanReport) -> dict[str, Any]:
    """A JSON-able account of a tick, the task's result (and what Flower shows)."""
    return {
        "now": report.now.isoformat(),
        "organisations": len(report.organisations),
        "planned": len(report.planned),
        "claimed": report.dispatch.claimed,
        "queued": report.dispatch.published,
        "held_for_pop": report.dispatch.held,
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


def _runs() -> ProducerRunStore:
    """Where runs are recorded (built when a run ends; a failure there is logged, never raised)."""
    return ProducerRunStore(get_runtime().engine)


def errors_text(errors: dict[str, str]) -> str | None:
    """The errors per organisation of a tick in one line (``None`` when there were none)."""
    if not errors:
        return None
    return f"{len(errors)} organisation(s) failed: " + "; ".join(f"{org}: {error}" for org, error in errors.items())


@shared_task(name=TaskName.PLAN_BOEFJES.value, ignore_result=True)
def plan_boefjes() -> int:
    """Beat's tick: fan out the organisations to planning tasks; returns how many tasks it sent."""
    runtime = get_runtime()
    with recorded_run(ProducerName.PLAN_BOEFJES, _runs) as run:
        organisations = runtime.producers().organisations()
        size = runtime.settings.plan_orgs_per_task
        priority = broker_priority(PLANNING_BAND, transport_of(runtime.settings.broker_url))
        groups = [organisations[i : i + size] for i in range(0, len(organisations), size)]
        run.summary = {"organisations": len(organisations), "planning_tasks": 0}
        for group in groups:
            plan_boefjes_for_org.apply_async(
                kwargs={"organisations": group},
                queue=Queue.SCHEDULER.value,
                priority=priority,
                expires=runtime.settings.plan_interval,
            )
            run.summary["planning_tasks"] += 1
    logger.info("tick: %d organisations in %d planning tasks", len(organisations), len(groups))
    return len(groups)


@shared_task(name=TaskName.PLAN_BOEFJES_FOR_ORG.value)
def plan_boefjes_for_org(organisations: list[str]) -> dict[str, Any]:
    report = run_producer(TickProducer(get_runtime().producers(), organisations), datetime.now(UTC))
    result = summary(report)
    logger.info("planned %s: %s", ",".join(organisations), result)
    return result


@shared_task(name=TaskName.REAP.value)
def reap() -> dict[str, int]:
    """Repair what crashes leave behind (see kat_scheduler.workers.reaper)."""
    from kat_scheduler.workers.reaper import Reaper

    runtime = get_runtime()
    with recorded_run(ProducerName.REAP, _runs) as run:
        result = Reaper(runtime.tasks, runtime.publisher, runtime.settings).reap(datetime.now(UTC)).as_dict()
        run.summary = dict(result)
        if result["errors"]:
            run.error = f"{result['errors']} publish(es) failed; left for the next run"
    return result


@shared_task(name=TaskName.QUEUE_REPORT_SCHEDULES.value)
def queue_report_schedules() -> dict[str, Any]:
    """Due report schedules become report tasks, held for Rocky's report runner to pop
    (:class:`~kat_scheduler.producers.reports.ReportProducer`); the run's summary is the result."""
    runtime = get_runtime()
    with recorded_run(ProducerName.QUEUE_REPORT_SCHEDULES, _runs) as run:
        producer = ReportProducer(runtime.tasks, runtime.schedules, runtime.settings)
        result = run.summary = run_producer(producer, datetime.now(UTC)).summary()
        run.error = result["not_delivered"] if result["due"] and result["not_delivered"] else None
    return result


@shared_task(name=TaskName.QUEUE_DUE_SCHEDULES.value)
def queue_due_schedules() -> dict[str, Any]:
    """Queue every due boefje schedule (DueSchedulesProducer); report schedules have their own task."""
    with recorded_run(ProducerName.QUEUE_DUE_SCHEDULES, _runs) as run:
        report = run_producer(DueSchedulesProducer(get_runtime().producers()), datetime.now(UTC))
        result = run.summary = summary(report)
        run.error = errors_text(report.errors)
    logger.info("due schedules: %s", result)
    return result
