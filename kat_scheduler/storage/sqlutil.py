"""Small SQL helpers shared by the stores.

Bulk rows go to PostgreSQL as one bound parameter holding a JSON document (written by orjson,
read by PostgreSQL's ``jsonb_array_elements``): a thousand rows cost one string, where
``execute_values`` formats row by row and a bound list per column is adapted value by value.

The one exception to binding values through the libraries: :func:`pg_array` writes the text of
an array literal, bound as one string, for ``= ANY`` look-ups (:func:`in_values`) and callers that
bind an array. Its output is checked in the tests against the array psycopg2 sends for the same
list, as PostgreSQL reads both.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy import ARRAY, Connection, String, Uuid, any_, bindparam
from sqlalchemy import cast as sql_cast
from sqlalchemy.sql.elements import ColumnElement

#: Values per ``IN (…)`` list on SQLite (below its bound-parameter limit).
IN_CHUNK = 1000


def json_text(values: Sequence[Any]) -> str:
    """``values`` as a JSON document (orjson: UUIDs, datetimes as ISO 8601; anything else its ``str``)."""
    return orjson.dumps(values, default=str).decode()


def in_values(conn: Connection, column: ColumnElement[Any], values: Sequence[Any]) -> Iterator[ColumnElement[bool]]:
    """Conditions ``column IN values``, as few as the backend allows.

    PostgreSQL gets one ``column = ANY(CAST(:array AS type[]))``: one bound parameter however
    many values, far cheaper to build and plan than a thousand-item IN list, and planned knowing
    how many values it holds. The array is bound as the text of its literal (:func:`pg_array`),
    because psycopg2 adapts a list value by value, which costs far more CPU on
    the look-ups of a planning tick, and a JSON document read by ``jsonb_array_elements_text``
    hides the number of values from the planner. SQLite gets IN lists of 1000.
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
    when_null: Mapping[str, str] | None = None,
) -> list[Any]:
    """Bulk ``INSERT … SELECT … FROM jsonb_array_elements(:rows) ON CONFLICT …`` on PostgreSQL.

    The hot path of claims and schedule creation. ``columns`` maps each column to its SQL type;
    ``rows`` are plain tuples in that order (UUIDs, datetimes and JSON may be given as text).
    Each page of rows goes as one bound JSON document (an array of rows, written by orjson),
    each value cast to its column's type as PostgreSQL reads it: one string to send and to
    parse, where ``execute_values`` formats every row with ``mogrify`` and a bound list per
    column is adapted value by value. A column holding one value in every row of the page (a
    status, a timestamp, often the organisation) is bound once, as a plain parameter. Rows are
    inserted in the order given. Runs in ``conn``'s transaction; returns the first ``returning``
    column of every row inserted.

    ``then`` is a second statement in the same one, run on the rows inserted: the insert becomes
    the CTE ``inserted`` (its columns: ``returning``, which then must name each one once), and
    ``then`` may read it (``… FROM inserted``). Only the first column comes back to Python (a
    column it needs only for ``then`` is not sent, nor parsed into a UUID or a datetime).

    ``when_null`` maps a column to the SQL of its value in a row that gives ``None`` for it
    (``{"id": "gen_random_uuid()"}``: PostgreSQL makes the new ids, evaluated row by row).
    """
    if then is not None and not returning:
        raise ValueError("pg_insert_rows: `then` reads the rows inserted, so give `returning`")
    names = list(columns)
    found: list[Any] = []
    cursor = conn.connection.cursor()
    try:
        for start in range(0, len(rows), page_size):
            page = rows[start : start + page_size]
            values_sql: list[str] = []
            constants: list[Any] = []
            varying: list[int] = []
            for index, (name, values) in enumerate(zip(names, zip(*page, strict=True), strict=True)):
                sql_type = columns[name]
                if len(values) > 1 and values.count(values[0]) == len(values):
                    value_sql = f"%s::{sql_type}"  # the same value in every row: bound once
                    constants.append(values[0])
                else:
                    value_sql = f"(row_->>{len(varying)})::{sql_type}"
                    varying.append(index)
                if when_null and name in when_null:
                    value_sql = f"COALESCE({value_sql}, {when_null[name]})"
                values_sql.append(value_sql)
            document = json_text([[row[index] for index in varying] for row in page])
            insert = (
                f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(values_sql)} "
                "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS rows_(row_, n_) ORDER BY n_ "
                f"ON CONFLICT {conflict}" + (f" RETURNING {returning}" if returning else "")
            )
            if then is not None:
                # The first column of ``inserted``, whatever its name: a column alias list renames it.
                insert = f"WITH inserted AS ({insert}), then_ AS ({then}) SELECT first_ FROM inserted AS i_(first_)"
            cursor.execute(insert, [*constants, document])
            if returning:
                found.extend(row[0] for row in cursor.fetchall())
    finally:
        cursor.close()
    return found
