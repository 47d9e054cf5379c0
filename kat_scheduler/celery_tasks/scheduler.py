"""Planning tasks on the ``scheduler`` queue, ticked by beat.

``kat.scheduler.plan_boefjes`` fans out one ``plan_boefjes_for_org`` task per group of
organisations (``SCHEDULER_PLAN_ORGS_PER_TASK``), so many scheduler workers share a tick;
within a group, organisations are interleaved when publishing.

``kat.scheduler.queue_due_schedules`` queues the due schedules of every scheduler: report
schedules (:mod:`kat_scheduler.producers.reports`, held for a pop) and boefje schedules
(:class:`~kat_scheduler.producers.DueSchedulesProducer`).

Each task runs a producer through :func:`~kat_scheduler.producers.middleware.run_producer`
(:func:`run_now`): timed, and for the beat-ticked ones recorded in ``producer_runs`` (``kat-scheduler
status`` shows them; for ``plan_boefjes`` that is the fan-out, :class:`PlanFanOut`, not the
planning tasks it sends).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, TypeVar

from celery import shared_task
from celery.signals import worker_init, worker_process_init

from kat_scheduler.models.producers import ProducerName
from kat_scheduler.producers import DueSchedulesProducer, PlanReport, TickProducer
from kat_scheduler.producers.base import Producer
from kat_scheduler.producers.middleware import Middleware, Recorded, Timed, run_producer
from kat_scheduler.producers.reports import ReportProducer, ReportRun
from kat_scheduler.queues import Queue, TaskName, broker_priority, transport_of
from kat_scheduler.runtime.collector import tune_collector
from kat_scheduler.runtime.resources import Runtime, get_runtime, reset_runtime
from kat_scheduler.storage.producers import ProducerRunStore
from kat_scheduler.workers.reaper import Reaper, ReapReport

logger = logging.getLogger(__name__)

ReportT = TypeVar("ReportT")

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


class PlanFanOut:
    """Beat's tick as a producer: one ``plan_boefjes_for_org`` task per group of organisations.

    Its report is its summary (organisations, planning tasks sent), kept in :attr:`sent` as it
    goes, so a run that fails half-way is recorded with what it had sent.
    """

    name = ProducerName.PLAN_BOEFJES.value

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.sent: dict[str, int] = {}

    def run(self, now: datetime, dry_run: bool = False) -> dict[str, int]:
        settings = self.runtime.settings
        organisations = self.runtime.producers().organisations()
        size = settings.plan_orgs_per_task
        priority = broker_priority(PLANNING_BAND, transport_of(settings.broker_url))
        groups = [organisations[i : i + size] for i in range(0, len(organisations), size)]
        self.sent = {"organisations": len(organisations), "planning_tasks": 0}
        for group in groups:
            if not dry_run:
                plan_boefjes_for_org.apply_async(
                    kwargs={"organisations": group},
                    queue=Queue.SCHEDULER.value,
                    priority=priority,
                    expires=settings.plan_interval,
                )
            self.sent["planning_tasks"] += 1
        return self.sent


class ReapRun:
    """The reaper (:class:`~kat_scheduler.workers.reaper.Reaper`) as a producer; it has no dry run."""

    name = ProducerName.REAP.value

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def run(self, now: datetime, dry_run: bool = False) -> ReapReport:
        if dry_run:
            raise ValueError("the reaper has no dry run")
        runtime = self.runtime
        return Reaper(runtime.tasks, runtime.publisher, runtime.settings).reap(now)


def _reap_errors(report: ReapReport) -> str | None:
    return f"{report.errors} publish(es) failed; left for the next run" if report.errors else None


def _reports_not_delivered(report: ReportRun) -> str | None:
    return report.not_delivered if report.due and report.not_delivered else None


#: How each beat-ticked task's producer is recorded in ``producer_runs``.
RECORDED = {
    ProducerName.PLAN_BOEFJES: Recorded(ProducerName.PLAN_BOEFJES, _runs, summary=dict, so_far=lambda p: dict(p.sent)),
    ProducerName.REAP: Recorded(ProducerName.REAP, _runs, summary=ReapReport.as_dict, errors=_reap_errors),
    ProducerName.QUEUE_REPORT_SCHEDULES: Recorded(
        ProducerName.QUEUE_REPORT_SCHEDULES, _runs, summary=ReportRun.summary, errors=_reports_not_delivered
    ),
    ProducerName.QUEUE_DUE_SCHEDULES: Recorded(
        ProducerName.QUEUE_DUE_SCHEDULES, _runs, summary=summary, errors=lambda report: errors_text(report.errors)
    ),
}


def run_now(producer: Producer[ReportT], recorded: ProducerName | None = None) -> ReportT:
    """One run of ``producer`` now, timed, and recorded as ``recorded``'s run (unless ``None``)."""
    middleware: list[Middleware] = [Timed()] if recorded is None else [RECORDED[recorded], Timed()]
    return run_producer(producer, datetime.now(UTC), middleware=middleware)


@shared_task(name=TaskName.PLAN_BOEFJES.value, ignore_result=True)
def plan_boefjes() -> int:
    """Beat's tick: fan out the organisations to planning tasks; returns how many tasks it sent."""
    sent = run_now(PlanFanOut(get_runtime()), recorded=ProducerName.PLAN_BOEFJES)
    logger.info("tick: %d organisations in %d planning tasks", sent["organisations"], sent["planning_tasks"])
    return sent["planning_tasks"]


@shared_task(name=TaskName.PLAN_BOEFJES_FOR_ORG.value)
def plan_boefjes_for_org(organisations: list[str]) -> dict[str, Any]:
    report = run_now(TickProducer(get_runtime().producers(), organisations))
    result = summary(report)
    logger.info("planned %s: %s", ",".join(organisations), result)
    return result


@shared_task(name=TaskName.REAP.value)
def reap() -> dict[str, int]:
    """Repair what crashes leave behind (see kat_scheduler.workers.reaper)."""
    return run_now(ReapRun(get_runtime()), recorded=ProducerName.REAP).as_dict()


@shared_task(name=TaskName.QUEUE_REPORT_SCHEDULES.value)
def queue_report_schedules() -> dict[str, Any]:
    """Due report schedules become report tasks, held for Rocky's report runner to pop
    (:class:`~kat_scheduler.producers.reports.ReportProducer`); the run's summary is the result."""
    runtime = get_runtime()
    producer = ReportProducer(runtime.tasks, runtime.schedules, runtime.settings)
    return run_now(producer, recorded=ProducerName.QUEUE_REPORT_SCHEDULES).summary()


@shared_task(name=TaskName.QUEUE_DUE_SCHEDULES.value)
def queue_due_schedules() -> dict[str, Any]:
    """Queue every due boefje schedule (DueSchedulesProducer); report schedules have their own task."""
    report = run_now(DueSchedulesProducer(get_runtime().producers()), recorded=ProducerName.QUEUE_DUE_SCHEDULES)
    result = summary(report)
    logger.info("due schedules: %s", result)
    return result
