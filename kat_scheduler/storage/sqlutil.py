"""Small SQL helpers shared by the stores."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import ARRAY, Connection, String, Uuid, any_, bindparam
from sqlalchemy.sql.elements import ColumnElement

#: Values per ``IN (…)`` list on SQLite (below its bound-parameter limit).
IN_CHUNK = 1000


def in_values(conn: Connection, column: ColumnElement[Any], values: Sequence[Any]) -> Iterator[ColumnElement[bool]]:
    """Conditions ``column IN values``, as few as the backend allows.

    PostgreSQL gets one ``column = ANY(:array)`` (one bound parameter, however many values: far
    cheaper to build and plan than a thousand-item IN list); SQLite gets IN lists of 1000.
    """
    if not values:
        return
    if conn.dialect.name == "postgresql":
        element = Uuid() if isinstance(column.type, Uuid) else String()
        yield column == any_(bindparam(None, list(values), type_=ARRAY(element)))
        return
    for start in range(0, len(values), IN_CHUNK):
        yield column.in_(values[start : start + IN_CHUNK])


def pg_insert_values(
    conn: Connection,
    table: str,
    columns: Sequence[str],
    casts: dict[str, str],
    rows: Sequence[Sequence[Any]],
    *,
    conflict: str,
    returning: str | None = None,
    page_size: int = 1000,
) -> list[Any]:
    """Bulk ``INSERT … VALUES … ON CONFLICT …`` on PostgreSQL through psycopg2's ``execute_values``.

    The hot path of claims and schedule creation: SQLAlchemy's per-row parameter processing
    doubles the cost of a 1000-row insert, so rows arrive here as plain tuples (UUIDs as text,
    JSON already serialized, ``casts`` naming the SQL cast per column). Runs in ``conn``'s
    transaction. Returns the first ``returning`` column of every inserted row.
    """
    from psycopg2.extras import execute_values

    template = "(" + ", ".join(f"%s::{casts[c]}" if c in casts else "%s" for c in columns) + ")"
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES %s ON CONFLICT {conflict}"
    if returning:
        sql += f" RETURNING {returning}"
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        result = execute_values(cursor, sql, rows, template=template, page_size=page_size, fetch=bool(returning))
    finally:
        cursor.close()
    return [row[0] for row in result] if returning else []
