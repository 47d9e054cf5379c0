"""The reaper (beat, every ``SCHEDULER_REAP_INTERVAL`` seconds): repairs what crashes leave behind.

1. **Stuck running**: a row ``running`` for longer than the hard time limit (plus a minute) had
   its worker die (SIGKILL, OOM, a lost host): it is queued and published again while it has
   attempts left (``SCHEDULER_MAX_RETRIES``), else failed, so its hash is free again. (A
   redelivery on the same host whose runner process is gone takes over at once instead.)
2. **Claimed, never published**: a row ``queued`` still listed in ``unpublished_tasks``
   ``SCHEDULER_UNPUBLISHED_AFTER`` seconds after its claim (a producer died between claim and
   publish), or claimed that long ago by a version before revision 0004 and never marked:
   published. A listing whose task is no longer queued (it was published after all, and ran or
   was cancelled) is dropped.
3. **Queued, message lost**: rows ``queued`` for longer than the broker's visibility timeout with
   no worker activity, while their queue on the broker is empty (so their messages are surely
   gone: a broker that lost its data, a purge): published again. When the queue is not empty
   they wait; republishing a healthy backlog would only duplicate it.
4. **Popped, never started** (pull schedulers, ``SCHEDULER_PULL_SCHEDULERS``): a task a runner
   popped over HTTP (``dispatched``) and has not started after the broker's visibility timeout
   is a lost message too: its runner is gone. It is queued again for the next pop. A pull
   scheduler's tasks are never published: repairs 1 and 2 queue them (or drop their claim's
   listing) without a message, and repair 3 leaves them to this one.
5. **Retention**: completed, failed and cancelled rows older than ``SCHEDULER_RETENTION_DAYS`` are
   deleted in batches.

Republishing is always safe: a worker starts a task only through the conditional claim, so a
duplicate message runs nothing twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.publisher import OutgoingMessage, Publisher, PublishError
from kat_scheduler.queues import Queue, TaskName
from kat_scheduler.rules.payloads import boefje_message_kwargs, normalizer_message_kwargs
from kat_scheduler.settings import Settings
from kat_scheduler.storage.tables import TaskRow, UnpublishedTask, table_of, utcnow
from kat_scheduler.storage.task_views import TaskViews
from kat_scheduler.storage.tasks import TaskStore

logger = logging.getLogger(__name__)

_TASKS = table_of(TaskRow)
_UNPUBLISHED = table_of(UnpublishedTask)
BATCH = 5000


@dataclass
class ReapReport:
    failed_stuck: int = 0
    requeued_stuck: int = 0
    published_unpublished: int = 0
    republished_lost: int = 0
    requeued_popped: int = 0
    pruned: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


# --- what counts as stalled (shared with ``kat-scheduler status``) -----------------------------


def stuck_running_after(settings: Settings) -> float:
    """Seconds a row may be ``running`` before its worker counts as lost: hard limit plus slack."""
    return settings.hard_time_limit + settings.running_slack


def stuck_running(settings: Settings, now: datetime) -> tuple[ColumnElement[bool], ...]:
    """Conditions on ``tasks`` of rows running past :func:`stuck_running_after` (repair 1)."""
    cutoff = now - timedelta(seconds=stuck_running_after(settings))
    return (_TASKS.c.status == TaskStatus.RUNNING, _TASKS.c.started_at < cutoff)


def never_published(settings: Settings, now: datetime) -> tuple[ColumnElement[bool], ...]:
    """Conditions on ``tasks`` of rows claimed but not published for ``SCHEDULER_UNPUBLISHED_AFTER`` (repair 2)."""
    cutoff = now - timedelta(seconds=settings.unpublished_after)
    listed = select(_UNPUBLISHED.c.task_id).where(_UNPUBLISHED.c.claimed_at < cutoff)
    # A row claimed by a version before revision 0004 is not listed: it has no published_at.
    older = and_(_TASKS.c.published_at.is_(None), _TASKS.c.created_at < cutoff)
    return (_TASKS.c.status == TaskStatus.QUEUED, or_(_TASKS.c.id.in_(listed), older))


def message_for(row: Any) -> OutgoingMessage:
    """The message that runs a task row (the same a producer sent)."""
    if row.scheduler_id == SchedulerId.NORMALIZER:
        raw_id = str(row.data.get("raw_data", {}).get("id"))
        kwargs = normalizer_message_kwargs(row.organisation, row.plugin_id, raw_id)
        return OutgoingMessage(row.id, TaskName.NORMALIZER_RUN.value, Queue.NORMALIZERS.value, row.band, kwargs)
    kwargs = boefje_message_kwargs(row.organisation, row.plugin_id, row.input_ooi)
    return OutgoingMessage(row.id, TaskName.BOEFJE_RUN.value, Queue.BOEFJES.value, row.band, kwargs)


class Reaper:
    def __init__(self, tasks: TaskStore, publisher: Publisher, settings: Settings) -> None:
        self.tasks = tasks
        self.publisher = publisher
        self.settings = settings
        #: Schedulers whose tasks runners pop over HTTP: never published.
        self.pull = settings.pull_scheduler_ids

    def reap(self, now: datetime) -> ReapReport:
        report = ReapReport()
        self._recover_stuck(now, report)
        report.published_unpublished = self._publish_unpublished(now, report)
        report.republished_lost = self._republish_lost(now, report)
        report.requeued_popped = self._requeue_popped(now)
        report.pruned = self._prune(now)
        if any(report.as_dict().values()):
            logger.warning("reaper: %s", report.as_dict())
        return report

    def _recover_stuck(self, now: datetime, report: ReapReport) -> None:
        """Rows running past the hard limit: run again while attempts remain, else fail."""
        stuck = stuck_running(self.settings, now)
        with self.tasks.engine.begin() as conn:
            report.failed_stuck = conn.execute(
                update(_TASKS)
                .where(*stuck, _TASKS.c.attempts > self.settings.max_retries)
                .values(
                    status=TaskStatus.FAILED,
                    ended_at=now,
                    modified_at=now,
                    error="reaped: running past the hard time limit on every attempt (worker lost or killed)",
                )
            ).rowcount
            requeued = list(
                conn.execute(
                    update(_TASKS)
                    .where(*stuck)
                    .values(
                        status=TaskStatus.QUEUED, modified_at=now, error="requeued by the reaper: its worker was lost"
                    )
                    .returning(*_TASKS.c)
                ).all()
            )
        # A pull scheduler's row, queued again, waits for the next pop: no message.
        popped = sum(1 for row in requeued if row.scheduler_id in self.pull)
        celery = [row for row in requeued if row.scheduler_id not in self.pull]
        report.requeued_stuck = popped + self._publish(celery, report)

    def _rows(self, *conditions: Any) -> list[Any]:
        with self.tasks.engine.connect() as conn:
            return list(conn.execute(select(_TASKS).where(*conditions).order_by(_TASKS.c.band).limit(BATCH)).all())

    def _publish(self, rows: list[Any], report: ReapReport) -> int:
        if not rows:
            return 0
        messages = [message_for(row) for row in rows]
        try:
            self.publisher.publish(messages)
            published = [m.task_id for m in messages]
        except PublishError as exc:
            logger.error("reaper could not publish: %s", exc)
            report.errors += 1
            published = list(exc.published)
        if published:
            with self.tasks.engine.begin() as conn:
                conn.execute(update(_TASKS).where(_TASKS.c.id.in_(published)).values(published_at=utcnow()))
                conn.execute(delete(_UNPUBLISHED).where(_UNPUBLISHED.c.task_id.in_(published)))
        return len(published)

    def _publish_unpublished(self, now: datetime, report: ReapReport) -> int:
        rows = self._rows(*never_published(self.settings, now))
        pull = [row.id for row in rows if row.scheduler_id in self.pull]
        if pull:  # nothing to publish: a runner pops them; only the claims' listings go
            self.tasks.mark_published(pull)
        published = self._publish([row for row in rows if row.scheduler_id not in self.pull], report)
        cutoff = now - timedelta(seconds=self.settings.unpublished_after)
        queued = exists().where(_TASKS.c.id == _UNPUBLISHED.c.task_id, _TASKS.c.status == TaskStatus.QUEUED)
        with self.tasks.engine.begin() as conn:  # listings of tasks that moved on (or are gone)
            conn.execute(delete(_UNPUBLISHED).where(_UNPUBLISHED.c.claimed_at < cutoff, ~queued))
        return published

    def _republish_lost(self, now: datetime, report: ReapReport) -> int:
        cutoff = now - timedelta(seconds=self.settings.effective_visibility_timeout)
        total = 0
        for queue in (Queue.BOEFJES, Queue.NORMALIZERS):
            scheduler_id = SchedulerId.BOEFJE if queue == Queue.BOEFJES else SchedulerId.NORMALIZER
            if scheduler_id in self.pull:
                continue  # no messages: see _requeue_popped
            # dispatched too: a worker received the message and lost it (a Redis that lost its
            # data, a worker killed between receipt and start); the start is conditional, so a
            # message that does turn up again cannot run the task twice.
            stale = and_(
                _TASKS.c.scheduler_id == scheduler_id,
                _TASKS.c.status.in_([TaskStatus.QUEUED, TaskStatus.DISPATCHED]),
                _TASKS.c.published_at < cutoff,
                _TASKS.c.modified_at < cutoff,
            )
            rows = self._rows(stale)
            if not rows:
                continue
            try:
                depth = self.publisher.queue_depth(queue.value)
            except Exception as exc:
                logger.warning("reaper: depth of %s unknown (%s); not republishing", queue.value, exc)
                continue
            if depth > 0:
                logger.info("reaper: %d stale queued %s rows, but the queue holds %d: waiting", len(rows), queue, depth)
                continue
            total += self._publish(rows, report)
        return total

    def _requeue_popped(self, now: datetime) -> int:
        """Tasks of pull schedulers popped but not started within the visibility timeout: queued again."""
        cutoff = now - timedelta(seconds=self.settings.effective_visibility_timeout)
        return TaskViews(self.tasks.engine).requeue_popped(self.pull, popped_before=cutoff, now=now)

    def _prune(self, now: datetime) -> int:
        cutoff = now - timedelta(days=self.settings.retention_days)
        finished = [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED]
        pruned = 0
        while True:
            with self.tasks.engine.begin() as conn:
                ids = select(_TASKS.c.id).where(_TASKS.c.status.in_(finished), _TASKS.c.ended_at < cutoff).limit(BATCH)
                deleted = conn.execute(delete(_TASKS).where(_TASKS.c.id.in_(ids.scalar_subquery()))).rowcount
            pruned += deleted
            if deleted < BATCH:
                return pruned
