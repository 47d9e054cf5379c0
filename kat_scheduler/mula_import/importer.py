"""The import itself: mula read page by page in one snapshot, written through our stores."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Select,
    Table,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import distinct_on

from kat_scheduler.mula_import.rows import as_uuid, aware, finished_task, json_object, schedule_record
from kat_scheduler.mula_import.schema import inspect_mula, kind_expr, kind_of, status_expr
from kat_scheduler.mula_import.summary import CANCELLED, FINISHED, ImportSummary, Malformed, Outcome
from kat_scheduler.storage.schedules import ScheduleRecord, ScheduleStore
from kat_scheduler.storage.tasks import FinishedTask, TaskStore

logger = logging.getLogger(__name__)


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
        self.since = None if since is None else aware(since)
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
                    schedule_id=as_uuid(row.id),
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
        kind, status = kind_expr(tasks.c.scheduler_id).label("kind"), status_expr(tasks).label("status")
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
                .where(kind_expr(tasks.c.scheduler_id) == "")
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
        columns: list[Any] = [c.id, c.scheduler_id, status_expr(tasks).label("status"), c.created_at, c.modified_at]
        if self.layout.legacy:
            columns.append(c.p_item)
        else:
            columns.append(c.data)
            columns += [c[name] for name in ("priority", "schedule_id") if name in c]
        columns.append(self._hash_expr().label("mula_hash"))
        stmt = select(*columns).where(
            kind_expr(c.scheduler_id).in_(["boefje", "normalizer"]), status_expr(tasks).in_(list(FINISHED))
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
                    p_item = json_object(row.p_item, "p_item")
                    data, priority, schedule_id = p_item.get("data"), p_item.get("priority"), None
                else:
                    data, priority = row.data, getattr(row, "priority", None)
                    raw_schedule = getattr(row, "schedule_id", None)
                    schedule_id = None if raw_schedule is None else as_uuid(raw_schedule)
                task = finished_task(
                    task_id=as_uuid(row.id),
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
