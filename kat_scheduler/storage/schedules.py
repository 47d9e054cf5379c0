"""The schedule store: one row per automatically re-run (plugin, object, organisation).

A schedule is due when it is enabled and its ``deadline_at`` has passed. Due schedules are read
with keyset pagination on the partial index ``ix_schedules_due`` (oldest deadline first), so a
backlog of any size is worked through without a per-tick cap.

A *descheduled* schedule (``descheduled_at`` set: a boefje said so with a raw file tagged
``openkat/deschedule``, :meth:`ScheduleStore.deschedule`) is disabled, and no producer's write
enables it again: :meth:`~ScheduleStore.add_many` and :meth:`~ScheduleStore.upsert` leave it as
it is, and :meth:`~ScheduleStore.held_hashes` tells the tick to leave its pair alone. Only an
operator enables it again (``PATCH /schedules/{id}``, which clears ``descheduled_at``).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Engine, Insert, and_, bindparam, delete, or_, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.storage.paging import Page, newest_first
from kat_scheduler.storage.sqlutil import in_values, pg_array, pg_insert_rows
from kat_scheduler.storage.tables import ScheduleRow, table_of, utcnow

_SCHEDULES = table_of(ScheduleRow)
CHUNK = 1000


@dataclass(frozen=True, slots=True)
class NewSchedule:
    scheduler_id: SchedulerId
    organisation: str
    plugin_id: str
    input_ooi: str | None
    hash: str
    data: dict[str, Any]
    deadline_at: datetime
    schedule: str | None = None
    interval: int | None = None
    id: uuid.UUID | None = None


def _row(schedule: NewSchedule, now: datetime) -> dict[str, Any]:
    return {
        "id": schedule.id or uuid.uuid4(),
        "scheduler_id": schedule.scheduler_id,
        "organisation": schedule.organisation,
        "plugin_id": schedule.plugin_id,
        "input_ooi": schedule.input_ooi,
        "hash": schedule.hash,
        "data": schedule.data,
        "deadline_at": schedule.deadline_at,
        "schedule": schedule.schedule,
        "interval": schedule.interval,
        "enabled": True,
        "created_at": now,
        "modified_at": now,
    }


#: The columns a new schedule is written with, and their SQL types (rows are :func:`_pg_tuple`).
_PG_COLUMNS = {
    "id": "uuid",
    "scheduler_id": "text",
    "organisation": "text",
    "plugin_id": "text",
    "input_ooi": "text",
    "hash": "text",
    "data": "jsonb",
    "deadline_at": "timestamptz",
    "schedule": "text",
    "interval": "integer",
    "enabled": "boolean",
    "created_at": "timestamptz",
    "modified_at": "timestamptz",
}
#: A new schedule without an id of its own gets one from PostgreSQL (a random UUID, as ``uuid4``).
_PG_NEW_ID = {"id": "gen_random_uuid()"}
#: On a taken hash: enable the schedule with the new deadline, unless a boefje descheduled it (the
#: fast path's SQL of :meth:`ScheduleStore._insert_or_enable`).
_PG_ENABLE = (
    "(hash) DO UPDATE SET enabled = true, disabled_reason = NULL, "
    "deadline_at = EXCLUDED.deadline_at, modified_at = EXCLUDED.modified_at "
    "WHERE schedules.descheduled_at IS NULL"
)


def _pg_tuple(schedule: NewSchedule, now: datetime) -> tuple[Any, ...]:
    return (
        None if schedule.id is None else str(schedule.id),  # None: PostgreSQL makes it (_PG_NEW_ID)
        schedule.scheduler_id.value,
        schedule.organisation,
        schedule.plugin_id,
        schedule.input_ooi,
        schedule.hash,
        orjson.dumps(schedule.data).decode(),
        schedule.deadline_at,
        schedule.schedule,
        schedule.interval,
        True,
        now,
        now,
    )


def _one_per_hash(schedules: Sequence[NewSchedule]) -> list[NewSchedule]:
    """``schedules`` in hash order (the same lock order in racing producers), the last of each hash
    only: one statement may not write a row twice (``ON CONFLICT DO UPDATE`` refuses to)."""
    return sorted({s.hash: s for s in schedules}.values(), key=lambda s: s.hash)


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A schedule carried over whole from elsewhere (``kat-scheduler import-mula``): its own id,
    enabled or not, its own deadline and timestamps."""

    id: uuid.UUID
    scheduler_id: SchedulerId
    organisation: str
    plugin_id: str
    input_ooi: str | None
    hash: str
    data: dict[str, Any]
    enabled: bool
    deadline_at: datetime | None
    created_at: datetime
    modified_at: datetime
    schedule: str | None = None
    interval: int | None = None
    disabled_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ScheduleState:
    id: uuid.UUID
    enabled: bool
    deadline_at: datetime | None
    #: A boefje descheduled the pair: no producer queues it or enables its schedule.
    descheduled: bool = False


class HashTaken(ValueError):
    """Another schedule has this hash already; nothing was changed."""


@dataclass(frozen=True, slots=True)
class ScheduleQuery:
    """Which schedules a listing covers (the API's ``GET /schedules``); every field narrows it."""

    scheduler_id: SchedulerId | None = None
    organisation: str | None = None
    hash: str | None = None
    enabled: bool | None = None
    min_deadline_at: datetime | None = None
    max_deadline_at: datetime | None = None
    min_created_at: datetime | None = None
    max_created_at: datetime | None = None
    #: Further conditions on ``schedules`` (the filter language of ``POST /schedules/search``).
    where: Sequence[ColumnElement[bool]] = field(default_factory=tuple)

    def conditions(self) -> list[ColumnElement[bool]]:
        col = _SCHEDULES.c
        found: list[ColumnElement[bool]] = list(self.where)
        if self.scheduler_id is not None:
            found.append(col.scheduler_id == self.scheduler_id)
        if self.organisation is not None:
            found.append(col.organisation == self.organisation)
        if self.hash is not None:
            found.append(col.hash == self.hash)
        if self.enabled is not None:
            found.append(col.enabled.is_(self.enabled))
        if self.min_deadline_at is not None:
            found.append(col.deadline_at >= self.min_deadline_at)
        if self.max_deadline_at is not None:
            found.append(col.deadline_at <= self.max_deadline_at)
        if self.min_created_at is not None:
            found.append(col.created_at >= self.min_created_at)
        if self.max_created_at is not None:
            found.append(col.created_at <= self.max_created_at)
        return found


#: A page of schedules.
SchedulePage = Page[ScheduleRow]


class ScheduleStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _insert_or_enable(self, *, only_disabled: bool) -> Insert:
        """Insert, or on a taken hash enable the schedule with the new deadline (only a disabled
        one, if asked: an enabled schedule keeps its deadline); a descheduled one stays as it is."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(_SCHEDULES)
        where: ColumnElement[bool] = _SCHEDULES.c.descheduled_at.is_(None)
        if only_disabled:
            where = and_(where, _SCHEDULES.c.enabled.is_(False))
        stmt: Insert = insert.on_conflict_do_update(
            index_elements=[_SCHEDULES.c.hash],
            set_={
                "enabled": True,
                "disabled_reason": None,
                "deadline_at": insert.excluded.deadline_at,
                "modified_at": insert.excluded.modified_at,
            },
            where=where,
        )
        return stmt

    def add_many(self, schedules: Sequence[NewSchedule], now: datetime | None = None) -> int:
        """Create schedules whose hash has none yet, and enable again (with the new deadline)
        those that were disabled; an enabled or descheduled schedule is left as it is. Returns
        how many rows were created or enabled again.

        The planner calls this for pairs it found eligible again: a boefje enabled again in
        Katalogus (no event tells us) or an object cleared again gets its schedule back.
        """
        if not schedules:
            return 0
        now = now or utcnow()
        created = 0
        ordered = _one_per_hash(schedules)  # same lock order in racing producers
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                return len(
                    pg_insert_rows(
                        conn,
                        "schedules",
                        _PG_COLUMNS,
                        [_pg_tuple(s, now) for s in ordered],
                        conflict=f"{_PG_ENABLE} AND schedules.enabled = false",
                        returning="id",
                        page_size=CHUNK,
                        when_null=_PG_NEW_ID,
                    )
                )
            stmt = self._insert_or_enable(only_disabled=True).returning(_SCHEDULES.c.id)
            for start in range(0, len(ordered), CHUNK):
                rows = [_row(s, now) for s in ordered[start : start + CHUNK]]
                created += len(conn.execute(stmt, rows).scalars().all())
        return created

    def add_records(self, records: Sequence[ScheduleRecord]) -> set[uuid.UUID]:
        """Insert schedules as they are; returns the ids inserted.

        A record whose id or hash is taken already is left alone (an existing schedule of the
        same task wins), so adding the same records twice inserts nothing the second time.
        """
        inserted: set[uuid.UUID] = set()
        if not records:
            return inserted
        rows = [
            {
                "id": r.id,
                "scheduler_id": r.scheduler_id,
                "organisation": r.organisation,
                "plugin_id": r.plugin_id,
                "input_ooi": r.input_ooi,
                "hash": r.hash,
                "data": r.data,
                "enabled": r.enabled,
                "schedule": r.schedule,
                "interval": r.interval,
                "deadline_at": r.deadline_at,
                "disabled_reason": r.disabled_reason,
                "created_at": r.created_at,
                "modified_at": r.modified_at,
            }
            for r in sorted(records, key=lambda r: r.hash)  # same lock order as racing producers
        ]
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(_SCHEDULES).on_conflict_do_nothing().returning(_SCHEDULES.c.id)
        with self.engine.begin() as conn:
            for start in range(0, len(rows), CHUNK):
                inserted.update(conn.execute(stmt, rows[start : start + CHUNK]).scalars())
        return inserted

    def existing_ids(self, ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
        """Which of ``ids`` are schedules already."""
        found: set[uuid.UUID] = set()
        with self.engine.connect() as conn:
            for condition in in_values(conn, _SCHEDULES.c.id, list(ids)):
                found.update(conn.execute(select(_SCHEDULES.c.id).where(condition)).scalars())
        return found

    def states(self, hashes: Collection[str]) -> dict[str, ScheduleState]:
        """Whether each of ``hashes`` has a schedule, enabled or not, when it is due, and whether
        a boefje descheduled it."""
        found: dict[str, ScheduleState] = {}
        cols = _SCHEDULES.c
        with self.engine.connect() as conn:
            for condition in in_values(conn, cols.hash, list(hashes)):
                stmt = select(cols.hash, cols.id, cols.enabled, cols.deadline_at, cols.descheduled_at).where(condition)
                for hash_, id_, enabled, deadline, descheduled_at in conn.execute(stmt):
                    found[hash_] = ScheduleState(id_, bool(enabled), deadline, descheduled_at is not None)
        return found

    def held_hashes(self, hashes: Collection[str]) -> dict[str, bool]:
        """Which of ``hashes`` a schedule holds, so the tick leaves them alone: an enabled
        schedule (``False``: it re-runs the pair) or a descheduled one (``True``: nothing does)."""
        found: dict[str, bool] = {}
        cols = _SCHEDULES.c
        with self.engine.connect() as conn:
            for condition in in_values(conn, cols.hash, list(hashes)):
                stmt = select(cols.hash, cols.descheduled_at).where(
                    condition, or_(cols.enabled.is_(True), cols.descheduled_at.is_not(None))
                )
                for hash_, descheduled_at in conn.execute(stmt):
                    found[hash_] = descheduled_at is not None
        return found

    def deschedule(self, pairs: Sequence[tuple[NewSchedule, str]], now: datetime | None = None) -> list[str]:
        """Disable the schedule of each pair with its reason and mark it descheduled; a pair without
        a schedule gets a disabled, descheduled one (``NewSchedule``'s deadline is kept for when an
        operator enables it). Returns the hashes written, in hash order (the lock order of every writer)."""
        if not pairs:
            return []
        now = now or utcnow()
        reasons = {schedule.hash: reason for schedule, reason in pairs}
        ordered = _one_per_hash([schedule for schedule, _ in pairs])
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(_SCHEDULES)
        stmt = insert.on_conflict_do_update(
            index_elements=[_SCHEDULES.c.hash],
            set_={
                "enabled": False,
                "disabled_reason": insert.excluded.disabled_reason,
                "descheduled_at": insert.excluded.descheduled_at,
                "modified_at": insert.excluded.modified_at,
            },
        ).returning(_SCHEDULES.c.hash)
        written: list[str] = []
        with self.engine.begin() as conn:
            for schedule in ordered:
                row = {
                    **_row(schedule, now),
                    "enabled": False,
                    "disabled_reason": reasons[schedule.hash][:255],
                    "descheduled_at": now,
                }
                written.extend(conn.execute(stmt, row).scalars())
        return written

    def upsert(self, schedules: Sequence[NewSchedule], now: datetime | None = None) -> None:
        """Create schedules, or enable existing ones and set their deadline (one statement a chunk);
        a descheduled schedule is left as it is."""
        if not schedules:
            return
        now = now or utcnow()
        ordered = _one_per_hash(schedules)
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                pg_insert_rows(
                    conn,
                    "schedules",
                    _PG_COLUMNS,
                    [_pg_tuple(s, now) for s in ordered],
                    conflict=_PG_ENABLE,
                    page_size=CHUNK,
                    when_null=_PG_NEW_ID,
                )
                return
            stmt = self._insert_or_enable(only_disabled=False)
            for start in range(0, len(ordered), CHUNK):
                conn.execute(stmt, [_row(s, now) for s in ordered[start : start + CHUNK]])

    def disable_hashes(self, hashes: Collection[str], reason: str, now: datetime | None = None) -> int:
        now = now or utcnow()
        count = 0
        with self.engine.begin() as conn:
            for condition in in_values(conn, _SCHEDULES.c.hash, list(hashes)):
                result = conn.execute(
                    update(_SCHEDULES)
                    .where(condition, _SCHEDULES.c.enabled.is_(True))
                    .values(enabled=False, disabled_reason=reason, modified_at=now)
                )
                count += result.rowcount
        return count

    def get_by_hash(self, hash_: str) -> ScheduleRow | None:
        with Session(self.engine) as session:
            return session.execute(select(ScheduleRow).where(ScheduleRow.hash == hash_)).scalar_one_or_none()

    def existing_hashes(self, hashes: Collection[str], *, enabled_only: bool = False) -> set[str]:
        """Which of ``hashes`` have a schedule (only enabled ones, if asked)."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for condition in in_values(conn, _SCHEDULES.c.hash, list(hashes)):
                stmt = select(_SCHEDULES.c.hash).where(condition)
                if enabled_only:
                    stmt = stmt.where(_SCHEDULES.c.enabled.is_(True))
                found.update(conn.execute(stmt).scalars())
        return found

    def iter_due(
        self, now: datetime, batch_size: int = CHUNK, scheduler_id: SchedulerId | None = SchedulerId.BOEFJE
    ) -> Iterator[list[ScheduleRow]]:
        """Every enabled schedule of ``scheduler_id`` with ``deadline_at <= now``, oldest deadline
        first, in batches.

        Boefje schedules unless asked otherwise (``None``: every scheduler's): the boefje producer
        re-checks each against Katalogus and would disable a report schedule (its recipe is no
        plugin) as "plugin no longer exists".
        """
        last: tuple[datetime, uuid.UUID] | None = None
        while True:
            stmt = (
                select(ScheduleRow)
                .where(ScheduleRow.enabled.is_(True), ScheduleRow.deadline_at <= now)
                .order_by(ScheduleRow.deadline_at, ScheduleRow.id)
                .limit(batch_size)
            )
            if scheduler_id is not None:
                stmt = stmt.where(ScheduleRow.scheduler_id == scheduler_id)
            if last is not None:
                stmt = stmt.where(tuple_(ScheduleRow.deadline_at, ScheduleRow.id) > tuple_(*last))
            with Session(self.engine) as session:
                batch = list(session.execute(stmt).scalars())
            if not batch:
                return
            yield batch
            tail = batch[-1]
            assert tail.deadline_at is not None
            last = (tail.deadline_at, tail.id)
            if len(batch) < batch_size:
                return

    def set_deadlines(self, deadlines: Mapping[uuid.UUID, datetime | None], now: datetime | None = None) -> None:
        """Move each schedule's deadline; ``None``: never due again (a one-off report schedule that
        fired). PostgreSQL: one ``UPDATE … FROM unnest(ids, deadlines)`` per chunk, two bound arrays
        (an executemany is a round trip per row); SQLite: one executemany."""
        if not deadlines:
            return
        now = now or utcnow()
        if self.engine.dialect.name == "postgresql":
            items = list(deadlines.items())
            stmt_text = text(
                "UPDATE schedules SET deadline_at = moved.deadline_at, modified_at = :now "
                "FROM unnest(CAST(:ids AS uuid[]), CAST(:deadlines AS timestamptz[])) AS moved(id, deadline_at) "
                "WHERE schedules.id = moved.id"
            )
            with self.engine.begin() as conn:
                for start in range(0, len(items), CHUNK):
                    chunk = items[start : start + CHUNK]
                    conn.execute(
                        stmt_text,
                        {
                            "now": now,
                            "ids": pg_array([sid for sid, _ in chunk], "uuid"),
                            "deadlines": pg_array([deadline for _, deadline in chunk], "timestamptz"),
                        },
                    )
            return
        stmt = (
            update(_SCHEDULES)
            .where(_SCHEDULES.c.id == bindparam("b_id"))
            .values(deadline_at=bindparam("b_deadline"), modified_at=now)
        )
        params = [{"b_id": sid, "b_deadline": deadline} for sid, deadline in deadlines.items()]
        with self.engine.begin() as conn:
            conn.execute(stmt, params)

    def disable(self, ids: Collection[uuid.UUID], reason: str, now: datetime | None = None) -> int:
        now = now or utcnow()
        items = list(ids)
        count = 0
        with self.engine.begin() as conn:
            for start in range(0, len(items), CHUNK):
                result = conn.execute(
                    update(_SCHEDULES)
                    .where(_SCHEDULES.c.id.in_(items[start : start + CHUNK]), _SCHEDULES.c.enabled.is_(True))
                    .values(enabled=False, disabled_reason=reason, modified_at=now)
                )
                count += result.rowcount
        return count

    def disable_for_ooi(self, organisation: str, input_ooi: str, reason: str, now: datetime | None = None) -> int:
        now = now or utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(_SCHEDULES)
                .where(
                    _SCHEDULES.c.organisation == organisation,
                    _SCHEDULES.c.input_ooi == input_ooi,
                    _SCHEDULES.c.enabled.is_(True),
                )
                .values(enabled=False, disabled_reason=reason, modified_at=now)
            )
        return result.rowcount

    def enable(self, ids: Collection[uuid.UUID], deadline_at: datetime, now: datetime | None = None) -> int:
        now = now or utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(_SCHEDULES)
                .where(_SCHEDULES.c.id.in_(list(ids)))
                .values(
                    enabled=True, disabled_reason=None, descheduled_at=None, deadline_at=deadline_at, modified_at=now
                )
            )
        return result.rowcount

    # --- the HTTP API's reads and edits (``/schedules``) -------------------------------------

    def get(self, schedule_id: uuid.UUID) -> ScheduleRow | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(ScheduleRow, schedule_id)

    def page(self, query: ScheduleQuery, *, offset: int, limit: int, count_cap: int | None = None) -> SchedulePage:
        """Schedules matching ``query``, newest first, and their count (see :func:`paging.newest_first`)."""
        return newest_first(
            self.engine, ScheduleRow, query.conditions(), offset=offset, limit=limit, count_cap=count_cap
        )

    def change(self, schedule_id: uuid.UUID, values: dict[str, Any], now: datetime | None = None) -> ScheduleRow | None:
        """Set ``values`` on a schedule (``modified_at`` moves); the row afterwards, ``None`` when
        there is none. :class:`HashTaken` when a new ``hash`` is another schedule's (nothing changed)."""
        stmt = (
            update(ScheduleRow)
            .where(ScheduleRow.id == schedule_id)
            .values(**values, modified_at=now or utcnow())
            .returning(ScheduleRow)
            .execution_options(synchronize_session=False)
        )
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                return session.execute(stmt).scalar_one_or_none()
        except IntegrityError:
            raise HashTaken(str(values.get("hash"))) from None

    def delete(self, schedule_id: uuid.UUID) -> bool:
        """Delete a schedule (its tasks keep their history, without a ``schedule_id``); whether it existed."""
        with self.engine.begin() as conn:
            return bool(conn.execute(delete(_SCHEDULES).where(_SCHEDULES.c.id == schedule_id)).rowcount)
