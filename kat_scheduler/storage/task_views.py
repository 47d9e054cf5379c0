"""The read side of ``tasks``: what the HTTP API reads and changes (listings with bounded counts,
hourly status counts, queue sizes, and the lifecycle transitions a client may ask for), and what
the operator's commands read (``status``: counts and stalled rows; ``explain``: an object's live
tasks and last runs; ``run``'s live view: counts by type).

Route handlers and commands hold no SQL: every statement they run is here (or in :mod:`.tasks`,
:mod:`.waiting`).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Row,
    String,
    TextualSelect,
    Update,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from kat_scheduler.models.tasks import LIVE_STATUSES, SchedulerId, TaskStatus
from kat_scheduler.storage.paging import Page, newest_first
from kat_scheduler.storage.tables import POP_IMAGE_SQL, SERVICE_FAILED_PREFIX, TaskRow, table_of, utcnow
from kat_scheduler.storage.tasks import never_published_conditions, stuck_running_conditions

_TASKS = table_of(TaskRow)
T = TypeVar("T")

#: Which statuses a task may be moved to over HTTP, and from which: the workers' own lifecycle
#: (``TaskStore.mark_dispatched``, ``start``, ``finish``, ``requeue``, ``cancel`` and the
#: worker's ``fail_for_good``). A runner may hand a task back (``dispatched|running → queued``).
#: Nothing leaves ``completed``, ``failed`` or ``cancelled``, and nothing goes back to ``pending``.
PATCH_TRANSITIONS: dict[TaskStatus, tuple[TaskStatus, ...]] = {
    TaskStatus.DISPATCHED: (TaskStatus.QUEUED,),
    TaskStatus.RUNNING: (TaskStatus.QUEUED, TaskStatus.DISPATCHED),
    TaskStatus.COMPLETED: (TaskStatus.DISPATCHED, TaskStatus.RUNNING),
    TaskStatus.FAILED: (TaskStatus.QUEUED, TaskStatus.DISPATCHED, TaskStatus.RUNNING),
    TaskStatus.QUEUED: (TaskStatus.DISPATCHED, TaskStatus.RUNNING),
    TaskStatus.CANCELLED: (TaskStatus.QUEUED, TaskStatus.DISPATCHED),
}


class TaskNotFound(LookupError):
    """No task has this id."""


class TransitionRefused(ValueError):
    """The task's status may not become the status asked for; nothing was changed."""

    def __init__(self, task_id: uuid.UUID, current: TaskStatus, wanted: TaskStatus) -> None:
        allowed = [s.value for s, sources in PATCH_TRANSITIONS.items() if current in sources]
        options = ", ".join(allowed) if allowed else "nothing: it is final"
        super().__init__(
            f"task {task_id} is {current.value} and cannot become {wanted.value} (it can become {options})"
        )
        self.current = current
        self.wanted = wanted


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """Which tasks a listing covers; every field narrows it (empty: no condition)."""

    scheduler_id: SchedulerId | None = None
    organisations: Sequence[str] = ()
    task_type: str | None = None
    status: TaskStatus | None = None
    input_ooi: str | None = None
    plugin_id: str | None = None
    min_created_at: datetime | None = None
    max_created_at: datetime | None = None
    #: Further conditions on ``tasks`` (the filter language of ``POST /tasks``).
    where: Sequence[ColumnElement[bool]] = field(default_factory=tuple)

    def conditions(self) -> list[ColumnElement[bool]]:
        col = _TASKS.c
        found: list[ColumnElement[bool]] = list(self.where)
        if self.scheduler_id is not None:
            found.append(col.scheduler_id == self.scheduler_id)
        if len(self.organisations) == 1:
            found.append(col.organisation == self.organisations[0])
        elif self.organisations:
            found.append(col.organisation.in_(list(self.organisations)))
        if self.task_type is not None:
            found.append(col.type == self.task_type)
        if self.status is not None:
            found.append(col.status == self.status)
        if self.input_ooi is not None:
            found.append(col.input_ooi == self.input_ooi)
        if self.plugin_id is not None:
            found.append(col.plugin_id == self.plugin_id)
        if self.min_created_at is not None:
            found.append(col.created_at >= self.min_created_at)
        if self.max_created_at is not None:
            found.append(col.created_at <= self.max_created_at)
        return found


#: A page of tasks.
TaskPage = Page[TaskRow]


@dataclass(frozen=True, slots=True)
class Stalled:
    """Rows the reaper would repair: how many, and the first few (``id``, ``scheduler_id``,
    ``organisation``, ``plugin_id``, ``input_ooi``, ``status``, ``worker``, ``attempts`` and
    ``since``, the moment they are counted from)."""

    count: int
    rows: list[Row[Any]]


#: What a pop returns of each task: what its answer shows (:meth:`Task.of
#: <kat_scheduler.api.models.Task.of>`) and the band it is ordered by.
POPPED_COLUMNS = (
    "id",
    "scheduler_id",
    "schedule_id",
    "organisation",
    "band",
    "priority",
    "status",
    "type",
    "hash",
    "data",
    "created_at",
    "modified_at",
)

#: Pops a connection keeps prepared; one more and it forgets them all (``DEALLOCATE ALL``) first.
PREPARED_POPS = 64


@dataclass(frozen=True, slots=True)
class PopStatement:
    """A pop, built once (:meth:`TaskViews.pop_statement`) and run any number of times, from any thread.

    On PostgreSQL a pop by image (the boefje workers' filter) or without filters is also a
    prepared statement with a generic plan (``PREPARE`` once per connection, then ``EXECUTE``):
    parsed and planned once per connection, not once per pop; planning it cost PostgreSQL about
    as much as running it. A pop with other filters is planned each time, for the values it has.
    """

    stmt: Update
    #: PostgreSQL: the ``PREPARE`` of ``stmt`` under a name of its own, and the ``EXECUTE`` of it.
    prepare: str | None = None
    execute: TextualSelect | None = None


class TaskViews:
    """The API's reads of ``tasks`` and its status changes."""

    def __init__(self, engine: Engine, *, prepared_pops: bool = True) -> None:
        self.engine = engine
        #: Whether pops without other filters are prepared statements on PostgreSQL (see
        #: :meth:`pop_with`; off behind a pooler that drops a session's prepared statements).
        self.prepared_pops = prepared_pops
        #: The statement of a move to each status, built on first use.
        self._moves: dict[TaskStatus, Update | None] = {}

    def get(self, task_id: uuid.UUID) -> TaskRow | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(TaskRow, task_id)

    def page(self, query: TaskQuery, *, offset: int, limit: int, count_cap: int | None = None) -> TaskPage:
        """Tasks matching ``query``, newest first, and their count (see :func:`paging.newest_first`)."""
        return newest_first(self.engine, TaskRow, query.conditions(), offset=offset, limit=limit, count_cap=count_cap)

    def hourly_status_counts(
        self,
        *,
        scheduler_id: SchedulerId | None = None,
        organisations: Sequence[str] = (),
        now: datetime | None = None,
    ) -> dict[datetime, dict[TaskStatus, int]]:
        """Tasks modified in the 24 hours before ``now``, counted per hour (of ``modified_at``) and status.

        Only hours with tasks appear; each hour is its start, in UTC.
        """
        now = now or utcnow()
        col = _TASKS.c
        hour = _hour_of(self.engine, col.modified_at)
        stmt = (
            select(hour.label("hour"), col.status, func.count())
            .where(col.modified_at >= now - timedelta(hours=24), col.modified_at <= now)
            .group_by(hour, col.status)
        )
        if scheduler_id is not None:
            stmt = stmt.where(col.scheduler_id == scheduler_id)
        if organisations:
            stmt = stmt.where(col.organisation.in_(list(organisations)))
        buckets: dict[datetime, dict[TaskStatus, int]] = {}
        with self.engine.connect() as conn:
            for start, status, count in conn.execute(stmt):
                bucket = buckets.setdefault(_as_utc_hour(start), {})
                bucket[TaskStatus(status)] = bucket.get(TaskStatus(status), 0) + count
        return dict(sorted(buckets.items()))

    def queued_count(self, scheduler_id: SchedulerId) -> int:
        """Tasks of ``scheduler_id`` waiting to be run (``queued``)."""
        col = _TASKS.c
        stmt = select(func.count()).where(col.scheduler_id == scheduler_id, col.status == TaskStatus.QUEUED)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def last_activity(self, scheduler_id: SchedulerId) -> datetime | None:
        """When a task of ``scheduler_id`` last changed (one index probe per status)."""
        col = _TASKS.c
        per_status = [
            select(func.max(col.modified_at).label("m")).where(col.status == status, col.scheduler_id == scheduler_id)
            for status in TaskStatus
        ]
        latest = union_all(*per_status).subquery()
        with self.engine.connect() as conn:
            value = conn.execute(select(func.max(latest.c.m))).scalar_one_or_none()
        return _as_utc(value)

    def counts(self, *, zeros: bool = True) -> dict[tuple[SchedulerId, TaskStatus], int]:
        """Tasks per scheduler and status (one statement): every pair, or (``zeros=False``) only
        the pairs that have tasks, in the order the database counted them."""
        col = _TASKS.c
        stmt = select(col.scheduler_id, col.status, func.count()).group_by(col.scheduler_id, col.status)
        with self.engine.connect() as conn:
            found = {(SchedulerId(s), TaskStatus(t)): int(n) for s, t, n in conn.execute(stmt)}
        if not zeros:
            return found
        return {(s, t): found.get((s, t), 0) for s in SchedulerId for t in TaskStatus}

    def queued_by_band(self) -> dict[tuple[SchedulerId, int], int]:
        """``queued`` tasks per scheduler and band, the pairs that have any (one statement;
        ``kat-scheduler status``)."""
        col = _TASKS.c
        stmt = (
            select(col.scheduler_id, col.band, func.count())
            .where(col.status == TaskStatus.QUEUED)
            .group_by(col.scheduler_id, col.band)
        )
        with self.engine.connect() as conn:
            return {(SchedulerId(s), int(band)): int(n) for s, band, n in conn.execute(stmt)}

    def counts_by_type(self) -> dict[str, dict[str, int]]:
        """Tasks per type and status: ``counts["boefje"]["completed"]`` (one statement; the live
        view of ``kat-scheduler run``)."""
        col = _TASKS.c
        stmt = select(col.type, col.status, func.count()).group_by(col.type, col.status)
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for task_type, status, n in conn.execute(stmt):
                out.setdefault(str(task_type), {})[str(getattr(status, "value", status))] = int(n)
        return out

    def stalled_running(self, started_before: datetime, examples: int) -> Stalled:
        """Rows ``running`` since before ``started_before`` (the reaper's repair 2): how many, and
        the ``examples`` longest running (``kat-scheduler status``)."""
        return self._stalled(stuck_running_conditions(started_before), _TASKS.c.started_at, examples)

    def stalled_unpublished(self, claimed_before: datetime, examples: int) -> Stalled:
        """Rows claimed before ``claimed_before`` and never published (the reaper's repair 3): how
        many, and the ``examples`` oldest (``kat-scheduler status``)."""
        return self._stalled(never_published_conditions(claimed_before), _TASKS.c.created_at, examples)

    def _stalled(self, conditions: Sequence[ColumnElement[bool]], since: Any, examples: int) -> Stalled:
        col = _TASKS.c
        # The columns a stalled row shows, no more: a schema older than the code still answers.
        shown = (col.id, col.scheduler_id, col.organisation, col.plugin_id, col.input_ooi, col.status, col.worker)
        with self.engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(_TASKS).where(*conditions)).scalar_one()
            stmt = select(*shown, col.attempts, since.label("since")).where(*conditions).order_by(since).limit(examples)
            rows: list[Row[Any]] = list(conn.execute(stmt))
        return Stalled(int(count), rows)

    def live_of_object(self, organisation: str, input_ooi: str, hashes: Sequence[str]) -> list[TaskRow]:
        """The live task of each of ``hashes`` on one object (at most one each:
        ``uq_tasks_live_hash``; ``explain``)."""
        if not hashes:
            return []
        col = _TASKS.c
        query = TaskQuery(
            organisations=[organisation],
            input_ooi=input_ooi,
            where=[col.hash.in_(list(hashes)), col.status.in_([s.value for s in LIVE_STATUSES])],
        )
        return self.page(query, offset=0, limit=len(hashes)).rows

    def runs_ended_at(
        self, organisation: str, input_ooi: str, hashes: Sequence[str], ends: Sequence[datetime], limit: int
    ) -> list[TaskRow]:
        """The runs of ``hashes`` on one object that ended (``completed`` or ``failed``, not given up
        on because a KAT service failed: ``RUN_SQL``) at one of ``ends``, at most ``limit``
        (``explain``: the outcome of each pair's last run)."""
        if not hashes:
            return []
        col = _TASKS.c
        query = TaskQuery(
            organisations=[organisation],
            input_ooi=input_ooi,
            where=[
                col.hash.in_(list(hashes)),
                col.ended_at.in_(list(ends)),
                col.status.in_([TaskStatus.COMPLETED.value, TaskStatus.FAILED.value]),
                or_(col.reason.is_(None), col.reason.not_like(f"{SERVICE_FAILED_PREFIX}%")),
            ],
        )
        return self.page(query, offset=0, limit=limit).rows

    def pop(
        self,
        scheduler_id: SchedulerId,
        *,
        limit: int,
        where: Sequence[ColumnElement[bool]] = (),
        now: datetime | None = None,
    ) -> list[Row[Any]]:
        """Take up to ``limit`` queued tasks of ``scheduler_id`` matching ``where``, most urgent first
        (band, then priority, then age), and mark them ``dispatched``; the rows as they are now.

        :meth:`pop_statement` then :meth:`pop_with`; a caller popping the same way again and again
        (the API, for each runner's filter body) keeps the statement and calls :meth:`pop_with`.
        """
        if limit <= 0:
            return []
        return self.pop_with(self.pop_statement(scheduler_id, where=where), limit, now=now)

    def pop_statement(
        self,
        scheduler_id: SchedulerId,
        *,
        where: Sequence[ColumnElement[bool]] = (),
        images: Sequence[str] = (),
    ) -> PopStatement:
        """The one statement of a pop (see :meth:`pop_with`), built once for every pop alike
        (the number of tasks it takes is a parameter).

        On PostgreSQL ``WITH picked AS MATERIALIZED (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)
        UPDATE … FROM picked RETURNING``: a concurrent pop skips rows another pop is taking and
        takes the next ones, so no two pops return the same task and neither waits. On SQLite
        ``UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING``: SQLite has no row locks but runs one
        writing statement at a time (the UPDATE takes the database's write lock before it reads),
        so the select and the update of one pop are never interleaved with another's.

        ``images``: only tasks of these boefje images (``data.boefje.oci_image``). On PostgreSQL
        each image's most urgent ``n`` are taken from ``ix_tasks_queued_pop_image`` and the most
        urgent ``n`` of them kept, so the queued tasks of other images are never read. The rows
        not kept are locked for the statement only: a pop running at the same moment skips them
        and may take a less urgent task first (never one task twice).
        """
        col = _TASKS.c
        postgresql = self.engine.dialect.name == "postgresql"
        # On PostgreSQL ``now`` and ``limit`` are given at each EXECUTE: a PREPARE is compiled
        # with every value written out (``is_queued``), which needs a value (unused) for these too.
        placeholder: dict[str, Any] = {"value": None, "required": False} if postgresql else {}
        limit = bindparam("limit", type_=Integer, **placeholder)
        now = bindparam("now", type_=col.modified_at.type, **placeholder)
        urgency = (col.band, col.priority, col.created_at)
        # The status written into the SQL, not a parameter: a prepared pop's generic plan can then
        # use the indexes on queued tasks only (their predicate is status = 'queued').
        is_queued = col.status == bindparam("queued", TaskStatus.QUEUED, type_=col.status.type, literal_execute=True)
        queued = [col.scheduler_id == scheduler_id, is_queued, *where]
        if images and not postgresql:
            queued.append(col.data["boefje"]["oci_image"].as_string().in_(list(images)))
        picked = select(col.id).where(*queued).order_by(*urgency).limit(limit).correlate(None)
        if images and postgresql:
            image = literal_column(f"({POP_IMAGE_SQL})", String)
            per_image = [
                select(col.id, *urgency)
                .where(*queued, image == bindparam(f"image_{n}", value, type_=String))
                .order_by(*urgency)
                .limit(limit)
                .with_for_update(skip_locked=True)
                .subquery(f"image_{n}")
                for n, value in enumerate(images)
            ]
            merged = union_all(*(select(*branch.c) for branch in per_image)).subquery("candidates")
            by_image = select(merged.c.id).order_by(merged.c.band, merged.c.priority, merged.c.created_at).limit(limit)
            taken: ColumnElement[bool] = col.id == by_image.cte("picked").prefix_with("MATERIALIZED").c.id
        elif postgresql:
            # A CTE, evaluated once: PostgreSQL may run an IN (subquery … LIMIT) of an UPDATE more
            # than once and take more than ``limit`` rows.
            cte = picked.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
            taken = col.id == cte.c.id
        else:
            taken = col.id.in_(picked.scalar_subquery())
        stmt = (
            update(_TASKS)
            .where(taken, is_queued)
            .values(status=TaskStatus.DISPATCHED, modified_at=now)
            .returning(*(col[name] for name in POPPED_COLUMNS))
        )
        if not postgresql or where or not self.prepared_pops:
            return PopStatement(stmt)
        return PopStatement(stmt, *_prepared(stmt, self.engine.dialect))

    def pop_with(
        self, statement: PopStatement, limit: int, now: datetime | None = None, *, held: HeldConnection | None = None
    ) -> list[Row[Any]]:
        """Run a pop built by :meth:`pop_statement`: up to ``limit`` tasks taken, most urgent first,
        now ``dispatched``.

        The statement is a transaction of its own (autocommit: no ``BEGIN`` and ``COMMIT`` round
        trips around it), and atomic as every statement is. A prepared pop (see
        :class:`PopStatement`) is prepared by a connection the first time it runs it there (the
        connection's ``info`` remembers which it prepared: a new connection, one replacing a
        connection lost, starts with none), and the connection's ``plan_cache_mode`` set to
        ``force_generic_plan``: PostgreSQL would otherwise plan every ``EXECUTE`` again, as the
        generic plan's estimate (for any ``limit``) never looks as cheap as one for ``limit=1``.
        Only these pops are prepared statements here (psycopg2 prepares nothing).

        ``held``: run on that connection (see :class:`HeldConnection`), not on one from the pool.
        """
        if limit <= 0:
            raise ValueError(f"a pop takes at least one task, not {limit}")
        params = {"now": now or utcnow(), "limit": limit}
        if held is not None:
            return held.run(lambda conn: _pop_on(conn, statement, params))
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return _pop_on(conn, statement, params)

    def hand_back(self, task_ids: Collection[uuid.UUID], now: datetime | None = None) -> int:
        """Popped tasks no runner received (its request was gone when they were taken): queued
        again at once, as they were. Only tasks still ``dispatched`` move; how many did."""
        if not task_ids:
            return 0
        col = _TASKS.c
        stmt = (
            update(_TASKS)
            .where(col.id.in_(list(task_ids)), col.status == TaskStatus.DISPATCHED)
            .values(status=TaskStatus.QUEUED, modified_at=now or utcnow())
        )
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)

    def requeue_popped(
        self, scheduler_ids: Collection[SchedulerId], *, popped_before: datetime, now: datetime | None = None
    ) -> int:
        """Tasks of ``scheduler_ids`` popped (``dispatched``) before ``popped_before`` and never
        started: queued again, so the next pop takes them (the runner that popped them is gone)."""
        if not scheduler_ids:
            return 0
        now = now or utcnow()
        col = _TASKS.c
        stmt = (
            update(_TASKS)
            .where(
                col.scheduler_id.in_(list(scheduler_ids)),
                col.status == TaskStatus.DISPATCHED,
                col.modified_at < popped_before,
            )
            .values(status=TaskStatus.QUEUED, modified_at=now, error="requeued by the reaper: popped but never started")
        )
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)

    def move(self, task_id: uuid.UUID, to_status: TaskStatus, now: datetime | None = None) -> Row[Any]:
        """Move a task to ``to_status`` as the workers would; the row as it is afterwards.

        Asking for the status the task has already changes nothing. Raises :class:`TaskNotFound`,
        or :class:`TransitionRefused` (nothing changed) for a move the lifecycle does not allow.
        One conditional ``UPDATE … RETURNING`` (autocommit: a transaction of its own); only when
        it changes nothing is the task read, to say why.
        """
        col = _TASKS.c
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            stmt = self._move_statement(to_status)
            if stmt is not None:
                moved = conn.execute(stmt, {"task_id": task_id, "now": now or utcnow()}).first()
                if moved is not None:
                    return moved
            current = conn.execute(select(*_TASKS.c).where(col.id == task_id)).first()
        if current is None:
            raise TaskNotFound(str(task_id))
        status = TaskStatus(current.status)
        if status is to_status:
            return current
        raise TransitionRefused(task_id, status, to_status)

    def _move_statement(self, to_status: TaskStatus) -> Update | None:
        """The conditional update of a move to ``to_status`` (built once per status); ``None``
        when nothing may move there."""
        if to_status in self._moves:
            return self._moves[to_status]
        sources = PATCH_TRANSITIONS.get(to_status, ())
        stmt = None
        if sources:
            col = _TASKS.c
            now = bindparam("now", type_=col.modified_at.type)
            values: dict[str, Any] = {"status": to_status, "modified_at": now}
            if to_status is TaskStatus.RUNNING:
                values.update(started_at=now, attempts=col.attempts + 1)
            elif to_status in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED):
                values["ended_at"] = now
            stmt = (
                update(_TASKS)
                .where(col.id == bindparam("task_id", type_=col.id.type), col.status.in_(list(sources)))
                .values(**values)
                .returning(*_TASKS.c)
            )
        self._moves[to_status] = stmt
        return stmt


class HeldConnection:
    """An autocommit connection kept from one use to the next, until :meth:`release`.

    Each connection from the pool costs a pop two round trips to PostgreSQL besides its
    statement: the pool's pre-ping (``SELECT 1``) when it is taken and the reset of its
    isolation level (``SET default_transaction_isolation``) when it is given back. The API's
    pops of one runner's kind come one batch after another while runners keep popping: they
    run on one connection held for as long as batches follow each other (the API gives it back
    once no pop waits), so only the first pays those.

    A held connection found gone when used (PostgreSQL restarted, the connection cut) is
    dropped and the work run once more on a connection from the pool, pre-pinged as usual. A
    pop is a statement of its own (autocommit): one that failed this way either never ran or
    its tasks stay ``dispatched`` until the reaper queues them again, as for a runner that
    never got its answer. Used by one thread at a time (the API's batches of one kind run one
    after another); a lock keeps :meth:`release` from closing it while in use.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def run(self, work: Callable[[Connection], T]) -> T:
        """``work`` on the held connection (taken from the pool if none is held)."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    result = work(conn)
                except DBAPIError as exc:
                    conn.close()
                    if not exc.connection_invalidated:
                        raise
                except BaseException:
                    conn.close()
                    raise
                else:
                    self._conn = conn
                    return result
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                result = work(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            return result

    def release(self) -> None:
        """Give the connection back to the pool (the next :meth:`run` takes one again)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _pop_on(conn: Connection, statement: PopStatement, params: dict[str, Any]) -> list[Row[Any]]:
    """Run a pop on ``conn`` (autocommit), preparing it there first if it is prepared and ``conn``
    has not (see :meth:`TaskViews.pop_with`); its rows, most urgent first."""
    if statement.prepare is None or statement.execute is None:
        rows = list(conn.execute(statement.stmt, params).all())
    else:
        prepared: set[str] = conn.info.setdefault("kat_prepared_pops", set())
        if statement.prepare not in prepared:
            if len(prepared) >= PREPARED_POPS:
                conn.exec_driver_sql("DEALLOCATE ALL")
                prepared.clear()
            setup = f"SET plan_cache_mode = force_generic_plan; {statement.prepare}"
            conn.exec_driver_sql(setup, execution_options={"no_parameters": True})
            prepared.add(statement.prepare)
        rows = list(conn.execute(statement.execute, params).all())
    return sorted(rows, key=lambda row: (row.band, row.priority, row.created_at))


def _prepared(stmt: Update, dialect: Dialect) -> tuple[str, TextualSelect]:
    """``PREPARE <name> AS stmt`` (its parameters numbered ``$1``, ``$2``, …) and the ``EXECUTE``
    giving them: ``now`` and ``limit`` when run, the others with the values ``stmt`` holds; the
    rows typed as ``stmt``'s would be. The name is the SQL's digest: the same pop built again (in
    another request, another thread, for other images as many) is the same statement."""
    assert isinstance(dialect, DefaultDialect)
    compiled = stmt.compile(
        dialect=type(dialect)(paramstyle="numeric_dollar"), compile_kwargs={"render_postcompile": True}
    )
    name = "kat_pop_" + hashlib.sha256(compiled.string.encode()).hexdigest()[:24]
    names = list(compiled.positiontup or ())
    arguments = ", ".join(f":{n}" for n in names)
    execute = text(f"EXECUTE {name}({arguments})").bindparams(
        *(
            bindparam(n, type_=compiled.binds[n].type)
            if n in ("now", "limit")
            else bindparam(n, compiled.params[n], type_=compiled.binds[n].type)
            for n in names
        )
    )
    return f"PREPARE {name} AS {compiled.string}", execute.columns(*(_TASKS.c[n] for n in POPPED_COLUMNS))


def _hour_of(engine: Engine, column: Any) -> ColumnElement[Any]:
    if engine.dialect.name == "postgresql":
        return func.date_trunc("hour", column)
    # SQLite stores UTC as "YYYY-MM-DD HH:MM:SS.ffffff"; the hour is its first 13 characters.
    return func.substr(column, 1, 13).op("||")(literal_column("':00:00'"))


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _as_utc_hour(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    result = _as_utc(value)
    assert result is not None
    return result.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
