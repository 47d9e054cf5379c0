"""Small SQL helpers shared by the stores."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ARRAY, Connection, String, Uuid, any_, bindparam
from sqlalchemy import cast as sql_cast
from sqlalchemy.sql.elements import ColumnElement

#: Values per ``IN (…)`` list on SQLite (below its bound-parameter limit).
IN_CHUNK = 1000


def in_values(conn: Connection, column: ColumnElement[Any], values: Sequence[Any]) -> Iterator[ColumnElement[bool]]:
    """Conditions ``column IN values``, as few as the backend allows.

    PostgreSQL gets one ``column = ANY(CAST(:array AS type[]))`` (one bound parameter, however
    many values: far cheaper to build and plan than a thousand-item IN list), the array bound as
    the text of its literal (:func:`pg_array`: a few joins, where psycopg2 adapts a list value by
    value, about 0.7 ms of CPU per 1,000 hashes); SQLite gets IN lists of 1000.
    """
    if not values:
        return
    if conn.dialect.name == "postgresql":
        element: Uuid[Any] | String = Uuid() if isinstance(column.type, Uuid) else String()
        if isinstance(column.type, (Uuid, String)):
            text = pg_array(values, "uuid" if isinstance(element, Uuid) else "text")
            yield column == any_(sql_cast(bindparam(None, text, type_=String()), ARRAY(element)))
        else:  # another type: psycopg2 adapts the list
            yield column == any_(bindparam(None, list(values), type_=ARRAY(element)))
        return
    for start in range(0, len(values), IN_CHUNK):
        yield column.in_(values[start : start + IN_CHUNK])


#: SQL types whose text form never needs quoting inside an array literal.
_BARE_TYPES = frozenset({"uuid", "smallint", "integer", "bigint", "boolean"})


def pg_array(values: Sequence[Any], sql_type: str) -> str:
    """``values`` as the text of a PostgreSQL array literal (``{"a","b",NULL}``) of ``sql_type``.

    ``None`` is ``NULL``; everything else is its ``str`` (datetimes ``isoformat``), double-quoted
    with ``\\`` and ``"`` escaped unless ``sql_type`` is one whose text is always bare.
    """
    if sql_type in _BARE_TYPES:
        return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"
    first = next((v for v in values if v is not None), None)
    texts: list[str | None]
    if isinstance(first, datetime):
        texts = [None if v is None else v.isoformat() for v in values]
    elif first is None or isinstance(first, str):
        texts = list(values)  # a column holds one type: str here
    else:
        texts = [None if v is None else str(v) for v in values]
    if None not in texts:
        # The common case, escaped in one go: NUL (which PostgreSQL text never holds) marks the
        # boundaries while the joined text is escaped, then becomes the quoted separator.
        joined = "\0".join(cast(list[str], texts))
        if joined.count("\0") == len(texts) - 1:
            return '{"' + _escape(joined).replace("\0", '","') + '"}'
    return "{" + ",".join("NULL" if t is None else '"' + _escape(t) + '"' for t in texts) + "}"


def _output_name(returning: str) -> str:
    """The name of the first column of a ``RETURNING`` list: ``id::text AS text_id`` → ``text_id``."""
    return re.split(r"\s+AS\s+", returning.split(",", 1)[0].strip(), flags=re.IGNORECASE)[-1]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def pg_insert_rows(
    conn: Connection,
    table: str,
    columns: Mapping[str, str],
    rows: Sequence[Sequence[Any]],
    *,
    conflict: str,
    returning: str | None = None,
    then: str | None = None,
    page_size: int = 1000,
) -> list[Any]:
    """Bulk ``INSERT … SELECT * FROM unnest(arrays) ON CONFLICT …`` on PostgreSQL.

    The hot path of claims and schedule creation. ``columns`` maps each column to its SQL type;
    ``rows`` are plain tuples in that order (UUIDs, datetimes and JSON may be given as text).
    Each page of rows goes as one array literal per column, built here and bound as one string:
    a few string joins per column instead of psycopg2's per-row ``mogrify`` of a ``VALUES`` list
    (which cost more CPU than everything else in a claim), and PostgreSQL parses a dozen arrays
    instead of thousands of row expressions. A column holding one value in every row of the page
    (a status, a timestamp, often the organisation) is sent once, as ``array_fill(value, n)``.
    Rows are inserted in the order given. Runs in ``conn``'s transaction; returns the first
    ``returning`` column of every row inserted.

    ``then`` is a second statement in the same one, run on the rows inserted: the insert becomes
    the CTE ``inserted`` (its columns: ``returning``, which then must name each one once), and
    ``then`` may read it (``… FROM inserted``). Only the first column comes back to Python (a
    column it needs only for ``then`` is not sent, nor parsed into a UUID or a datetime).
    """
    names = list(columns)
    head = f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM unnest("
    tail = f") ON CONFLICT {conflict}" + (f" RETURNING {returning}" if returning else "")
    if then is not None:
        if not returning:
            raise ValueError("pg_insert_rows: `then` reads the rows inserted, so give `returning`")
        head = "WITH inserted AS (" + head
        tail += f"), then_ AS ({then}) SELECT {_output_name(returning)} FROM inserted"
    found: list[Any] = []
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        for start in range(0, len(rows), page_size):
            page = rows[start : start + page_size]
            arrays: list[str] = []
            params: list[Any] = []
            for name, values in zip(names, zip(*page, strict=True), strict=True):
                sql_type = columns[name]
                if len(values) > 1 and values.count(values[0]) == len(values):
                    # The same value in every row (a status, a timestamp): sent once.
                    arrays.append(f"array_fill(%s::{sql_type}, ARRAY[{len(values)}])")
                    params.append(values[0])
                else:
                    arrays.append(f"%s::{sql_type}[]")
                    params.append(pg_array(values, sql_type))
            cursor.execute(head + ", ".join(arrays) + tail, params)
            if returning:
                found.extend(row[0] for row in cursor.fetchall())
    finally:
        cursor.close()
    return found
