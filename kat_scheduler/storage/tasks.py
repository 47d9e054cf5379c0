"""The task store: bulk claims, conditional status transitions, history look-ups.

Every method is one short transaction; none is held across an HTTP call or a publish.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Insert,
    Row,
    and_,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from kat_scheduler.models.tasks import LIVE_STATUSES, SchedulerId, TaskStatus
from kat_scheduler.storage.sqlutil import in_values, pg_array, pg_insert_rows
from kat_scheduler.storage.tables import (
    LIVE_STATUS_SQL,
    RUN_SQL,
    SERVICE_FAILED_PREFIX,
    TaskRow,
    UnpublishedTask,
    table_of,
    utcnow,
)

_TASKS = table_of(TaskRow)
_UNPUBLISHED = table_of(UnpublishedTask)
#: Rows per statement: keeps SQLite under its bound-parameter limit and PostgreSQL statements small.
CHUNK = 1000
#: Rows per claim statement on PostgreSQL, where a page is one array per column (16 parameters
#: however many rows): a batch of 1,000 to 1,500 tasks goes as one statement.
PG_CLAIM_PAGE = 2000
#: Rows per statement of a repair (the reaper): a bounded amount of work per run.
REPAIR_BATCH = 5000


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task a producer wants to queue; becomes a row only if its hash is free."""

    id: uuid.UUID
    scheduler_id: SchedulerId
    type: str
    organisation: str
    plugin_id: str
    input_ooi: str | None
    hash: str
    band: int
    priority: int
    data: dict[str, Any]
    reason: str | None = None
    schedule_id: uuid.UUID | None = None


#: What a claim hands back: the tasks that won their hash, in the order given.
ClaimedTask = NewTask


@dataclass(frozen=True, slots=True)
class FinishedTask:
    """A task that already ran elsewhere, carried over as it ended (``kat-scheduler import-mula``).

    Such a row is never published and never live, so it takes no hash; it only feeds the history
    look-ups (:meth:`TaskStore.last_runs`) that decide grace periods.
    """

    id: uuid.UUID
    scheduler_id: SchedulerId
    type: str
    organisation: str
    plugin_id: str
    input_ooi: str | None
    hash: str
    status: TaskStatus
    data: dict[str, Any]
    created_at: datetime
    ended_at: datetime
    band: int = 9
    priority: int = 0
    reason: str | None = None
    schedule_id: uuid.UUID | None = None
    started_at: datetime | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Recovered:
    """What a repair of running (or received) rows did: ``failed`` rows had no attempt left;
    ``requeued`` rows (as they are now) are ``queued`` again and need a message (or a pop)."""

    failed: int
    requeued: list[Row[Any]]


def service_failed_reason(service: str) -> str:
    """The ``reason`` of a task given up on because ``service`` (katalogus, octopoes, bytes) failed."""
    return f"{SERVICE_FAILED_PREFIX}{service}"[:64]


#: Appended to the reason of a service-failed row once :meth:`TaskStore.requeue_service_failed`
#: handled it (queued it again, or gave up): such a row is no candidate any more. The reason keeps
#: its prefix, so the row stays no run of its plugin.
HANDLED_MARK = "; "
_REQUEUED = re.compile(r"^queued again after (\d+) service failures?$")
_IN_A_ROW = re.compile(r" \((\d+) in a row\)$")


def requeued_reason(failures: int) -> str:
    """The ``reason`` of a task queued again after its hash failed on a service ``failures`` times in
    a row (never the service-failed prefix: once it ends, it is a run like any other)."""
    return f"queued again after {failures} service failure{'' if failures == 1 else 's'}"


def service_failures_in_a_row(reason: str | None) -> int:
    """How many times in a row a service-failed row's hash failed on a service, by its ``reason``."""
    found = _IN_A_ROW.search(reason or "")
    return int(found.group(1)) if found else 1


def service_failed_reason_after(service: str, previous: str | None) -> str:
    """The reason of a row given up on ``service`` whose reason was ``previous``: a row queued again
    after ``n`` service failures carries ``(n + 1 in a row)``."""
    requeued = _REQUEUED.match(previous or "")
    if requeued is None:
        return service_failed_reason(service)
    suffix = f" ({int(requeued.group(1)) + 1} in a row)"
    return f"{service_failed_reason(service)[: 64 - len(suffix)]}{suffix}"


def handled_reason(reason: str, note: str) -> str:
    """``reason`` (a service-failed one) with ``note`` appended, within the column's 64 characters;
    a given-up row names only its service (the note says how many)."""
    if note.startswith("gave up"):
        reason = _IN_A_ROW.sub("", reason)
    suffix = f"{HANDLED_MARK}{note}"
    return f"{reason[: 64 - len(suffix)]}{suffix}"


@dataclass(frozen=True, slots=True)
class RequeuedAfterFailure:
    """What :meth:`TaskStore.requeue_service_failed` did: ``requeued`` are the new ``queued`` rows
    (listed as unpublished: they need a message, or a pop); ``gave_up`` rows had failed on a service
    too often; ``superseded`` rows had a newer row of their hash already."""

    requeued: list[Row[Any]]
    gave_up: int = 0
    superseded: int = 0


def _row(task: NewTask, now: datetime) -> dict[str, Any]:
    """The row of a new claim (built by hand: ``dataclasses.asdict`` deep-copies ``data``)."""
    return {
        "id": task.id,
        "scheduler_id": task.scheduler_id,
        "type": task.type,
        "organisation": task.organisation,
        "plugin_id": task.plugin_id,
        "input_ooi": task.input_ooi,
        "hash": task.hash,
        "band": task.band,
        "priority": task.priority,
        "data": task.data,
        "reason": task.reason,
        "schedule_id": task.schedule_id,
        "status": TaskStatus.QUEUED,
        "created_at": now,
        "modified_at": now,
        "published_at": now,
        "attempts": 0,
    }


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


#: The columns a claim writes, with their SQL types (rows are :func:`_pg_tuple`).
_PG_COLUMNS = {
    "id": "uuid",
    "scheduler_id": "text",
    "type": "text",
    "organisation": "text",
    "plugin_id": "text",
    "input_ooi": "text",
    "hash": "text",
    "band": "smallint",
    "priority": "bigint",
    "status": "text",
    "data": "jsonb",
    "reason": "text",
    "schedule_id": "uuid",
    "created_at": "timestamptz",
    "modified_at": "timestamptz",
    "published_at": "timestamptz",
    "attempts": "integer",
}
#: Run with each claim's insert: its rows are unpublished until :meth:`TaskStore.mark_published`.
_PG_UNPUBLISHED = "INSERT INTO unpublished_tasks (task_id, claimed_at) SELECT id, created_at FROM inserted"


def _pg_tuple(task: NewTask, now: datetime) -> tuple[Any, ...]:
    return (
        str(task.id),
        task.scheduler_id.value,
        task.type,
        task.organisation,
        task.plugin_id,
        task.input_ooi,
        task.hash,
        task.band,
        task.priority,
        TaskStatus.QUEUED.value,
        orjson.dumps(task.data).decode(),
        task.reason,
        None if task.schedule_id is None else str(task.schedule_id),
        now,
        now,
        now,
        0,
    )


class TaskStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _insert(self) -> Insert:
        if self.engine.dialect.name == "postgresql":
            return postgresql.insert(_TASKS).on_conflict_do_nothing()
        if self.engine.dialect.name == "sqlite":
            return sqlite.insert(_TASKS).on_conflict_do_nothing()
        raise RuntimeError(f"unsupported database {self.engine.dialect.name}")

    # --- claims ----------------------------------------------------------------------------

    def claim(
        self, tasks: Sequence[NewTask], now: datetime | None = None, *, unpublished: bool = True
    ) -> list[ClaimedTask]:
        """Insert ``tasks`` as ``queued`` rows; return those whose hash was free.

        One ``INSERT … ON CONFLICT DO NOTHING RETURNING id`` per chunk: the unique partial index on
        live hashes makes this atomic however many producers race. Rows are inserted in hash order
        so that two claims of overlapping hashes take their index locks in the same order and can
        never deadlock; the claimed tasks are returned in the order given.

        Each claimed task also gets a row in ``unpublished_tasks`` (in the same statement on
        PostgreSQL) until :meth:`mark_published`; its ``published_at`` is the claim's time. With
        ``unpublished=False`` (a task held for a pop: no message will ever be sent) it gets none.
        """
        if not tasks:
            return []
        now = now or utcnow()
        won: set[uuid.UUID] = set()
        ordered = sorted(tasks, key=lambda t: t.hash)
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                rows = [_pg_tuple(t, now) for t in ordered]
                inserted = set(
                    pg_insert_rows(
                        conn,
                        "tasks",
                        _PG_COLUMNS,
                        rows,
                        conflict="DO NOTHING",
                        returning="id::text AS text_id, id, created_at",
                        then=_PG_UNPUBLISHED if unpublished else None,
                        page_size=PG_CLAIM_PAGE,
                    )
                )
                # Matched as text: cheaper than parsing every returned id back into a UUID.
                won.update(t.id for t, row in zip(ordered, rows, strict=True) if row[0] in inserted)
            else:
                stmt = self._insert().returning(_TASKS.c.id)
                for chunk in _chunks(ordered):
                    won.update(conn.execute(stmt, [_row(t, now) for t in chunk]).scalars())
                for chunk in _chunks(list(won) if unpublished else []):
                    conn.execute(insert(_UNPUBLISHED), [{"task_id": i, "claimed_at": now} for i in chunk])
        return [t for t in tasks if t.id in won]

    def add_finished(self, tasks: Sequence[FinishedTask]) -> set[uuid.UUID]:
        """Insert finished (completed or failed) rows as they are; returns the ids inserted.

        A row whose id is taken already is left alone, so carrying the same history over twice
        inserts nothing the second time. One transaction for all of ``tasks``.
        """
        for task in tasks:
            if task.status not in (TaskStatus.COMPLETED, TaskStatus.FAILED):
                raise ValueError(f"task {task.id}: only completed or failed tasks are added as history")
        rows = [
            {
                "id": t.id,
                "scheduler_id": t.scheduler_id,
                "type": t.type,
                "organisation": t.organisation,
                "plugin_id": t.plugin_id,
                "input_ooi": t.input_ooi,
                "hash": t.hash,
                "band": t.band,
                "priority": t.priority,
                "status": t.status,
                "data": t.data,
                "reason": t.reason,
                "schedule_id": t.schedule_id,
                "created_at": t.created_at,
                "modified_at": t.ended_at,
                "started_at": t.started_at,
                "ended_at": t.ended_at,
                "attempts": 1,
                "error": t.error,
            }
            for t in tasks
        ]
        inserted: set[uuid.UUID] = set()
        if not rows:
            return inserted
        stmt = self._insert().returning(_TASKS.c.id)
        with self.engine.begin() as conn:
            for chunk in _chunks(rows):
                inserted.update(conn.execute(stmt, list(chunk)).scalars())
        return inserted

    def mark_published(self, ids: Collection[uuid.UUID]) -> int:
        """Record that the messages of ``ids`` are on the broker; how many were unpublished.

        A delete from the narrow ``unpublished_tasks`` (a dead tuple each, no index written), not
        an update of the wide ``tasks`` rows.
        """
        count = 0
        with self.engine.begin() as conn:
            for condition in in_values(conn, _UNPUBLISHED.c.task_id, list(ids)):
                count += conn.execute(delete(_UNPUBLISHED).where(condition)).rowcount
        return count

    def unclaim(self, ids: Collection[uuid.UUID]) -> int:
        """Delete claimed rows whose message was never published, freeing their hashes."""
        count = 0
        with self.engine.begin() as conn:
            for chunk in _chunks(list(ids)):
                unpublished = select(_UNPUBLISHED.c.task_id).where(_UNPUBLISHED.c.task_id.in_(chunk))
                result = conn.execute(
                    delete(_TASKS).where(_TASKS.c.id.in_(unpublished), _TASKS.c.status == TaskStatus.QUEUED)
                )
                count += result.rowcount
                conn.execute(delete(_UNPUBLISHED).where(_UNPUBLISHED.c.task_id.in_(chunk)))
        return count

    def unpublished_ids(self, ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
        """Which of ``ids`` are claimed but not marked published."""
        return self._present(_UNPUBLISHED.c.task_id, ids)

    def _present(self, column: Any, values: Collection[Any]) -> set[Any]:
        """Which of ``values`` stand in ``column`` (one statement per backend chunk)."""
        found: set[Any] = set()
        with self.engine.connect() as conn:
            for condition in in_values(conn, column, list(values)):
                found.update(conn.execute(select(column).where(condition)).scalars())
        return found

    # --- transitions -----------------------------------------------------------------------

    def transition(
        self,
        task_id: uuid.UUID,
        from_statuses: Iterable[TaskStatus],
        to_status: TaskStatus,
        *,
        by_worker: str | None = None,
        **values: Any,
    ) -> bool:
        """Move one task to ``to_status`` if (and only if) it is in one of ``from_statuses`` (and,
        with ``by_worker``, its ``worker`` is that one: a run the reaper handed to another worker
        is no longer this worker's to end)."""
        now = values.pop("now", None) or utcnow()
        stmt = update(_TASKS).where(_TASKS.c.id == task_id, _TASKS.c.status.in_(list(from_statuses)))
        if by_worker is not None:
            stmt = stmt.where(_TASKS.c.worker == by_worker)
        with self.engine.begin() as conn:
            result = conn.execute(stmt.values(status=to_status, modified_at=now, **values))
        return result.rowcount == 1

    def mark_dispatched(
        self, task_id: uuid.UUID, worker: str, now: datetime | None = None, *, node_id: uuid.UUID | None = None
    ) -> bool:
        """A worker received the message (``queued → dispatched``); ``node_id``: its node (for the reaper)."""
        return self.transition(
            task_id, [TaskStatus.QUEUED], TaskStatus.DISPATCHED, worker=worker, node_id=node_id, now=now or utcnow()
        )

    def start(
        self, task_id: uuid.UUID, worker: str, now: datetime | None = None, *, node_id: uuid.UUID | None = None
    ) -> TaskRow | None:
        """Claim a task for running (``queued|dispatched → running``); ``None`` if it may not run.

        A redelivered message of a task already running, or of a cancelled or finished one,
        updates nothing, so a task never runs twice at once. ``node_id``: the worker node whose
        heartbeat vouches for the run (see :class:`~kat_scheduler.storage.tables.WorkerNodeRow`).
        """
        now = now or utcnow()
        stmt = (
            update(TaskRow)
            .where(TaskRow.id == task_id, TaskRow.status.in_([TaskStatus.QUEUED, TaskStatus.DISPATCHED]))
            .values(
                status=TaskStatus.RUNNING,
                started_at=now,
                modified_at=now,
                worker=worker,
                node_id=node_id,
                attempts=TaskRow.attempts + 1,
            )
            .returning(TaskRow)
        )
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            return session.execute(stmt).scalar_one_or_none()

    def take_over(
        self,
        task_id: uuid.UUID,
        dead_worker: str,
        worker: str,
        now: datetime | None = None,
        *,
        max_attempts: int | None = None,
        node_id: uuid.UUID | None = None,
    ) -> TaskRow | None:
        """Restart a task whose runner process is known to be dead (``running`` by ``dead_worker``).

        With ``max_attempts``, a task that has had that many attempts is not restarted: its row is
        failed instead (a plugin that takes its process down every time would loop for ever), and
        ``None`` is returned.
        """
        now = now or utcnow()
        mine = (TaskRow.id == task_id, TaskRow.status == TaskStatus.RUNNING, TaskRow.worker == dead_worker)
        stmt = update(TaskRow).where(*mine)
        if max_attempts is not None:
            stmt = stmt.where(TaskRow.attempts < max_attempts)
        stmt = stmt.values(
            started_at=now, modified_at=now, worker=worker, node_id=node_id, attempts=TaskRow.attempts + 1
        ).returning(TaskRow)
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            row = session.execute(stmt).scalar_one_or_none()
            if row is None and max_attempts is not None:
                session.execute(
                    update(TaskRow)
                    .where(*mine, TaskRow.attempts >= max_attempts)
                    .values(
                        status=TaskStatus.FAILED,
                        ended_at=now,
                        modified_at=now,
                        error=f"its runner process died on each of {max_attempts} attempts (crash, OOM kill)",
                    )
                )
            return row

    def finish(
        self,
        task_id: uuid.UUID,
        status: TaskStatus,
        error: str | None = None,
        now: datetime | None = None,
        *,
        data: dict[str, Any] | None = None,
        by_worker: str | None = None,
    ) -> bool:
        """End a running task as completed or failed (``data``: replace the row's payload too;
        ``by_worker``: only while that worker runs it)."""
        if status not in (TaskStatus.COMPLETED, TaskStatus.FAILED):
            raise ValueError(f"a task finishes completed or failed, not {status}")
        now = now or utcnow()
        values: dict[str, Any] = {} if data is None else {"data": data}
        return self.transition(
            task_id, [TaskStatus.RUNNING], status, by_worker=by_worker, ended_at=now, error=error, now=now, **values
        )

    def requeue(
        self,
        task_id: uuid.UUID,
        error: str | None = None,
        now: datetime | None = None,
        *,
        data: dict[str, Any] | None = None,
        by_worker: str | None = None,
    ) -> bool:
        """Put a running task back to ``queued`` (it will be retried); ``data`` replaces its payload
        (the worker keeps a plugin's output there while storing it is retried); ``by_worker``: only
        while that worker runs it."""
        values: dict[str, Any] = {} if data is None else {"data": data}
        return self.transition(
            task_id,
            [TaskStatus.RUNNING],
            TaskStatus.QUEUED,
            by_worker=by_worker,
            error=error,
            node_id=None,
            now=now or utcnow(),
            **values,
        )

    def fail_for_service(
        self,
        task_id: uuid.UUID,
        service: str,
        error: str,
        now: datetime | None = None,
        *,
        data: dict[str, Any] | None = None,
    ) -> TaskRow | None:
        """Give up on a task because ``service`` failed: ``failed``, with ``reason`` naming the service
        (:func:`service_failed_reason`), so that it does not count as a run (``data``: replace the
        payload too). The row, or ``None`` when the task had ended already."""
        now = now or utcnow()
        values: dict[str, Any] = {} if data is None else {"data": data}
        live = (TaskRow.id == task_id, TaskRow.status.in_(list(LIVE_STATUSES)))
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            previous = session.execute(select(TaskRow.reason).where(*live).with_for_update()).one_or_none()
            if previous is None:
                return None
            stmt = (
                update(TaskRow)
                .where(*live)
                .values(
                    status=TaskStatus.FAILED,
                    reason=service_failed_reason_after(service, previous.reason),
                    error=error,
                    ended_at=now,
                    modified_at=now,
                    **values,
                )
                .returning(TaskRow)
            )
            return session.execute(stmt).scalar_one_or_none()

    def cancel(self, ids: Collection[uuid.UUID], now: datetime | None = None) -> int:
        """Cancel tasks not yet running; workers skip cancelled rows."""
        now = now or utcnow()
        count = 0
        with self.engine.begin() as conn:
            for chunk in _chunks(list(ids)):
                result = conn.execute(
                    update(_TASKS)
                    .where(
                        _TASKS.c.id.in_(chunk),
                        _TASKS.c.status.in_([TaskStatus.QUEUED, TaskStatus.DISPATCHED]),
                    )
                    .values(status=TaskStatus.CANCELLED, modified_at=now, ended_at=now)
                )
                count += result.rowcount
        return count

    def cancel_hashes(self, hashes: Collection[str], now: datetime | None = None) -> list[uuid.UUID]:
        """Cancel the not-yet-running tasks of ``hashes`` (one statement); returns their ids."""
        now = now or utcnow()
        cancelled: list[uuid.UUID] = []
        with self.engine.begin() as conn:
            for condition in in_values(conn, _TASKS.c.hash, list(hashes)):
                result = conn.execute(
                    update(_TASKS)
                    .where(condition, _TASKS.c.status.in_([TaskStatus.QUEUED, TaskStatus.DISPATCHED]))
                    .values(status=TaskStatus.CANCELLED, modified_at=now, ended_at=now)
                    .returning(_TASKS.c.id)
                )
                cancelled.extend(result.scalars())
        return cancelled

    def cancel_for_ooi(
        self,
        organisation: str,
        input_ooi: str,
        *,
        plugin_ids: Collection[str] | None = None,
        now: datetime | None = None,
    ) -> list[uuid.UUID]:
        """Cancel the not-yet-running tasks on one object (optionally only for some plugins)."""
        now = now or utcnow()
        stmt = update(_TASKS).where(
            _TASKS.c.organisation == organisation,
            _TASKS.c.input_ooi == input_ooi,
            _TASKS.c.status.in_([TaskStatus.QUEUED, TaskStatus.DISPATCHED]),
        )
        if plugin_ids is not None:
            stmt = stmt.where(_TASKS.c.plugin_id.in_(list(plugin_ids)))
        with self.engine.begin() as conn:
            result = conn.execute(
                stmt.values(status=TaskStatus.CANCELLED, modified_at=now, ended_at=now).returning(_TASKS.c.id)
            )
            return list(result.scalars())

    # --- look-ups --------------------------------------------------------------------------

    def get(self, task_id: uuid.UUID) -> TaskRow | None:
        with Session(self.engine) as session:
            return session.get(TaskRow, task_id)

    def existing_ids(self, ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
        """Which of ``ids`` are rows already."""
        return self._present(_TASKS.c.id, ids)

    def last_runs(self, hashes: Collection[str]) -> dict[str, datetime]:
        """When each hash's latest finished (completed or failed) run ended; absent if never.

        A task given up on because a KAT service failed (:meth:`fail_for_service`) is no run of its
        plugin and is left out: its pair waits for its schedule's short retry deadline, not a grace period.
        """
        found: dict[str, datetime] = {}
        col = _TASKS.c
        # RUN_SQL word for word, as the partial index ix_tasks_hash_ended_at_run says it, so the
        # planner can read the look-up from that index alone.
        is_a_run = text(RUN_SQL)
        with self.engine.connect() as conn:
            for condition in in_values(conn, col.hash, list(hashes)):
                stmt = (
                    select(col.hash, func.max(col.ended_at))
                    .where(condition, is_a_run, col.ended_at.is_not(None))
                    .group_by(col.hash)
                )
                for hash_, ended_at in conn.execute(stmt):
                    found[hash_] = ended_at
        return found

    def live_hashes(self, hashes: Collection[str]) -> set[str]:
        """Which of ``hashes`` have a live (queued, dispatched or running) task.

        On PostgreSQL one probe of ``uq_tasks_live_hash`` per hash (a lateral join): the plain
        ``hash = ANY(…) AND status IN (…)`` was planned, whenever statistics lagged a burst of
        claims, as a scan of every live row through the status index, filtered against every
        hash, whose cost grew with the queue; the probes cost the same whatever the queue holds
        (figures in docs/benchmarks.md).
        """
        live: set[str] = set()
        if not hashes:
            return live
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                probe = text(
                    "SELECT h FROM unnest(CAST(:hashes AS text[])) AS h, LATERAL "
                    f"(SELECT 1 FROM tasks WHERE tasks.hash = h AND {LIVE_STATUS_SQL} LIMIT 1) AS live"
                )
                live.update(conn.execute(probe, {"hashes": pg_array(list(hashes), "text")}).scalars())
                return live
            for condition in in_values(conn, _TASKS.c.hash, list(hashes)):
                stmt = select(_TASKS.c.hash).where(condition, _TASKS.c.status.in_(list(LIVE_STATUSES)))
                live.update(conn.execute(stmt).scalars())
        return live

    def count_by_status(self, scheduler_id: SchedulerId | None = None) -> dict[TaskStatus, int]:
        stmt = select(_TASKS.c.status, func.count()).group_by(_TASKS.c.status)
        if scheduler_id is not None:
            stmt = stmt.where(_TASKS.c.scheduler_id == scheduler_id)
        with self.engine.connect() as conn:
            counts = {TaskStatus(status): n for status, n in conn.execute(stmt)}
        return {status: counts.get(status, 0) for status in TaskStatus}

    # --- repairs (the reaper) --------------------------------------------------------------

    def recover_stuck(self, started_before: datetime, *, now: datetime, max_retries: int) -> Recovered:
        """Rows ``running`` since before ``started_before`` (their worker is surely gone): queued
        again while attempts remain (``attempts <= max_retries``), else failed, freeing their hash."""
        return self._recover(
            stuck_running_conditions(started_before),
            now=now,
            max_retries=max_retries,
            failed_error="reaped: running past the hard time limit on every attempt (worker lost or killed)",
            requeued_error="requeued by the reaper: its worker was lost",
        )

    def recover_lost_nodes(self, node_ids: Collection[uuid.UUID], *, now: datetime, max_retries: int) -> Recovered:
        """Tasks received (``dispatched``) or ``running`` on worker nodes that stopped beating: queued
        again (a running one while attempts remain, else failed). Their worker ids are kept, so a
        process of a node that was only silent, not dead, can no longer end the row
        (:meth:`finish` and :meth:`requeue` with ``by_worker``)."""
        ids = list(node_ids)
        if not ids:
            return Recovered(0, [])
        col = _TASKS.c
        recovered = self._recover(
            (col.status == TaskStatus.RUNNING, col.node_id.in_(ids)),
            now=now,
            max_retries=max_retries,
            failed_error="reaped: its worker node stopped beating on every attempt (main process died)",
            requeued_error="requeued by the reaper: its worker node stopped beating (main process died)",
        )
        with self.engine.begin() as conn:
            received = conn.execute(
                update(_TASKS)
                .where(col.status == TaskStatus.DISPATCHED, col.node_id.in_(ids))
                .values(
                    status=TaskStatus.QUEUED,
                    node_id=None,
                    modified_at=now,
                    error="requeued by the reaper: the worker node that received it stopped beating",
                )
                .returning(*_TASKS.c)
            ).all()
        return Recovered(recovered.failed, [*recovered.requeued, *received])

    def _recover(
        self,
        conditions: Sequence[ColumnElement[bool]],
        *,
        now: datetime,
        max_retries: int,
        failed_error: str,
        requeued_error: str,
    ) -> Recovered:
        with self.engine.begin() as conn:
            failed = conn.execute(
                update(_TASKS)
                .where(*conditions, _TASKS.c.attempts > max_retries)
                .values(status=TaskStatus.FAILED, ended_at=now, modified_at=now, error=failed_error)
            ).rowcount
            requeued = conn.execute(
                update(_TASKS)
                .where(*conditions)
                .values(status=TaskStatus.QUEUED, node_id=None, modified_at=now, error=requeued_error)
                .returning(*_TASKS.c)
            ).all()
        return Recovered(int(failed), list(requeued))

    def requeue_service_failed(
        self,
        scheduler_id: SchedulerId,
        failed_before: datetime,
        *,
        max_requeues: int,
        now: datetime,
        limit: int = REPAIR_BATCH,
    ) -> RequeuedAfterFailure:
        """Tasks of ``scheduler_id`` given up on because a KAT service failed (:meth:`fail_for_service`),
        which ended before ``failed_before`` and are still the newest of their hash (no live task, no
        run that ended later): each is queued again as a new row with the same hash and payload (its
        ``id`` the new task's), while its hash failed on a service at most ``max_requeues`` times in
        a row; else the row stays failed and its reason says after how many service failures it gave
        up. How many in a row travels in the reasons (:func:`requeued_reason`, :meth:`fail_for_service`),
        so no look-up reads a hash's whole history (``tasks.hash`` has no index over every row).

        One transaction: the old rows are locked (``SKIP LOCKED``: two reapers never handle one
        twice) and marked handled (:data:`HANDLED_MARK`) as their new rows are claimed, so a crash
        leaves either both or neither. The new rows are listed as unpublished, like a claim's.
        """
        col = _TASKS.c
        candidates = (
            select(_TASKS)
            .where(
                col.scheduler_id == scheduler_id,
                col.status == TaskStatus.FAILED,
                col.reason.like(f"{SERVICE_FAILED_PREFIX}%"),
                col.reason.not_like(f"%{HANDLED_MARK}%"),
                col.ended_at < failed_before,
            )
            .order_by(col.band, col.ended_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        requeued: list[Row[Any]] = []
        gave_up = dropped = 0
        with self.engine.begin() as conn:
            rows = conn.execute(candidates).all()
            newest: dict[str, Row[Any]] = {}
            for row in rows:
                if row.hash not in newest or row.created_at > newest[row.hash].created_at:
                    newest[row.hash] = row
            hashes = list(newest)
            live = self.live_hashes(hashes)
            ran = self.last_runs(hashes)
            for row in rows:
                count = service_failures_in_a_row(row.reason)
                later_run = ran.get(row.hash)
                if newest[row.hash] is not row or row.hash in live or (later_run and later_run > row.ended_at):
                    note = "superseded"
                    dropped += 1
                elif count > max_requeues:
                    note = f"gave up after {count} service failures"
                    gave_up += 1
                else:
                    new = self._requeue_failed_row(conn, row, now, count)
                    if new is None:  # a task of its hash was claimed meanwhile
                        note = "superseded"
                        dropped += 1
                    else:
                        note = "queued again"
                        requeued.append(new)
                conn.execute(
                    update(_TASKS)
                    .where(col.id == row.id)
                    .values(reason=handled_reason(row.reason, note), modified_at=now)
                )
        return RequeuedAfterFailure(requeued, gave_up, dropped)

    def _requeue_failed_row(self, conn: Connection, row: Row[Any], now: datetime, failures: int) -> Row[Any] | None:
        """Claim a new row with ``row``'s hash and payload; ``None`` when its hash is live already."""
        task_id = uuid.uuid4()
        # A kept output (workers/lifecycle.py) is dropped when a row gives up; never carried over.
        data = {key: value for key, value in row.data.items() if key != "kept_output"}
        if "id" in data:
            data["id"] = str(task_id)
        task = NewTask(
            id=task_id,
            scheduler_id=row.scheduler_id,
            type=row.type,
            organisation=row.organisation,
            plugin_id=row.plugin_id,
            input_ooi=row.input_ooi,
            hash=row.hash,
            band=row.band,
            priority=row.priority,
            data=data,
            reason=requeued_reason(failures),
            schedule_id=row.schedule_id,
        )
        new = conn.execute(self._insert().values(_row(task, now)).returning(*_TASKS.c)).one_or_none()
        if new is not None:
            conn.execute(insert(_UNPUBLISHED).values(task_id=task_id, claimed_at=now))
        return new

    def never_published(self, claimed_before: datetime, limit: int = REPAIR_BATCH) -> list[Row[Any]]:
        """Queued rows claimed before ``claimed_before`` and never marked published, most urgent first."""
        return self._rows(never_published_conditions(claimed_before), limit)

    def stale_published(self, scheduler_id: SchedulerId, before: datetime, limit: int = REPAIR_BATCH) -> list[Row[Any]]:
        """Published rows of ``scheduler_id`` still waiting (``queued`` or ``dispatched``), published
        and last changed before ``before`` (their message may be lost), most urgent first. A task
        waiting for its rate limit's window (listed with a ``not_before``) has no message to lose."""
        col = _TASKS.c
        rate_limited = exists().where(_UNPUBLISHED.c.task_id == col.id, _UNPUBLISHED.c.not_before.is_not(None))
        conditions = (
            col.scheduler_id == scheduler_id,
            col.status.in_([TaskStatus.QUEUED, TaskStatus.DISPATCHED]),
            col.published_at < before,
            col.modified_at < before,
            ~rate_limited,
        )
        return self._rows(conditions, limit)

    def waiting_page(
        self, scheduler_ids: Collection[SchedulerId], *, after: uuid.UUID | None = None, limit: int = REPAIR_BATCH
    ) -> list[Row[Any]]:
        """One page (by id, after ``after``) of the rows of ``scheduler_ids`` waiting for a worker
        (``queued`` or ``dispatched``): every message they need when a broker lost its data."""
        col = _TASKS.c
        if not scheduler_ids:
            return []
        stmt = select(_TASKS).where(
            col.scheduler_id.in_(list(scheduler_ids)), col.status.in_([TaskStatus.QUEUED, TaskStatus.DISPATCHED])
        )
        if after is not None:
            stmt = stmt.where(col.id > after)
        with self.engine.connect() as conn:
            return list(conn.execute(stmt.order_by(col.id).limit(limit)).all())

    def _rows(self, conditions: Sequence[ColumnElement[bool]], limit: int) -> list[Row[Any]]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(_TASKS).where(*conditions).order_by(_TASKS.c.band).limit(limit)).all())

    def mark_republished(self, ids: Collection[uuid.UUID], now: datetime | None = None) -> None:
        """The messages of ``ids`` were published again at ``now``: their ``published_at`` moves and
        their claims' listings (if any) go."""
        now = now or utcnow()
        with self.engine.begin() as conn:
            for condition in in_values(conn, _TASKS.c.id, list(ids)):
                conn.execute(update(_TASKS).where(condition).values(published_at=now))
            for condition in in_values(conn, _UNPUBLISHED.c.task_id, list(ids)):
                conn.execute(delete(_UNPUBLISHED).where(condition))

    def drop_moved_on_listings(self, claimed_before: datetime) -> int:
        """Listings of claims older than ``claimed_before`` whose task is no longer queued (it was
        published after all and ran or was cancelled, or it is gone): dropped."""
        queued = exists().where(_TASKS.c.id == _UNPUBLISHED.c.task_id, _TASKS.c.status == TaskStatus.QUEUED)
        with self.engine.begin() as conn:
            return int(
                conn.execute(delete(_UNPUBLISHED).where(_UNPUBLISHED.c.claimed_at < claimed_before, ~queued)).rowcount
            )

    def prune_finished(self, ended_before: datetime, batch: int = REPAIR_BATCH) -> int:
        """Delete completed, failed and cancelled rows that ended before ``ended_before``, ``batch``
        rows per transaction; how many."""
        finished = [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED]
        pruned = 0
        while True:
            with self.engine.begin() as conn:
                ids = (
                    select(_TASKS.c.id)
                    .where(_TASKS.c.status.in_(finished), _TASKS.c.ended_at < ended_before)
                    .limit(batch)
                )
                deleted = int(conn.execute(delete(_TASKS).where(_TASKS.c.id.in_(ids.scalar_subquery()))).rowcount)
            pruned += deleted
            if deleted < batch:
                return pruned

    # --- deduplication (workers/dedup.py) ----------------------------------------------------

    def claim_served(
        self,
        task: NewTask,
        served_by: uuid.UUID,
        worker: str,
        now: datetime | None = None,
        *,
        node_id: uuid.UUID | None = None,
        insert: bool = True,
    ) -> tuple[uuid.UUID, bool] | None:
        """Take ``task``'s hash for a run of another task (``served_by``) that serves it.

        A ``queued`` task of the hash is taken over: it goes ``running`` under ``worker`` with
        ``served_by`` in its data (its message, when a worker receives it, starts nothing). With no
        live task, ``task`` is inserted ``running`` the same way (unless ``insert`` is false). A hash
        whose task a worker received or runs is left alone. Returns the row's id and whether it was
        taken over, or ``None``.
        """
        now = now or utcnow()
        col = _TASKS.c
        running = {"status": TaskStatus.RUNNING, "worker": worker, "node_id": node_id, "started_at": now}
        served = {"served_by": str(served_by)}
        with self.engine.begin() as conn:
            queued = conn.execute(
                select(col.id, col.data)
                .where(col.hash == task.hash, col.status == TaskStatus.QUEUED)
                .with_for_update(skip_locked=True)
            ).first()
            if queued is not None:
                taken = conn.execute(
                    update(_TASKS)
                    .where(col.id == queued.id, col.status == TaskStatus.QUEUED)
                    .values(data={**queued.data, **served}, modified_at=now, attempts=col.attempts + 1, **running)
                ).rowcount
                if not taken:
                    return None
                conn.execute(delete(_UNPUBLISHED).where(_UNPUBLISHED.c.task_id == queued.id))
                return queued.id, True
            if not insert:
                return None
            row = {**_row(task, now), **running, "data": {**task.data, **served}, "published_at": None, "attempts": 1}
            inserted = conn.execute(self._insert().returning(col.id), row).scalars().first()
        return None if inserted is None else (inserted, False)


def stuck_running_conditions(started_before: datetime) -> tuple[ColumnElement[bool], ...]:
    """Conditions on ``tasks`` of rows ``running`` since before ``started_before``."""
    return (_TASKS.c.status == TaskStatus.RUNNING, _TASKS.c.started_at < started_before)


def never_published_conditions(claimed_before: datetime) -> tuple[ColumnElement[bool], ...]:
    """Conditions on ``tasks`` of rows ``queued`` whose claim (before ``claimed_before``) was never
    marked published: still listed in ``unpublished_tasks``, or claimed by a version before
    revision 0004 (not listed, no ``published_at``)."""
    listed = select(_UNPUBLISHED.c.task_id).where(_UNPUBLISHED.c.claimed_at < claimed_before)
    older = and_(_TASKS.c.published_at.is_(None), _TASKS.c.created_at < claimed_before)
    return (_TASKS.c.status == TaskStatus.QUEUED, or_(_TASKS.c.id.in_(listed), older))
