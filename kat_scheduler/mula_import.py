"""``kat-scheduler import-mula``: carry schedules and run history over from mula, KAT's scheduler.

An operator moving from mula must keep two things, or the first ticks would rescan everything:

* **Schedules** (mula's ``schedules`` table): boefje schedules become our ``schedules`` rows with
  the same id, our hash, enabled or not, the cron ``schedule`` and mula's ``deadline_at``.
* **History** (mula's ``tasks`` table): the newest *finished* (completed or failed) boefje and
  normalizer task per hash becomes a finished row of our ``tasks`` table with the same id, its
  status, ``created_at`` and ``ended_at`` = mula's ``modified_at`` (mula stamps ``modified_at``
  when a task ends and measures its own grace period from it). :meth:`TaskStore.last_runs`, the
  planner's and the event handlers' grace look-up, only asks for the newest run of a hash, so
  older runs of the same hash are counted as *superseded* and left behind: that keeps an import
  of years of history to one row per (boefje, object, organisation).

What is not carried over, and why (each counted in the summary):

* tasks that were pending, queued, dispatched or running in mula: there is no Celery message for
  them, so a row would sit live for ever and block its hash; the planner finds that work again;
* cancelled tasks (not a run: no grace), report tasks and schedules and normalizer schedules
  (kat_scheduler plans boefjes and normalizers only, and normalizers are never scheduled);
* finished tasks that ended before ``--since`` (by default the retention horizon,
  ``SCHEDULER_RETENTION_DAYS`` ago: the reaper would prune older rows at once);
* malformed rows (data that is not the JSON object mula writes, an invalid cron expression) and
  rows of an unknown scheduler: each is logged with its id and skipped, never fatal.

Mula schemas read (PostgreSQL; see ``docs/migrating-from-mula.md``):

* **current** (mula's alembic revisions 0008 and later, OpenKAT 1.16 on): ``tasks`` (id,
  scheduler_id, schedule_id, [organisation], type, hash, priority, data JSONB, status, created_at,
  modified_at) and ``schedules`` (id, scheduler_id, [organisation], hash, data, enabled, schedule,
  deadline_at, created_at, modified_at); ``organisation`` arrived with revision 0009/0010.
* **legacy** (revisions 0002 up to 0007): ``tasks`` with the task in ``p_item`` JSON (``hash``,
  ``priority``, ``data``) and ``items``, the live queue; there were no schedules then.

Scheduler ids are ``boefje``/``normalizer``/``report`` in current mula and
``boefje-<org>``/``normalizer-<org>``/``report-<org>`` before it; both are read. Status is mula's
PostgreSQL enum ``taskstatus`` (``COMPLETED``, ``FAILED``, …), compared case-insensitively.

Everything is read in pages of ``--batch-size`` rows (keyset pagination on indexed columns, in
one read-only snapshot of the mula database) and written a page per transaction through
:class:`TaskStore` and :class:`ScheduleStore`, so memory stays bounded however big mula's tables
are. Rows keep their mula ids and inserts leave taken ids (and taken schedule hashes) alone, so
running the import twice imports nothing twice; ``--dry-run`` counts and writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import click
from croniter import croniter
from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    MetaData,
    Row,
    Select,
    Table,
    Text,
    case,
    cast,
    func,
    inspect,
    literal,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.exc import SQLAlchemyError

from kat_scheduler.hashing import boefje_task_hash, normalizer_task_hash
from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.storage.schedules import ScheduleRecord, ScheduleStore
from kat_scheduler.storage.tasks import FinishedTask, TaskStore
from kat_scheduler.timing import next_cron

logger = logging.getLogger(__name__)

#: ``tasks.reason`` of every imported row, so imported history can be told apart (and removed).
IMPORT_REASON = "imported from mula"
#: ``schedules.disabled_reason`` of a schedule that was disabled in mula.
DISABLED_REASON = "disabled in mula"
#: Band of imported rows: they are finished and never queued again, so any band would do.
IMPORT_BAND = 9

FINISHED = ("completed", "failed")
CANCELLED = "cancelled"
KNOWN_KINDS = ("boefje", "normalizer", "report")


class MulaSchemaError(RuntimeError):
    """The database does not look like a mula database this import understands."""


class Malformed(ValueError):
    """A mula row this import cannot make sense of (skipped, logged with its id)."""


class Outcome(StrEnum):
    IMPORTED = "imported"
    PRESENT = "already present"
    LIVE = "live in mula"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"
    BEFORE_SINCE = "before --since"
    UNSUPPORTED = "not supported"
    MALFORMED = "malformed"
    UNKNOWN_SCHEDULER = "unknown scheduler"


#: Why each outcome that is not an import happened (printed under the summary).
WHY: dict[Outcome, str] = {
    Outcome.PRESENT: "this id (or, for a schedule, this task hash) is in the database already: nothing to do",
    Outcome.LIVE: "pending/queued/dispatched/running in mula: no Celery message exists for it, so it is not "
    "imported as live; the planner and the due schedules queue that work again",
    Outcome.CANCELLED: "cancelled in mula: it never ran, so it says nothing about grace periods",
    Outcome.SUPERSEDED: "an older finished run of a task whose newest run was imported; grace needs only the newest",
    Outcome.BEFORE_SINCE: "ended before --since (by default the retention horizon: the reaper would prune it at once)",
    Outcome.UNSUPPORTED: "kat_scheduler runs no report tasks and schedules no normalizers",
    Outcome.MALFORMED: "data that is not the JSON mula writes, or an invalid cron expression (ids in the log)",
    Outcome.UNKNOWN_SCHEDULER: "a scheduler id that is not boefje, normalizer or report (ids in the log)",
}


@dataclass
class ImportSummary:
    """What the import did (or, dry, would do), counted per (what, outcome)."""

    dry_run: bool
    since: datetime | None
    layout: str = ""
    revision: str | None = None
    counts: Counter[tuple[str, Outcome]] = field(default_factory=Counter)
    #: Things worth knowing that are not outcomes (an imported row can count here too).
    notes: Counter[str] = field(default_factory=Counter)

    def add(self, what: str, outcome: Outcome, n: int = 1) -> None:
        if n:
            self.counts[(what, outcome)] += n

    def count(self, what: str, outcome: Outcome) -> int:
        return self.counts[(what, outcome)]

    def total(self, outcome: Outcome) -> int:
        return sum(n for (_, o), n in self.counts.items() if o == outcome)

    def lines(self) -> list[str]:
        revision = f", alembic revision {self.revision}" if self.revision else ""
        out = [f"mula database: {self.layout}{revision}"]
        if self.since is not None:
            out.append(f"task history since: {self.since.isoformat()}")
        if self.dry_run:
            out.append("DRY RUN: nothing was written")
        rows = sorted(self.counts.items(), key=lambda item: (item[0][0], list(Outcome).index(item[0][1])))
        width = max([len(what) for (what, _), _ in rows] + [len("what")])
        out.append(f"{'what':<{width}}  {'outcome':<17}  {'count':>9}")
        for (what, outcome), n in rows:
            label = "would import" if self.dry_run and outcome == Outcome.IMPORTED else outcome.value
            out.append(f"{what:<{width}}  {label:<17}  {n:>9}")
        if not rows:
            out.append("(nothing found)")
        seen = [o for o in Outcome if o in WHY and self.total(o)]
        if seen:
            out.append("why:")
            out.extend(f"  {o.value}: {WHY[o]}" for o in seen)
        for note, n in sorted(self.notes.items()):
            out.append(f"note: {note}: {n}")
        return out


# --- the mula database ----------------------------------------------------------------------


@dataclass(frozen=True)
class MulaLayout:
    """The tables of one mula database, as lightweight tables of the columns found."""

    tasks: Table
    schedules: Table | None
    items: Table | None
    jobs: Table | None
    revision: str | None

    @property
    def legacy(self) -> bool:
        """Tasks keep their data in ``p_item`` (mula before its revision 0008)."""
        return "data" not in self.tasks.c

    def describe(self) -> str:
        if self.legacy:
            return "legacy schema (tasks.p_item, items queue, no schedules)"
        org = "with" if "organisation" in self.tasks.c else "without"
        schedules = "schedules" if self.schedules is not None else "no schedules table"
        return f"current schema (tasks.data/hash {org} organisation, {schedules})"


def _table(conn: Connection, name: str) -> Table:
    columns = inspect(conn).get_columns(name)
    return Table(name, MetaData(), *(Column(c["name"], c["type"]) for c in columns))


def _require(table: Table, *names: str) -> None:
    missing = [n for n in names if n not in table.c]
    if missing:
        raise MulaSchemaError(f"mula table {table.name!r} lacks column(s) {', '.join(missing)}")


def inspect_mula(conn: Connection) -> MulaLayout:
    """Find mula's tables and their shape; :class:`MulaSchemaError` when it is not mula."""
    if conn.dialect.name != "postgresql":
        raise MulaSchemaError(f"mula keeps its data in PostgreSQL, not {conn.dialect.name}")
    names = set(inspect(conn).get_table_names())
    if "tasks" not in names:
        raise MulaSchemaError("no 'tasks' table: is this mula's database (SCHEDULER_DB_URI of mula)?")
    tasks = _table(conn, "tasks")
    if "plugin_id" in tasks.c and "band" in tasks.c:
        raise MulaSchemaError("this is kat_scheduler's own database, not mula's")
    _require(tasks, "id", "scheduler_id", "status", "created_at", "modified_at")
    if "data" not in tasks.c:
        if "p_item" not in tasks.c:
            raise MulaSchemaError("mula table 'tasks' has neither 'data' nor 'p_item': unknown mula version")
    else:
        _require(tasks, "hash")
    schedules = _table(conn, "schedules") if "schedules" in names else None
    if schedules is not None:
        _require(schedules, "id", "scheduler_id", "hash", "data", "enabled", "created_at", "modified_at")
    revision = None
    if "alembic_version" in names:
        versions = _table(conn, "alembic_version")
        if "version_num" in versions.c:
            revision = conn.execute(select(versions.c.version_num)).scalar()
    return MulaLayout(
        tasks=tasks,
        schedules=schedules,
        items=_table(conn, "items") if "items" in names else None,
        jobs=_table(conn, "jobs") if "jobs" in names else None,
        revision=None if revision is None else str(revision),
    )


def _kind(column: ColumnElement[Any]) -> ColumnElement[str]:
    """``boefje``, ``normalizer``, ``report`` or ``''`` (unknown) from a mula scheduler id."""
    whens = [(or_(column == kind, column.like(f"{kind}-%")), literal(kind)) for kind in KNOWN_KINDS]
    return case(*whens, else_=literal(""))


def kind_of(scheduler_id: str | None) -> str:
    """The Python twin of :func:`_kind`."""
    if scheduler_id is None:
        return ""
    for kind in KNOWN_KINDS:
        if scheduler_id == kind or scheduler_id.startswith(f"{kind}-"):
            return kind
    return ""


def _status(table: Table) -> ColumnElement[str]:
    return func.lower(cast(table.c.status, Text))


# --- row parsing (pure) -----------------------------------------------------------------------


def _json_object(value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, str | bytes):  # JSON kept as text, or a JSON string
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise Malformed(f"{what} is a string, not a JSON object") from exc
    if not isinstance(value, dict):
        raise Malformed(f"{what} is not a JSON object but {type(value).__name__}")
    return value


def _text(mapping: Mapping[str, Any], key: str, what: str) -> str:
    value = mapping.get(key)
    if not isinstance(value, str) or not value:
        raise Malformed(f"{what}.{key} is missing or not a string")
    return value


def _optional_text(mapping: Mapping[str, Any], key: str, what: str) -> str | None:
    value = mapping.get(key)
    if value is not None and not isinstance(value, str):
        raise Malformed(f"{what}.{key} is not a string")
    return value or None


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Identity:
    """What a task is about, read from mula's task data, and our hash of it."""

    plugin_id: str
    organisation: str
    input_ooi: str | None
    hash: str


def boefje_identity(data: Mapping[str, Any]) -> Identity:
    """From a BoefjeTask (``{"boefje": {"id": …}, "input_ooi": …, "organization": …}``)."""
    boefje = data.get("boefje")
    if not isinstance(boefje, dict):
        raise Malformed("data.boefje is missing or not an object")
    boefje_id = _text(boefje, "id", "data.boefje")
    organisation = _text(data, "organization", "data")
    input_ooi = _optional_text(data, "input_ooi", "data")
    return Identity(boefje_id, organisation, input_ooi, boefje_task_hash(boefje_id, organisation, input_ooi))


def normalizer_identity(data: Mapping[str, Any]) -> Identity:
    """From a NormalizerTask (``{"normalizer": {"id": …}, "raw_data": {"boefje_meta": {…}}}``)."""
    normalizer = data.get("normalizer")
    raw_data = data.get("raw_data")
    if not isinstance(normalizer, dict):
        raise Malformed("data.normalizer is missing or not an object")
    if not isinstance(raw_data, dict) or not isinstance(raw_data.get("boefje_meta"), dict):
        raise Malformed("data.raw_data.boefje_meta is missing or not an object")
    meta = raw_data["boefje_meta"]
    normalizer_id = _text(normalizer, "id", "data.normalizer")
    organisation = _text(meta, "organization", "data.raw_data.boefje_meta")
    try:
        meta_id = str(uuid.UUID(str(meta.get("id"))))
    except ValueError as exc:
        raise Malformed("data.raw_data.boefje_meta.id is not a UUID") from exc
    input_ooi = _optional_text(meta, "input_ooi", "data.raw_data.boefje_meta")
    return Identity(normalizer_id, organisation, input_ooi, normalizer_task_hash(normalizer_id, meta_id, organisation))


def identity(kind: str, data: Mapping[str, Any]) -> Identity:
    return boefje_identity(data) if kind == "boefje" else normalizer_identity(data)


def finished_task(
    *,
    task_id: uuid.UUID,
    kind: str,
    status: str,
    data: Any,
    mula_hash: str | None,
    priority: Any,
    created_at: datetime,
    modified_at: datetime,
    schedule_id: uuid.UUID | None,
    notes: Counter[str],
) -> FinishedTask:
    """Our finished row for one finished mula task; :class:`Malformed` when its data is not usable."""
    payload = _json_object(data, "data")
    who = identity(kind, payload)
    if mula_hash is not None and mula_hash != who.hash:
        notes["task hash recomputed (mula's stored hash differed from its data)"] += 1
    return FinishedTask(
        id=task_id,
        scheduler_id=SchedulerId(kind),
        type=kind,
        organisation=who.organisation,
        plugin_id=who.plugin_id,
        input_ooi=who.input_ooi,
        hash=who.hash,
        status=TaskStatus(status),
        data=payload,
        created_at=_aware(created_at),
        ended_at=_aware(modified_at),
        band=IMPORT_BAND,
        priority=priority if isinstance(priority, int) and not isinstance(priority, bool) else 0,
        reason=IMPORT_REASON,
        schedule_id=schedule_id,
    )


def schedule_record(
    *,
    schedule_id: uuid.UUID,
    data: Any,
    mula_hash: str | None,
    enabled: bool,
    cron: str | None,
    deadline_at: datetime | None,
    created_at: datetime,
    modified_at: datetime,
    now: datetime,
    notes: Counter[str],
) -> ScheduleRecord:
    """Our schedule for one mula boefje schedule; :class:`Malformed` when it is not usable."""
    payload = _json_object(data, "data")
    who = boefje_identity(payload)
    if cron is not None and not croniter.is_valid(cron):
        raise Malformed(f"schedule {cron!r} is not a valid cron expression")
    if mula_hash is not None and mula_hash != who.hash:
        notes["schedule hash recomputed (mula's stored hash differed from its data)"] += 1
    if deadline_at is None:
        # Mula never finds a schedule without a deadline due; we give it the next cron time, or
        # make it due now, where the due-schedule check decides (plugin, object, clearance).
        deadline_at = next_cron(cron, now) if cron else now
        notes["schedule without deadline_at given " + ("its next cron time" if cron else "now")] += 1
    boefje = payload["boefje"]
    return ScheduleRecord(
        id=schedule_id,
        scheduler_id=SchedulerId.BOEFJE,
        organisation=who.organisation,
        plugin_id=who.plugin_id,
        input_ooi=who.input_ooi,
        hash=who.hash,
        data={
            "boefje": {"id": who.plugin_id, "name": boefje.get("name"), "version": boefje.get("version")},
            "input_ooi": who.input_ooi,
            "organization": who.organisation,
        },
        enabled=bool(enabled),
        deadline_at=_aware(deadline_at),
        created_at=_aware(created_at),
        modified_at=_aware(modified_at),
        schedule=cron or None,
        disabled_reason=None if enabled else DISABLED_REASON,
    )


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


# --- the import -------------------------------------------------------------------------------


class MulaImporter:
    """Reads one mula database page by page and writes through our stores."""

    def __init__(
        self,
        mula: Connection,
        tasks: TaskStore,
        schedules: ScheduleStore,
        *,
        since: datetime | None,
        dry_run: bool,
        batch_size: int,
        now: datetime,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.mula = mula
        self.tasks = tasks
        self.schedules = schedules
        self.since = None if since is None else _aware(since)
        self.dry_run = dry_run
        self.batch_size = batch_size
        self.now = now
        self.layout = inspect_mula(mula)
        self.summary = ImportSummary(
            dry_run=dry_run, since=self.since, layout=self.layout.describe(), revision=self.layout.revision
        )
        #: Finished boefje/normalizer tasks since ``since``, per kind (what the history pages choose from).
        self._finished: Counter[str] = Counter()

    def run(self) -> ImportSummary:
        if self.layout.schedules is not None:
            self.import_schedules(self.layout.schedules)
        self.count_tasks()
        self.report_unknown_tasks()
        self.import_history()
        self.count_other_tables()
        return self.summary

    # --- schedules ---------------------------------------------------------------------------

    def import_schedules(self, table: Table) -> None:
        c = table.c
        cols = [c.id, c.scheduler_id, c.hash, c.data, c.enabled, c.created_at, c.modified_at]
        cols += [c[name] for name in ("schedule", "deadline_at") if name in c]
        last: Any = None
        while True:
            stmt = select(*cols).order_by(c.id).limit(self.batch_size)
            if last is not None:
                stmt = stmt.where(c.id > last)
            page = self.mula.execute(stmt).all()
            if not page:
                return
            last = page[-1].id
            self._schedule_page(page)
            if len(page) < self.batch_size:
                return

    def _schedule_page(self, page: Sequence[Row[Any]]) -> None:
        records: dict[str, ScheduleRecord] = {}
        for row in page:
            kind = kind_of(row.scheduler_id)
            what = f"{kind} schedules" if kind else "schedules (unknown scheduler)"
            if not kind:
                logger.warning("mula schedule %s skipped: unknown scheduler id %r", row.id, row.scheduler_id)
                self.summary.add(what, Outcome.UNKNOWN_SCHEDULER)
                continue
            if kind != "boefje":
                self.summary.add(what, Outcome.UNSUPPORTED)
                continue
            try:
                record = schedule_record(
                    schedule_id=_uuid(row.id),
                    data=row.data,
                    mula_hash=row.hash,
                    enabled=row.enabled,
                    cron=getattr(row, "schedule", None),
                    deadline_at=getattr(row, "deadline_at", None),
                    created_at=row.created_at,
                    modified_at=row.modified_at,
                    now=self.now,
                    notes=self.summary.notes,
                )
            except (Malformed, ValueError) as exc:
                logger.warning("mula schedule %s skipped: %s", row.id, exc)
                self.summary.add(what, Outcome.MALFORMED)
                continue
            if record.hash in records:  # two mula rows, one task: the first one stands
                self.summary.add(what, Outcome.PRESENT)
                continue
            records[record.hash] = record
        if not records:
            return
        batch = list(records.values())
        if self.dry_run:
            taken_ids = self.schedules.existing_ids([r.id for r in batch])
            taken_hashes = self.schedules.existing_hashes([r.hash for r in batch])
            new = [r for r in batch if r.id not in taken_ids and r.hash not in taken_hashes]
            inserted = len(new)
        else:
            inserted = len(self.schedules.add_records(batch))
        self.summary.add("boefje schedules", Outcome.IMPORTED, inserted)
        self.summary.add("boefje schedules", Outcome.PRESENT, len(batch) - inserted)

    # --- tasks -------------------------------------------------------------------------------

    def _hash_expr(self) -> ColumnElement[Any]:
        c = self.layout.tasks.c
        return c.p_item["hash"].astext if self.layout.legacy else c.hash

    def count_tasks(self) -> None:
        """Every task not imported by :meth:`import_history`, counted by kind and status in one query."""
        tasks = self.layout.tasks
        kind, status = _kind(tasks.c.scheduler_id).label("kind"), _status(tasks).label("status")
        columns: list[ColumnElement[Any]] = [kind, status]
        if self.since is not None:
            columns.append((tasks.c.modified_at < self.since).label("old"))
        stmt = select(*columns, func.count().label("n")).group_by(*columns)
        for row in self.mula.execute(stmt):
            if not row.kind:
                continue  # reported one by one by report_unknown_tasks
            what = f"{row.kind} tasks"
            if row.kind == "report":
                self.summary.add(what, Outcome.UNSUPPORTED, row.n)
            elif row.status in FINISHED:
                if getattr(row, "old", False):
                    self.summary.add(what, Outcome.BEFORE_SINCE, row.n)
                else:
                    self._finished[row.kind] += row.n
            elif row.status == CANCELLED:
                self.summary.add(what, Outcome.CANCELLED, row.n)
            else:
                self.summary.add(what, Outcome.LIVE, row.n)

    def report_unknown_tasks(self) -> None:
        tasks = self.layout.tasks
        last: Any = None
        while True:
            stmt = (
                select(tasks.c.id, tasks.c.scheduler_id)
                .where(_kind(tasks.c.scheduler_id) == "")
                .order_by(tasks.c.id)
                .limit(self.batch_size)
            )
            if last is not None:
                stmt = stmt.where(tasks.c.id > last)
            page = self.mula.execute(stmt).all()
            for row in page:
                logger.warning("mula task %s skipped: unknown scheduler id %r", row.id, row.scheduler_id)
            self.summary.add("tasks (unknown scheduler)", Outcome.UNKNOWN_SCHEDULER, len(page))
            if len(page) < self.batch_size:
                return
            last = page[-1].id

    def _history_query(self) -> Select[Any]:
        """Finished boefje and normalizer tasks since ``since`` (with mula's hash as ``mula_hash``)."""
        tasks = self.layout.tasks
        c = tasks.c
        columns: list[Any] = [c.id, c.scheduler_id, _status(tasks).label("status"), c.created_at, c.modified_at]
        if self.layout.legacy:
            columns.append(c.p_item)
        else:
            columns.append(c.data)
            columns += [c[name] for name in ("priority", "schedule_id") if name in c]
        columns.append(self._hash_expr().label("mula_hash"))
        stmt = select(*columns).where(
            _kind(c.scheduler_id).in_(["boefje", "normalizer"]), _status(tasks).in_(list(FINISHED))
        )
        if self.since is not None:
            stmt = stmt.where(c.modified_at >= self.since)
        return stmt

    def _pages(self) -> Iterator[Sequence[Row[Any]]]:
        """The newest finished run of every hash (mula's own grace look-up: newest ``modified_at``).

        Two indexed queries a page, so that each page costs what it holds however big the table
        is: the next ``batch_size`` distinct hashes (keyset on mula's hash index), then the newest
        finished row of each of those hashes (``DISTINCT ON``). Rows without a hash come last, one
        by one (keyset on the primary key).
        """
        tasks = self.layout.tasks
        hash_expr = self._hash_expr()
        base = self._history_query()
        newest = base.ext(distinct_on(hash_expr)).order_by(hash_expr, tasks.c.modified_at.desc(), tasks.c.id.desc())
        last: Any = None
        while True:
            keys = select(hash_expr.label("h")).where(hash_expr.is_not(None)).distinct().order_by(hash_expr)
            if last is not None:
                keys = keys.where(hash_expr > last)
            hashes = list(self.mula.execute(keys.limit(self.batch_size)).scalars())
            if not hashes:
                break
            page = self.mula.execute(newest.where(hash_expr.in_(hashes))).all()
            if page:
                yield page
            if len(hashes) < self.batch_size:
                break
            last = hashes[-1]
        unhashed = base.where(hash_expr.is_(None)).order_by(tasks.c.id)
        last = None
        while True:
            stmt = unhashed if last is None else unhashed.where(tasks.c.id > last)
            page = self.mula.execute(stmt.limit(self.batch_size)).all()
            if page:
                yield page
            if len(page) < self.batch_size:
                return
            last = page[-1].id

    def import_history(self) -> None:
        streamed: Counter[str] = Counter()
        for page in self._pages():
            for row in page:
                streamed[kind_of(row.scheduler_id)] += 1
            self._history_page(page)
        for kind, total in self._finished.items():
            self.summary.add(f"{kind} tasks", Outcome.SUPERSEDED, max(0, total - streamed[kind]))

    def _history_page(self, page: Sequence[Row[Any]]) -> None:
        found: list[tuple[str, FinishedTask]] = []
        for row in page:
            kind = kind_of(row.scheduler_id)
            what = f"{kind} tasks"
            try:
                if self.layout.legacy:
                    p_item = _json_object(row.p_item, "p_item")
                    data, priority, schedule_id = p_item.get("data"), p_item.get("priority"), None
                else:
                    data, priority = row.data, getattr(row, "priority", None)
                    raw_schedule = getattr(row, "schedule_id", None)
                    schedule_id = None if raw_schedule is None else _uuid(raw_schedule)
                task = finished_task(
                    task_id=_uuid(row.id),
                    kind=kind,
                    status=row.status,
                    data=data,
                    mula_hash=row.mula_hash,
                    priority=priority,
                    created_at=row.created_at,
                    modified_at=row.modified_at,
                    schedule_id=schedule_id,
                    notes=self.summary.notes,
                )
            except (Malformed, ValueError) as exc:
                logger.warning("mula task %s skipped: %s", row.id, exc)
                self.summary.add(what, Outcome.MALFORMED)
                continue
            found.append((what, task))
        if not found:
            return
        # A task keeps its schedule only when that schedule is ours (imported or made here).
        linked = {t.schedule_id for _, t in found if t.schedule_id is not None}
        known = self.schedules.existing_ids(linked) if linked else set()
        batch = [(what, _with_schedule(t, known)) for what, t in found]
        if self.dry_run:
            taken = self.tasks.existing_ids([t.id for _, t in batch])
        else:
            inserted = self.tasks.add_finished([t for _, t in batch])
            taken = {t.id for _, t in batch} - inserted
        for what, task in batch:
            self.summary.add(what, Outcome.PRESENT if task.id in taken else Outcome.IMPORTED)

    # --- the rest ----------------------------------------------------------------------------

    def count_other_tables(self) -> None:
        if self.layout.items is not None:
            n = self.mula.execute(select(func.count()).select_from(self.layout.items)).scalar_one()
            self.summary.add("legacy queue items", Outcome.LIVE, n)
        if self.layout.jobs is not None:
            n = self.mula.execute(select(func.count()).select_from(self.layout.jobs)).scalar_one()
            logger.warning("mula table 'jobs' (a development schema, never released) is not imported")
            self.summary.add("jobs (unreleased schema)", Outcome.UNSUPPORTED, n)


def _with_schedule(task: FinishedTask, known: set[uuid.UUID]) -> FinishedTask:
    if task.schedule_id is None or task.schedule_id in known:
        return task
    return dataclasses.replace(task, schedule_id=None)


def import_from_mula(
    mula: Engine,
    ours: Engine,
    *,
    since: datetime | None = None,
    dry_run: bool = False,
    batch_size: int = 1000,
    now: datetime | None = None,
) -> ImportSummary:
    """Carry mula's schedules and finished task history into our database (see the module doc).

    The mula database is only read, in one read-only repeatable-read transaction (one consistent
    snapshot for the counts and the pages). Safe to run again: nothing is imported twice.
    """
    now = now or datetime.now(UTC)
    options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    with mula.connect() as conn, conn.execution_options(**options).begin():
        importer = MulaImporter(
            conn,
            TaskStore(ours),
            ScheduleStore(ours),
            since=since,
            dry_run=dry_run,
            batch_size=batch_size,
            now=now,
        )
        return importer.run()


# --- the command ----------------------------------------------------------------------------


@click.command("import-mula")
@click.option(
    "--mula-db-uri",
    envvar="MULA_DB_URI",
    required=True,
    help="SQLAlchemy URL of mula's PostgreSQL database (mula's SCHEDULER_DB_URI); env MULA_DB_URI. Only read.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be imported; write nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Rows read from mula, and written here, per page.",
)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
    default=None,
    help="Import task history that ended on or after this time (UTC). "
    "Default: SCHEDULER_RETENTION_DAYS ago (the reaper prunes older rows). Schedules are always imported.",
)
def mula_import_cmd(mula_db_uri: str, dry_run: bool, batch_size: int, since: datetime | None) -> None:
    """Import mula's schedules and finished task history (grace periods) into SCHEDULER_DB_URI."""
    from kat_scheduler.settings import SettingsError, get_settings
    from kat_scheduler.storage import migrate
    from kat_scheduler.storage.db import make_engine, normalise_url

    try:
        settings = get_settings()
    except SettingsError as exc:
        click.echo(f"kat-scheduler: {exc}", err=True)
        sys.exit(2)
    if not migrate.is_up_to_date(settings.db_uri):
        click.echo(
            "kat-scheduler: the database is not at the newest revision: run `kat-scheduler db upgrade`", err=True
        )
        sys.exit(2)
    if normalise_url(mula_db_uri) == normalise_url(settings.db_uri):
        click.echo("kat-scheduler: --mula-db-uri is SCHEDULER_DB_URI itself; give mula's database", err=True)
        sys.exit(2)
    since_utc = since.replace(tzinfo=UTC) if since is not None else None
    now = datetime.now(UTC)
    if since_utc is None:
        since_utc = now - timedelta(days=settings.retention_days)
    mula = make_engine(mula_db_uri, pool_size=1)
    ours = make_engine(settings.db_uri, pool_size=2)
    try:
        summary = import_from_mula(mula, ours, since=since_utc, dry_run=dry_run, batch_size=batch_size, now=now)
    except (MulaSchemaError, SQLAlchemyError) as exc:
        click.echo(f"kat-scheduler: import from mula failed: {exc}", err=True)
        if not dry_run:
            click.echo("kat-scheduler: what was imported stays; running the import again continues safely", err=True)
        sys.exit(1)
    finally:
        mula.dispose()
        ours.dispose()
    for line in summary.lines():
        click.echo(line)


__all__ = [
    "DISABLED_REASON",
    "IMPORT_REASON",
    "ImportSummary",
    "MulaImporter",
    "MulaSchemaError",
    "Outcome",
    "import_from_mula",
    "inspect_mula",
    "mula_import_cmd",
]
