"""Which mula schema a database has, and the tables and columns the import reads."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    MetaData,
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

from kat_scheduler.mula_import.summary import KNOWN_KINDS, MulaSchemaError

logger = logging.getLogger(__name__)


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


def kind_expr(column: ColumnElement[Any]) -> ColumnElement[str]:
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


def status_expr(table: Table) -> ColumnElement[str]:
    return func.lower(cast(table.c.status, Text))
