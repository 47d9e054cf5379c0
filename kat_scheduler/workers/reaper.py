"""The reaper (beat, every ``SCHEDULER_REAP_INTERVAL`` seconds): repairs what crashes leave behind.

1. **Lost worker node**: every Celery worker node beats in ``worker_nodes`` from its main process
   (every ``SCHEDULER_WORKER_HEARTBEAT_INTERVAL`` seconds). A node silent for
   ``SCHEDULER_WORKER_LOST_AFTER`` is suspected; when a later run finds it still silent (its
   suspicion at least one and a half heartbeat intervals old, so a database outage, during which
   nobody could beat, never counts), its ``running`` and ``dispatched`` tasks are queued and
   published again (a running one while it has attempts left, else failed). A live node, however
   long its plugin runs, keeps beating and is never reaped; a process of a node that was only
   silent can no longer end a row the reaper handed on (the worker's end is conditional on its
   worker id).
2. **Stuck running**: a row ``running`` for longer than the hard time limit (plus a minute) had
   its worker die (a lost host whose node was never registered, an older version): it is queued
   and published again while it has attempts left (``SCHEDULER_MAX_RETRIES``), else failed, so
   its hash is free again. (A redelivery on the same host whose runner process is gone takes over
   at once instead.)
3. **Claimed, never published**: a row ``queued`` still listed in ``unpublished_tasks``
   ``SCHEDULER_UNPUBLISHED_AFTER`` seconds after its claim (a producer died between claim and
   publish), or claimed that long ago by a version before revision 0004 and never marked:
   published. A listing whose task is no longer queued (it was published after all, and ran or
   was cancelled) is dropped.
4. **Broker lost its data** (Redis only): the reaper keeps a marker key in the broker's database
   and its token in ``broker_markers``. When the key is gone (a restart without persistence, a
   ``FLUSHDB``), every ``queued`` and ``dispatched`` task is published again at once, then a new
   marker is set. With RabbitMQ nothing is checked.
5. **Queued, message lost**: rows ``queued`` for longer than the broker's visibility timeout with
   no worker activity, while their queue on the broker is empty (so their messages are surely
   gone: a purge): published again. When the queue is not empty they wait; republishing a
   healthy backlog would only duplicate it.
6. **Popped, never started** (pull schedulers, ``SCHEDULER_PULL_SCHEDULERS``): a task a runner
   popped over HTTP (``dispatched``) and has not started after the broker's visibility timeout
   is a lost message too: its runner is gone. It is queued again for the next pop. A pull
   scheduler's tasks are never published: the repairs above queue them (or drop their claim's
   listing) without a message, and repair 5 leaves them to this one.
7. **Normalizers given up on a service failure**: a normalizer task that gave up because
   Katalogus, Octopoes or Bytes kept failing (reason ``service failed: <service>``) comes only from
   a ``raw_file_received`` event, so nothing else would queue it again. Once
   ``SCHEDULER_SERVICE_FAILURE_RETRY_DELAY`` has passed since it failed, while it is still the
   newest row of its hash, it is queued again as a new row with the same hash and payload and
   published (a pull scheduler's waits for a pop), at most ``SCHEDULER_SERVICE_FAILURE_MAX_REQUEUES``
   times in a row per hash; after that the row stays failed and its reason says it gave up after
   that many service failures. Boefjes are not queued here: their pair is due again through its
   schedule (the tick and due schedules), and queuing them here too would double them.
8. **Retention**: completed, failed and cancelled rows older than ``SCHEDULER_RETENTION_DAYS`` are
   deleted in batches; worker nodes silent for an hour are forgotten; at most once an hour per
   process, Bytes' runs (``bytes_runs``) no tick has seen for the longest horizon that can still
   matter (the retention, the grace period plus a day, the stall age) are forgotten.

Republishing is always safe: a worker starts a task only through the conditional claim, so a
duplicate message runs nothing twice.

The decisions are the rules core's (:mod:`kat_scheduler.rules.repair`): when a row is stuck or a
node lost, whether lost messages are republished, what the broker's marker says, and whether a
boefje task queued again by repairs 1 and 2 may run again: while Bytes shows another run of its
pair going (one that started before the task's last start, younger than the stall age), it is
cancelled instead, as every other path leaves a pair running in Bytes alone; its schedule or the
next tick queues the pair once that run ends or stalls.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kat_scheduler.dispatch.messages import message_for
from kat_scheduler.dispatch.publishing import Publisher, PublishError
from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.queues import Queue
from kat_scheduler.rules import repair
from kat_scheduler.rules.repair import LostMessages, MarkerState, RequeueFacts, may_requeue
from kat_scheduler.settings import Settings
from kat_scheduler.storage.bytes_runs import BytesRunStore
from kat_scheduler.storage.task_views import TaskViews
from kat_scheduler.storage.tasks import (
    Recovered,
    TaskStore,
)
from kat_scheduler.storage.worker_nodes import BrokerMarkerStore, WorkerNodeStore
from kat_scheduler.workers.broker_marker import BrokerMarker, broker_marker

logger = logging.getLogger(__name__)

#: Worker nodes silent this long are forgotten (their tasks were handed on long before).
NODE_RETENTION = timedelta(hours=1)
#: Seconds between two prunings of ``bytes_runs`` by one process (a scan of the table).
BYTES_RUNS_PRUNE_EVERY = 3600.0
#: The name of the broker's marker in ``broker_markers``.
BROKER_MARKER = "broker"

_last_bytes_prune: float | None = None


@dataclass
class ReapReport:
    lost_nodes: int = 0
    requeued_lost_node: int = 0
    failed_lost_node: int = 0
    failed_stuck: int = 0
    requeued_stuck: int = 0
    #: Boefje tasks repairs 1 and 2 would have queued again, cancelled: Bytes shows another run going.
    cancelled_running_in_bytes: int = 0
    published_unpublished: int = 0
    republished_wiped: int = 0
    republished_lost: int = 0
    requeued_popped: int = 0
    requeued_service_failed: int = 0
    gave_up_service_failed: int = 0
    pruned: int = 0
    bytes_runs_pruned: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


# --- what counts as stalled (shared with ``kat-scheduler status``) -----------------------------


def stuck_running_after(settings: Settings) -> float:
    """Seconds a row may be ``running`` before its worker counts as lost: hard limit plus slack."""
    return repair.stuck_running_after(settings.hard_time_limit, settings.running_slack)


def node_lost_after(settings: Settings) -> timedelta:
    """How long a worker node may be silent before it is suspected (``SCHEDULER_WORKER_LOST_AFTER``)."""
    return repair.node_lost_after(settings.worker_lost_after, settings.worker_heartbeat_interval)


def node_confirm_after(settings: Settings) -> timedelta:
    """How old a suspicion must be before it is confirmed."""
    return repair.node_confirm_after(settings.worker_heartbeat_interval)


def bytes_runs_horizon(settings: Settings) -> timedelta:
    """How long Bytes' runs seen by a tick are kept: the longest horizon that can still matter."""
    return repair.bytes_runs_horizon(settings.retention_days, settings.grace_period, settings.effective_bytes_stall_age)


class Reaper:
    def __init__(
        self,
        tasks: TaskStore,
        publisher: Publisher,
        settings: Settings,
        *,
        marker: BrokerMarker | None = None,
    ) -> None:
        self.tasks = tasks
        self.publisher = publisher
        self.settings = settings
        self.nodes = WorkerNodeStore(tasks.engine)
        #: The clock heartbeats are judged by: the database's (see WorkerNodeStore.db_now).
        self.node_clock: Callable[[], datetime] = self.nodes.db_now
        self.markers = BrokerMarkerStore(tasks.engine)
        #: The marker in the broker (``None``: not a Redis broker, nothing to watch).
        self.marker = marker if marker is not None else broker_marker(settings.broker_url)
        #: Schedulers whose tasks runners pop over HTTP: never published.
        self.pull = settings.pull_scheduler_ids

    def reap(self, now: datetime) -> ReapReport:
        report = ReapReport()
        self._recover_lost_nodes(report)
        self._recover_stuck(now, report)
        report.published_unpublished = self._publish_unpublished(now, report)
        report.republished_wiped = self._republish_if_wiped(now, report)
        report.republished_lost = self._republish_lost(now, report)
        report.requeued_popped = self._requeue_popped(now)
        self._requeue_service_failed(now, report)
        report.pruned = self.tasks.prune_finished(now - timedelta(days=self.settings.retention_days))
        report.bytes_runs_pruned = self._prune_bytes_runs(now)
        if any(report.as_dict().values()):
            logger.warning("reaper: %s", report.as_dict())
        return report

    def _requeued(self, recovered: Recovered, now: datetime, report: ReapReport) -> int:
        """Publish the rows a repair queued again (a pull scheduler's wait for the next pop), but
        for boefje tasks whose pair Bytes shows running under another runner: those are cancelled."""
        rows = self._not_running_in_bytes(recovered.requeued, now, report)
        popped = sum(1 for row in rows if row.scheduler_id in self.pull)
        celery = [row for row in rows if row.scheduler_id not in self.pull]
        return popped + self._publish(celery, report)

    def _not_running_in_bytes(self, rows: list[Any], now: datetime, report: ReapReport) -> list[Any]:
        """``rows`` but the boefje tasks :func:`~kat_scheduler.rules.repair.may_requeue` refuses,
        which are cancelled (their hash is free; the pair is queued again once that run ends or stalls)."""
        boefjes = [row for row in rows if row.scheduler_id == SchedulerId.BOEFJE]
        if not boefjes:
            return rows
        seen = BytesRunStore(self.tasks.engine).newest({row.hash for row in boefjes})
        if not seen:
            return rows
        stall_age = timedelta(seconds=self.settings.effective_bytes_stall_age)
        refused: dict[uuid.UUID, datetime | None] = {}
        for row in boefjes:
            decision = may_requeue(RequeueFacts(now, row.started_at, seen.get(row.hash), stall_age))
            if not decision.due:
                refused[row.id] = decision.until
        if not refused:
            return rows
        report.cancelled_running_in_bytes += self.tasks.cancel(list(refused), now=now)
        for row in boefjes:
            if row.id in refused:
                logger.warning(
                    "reaper: not queuing %s (%s) again: Bytes shows another run of it going, stalled after %s",
                    row.id,
                    row.hash,
                    refused[row.id],
                )
        return [row for row in rows if row.id not in refused]

    def _recover_lost_nodes(self, report: ReapReport) -> None:
        """Tasks of worker nodes that stopped beating: run again while attempts remain, else fail."""
        now = self.node_clock()
        silent = node_lost_after(self.settings)
        lost = self.nodes.lost(now=now, silent_for=silent, confirm_after=node_confirm_after(self.settings))
        if lost:
            recovered = self.tasks.recover_lost_nodes(lost, now=now, max_retries=self.settings.max_retries)
            report.lost_nodes = len(lost)
            report.failed_lost_node = recovered.failed
            report.requeued_lost_node = self._requeued(recovered, now, report)
        suspected = self.nodes.suspect(now=now, silent_for=silent)
        if suspected:
            logger.warning("reaper: %d worker node(s) silent for %s; confirming on the next run", suspected, silent)
        self.nodes.prune(now - NODE_RETENTION)

    def _recover_stuck(self, now: datetime, report: ReapReport) -> None:
        """Rows running past the hard limit: run again while attempts remain, else fail."""
        started_before = now - timedelta(seconds=stuck_running_after(self.settings))
        recovered = self.tasks.recover_stuck(started_before, now=now, max_retries=self.settings.max_retries)
        report.failed_stuck = recovered.failed
        report.requeued_stuck = self._requeued(recovered, now, report)

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
            self.tasks.mark_republished(published)
        return len(published)

    def _publish_unpublished(self, now: datetime, report: ReapReport) -> int:
        claimed_before = now - timedelta(seconds=self.settings.unpublished_after)
        rows = self.tasks.never_published(claimed_before)
        pull = [row.id for row in rows if row.scheduler_id in self.pull]
        if pull:  # nothing to publish: a runner pops them; only the claims' listings go
            self.tasks.mark_published(pull)
        published = self._publish([row for row in rows if row.scheduler_id not in self.pull], report)
        self.tasks.drop_moved_on_listings(claimed_before)  # listings of tasks that moved on (or are gone)
        return published

    def _republish_if_wiped(self, now: datetime, report: ReapReport) -> int:
        """When the broker no longer holds the reaper's marker, it lost its data: every waiting
        task is published again at once. The marker is set again once that succeeded."""
        if self.marker is None:
            return 0
        try:
            present = self.marker.get()
        except Exception as exc:
            logger.warning("reaper: cannot read the broker's marker (%s); checking on the next run", exc)
            return 0
        remembered = self.markers.token(BROKER_MARKER)
        state = repair.broker_marker_state(present, remembered)
        if state is MarkerState.KEPT:
            return 0
        if state is MarkerState.ADOPT:  # set by another reaper, or this database is new
            assert present is not None
            self.markers.put(BROKER_MARKER, present, now)
            return 0
        republished = 0
        if state is MarkerState.WIPED:
            logger.error("reaper: the broker lost its data (its marker is gone); publishing every waiting task again")
            republished, complete = self._republish_waiting(report)
            if not complete:
                return republished  # the marker stays missing: the next run tries again
        token = uuid.uuid4().hex
        try:
            self.marker.set(token)
        except Exception as exc:
            logger.warning("reaper: cannot set the broker's marker (%s); setting it on the next run", exc)
            return republished
        self.markers.put(BROKER_MARKER, token, now)
        return republished

    def _republish_waiting(self, report: ReapReport) -> tuple[int, bool]:
        """Publish every ``queued`` and ``dispatched`` task of the published schedulers again, page by
        page; how many, and whether all were."""
        schedulers = [s for s in SchedulerId if s not in self.pull]
        total = 0
        after: uuid.UUID | None = None
        while True:
            rows = self.tasks.waiting_page(schedulers, after=after)
            if not rows:
                return total, True
            errors = report.errors
            total += self._publish(rows, report)
            if report.errors > errors:
                return total, False
            after = rows[-1].id

    def _republish_lost(self, now: datetime, report: ReapReport) -> int:
        before = now - timedelta(seconds=self.settings.effective_visibility_timeout)
        total = 0
        for queue in (Queue.BOEFJES, Queue.NORMALIZERS):
            scheduler_id = SchedulerId.BOEFJE if queue == Queue.BOEFJES else SchedulerId.NORMALIZER
            if scheduler_id in self.pull:
                continue  # no messages: see _requeue_popped
            # dispatched too: a worker received the message and lost it (a Redis that lost its
            # data, a worker killed between receipt and start); the start is conditional, so a
            # message that does turn up again cannot run the task twice.
            rows = self.tasks.stale_published(scheduler_id, before)
            if not rows:
                continue
            depth: int | None
            try:
                depth = self.publisher.queue_depth(queue.value)
            except Exception as exc:
                logger.warning("reaper: depth of %s unknown (%s); not republishing", queue.value, exc)
                depth = None
            action = repair.lost_messages(depth)
            if action is LostMessages.WAIT:
                logger.info("reaper: %d stale queued %s rows, but the queue holds %d: waiting", len(rows), queue, depth)
            if action is not LostMessages.REPUBLISH:
                continue
            total += self._publish(rows, report)
        return total

    def _requeue_popped(self, now: datetime) -> int:
        """Tasks of pull schedulers popped but not started within the visibility timeout: queued again."""
        cutoff = now - timedelta(seconds=self.settings.effective_visibility_timeout)
        return TaskViews(self.tasks.engine).requeue_popped(self.pull, popped_before=cutoff, now=now)

    def _requeue_service_failed(self, now: datetime, report: ReapReport) -> None:
        """Normalizer tasks given up on a service failure, the retry delay ago: queued again (repair 7)."""
        failed_before = now - timedelta(seconds=self.settings.service_failure_retry_delay)
        done = self.tasks.requeue_service_failed(
            SchedulerId.NORMALIZER, failed_before, max_requeues=self.settings.service_failure_max_requeues, now=now
        )
        report.gave_up_service_failed = done.gave_up
        report.requeued_service_failed = len(done.requeued)
        if not done.requeued:
            return
        if SchedulerId.NORMALIZER in self.pull:  # a runner pops them: only the claims' listings go
            self.tasks.mark_published([row.id for row in done.requeued])
            return
        published = self._publish(done.requeued, report)
        if published < len(done.requeued):  # listed as unpublished: repair 3 publishes them later
            logger.warning(
                "reaper: %d of %d normalizer tasks queued again after a service failure are not published yet",
                len(done.requeued) - published,
                len(done.requeued),
            )

    def _prune_bytes_runs(self, now: datetime) -> int:
        """At most once per :data:`BYTES_RUNS_PRUNE_EVERY` in this process (the table has no index on
        ``seen_at``): forget Bytes' runs no tick has seen for :func:`bytes_runs_horizon`."""
        global _last_bytes_prune
        clock = time.monotonic()
        if not repair.prune_due(_last_bytes_prune, clock, BYTES_RUNS_PRUNE_EVERY):
            return 0
        _last_bytes_prune = clock
        return self.prune_bytes_runs(now)

    def prune_bytes_runs(self, now: datetime) -> int:
        """Forget Bytes' runs (and history listings) no tick has seen for :func:`bytes_runs_horizon`."""
        return BytesRunStore(self.tasks.engine).prune(now - bytes_runs_horizon(self.settings))
