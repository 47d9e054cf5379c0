"""Tasks waiting for their rate limit's window: ``queued`` rows with no message, listed in
``unpublished_tasks`` with ``not_before`` (and ``claimed_at``) the time the window opens.

So a waiting task holds no worker slot and no message; it keeps its band and priority in its row;
and the reaper, which publishes rows listed in ``unpublished_tasks`` for longer than
``SCHEDULER_UNPUBLISHED_AFTER``, publishes it if no worker node released it in time. The row's
``data`` says why it waits: ``rate_limit: {"limit", "group", "until"}`` (shown by the API's task
list; ``until`` is when it may run).

Every statement on those rows is here: a worker's put-back, the listener's hold, the release's
pass (:meth:`WaitingStore.releasing`: read the due rows, then record what was sent and what waits
on, in one transaction), and the counts ``status``, ``plan --dry-run`` and ``explain`` show. What
to send is decided in :mod:`kat_scheduler.limiting.release`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import CTE, ColumnElement, Connection, Engine, Select, bindparam, delete, func, insert, select, update

from kat_scheduler.models.tasks import TaskStatus
from kat_scheduler.storage.sqlutil import in_values
from kat_scheduler.storage.tables import TaskRow, UnpublishedTask, table_of, utcnow

_TASKS = table_of(TaskRow)
_UNPUBLISHED = table_of(UnpublishedTask)
#: The key of a task's ``data`` that says what it waits for.
RATE_LIMIT_KEY = "rate_limit"
#: The earliest listings :meth:`WaitingStore.next_at` looks at.
NEXT_LOOKAHEAD = 20


@dataclass(frozen=True, slots=True)
class Waiting:
    """One waiting task as the release reads it (in band, priority and age order)."""

    row: Any  # a ``tasks`` row
    limit: str | None
    group: str | None


@dataclass(frozen=True, slots=True)
class WaitingGroup:
    """The tasks of one rate-limited group that wait for its window (``plan --dry-run``)."""

    group: str | None
    limit: str | None
    count: int
    #: The earliest time one of them may run.
    next_at: datetime


class WaitingStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def put_back(
        self, task_id: uuid.UUID, *, limit: str, group: str, until: datetime, now: datetime | None = None
    ) -> bool:
        """A worker found the task's limit reached before starting it: ``queued|dispatched →
        queued`` with no worker, listed as waiting until ``until``. False when the row is not
        waiting for a worker any more (cancelled, running elsewhere, gone)."""
        now = now or utcnow()
        waiting = [TaskStatus.QUEUED, TaskStatus.DISPATCHED]
        with self.engine.begin() as conn:
            data = conn.execute(
                select(_TASKS.c.data).where(_TASKS.c.id == task_id, _TASKS.c.status.in_(waiting)).with_for_update()
            ).scalar_one_or_none()
            if data is None:
                return False
            note = {"limit": limit, "group": group, "until": until.isoformat()}
            conn.execute(
                update(_TASKS)
                .where(_TASKS.c.id == task_id)
                .values(
                    status=TaskStatus.QUEUED,
                    worker=None,
                    node_id=None,
                    modified_at=now,
                    data={**data, RATE_LIMIT_KEY: note},
                )
            )
            conn.execute(delete(_UNPUBLISHED).where(_UNPUBLISHED.c.task_id == task_id))
            conn.execute(insert(_UNPUBLISHED).values(task_id=task_id, claimed_at=until, not_before=until))
        return True

    def hold(self, waits: Mapping[uuid.UUID, tuple[str, str, datetime]]) -> int:
        """Claimed tasks not to be published yet wait as :meth:`put_back` leaves a task: ``waits``
        gives each one's limit, group and the time its window may open (the event listener's, over
        what their group may start now; :class:`~kat_scheduler.limiting.capacity.ListenerBudget`).
        Only rows still queued and listed as unpublished (claimed, no message sent); how many."""
        if not waits:
            return 0
        with self.engine.begin() as conn:
            found: list[Any] = []
            for condition in in_values(conn, _UNPUBLISHED.c.task_id, list(waits)):
                found.extend(
                    conn.execute(
                        select(_TASKS.c.id, _TASKS.c.data)
                        .join(_UNPUBLISHED, _UNPUBLISHED.c.task_id == _TASKS.c.id)
                        .where(condition, _TASKS.c.status == TaskStatus.QUEUED)
                        .with_for_update(of=_TASKS)
                    ).all()
                )
            if not found:
                return 0
            notes = []
            for task_id, data in found:
                limit, group, until = waits[task_id]
                note = {"limit": limit, "group": group, "until": until.isoformat()}
                notes.append({"b_id": task_id, "b_data": {**(data or {}), RATE_LIMIT_KEY: note}, "b_until": until})
            conn.execute(update(_TASKS).where(_TASKS.c.id == bindparam("b_id")).values(data=bindparam("b_data")), notes)
            conn.execute(
                update(_UNPUBLISHED)
                .where(_UNPUBLISHED.c.task_id == bindparam("b_id"))
                .values(not_before=bindparam("b_until"), claimed_at=bindparam("b_until")),
                notes,
            )
        return len(found)

    def next_at(self) -> datetime | None:
        """The earliest time a waiting task may run, if any waits."""
        with self.engine.connect() as conn:
            # The earliest listings from the index alone (none: nothing waits, and no task is
            # read), then which of them are still queued (a listing whose task ended goes with the
            # reaper's next prune). Should none of them be, the release looks again after its
            # poll (it passes every poll anyway).
            earliest = _listed(
                select(_UNPUBLISHED.c.task_id, _UNPUBLISHED.c.not_before)
                .where(_UNPUBLISHED.c.not_before.is_not(None))
                .order_by(_UNPUBLISHED.c.not_before)
                .limit(NEXT_LOOKAHEAD),
                "earliest",
            )
            found: datetime | None = conn.execute(
                select(func.min(earliest.c.not_before))
                .join(_TASKS, _TASKS.c.id == earliest.c.task_id)
                .where(_TASKS.c.status == TaskStatus.QUEUED)
            ).scalar_one_or_none()
        return found

    def waiting_until(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, datetime]:
        """Of ``ids``, the queued tasks that wait for their window, and when it opens (``explain``)."""
        if not ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_UNPUBLISHED.c.task_id, _UNPUBLISHED.c.not_before)
                .join(_TASKS, _TASKS.c.id == _UNPUBLISHED.c.task_id)
                .where(
                    _UNPUBLISHED.c.task_id.in_(list(ids)),
                    _UNPUBLISHED.c.not_before.is_not(None),
                    _TASKS.c.status == TaskStatus.QUEUED,
                )
            )
            return {task_id: not_before for task_id, not_before in rows}

    def summary(self) -> tuple[int, datetime | None]:
        """How many tasks wait for their window, and the earliest time one may run (``status``)."""
        with self.engine.connect() as conn:
            count, earliest = conn.execute(
                select(func.count(), func.min(_UNPUBLISHED.c.not_before))
                .join(_TASKS, _TASKS.c.id == _UNPUBLISHED.c.task_id)
                .where(_UNPUBLISHED.c.not_before.is_not(None), _TASKS.c.status == TaskStatus.QUEUED)
            ).one()
        return int(count), earliest

    def by_group(self) -> list[WaitingGroup]:
        """The waiting tasks per group (and limit, as the worker that put them back read it), the
        group whose next task may run first first."""
        note = _TASKS.c.data[RATE_LIMIT_KEY]
        group, limit = note["group"].as_string(), note["limit"].as_string()
        earliest = func.min(_UNPUBLISHED.c.not_before)
        with self.engine.connect() as conn:
            if not _any_waiting(conn):
                return []
            rows = conn.execute(
                select(group, limit, func.count(), earliest)
                .join(_UNPUBLISHED, _UNPUBLISHED.c.task_id == _TASKS.c.id)
                .where(_UNPUBLISHED.c.not_before.is_not(None), _TASKS.c.status == TaskStatus.QUEUED)
                .group_by(group, limit)
                .order_by(earliest, group)
            ).all()
        return [WaitingGroup(g, lim, int(n), at) for g, lim, n, at in rows]

    @contextmanager
    def releasing(self, now: datetime, limit: int) -> Iterator[Release]:
        """One release pass's transaction: the waiting tasks whose time came by ``now`` (at most
        ``limit``, most urgent first: :attr:`Release.due`), their listings locked until the block
        ends (on PostgreSQL rows another node is releasing are skipped); what the block records
        (:meth:`Release.released`, :meth:`Release.wait_more`) commits with it."""
        with self.engine.begin() as conn:
            yield Release(conn, _due(conn, now, limit))


class Release:
    """What one release pass holds (:meth:`WaitingStore.releasing`): the due waiting tasks, locked."""

    def __init__(self, conn: Connection, due: list[Waiting]) -> None:
        self._conn = conn
        #: The waiting tasks whose time came, in band, priority and age order.
        self.due = due

    def wait_more(self, until: dict[uuid.UUID, datetime]) -> None:
        """Move the times of tasks that still wait (their group had no room for them)."""
        by_time: dict[datetime, list[uuid.UUID]] = {}
        for task_id, moment in until.items():
            by_time.setdefault(moment, []).append(task_id)
        for moment, ids in by_time.items():
            self._conn.execute(
                update(_UNPUBLISHED).where(_UNPUBLISHED.c.task_id.in_(ids)).values(not_before=moment, claimed_at=moment)
            )

    def tail(self, limit: str, group: str, after: datetime, count: int) -> list[datetime]:
        """The latest ``count`` times tasks of the group (as their note gives limit and group)
        wait until, of those that wait past ``after``, latest first (empty when none does)."""
        note = _TASKS.c.data[RATE_LIMIT_KEY]
        return list(
            self._conn.execute(
                select(_UNPUBLISHED.c.not_before)
                .join(_TASKS, _TASKS.c.id == _UNPUBLISHED.c.task_id)
                .where(
                    _UNPUBLISHED.c.not_before > after,
                    _TASKS.c.status == TaskStatus.QUEUED,
                    note["group"].as_string() == group,
                    note["limit"].as_string() == limit,
                )
                .order_by(_UNPUBLISHED.c.not_before.desc())
                .limit(count)
            ).scalars()
        )

    def released(self, ids: Sequence[uuid.UUID]) -> None:
        """Their messages are on the broker: their listings (locked by this release) go."""
        if ids:
            self._conn.execute(delete(_UNPUBLISHED).where(_UNPUBLISHED.c.task_id.in_(list(ids))))


def _due(conn: Connection, now: datetime, limit: int) -> list[Waiting]:
    """Waiting tasks whose time came, locked for this transaction (on PostgreSQL rows another node
    is releasing are skipped): of the ``limit`` that came first, the most urgent first."""
    if not _any_waiting(conn, now):
        return []
    due = _listed(
        select(_UNPUBLISHED.c.task_id)
        .where(_UNPUBLISHED.c.not_before <= now)
        .order_by(_UNPUBLISHED.c.not_before)
        .limit(limit),
        "due",
    )
    stmt = (
        select(_TASKS)
        .join(due, due.c.task_id == _TASKS.c.id)
        .join(_UNPUBLISHED, _UNPUBLISHED.c.task_id == _TASKS.c.id)
        .where(_UNPUBLISHED.c.not_before <= now, _TASKS.c.status == TaskStatus.QUEUED)
        .order_by(_TASKS.c.band, _TASKS.c.priority, _TASKS.c.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=_UNPUBLISHED)
    )
    found = []
    for row in conn.execute(stmt).all():
        note = (row.data or {}).get(RATE_LIMIT_KEY) or {}
        found.append(Waiting(row, note.get("limit"), note.get("group")))
    return found


def _listed(listings: Select[Any], name: str) -> CTE:
    """``listings`` (of ``unpublished_tasks`` alone, earliest ``not_before`` first, limited) as a
    materialized CTE: read through the index on ``not_before`` before any task is joined.

    The release moves ``not_before`` on every pass, so PostgreSQL's statistics of it are always
    behind: planned from them, the join started from the queued tasks and read every one of them,
    thousands while a group's backlog waits, on each pass of every node (several a second). An
    ordered, limited scan of the index does not depend on those statistics. (A database never
    analysed plans every join for empty tables; autovacuum analyses it within its first minute.)"""
    return listings.cte(name).prefix_with("MATERIALIZED", dialect="postgresql")


def _any_waiting(conn: Connection, now: datetime | None = None) -> bool:
    """Whether a task waits (with ``now``: one whose time came), from the partial index on
    ``not_before`` alone. The release's joins, planned with statistics that lag a burst of claims,
    read every queued task to find none waiting; each node asks several times a second."""
    conditions: list[ColumnElement[bool]] = [_UNPUBLISHED.c.not_before.is_not(None)]
    if now is not None:
        conditions.append(_UNPUBLISHED.c.not_before <= now)
    return conn.execute(select(_UNPUBLISHED.c.task_id).where(*conditions).limit(1)).first() is not None
