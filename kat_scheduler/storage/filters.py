"""mula's filter language, turned into SQLAlchemy conditions on ``tasks`` or ``schedules``.

A request is ``{"filters": [F, ...]}`` (all must hold) or ``{"filters": {"and": [...], "or": [...],
"not": [...]}}`` (``and``: all hold, ``or``: at least one, ``not``: none; several keys: all of
them hold), with ``F = {"column", "field"?, "operator", "value"}``. ``field`` walks the JSON of
``data`` with ``__`` between keys (``boefje__oci_image``); a key of digits is an array index.

The JSON value at a path is compared as the type of the filter's value (text, integer, float or
boolean), on PostgreSQL (``#>>``) and SQLite (``json_extract``) alike. The operators that are
PostgreSQL's own (``match`` full-text search, the JSON operators ``@>``, ``<@``, ``@?``, ``@@``)
are refused on SQLite with :class:`FilterError` (a 400 over HTTP), never answered with a wrong
result. Every problem with a filter (an unknown column, a value of the wrong type for the
column or operator) is a :class:`FilterError` naming it.

A JSON path (the value of ``@?`` and ``@@``) is PostgreSQL's own language; :func:`check_json_paths`
has PostgreSQL parse each path of a request before the request runs, and a path it refuses is a
:class:`FilterError` with PostgreSQL's reason, never a failed search, pop or listing.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    Uuid,
    bindparam,
    cast,
    exists,
    false,
    func,
    literal_column,
    not_,
    or_,
    select,
    text,
)
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.dialects.postgresql import JSONB, JSONPATH
from sqlalchemy.exc import DBAPIError

from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.storage.tables import ScheduleRow, TaskRow, table_of

logger = logging.getLogger(__name__)

_TASKS = table_of(TaskRow)
_SCHEDULES = table_of(ScheduleRow)


class FilterError(ValueError):
    """A filter that cannot be applied; the message says which and why."""


class Operator(StrEnum):
    EQ_SIGN = "=="
    EQ = "eq"
    NE_SIGN = "!="
    NE = "ne"
    IS = "is"
    IS_NOT = "is_not"
    IS_NULL = "is_null"
    IS_NOT_NULL = "is_not_null"
    GT_SIGN = ">"
    GT = "gt"
    LT_SIGN = "<"
    LT = "lt"
    GTE_SIGN = ">="
    GTE = "gte"
    LTE_SIGN = "<="
    LTE = "lte"
    LIKE = "like"
    NOT_LIKE = "not_like"
    ILIKE = "ilike"
    NOT_ILIKE = "not_ilike"
    IN = "in"
    NOT_IN = "not_in"
    CONTAINS = "contains"
    ANY = "any"
    MATCH = "match"
    STARTS_WITH = "starts_with"
    JSON_CONTAINS = "@>"
    JSON_CONTAINED_BY = "<@"
    JSON_PATH_EXISTS = "@?"
    JSON_PATH_MATCH = "@@"


#: Operators only PostgreSQL can answer.
POSTGRESQL_ONLY = frozenset(
    {
        Operator.MATCH,
        Operator.JSON_CONTAINS,
        Operator.JSON_CONTAINED_BY,
        Operator.JSON_PATH_EXISTS,
        Operator.JSON_PATH_MATCH,
    }
)
#: The operators whose value is a JSON path.
JSON_PATH_OPERATORS = frozenset({Operator.JSON_PATH_EXISTS, Operator.JSON_PATH_MATCH})
_COMPARE = {
    Operator.EQ_SIGN: "eq",
    Operator.EQ: "eq",
    Operator.NE_SIGN: "ne",
    Operator.NE: "ne",
    Operator.GT_SIGN: "gt",
    Operator.GT: "gt",
    Operator.LT_SIGN: "lt",
    Operator.LT: "lt",
    Operator.GTE_SIGN: "gte",
    Operator.GTE: "gte",
    Operator.LTE_SIGN: "lte",
    Operator.LTE: "lte",
}
_TEXT_OPERATORS = frozenset(
    {Operator.LIKE, Operator.NOT_LIKE, Operator.ILIKE, Operator.NOT_ILIKE, Operator.CONTAINS, Operator.STARTS_WITH}
)

Scalar = str | int | float | bool | datetime | None
FilterValue = Scalar | list[str] | list[int] | list[float] | list[bool] | list[datetime] | list[None]


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    column: str
    field: str | None = Field(None, description="A path into the JSON of `data`, keys separated by `__`.")
    operator: Operator
    value: FilterValue = None


class FilterGroups(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    and_: list[Filter] = Field(default_factory=list, alias="and")
    or_: list[Filter] = Field(default_factory=list, alias="or")
    not_: list[Filter] = Field(default_factory=list, alias="not")


class FilterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filters: list[Filter] | FilterGroups


#: The columns a filter may name (``data`` with a ``field`` for its JSON).
COLUMNS = (
    "id",
    "scheduler_id",
    "schedule_id",
    "organisation",
    "priority",
    "status",
    "type",
    "hash",
    "data",
    "created_at",
    "modified_at",
    "plugin_id",
    "input_ooi",
)


#: The columns a filter on ``schedules`` may name.
SCHEDULE_COLUMNS = (
    "id",
    "scheduler_id",
    "organisation",
    "hash",
    "data",
    "enabled",
    "schedule",
    "deadline_at",
    "created_at",
    "modified_at",
    "plugin_id",
    "input_ooi",
    "disabled_reason",
    "descheduled_at",
)
#: The columns filters may name, per table.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {"tasks": COLUMNS, "schedules": SCHEDULE_COLUMNS}


def conditions(request: FilterRequest | None, dialect: str, table: Table = _TASKS) -> list[ColumnElement[bool]]:
    """The conditions of ``request`` on ``table`` (``tasks`` unless given: ``schedules`` is the
    other) for a database of ``dialect`` (``postgresql``, ``sqlite``)."""
    if request is None:
        return []
    if isinstance(request.filters, list):
        return [condition(f, dialect, table) for f in request.filters]
    groups = request.filters
    found = [condition(f, dialect, table) for f in groups.and_]
    if groups.or_:
        found.append(or_(*(condition(f, dialect, table) for f in groups.or_)))
    if groups.not_:
        found.append(not_(or_(*(condition(f, dialect, table) for f in groups.not_))))
    return found


#: The field of ``data`` a boefje worker pops by (its images), and the most images
#: :func:`split_images` takes out of a request.
IMAGE_FIELD = "boefje__oci_image"
MAX_SPLIT_IMAGES = 32


def split_images(request: FilterRequest | None) -> tuple[tuple[str, ...], FilterRequest | None]:
    """The boefje images a request asks for (``data.boefje__oci_image`` ``in`` a list of images, or
    ``==`` one) and the rest of the request; ``()`` and the request as it was when it does not
    ask for images that way (an image filter inside ``and``/``or``/``not``, two of them, more
    than :data:`MAX_SPLIT_IMAGES` images, values that are not text). A task matches the request
    exactly when its image is one of those and it matches the rest."""
    if request is None or not isinstance(request.filters, list):
        return (), request
    found = [
        f
        for f in request.filters
        if f.column == "data" and f.field == IMAGE_FIELD and f.operator in (Operator.IN, Operator.EQ, Operator.EQ_SIGN)
    ]
    if len(found) != 1:
        return (), request
    [item] = found
    values = item.value if item.operator is Operator.IN else [item.value]
    if not isinstance(values, list) or not values or len(values) > MAX_SPLIT_IMAGES:
        return (), request
    if not all(isinstance(v, str) for v in values):
        return (), request
    rest = [f for f in request.filters if f is not item]
    images = tuple(dict.fromkeys(str(v) for v in values))
    return images, FilterRequest(filters=rest) if rest else None


def condition(item: Filter, dialect: str, table: Table = _TASKS) -> ColumnElement[bool]:
    """One filter on ``table`` as a condition; :class:`FilterError` when it cannot be applied."""
    columns = TABLE_COLUMNS[table.name]
    if item.column not in columns:
        raise FilterError(f"unknown filter column {item.column!r} (columns: {', '.join(columns)})")
    if item.operator in POSTGRESQL_ONLY and dialect != "postgresql":
        raise FilterError(f"operator {item.operator.value!r} needs PostgreSQL; this scheduler's database is {dialect}")
    column = table.c[item.column]
    if item.column == "data":
        return _json_condition(item, dialect, table)
    if item.field is not None:
        raise FilterError(f"field {item.field!r} is given for column {item.column!r}; only data has fields")
    value = _column_value(item, column.type)
    is_text = isinstance(column.type, String) and not isinstance(column.type, SqlEnum)
    return _compare(item, column, value, is_text=is_text, dialect=dialect)


def _column_value(item: Filter, sql_type: Any) -> Any:
    """The filter's value in the column's own type (a list stays a list)."""
    if item.operator in (Operator.IS_NULL, Operator.IS_NOT_NULL):
        return None
    if isinstance(item.value, list):
        return [_scalar_for(item, sql_type, v) for v in item.value]
    return _scalar_for(item, sql_type, item.value)


def _scalar_for(item: Filter, sql_type: Any, value: Any) -> Any:
    if value is None:
        return None
    name = item.column
    try:
        if isinstance(sql_type, SqlEnum):
            enum = TaskStatus if name == "status" else SchedulerId
            return enum(value)
        if isinstance(sql_type, Uuid):
            return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
        if isinstance(sql_type, DateTime):
            moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
        if isinstance(sql_type, Boolean):
            if not isinstance(value, bool):
                raise ValueError("not a boolean")
            return value
        if isinstance(sql_type, Integer):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("not an integer")
            return value
        if isinstance(sql_type, String):
            if not isinstance(value, str):
                raise ValueError("not a string")
            return value
    except ValueError as exc:
        raise FilterError(f"value {value!r} does not fit column {name!r}: {exc}") from None
    return value


def _compare(item: Filter, left: Any, value: Any, *, is_text: bool, dialect: str) -> ColumnElement[bool]:
    op = item.operator
    where = f"{item.column}{'.' + item.field if item.field else ''}"
    if op is Operator.IS_NULL:
        return left.is_(None)  # type: ignore[no-any-return]
    if op is Operator.IS_NOT_NULL:
        return left.is_not(None)  # type: ignore[no-any-return]
    if op in (Operator.IN, Operator.NOT_IN):
        if not isinstance(value, list):
            raise FilterError(f"operator {op.value!r} on {where} needs a list value, not {item.value!r}")
        return left.in_(value) if op is Operator.IN else left.not_in(value)  # type: ignore[no-any-return]
    if isinstance(value, list):
        raise FilterError(f"operator {op.value!r} on {where} needs a single value, not a list")
    if op in (Operator.IS, Operator.IS_NOT):
        if value is not None and not isinstance(value, bool):
            raise FilterError(f"operator {op.value!r} on {where} takes null, true or false, not {item.value!r}")
        return left.is_(value) if op is Operator.IS else left.is_not(value)  # type: ignore[no-any-return]
    if op in _COMPARE:
        if value is None:
            raise FilterError(f"operator {op.value!r} on {where} needs a value; use is_null or is_not_null for null")
        kind = _COMPARE[op]
        return {  # type: ignore[no-any-return]
            "eq": lambda: left == value,
            "ne": lambda: left != value,
            "gt": lambda: left > value,
            "lt": lambda: left < value,
            "gte": lambda: left >= value,
            "lte": lambda: left <= value,
        }[kind]()
    if op in _TEXT_OPERATORS:
        if not is_text or not isinstance(value, str):
            raise FilterError(f"operator {op.value!r} compares text: {where} with {item.value!r} is not text")
        if dialect == "sqlite" and op in (Operator.LIKE, Operator.NOT_LIKE, Operator.CONTAINS, Operator.STARTS_WITH):
            return _sqlite_case_sensitive(op, left, value)
        if op is Operator.LIKE:
            return left.like(value)  # type: ignore[no-any-return]
        if op is Operator.NOT_LIKE:
            return left.not_like(value)  # type: ignore[no-any-return]
        if op is Operator.ILIKE:
            return left.ilike(value)  # type: ignore[no-any-return]
        if op is Operator.NOT_ILIKE:
            return left.not_ilike(value)  # type: ignore[no-any-return]
        if op is Operator.CONTAINS:
            return left.contains(value, autoescape=True)  # type: ignore[no-any-return]
        return left.startswith(value, autoescape=True)  # type: ignore[no-any-return]
    if op is Operator.MATCH:
        if not is_text or not isinstance(value, str):
            raise FilterError(f"operator 'match' searches text: {where} with {item.value!r} is not text")
        return func.to_tsvector("simple", left).op("@@")(func.plainto_tsquery("simple", value))
    raise FilterError(f"operator {op.value!r} does not apply to {where}")


def _sqlite_case_sensitive(op: Operator, left: Any, value: str) -> ColumnElement[bool]:
    """``like`` and its kin as PostgreSQL answers them (case-sensitive); SQLite's LIKE ignores case."""
    if op is Operator.CONTAINS:
        return func.instr(left, value) > 0
    if op is Operator.STARTS_WITH:
        return func.substr(left, 1, len(value)) == value
    glob = left.op("GLOB", is_comparison=True)(_glob_of_like(value))
    return glob if op is Operator.LIKE else not_(glob)  # type: ignore[no-any-return]


def _glob_of_like(pattern: str) -> str:
    """A LIKE pattern (``%`` any run, ``_`` one character) as the same GLOB pattern."""
    special = {"*": "[*]", "?": "[?]", "[": "[[]", "%": "*", "_": "?"}
    return "".join(special.get(char, char) for char in pattern)


def _path(field: str) -> tuple[str | int, ...]:
    keys = field.split("__")
    if any(not key for key in keys):
        raise FilterError(f"field {field!r} has an empty key")
    return tuple(int(key) if key.isdigit() else key for key in keys)


def _json_condition(item: Filter, dialect: str, table: Table) -> ColumnElement[bool]:
    data = table.c.data
    op = item.operator
    if op in (Operator.JSON_CONTAINS, Operator.JSON_CONTAINED_BY):
        target = cast(data, JSONB) if item.field is None else cast(data, JSONB)[_path(item.field)]
        document = cast(bindparam(None, orjson.dumps(item.value, default=str).decode(), type_=String()), JSONB)
        return target.op(op.value)(document)
    if op in (Operator.JSON_PATH_EXISTS, Operator.JSON_PATH_MATCH):
        if item.field is not None:
            raise FilterError(f"operator {op.value!r} takes a JSON path as its value, not a field")
        if not isinstance(item.value, str):
            raise FilterError(f"operator {op.value!r} needs a JSON path (text), not {item.value!r}")
        return cast(data, JSONB).op(op.value)(cast(bindparam(None, item.value, type_=String()), JSONPATH))
    if item.field is None:
        if op in (Operator.IS_NULL, Operator.IS_NOT_NULL):
            return data.is_(None) if op is Operator.IS_NULL else data.is_not(None)
        raise FilterError(f"operator {op.value!r} on column 'data' needs a field (a path into its JSON)")
    path = _path(item.field)
    if op is Operator.ANY:
        return _json_any(path, item, dialect, table)
    sample = _sample(item.value)
    element = data[path]
    if isinstance(sample, bool):
        left: Any = element.as_boolean()
    elif isinstance(sample, int):
        left = element.as_integer()
    elif isinstance(sample, float):
        left = element.as_float()
    else:
        left = element.as_string()
    value = _plain(item.value)
    return _compare(item, left, value, is_text=isinstance(sample, str | datetime | type(None)), dialect=dialect)


def _plain(value: Any) -> Any:
    """Datetimes as the ISO text JSON holds them (a list item by item)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.isoformat() if isinstance(value, datetime) else value


def _sample(value: FilterValue) -> Any:
    if isinstance(value, list):
        return next((v for v in value if v is not None), None)
    return value


def _json_any(path: tuple[str | int, ...], item: Filter, dialect: str, table: Table) -> ColumnElement[bool]:
    """The JSON array at ``path`` holds at least one of the values (one value or a list)."""
    values: list[Any] = _plain(item.value) if isinstance(item.value, list) else [_plain(item.value)]
    if not values:
        return false()
    if dialect == "postgresql":
        target = cast(table.c.data, JSONB)[path]
        options = [
            target.op("@>")(cast(bindparam(None, orjson.dumps([v]).decode(), type_=String()), JSONB)) for v in values
        ]
        return or_(*options)
    json_path = "$" + "".join(f"[{k}]" if isinstance(k, int) else f'."{k}"' for k in path)
    each = func.json_each(table.c.data, json_path).table_valued("value")
    return exists(select(literal_column("1")).select_from(each).where(each.c.value.in_(values)))


#: The SQLSTATEs of PostgreSQL refusing the text of a JSON path: a syntax error (42601), a data
#: exception (class 22: an empty path, a broken regular expression or escape, a datetime template
#: it cannot read) and a path nested too deep for its parser (54001).
_PATH_REFUSED = frozenset({"42601", "54001"})
_PATH_REFUSED_CLASS = "22"
#: The most characters of a refused path its error shows.
_SHOWN_PATH = 200


def json_paths(request: FilterRequest | None) -> list[tuple[Operator, str]]:
    """The JSON paths of ``request`` (the text values of ``@?`` and ``@@``), each once."""
    if request is None:
        return []
    if isinstance(request.filters, list):
        items = request.filters
    else:
        items = [*request.filters.and_, *request.filters.or_, *request.filters.not_]
    found = (
        (item.operator, item.value)
        for item in items
        if item.operator in JSON_PATH_OPERATORS and isinstance(item.value, str)
    )
    return list(dict.fromkeys(found))


def check_json_paths(request: FilterRequest | None, engine: Engine) -> None:
    """Have PostgreSQL read every JSON path of ``request`` (one small statement each, before the
    request runs); :class:`FilterError` for the first it refuses, with PostgreSQL's reason. A path
    that names a variable (``$name``: a filter has none) or a ``datetime()`` template PostgreSQL
    cannot read is refused too: PostgreSQL would refuse it only when a row reaches it. Nothing on
    another database (it refuses these operators), nothing for a request without JSON paths."""
    paths = json_paths(request)
    if not paths or engine.dialect.name != "postgresql":
        return
    with engine.connect() as conn:
        for operator, path in paths:
            shown = path if len(path) <= _SHOWN_PATH else path[: _SHOWN_PATH - 3] + "..."
            where = f"JSON path {shown!r} of operator {operator.value!r}"
            written, refused = _read(conn, "SELECT CAST(CAST(:path AS jsonpath) AS text)", path)
            if refused is not None:
                raise _refused(f"{where}: {refused}")
            variables, templates = _variables_and_templates(str(written))
            if variables:
                raise _refused(f"{where}: it uses variable ${variables[0]}, and a filter has no variables")
            for template in templates:
                _, refused = _read(conn, """SELECT '""'::jsonb @? CAST(:path AS jsonpath)""", f"$.datetime({template})")
                if refused is not None:
                    raise _refused(f"{where}: PostgreSQL refuses datetime template {template}: {refused}")


def _read(conn: Connection, statement: str, path: str) -> tuple[Any, str | None]:
    """What ``statement`` (one row, one column) answers with ``path`` bound, and ``None``; or
    ``None`` and why PostgreSQL refuses the path. Only a refusal of the path is answered so: any
    other error (the database gone, a timeout) is raised as it is."""
    try:
        return conn.execute(text(statement), {"path": path}).scalar_one(), None
    except DBAPIError as exc:
        code = str(getattr(exc.orig, "pgcode", None) or "")
        if code not in _PATH_REFUSED and not code.startswith(_PATH_REFUSED_CLASS):
            raise
        conn.rollback()
        diag = getattr(exc.orig, "diag", None)
        reason = getattr(diag, "message_primary", None) or str(exc.orig).strip().splitlines()[0]
        return None, str(reason)


def _refused(message: str) -> FilterError:
    logger.info("a filter is refused: %s", message)
    return FilterError(message)


def _variables_and_templates(normal: str) -> tuple[list[str], list[str]]:
    """The variables (their names) and ``datetime()`` templates (as quoted in the path) of a JSON
    path as PostgreSQL writes it back (where every string, key and variable name is quoted)."""
    variables: list[str] = []
    templates: list[str] = []
    at = 0
    while (start := normal.find('"', at)) != -1:
        end = start + 1
        while end < len(normal) and normal[end] != '"':
            end += 2 if normal[end] == "\\" else 1
        literal = normal[start : end + 1]
        if normal.endswith("$", 0, start):
            try:
                variables.append(str(orjson.loads(literal)))
            except orjson.JSONDecodeError:
                variables.append(literal)
        elif normal.endswith(".datetime(", 0, start):
            templates.append(literal)
        at = end + 1
    return variables, templates


__all__ = [
    "COLUMNS",
    "IMAGE_FIELD",
    "JSON_PATH_OPERATORS",
    "POSTGRESQL_ONLY",
    "SCHEDULE_COLUMNS",
    "Filter",
    "FilterError",
    "FilterRequest",
    "Operator",
    "check_json_paths",
    "conditions",
    "json_paths",
    "split_images",
]
