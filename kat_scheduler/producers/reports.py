"""The report producer: due report schedules become report tasks, for Rocky's report runner to pop.

Each run reads every enabled ``report`` schedule whose deadline has passed (oldest first, in
batches of ``SCHEDULER_BATCH_SIZE``, no cap), turns each into its report task
(:func:`kat_scheduler.rules.reports.scheduled_report`: the hash and payload of SCHEDULER-API.md),
claims the tasks like any other (one live task per hash: a report still queued or running is
not queued twice) and holds them for a pop: report tasks are never published to Celery. Then
every schedule's deadline moves to its next cron time after now, or to null for a one-off
schedule, whether its task was queued or a live one was there already.

A schedule that cannot make a task (data that is not a ReportTask of its organisation, an invalid
cron) is disabled with the reason and logged. When ``report`` is not in
``SCHEDULER_PULL_SCHEDULERS`` nothing could deliver a report task: the run queues nothing and
leaves every deadline as it is, so the schedules fire once the setting names ``report`` again.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kat_scheduler.dispatch.dispatcher import Dispatcher
from kat_scheduler.models.producers import ProducerName
from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.rules.reports import InvalidReportSchedule, scheduled_report
from kat_scheduler.settings import Settings
from kat_scheduler.storage.schedules import ScheduleStore
from kat_scheduler.storage.tables import ScheduleRow
from kat_scheduler.storage.tasks import NewTask, TaskStore

logger = logging.getLogger(__name__)

#: The ``reason`` of a report task a schedule queued (manual pushes say ``manual``).
SCHEDULE_REASON = "schedule"


@dataclass
class ReportRun:
    """What a run of the report producer did."""

    now: datetime
    dry_run: bool = False
    #: Due schedules read.
    due: int = 0
    #: Report tasks queued for a pop.
    queued: int = 0
    #: Due schedules whose report was queued or running already (not queued again; advanced).
    live: int = 0
    #: Schedules moved to their next cron time.
    advanced: int = 0
    #: One-off schedules that fired: their deadline is null now.
    finished: int = 0
    #: Schedules disabled, by reason.
    disabled: dict[str, int] = field(default_factory=dict)
    #: Why nothing was queued at all (``report`` not delivered by pull), else ``None``.
    not_delivered: str | None = None

    def summary(self) -> dict[str, Any]:
        """A JSON-able account of the run (the Celery task's result, ``producer_runs``' summary)."""
        return {
            "now": self.now.isoformat(),
            "dry_run": self.dry_run,
            "due": self.due,
            "queued": self.queued,
            "live": self.live,
            "advanced": self.advanced,
            "finished": self.finished,
            "disabled": dict(sorted(self.disabled.items())),
            "not_delivered": self.not_delivered,
        }


class ReportProducer:
    def __init__(
        self,
        tasks: TaskStore,
        schedules: ScheduleStore,
        settings: Settings,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.tasks = tasks
        self.schedules = schedules
        self.settings = settings
        self.dispatcher = dispatcher or Dispatcher(tasks, None, pull=settings.pull_scheduler_ids)

    #: Its name among the producers (:class:`kat_scheduler.producers.Producer`).
    name = ProducerName.QUEUE_REPORT_SCHEDULES.value

    def run(self, now: datetime, dry_run: bool = False) -> ReportRun:
        """One run at ``now`` (the :class:`~kat_scheduler.producers.Producer` protocol): see :meth:`queue_due`."""
        return self.queue_due(now=now, dry_run=dry_run)

    def queue_due(self, *, now: datetime, dry_run: bool = False) -> ReportRun:
        """Queue the report task of every due report schedule and move each deadline on.

        A dry run decides the same (what would be queued, what is live, what would be disabled)
        and writes nothing.
        """
        run = ReportRun(now=now, dry_run=dry_run)
        if SchedulerId.REPORT not in self.dispatcher.pull:
            due = sum(len(batch) for batch in self.schedules.iter_due(now, scheduler_id=SchedulerId.REPORT))
            run.not_delivered = "report is not in SCHEDULER_PULL_SCHEDULERS: report tasks are delivered only by pop"
            if due:
                logger.error("%d due report schedule(s) not queued: %s", due, run.not_delivered)
            return run
        for batch in self.schedules.iter_due(now, batch_size=self.settings.batch_size, scheduler_id=SchedulerId.REPORT):
            self._queue(batch, run, now, dry_run=dry_run)
        if run.due and not dry_run:
            logger.info("report schedules: %s", run.summary())
        return run

    def _queue(self, batch: Sequence[ScheduleRow], run: ReportRun, now: datetime, *, dry_run: bool) -> None:
        run.due += len(batch)
        tasks: list[NewTask] = []
        deadlines: dict[uuid.UUID, datetime | None] = {}
        invalid: dict[str, list[uuid.UUID]] = defaultdict(list)
        for row in batch:
            try:
                report = scheduled_report(row.organisation, row.data, row.schedule, now)
            except InvalidReportSchedule as exc:
                logger.error("report schedule %s (organisation %s) disabled: %s", row.id, row.organisation, exc)
                invalid[str(exc)].append(row.id)
                continue
            tasks.append(
                NewTask(
                    id=uuid.uuid4(),
                    scheduler_id=SchedulerId.REPORT,
                    type=SchedulerId.REPORT.value,
                    organisation=report.organisation,
                    plugin_id=report.report_recipe_id,
                    input_ooi=None,
                    hash=report.hash,
                    band=report.band,
                    priority=report.priority,
                    data=report.data,
                    reason=SCHEDULE_REASON,
                    schedule_id=row.id,
                )
            )
            deadlines[row.id] = report.next_deadline
        run.finished += sum(1 for deadline in deadlines.values() if deadline is None)
        run.advanced += sum(1 for deadline in deadlines.values() if deadline is not None)
        if dry_run:
            live = self.tasks.live_hashes({task.hash for task in tasks})
            run.live += sum(1 for task in tasks if task.hash in live)
            run.queued += sum(1 for task in tasks if task.hash not in live)
            for reason, schedule_ids in invalid.items():
                run.disabled[reason] = run.disabled.get(reason, 0) + len(schedule_ids)
            return
        # Claim first, then advance: a run that dies in between queues nothing twice when it is
        # run again (the claim), where the other order could lose a report.
        result = self.dispatcher.hold(tasks)
        run.queued += result.claimed
        run.live += len(tasks) - result.claimed
        self.schedules.set_deadlines(deadlines, now=now)
        for reason, schedule_ids in invalid.items():
            count = self.schedules.disable(schedule_ids, reason, now=now)
            run.disabled[reason] = run.disabled.get(reason, 0) + count
