"""mula's filter language, turned into SQLAlchemy conditions on ``tasks`` or ``schedules``.

A request is ``{"filters": [F, ...]}`` (all must hold) or ``{"filters": {"and": [...], "or": [...],
"not": [...]}}`` (``and``: all hold, ``or``: at least one, ``not``: none; several keys: all of
them hold), with ``F = {"column", "field"?, "operator", "value"}``. ``field`` walks the JSON of
``data`` with ``__`` between keys (``boefje__oci_image``); a key of digits is an array index.

The JSON value at a path is compared as the type of the filter's value (text, a number or a
boolean; a datetime as the ISO text JSON holds), on PostgreSQL (``#>``, ``jsonb_typeof``) and SQLite
(``json_extract``, ``json_type``) alike: a value of another JSON type, like a missing one, never
matches (``is_null`` matches a missing value and JSON null). The operators that are PostgreSQL's own
(``match`` full-text search, the JSON operators ``@>``, ``<@``, ``@?``, ``@@``) are refused on
SQLite with :class:`FilterError` (a 400 over HTTP), never answered with a wrong result, and so are
the few filters SQLite would answer differently: ``ilike`` with a pattern holding non-ASCII
letters (SQLite folds the case of ASCII letters only) and a field key with a double quote. Text
is ordered (``>``, ``<``, ...) in code point order on both (``COLLATE "C"`` on PostgreSQL), and
``like`` and its kin take ``\\`` as their escape character on both.

Every problem with a filter is a :class:`FilterError` naming it, found before any statement
runs: an unknown column, a value of the wrong type for the column or operator, a value no
database can take (text with a NUL character or a lone surrogate, an integer outside 64 bits, NaN
or Infinity), an ordering operator with true or false, a LIKE pattern ending in its escape
character, more than :data:`MAX_FILTERS` filters or :data:`MAX_VALUES` list values in a request.

A JSON path (the value of ``@?`` and ``@@``) is PostgreSQL's own language; :func:`check_json_paths`
has PostgreSQL parse each path of a request before the request runs, and a path it refuses is a
:class:`FilterError` with PostgreSQL's reason, never a failed search, pop or listing.
"""

from __future__ import annotations

import logging
import math
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
    Numeric,
    String,
    Table,
    Text,
    Uuid,
    and_,
    any_,
    bindparam,
    case,
    cast,
    exists,
    false,
    func,
    literal_column,
    not_,
    or_,
    select,
    text,
    true,
    type_coerce,
)
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, JSONPATH
from sqlalchemy.exc import DBAPIError

from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.storage.tables import ScheduleRow, TaskRow, UTCDateTime, table_of

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


#: The most filters one request may hold, and the most values their lists may hold together:
#: SQLite parses a condition as a tree at most 1000 deep and binds at most 32766 values.
MAX_FILTERS = 100
MAX_VALUES = 10_000


def conditions(request: FilterRequest | None, dialect: str, table: Table = _TASKS) -> list[ColumnElement[bool]]:
    """The conditions of ``request`` on ``table`` (``tasks`` unless given: ``schedules`` is the
    other) for a database of ``dialect`` (``postgresql``, ``sqlite``)."""
    if request is None:
        return []
    items = _items(request)
    if len(items) > MAX_FILTERS:
        raise FilterError(f"{len(items)} filters in one request; at most {MAX_FILTERS}")
    values = sum(len(item.value) for item in items if isinstance(item.value, list))
    if values > MAX_VALUES:
        raise FilterError(f"the filters' lists hold {values} values together; at most {MAX_VALUES}")
    if isinstance(request.filters, list):
        return [condition(f, dialect, table) for f in request.filters]
    groups = request.filters
    found = [condition(f, dialect, table) for f in groups.and_]
    if groups.or_:
        found.append(or_(*(condition(f, dialect, table) for f in groups.or_)))
    if groups.not_:
        found.append(not_(or_(*(condition(f, dialect, table) for f in groups.not_))))
    return found


def _items(request: FilterRequest) -> list[Filter]:
    """Every filter of ``request``, in a list or in its groups."""
    if isinstance(request.filters, list):
        return request.filters
    return [*request.filters.and_, *request.filters.or_, *request.filters.not_]


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
    if not all(isinstance(v, str) and _unfit(v) is None for v in values):
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
    _check_values(item)
    column = table.c[item.column]
    if item.column == "data":
        return _json_condition(item, dialect, table)
    if item.field is not None:
        raise FilterError(f"field {item.field!r} is given for column {item.column!r}; only data has fields")
    value = _column_value(item, column.type)
    is_text = isinstance(column.type, String) and not isinstance(column.type, SqlEnum)
    return _compare(item, column, value, is_text=is_text, dialect=dialect)


#: The integers a filter may hold: SQLite's (64 bits); PostgreSQL's columns hold no larger.
_INTEGERS = range(-(2**63), 2**63)
#: The most characters of a value an error shows.
_SHOWN_VALUE = 100


def _unfit(value: Any) -> str | None:
    """Why no database can take ``value`` (``None``: it can)."""
    if isinstance(value, str):
        if "\x00" in value:
            return "text with a NUL character (PostgreSQL cannot store or compare it)"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "text that is not Unicode (a lone surrogate such as \\ud800)"
    elif isinstance(value, bool):
        return None
    elif isinstance(value, int) and value not in _INTEGERS:
        return "an integer outside the 64-bit range"
    elif isinstance(value, float) and not math.isfinite(value):
        return "a number that is not finite (NaN or Infinity)"
    return None


def unstorable(value: Any, where: str) -> str | None:
    """What in ``value`` (JSON read from a request: dicts, lists, scalars) no database can store,
    named by its place (``where`` its root: ``data.boefje.id``); ``None`` when it all can. Walked
    without recursion: a body nests as deep as its parser lets it."""
    pending: list[tuple[str, Any]] = [(where, value)]
    while pending:
        place, item = pending.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                problem = _unfit(key)
                if problem is not None:
                    return f"{place} has a key {_shown(key)} that is {problem}"
                pending.append((f"{place}.{key}", child))
        elif isinstance(item, list):
            pending.extend((f"{place}.{index}", child) for index, child in enumerate(item))
        else:
            problem = _unfit(item)
            if problem is not None:
                return f"{place} is {problem}"
    return None


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= _SHOWN_VALUE else shown[: _SHOWN_VALUE - 3] + "..."


def _check_values(item: Filter) -> None:
    """:class:`FilterError` for a value (or a list item) no database can take."""
    where = f"{item.column}{'.' + item.field if item.field else ''}"
    for value in item.value if isinstance(item.value, list) else [item.value]:
        problem = _unfit(value)
        if problem is not None:
            raise FilterError(f"value {_shown(value)} of the filter {_shown(where)} {item.operator.value} is {problem}")


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
        if isinstance(sql_type, DateTime | UTCDateTime):
            if not isinstance(value, str | datetime):
                raise ValueError("not an ISO datetime or date")
            moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
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
    except (ValueError, OverflowError) as exc:
        raise FilterError(f"value {_shown(value)} does not fit column {name!r}: {exc}") from None
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
            raise FilterError(f"operator {op.value!r} on {where} needs a list value, not {_shown(item.value)}")
        return left.in_(value) if op is Operator.IN else left.not_in(value)  # type: ignore[no-any-return]
    if isinstance(value, list):
        raise FilterError(f"operator {op.value!r} on {where} needs a single value, not a list")
    if op in (Operator.IS, Operator.IS_NOT):
        if value is not None and not isinstance(value, bool):
            raise FilterError(f"operator {op.value!r} on {where} takes null, true or false, not {_shown(item.value)}")
        return left.is_(value) if op is Operator.IS else left.is_not(value)  # type: ignore[no-any-return]
    if op in _COMPARE:
        if value is None:
            raise FilterError(f"operator {op.value!r} on {where} needs a value; use is_null or is_not_null for null")
        kind = _COMPARE[op]
        if isinstance(value, bool) and kind not in ("eq", "ne"):
            raise FilterError(f"operator {op.value!r} on {where} orders values; true and false take ==, !=, is, is_not")
        if is_text and dialect == "postgresql" and kind not in ("eq", "ne"):
            # Text in code point order, as SQLite orders it, whatever the database's collation.
            left = left.collate("C")
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
            raise FilterError(f"operator {op.value!r} compares text: {where} with {_shown(item.value)} is not text")
        if op in _LIKE_OPERATORS and _ends_in_escape(value):
            raise FilterError(
                f"operator {op.value!r} on {where}: pattern {_shown(value)} ends with the escape character \\"
                " (write \\\\ for a backslash)"
            )
        if dialect == "sqlite":
            return _sqlite_text(op, left, value, where)
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
            raise FilterError(f"operator 'match' searches text: {where} with {_shown(item.value)} is not text")
        return func.to_tsvector("simple", left).op("@@")(func.plainto_tsquery("simple", value))
    raise FilterError(f"operator {op.value!r} does not apply to {where}")


_LIKE_OPERATORS = frozenset({Operator.LIKE, Operator.NOT_LIKE, Operator.ILIKE, Operator.NOT_ILIKE})


def _ends_in_escape(pattern: str) -> bool:
    """Whether a LIKE pattern ends with an escape character (``\\``) that escapes nothing:
    PostgreSQL refuses such a pattern when it runs."""
    trailing = len(pattern) - len(pattern.rstrip("\\"))
    return trailing % 2 == 1


def _sqlite_text(op: Operator, left: Any, value: str, where: str) -> ColumnElement[bool]:
    """The text operators as PostgreSQL answers them: ``like`` and its kin case-sensitive (SQLite's
    LIKE ignores case), ``\\`` escaping the next character of a pattern, ``ilike`` ignoring the
    case of any letter (SQLite folds ASCII letters only: a pattern with other letters of two cases
    is refused, never answered wrongly)."""
    if op is Operator.CONTAINS:
        return func.instr(left, value) > 0
    if op is Operator.STARTS_WITH:
        return func.substr(left, 1, len(value)) == value
    if op in (Operator.ILIKE, Operator.NOT_ILIKE):
        if any(not char.isascii() and char.lower() != char.upper() for char in value):
            raise FilterError(
                f"operator {op.value!r} on {where}: SQLite ignores the case of ASCII letters only, and pattern "
                f"{_shown(value)} has other letters; PostgreSQL can, or use like with both cases"
            )
        matched = left.ilike(value, escape="\\")
        return matched if op is Operator.ILIKE else not_(matched)  # type: ignore[no-any-return]
    glob = left.op("GLOB", is_comparison=True)(_glob_of_like(value))
    return glob if op is Operator.LIKE else not_(glob)  # type: ignore[no-any-return]


def _glob_of_like(pattern: str) -> str:
    """A LIKE pattern (``%`` any run, ``_`` one character, ``\\`` escaping the next character) as
    the same GLOB pattern."""
    special = {"*": "[*]", "?": "[?]", "[": "[[]"}
    wildcards = {"%": "*", "_": "?"}
    glob: list[str] = []
    escaped = False
    for char in pattern:
        if escaped:
            glob.append(special.get(char, char))
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            glob.append(wildcards.get(char) or special.get(char, char))
    return "".join(glob)


def _path(field: str, dialect: str) -> tuple[str | int, ...]:
    """The keys of ``field`` (a key of ASCII digits is an array index)."""
    keys = field.split("__")
    if any(not key for key in keys):
        raise FilterError(f"field {_shown(field)} has an empty key")
    for key in keys:
        problem = _unfit(key)
        if problem is not None:
            raise FilterError(f"field {_shown(field)} has a key that is {problem}")
        if dialect == "sqlite" and '"' in key:
            raise FilterError(
                f"field {_shown(field)}: SQLite's JSON paths cannot name a key with a double quote; PostgreSQL can"
            )
    return tuple(int(key) if key.isascii() and key.isdigit() else key for key in keys)


def _sqlite_path(path: tuple[str | int, ...]) -> str:
    """``path`` as SQLite's JSON path (``$."boefje"."id"``, ``$."tags"[0]``)."""
    return "$" + "".join(f"[{k}]" if isinstance(k, int) else f'."{k}"' for k in path)


def _pg_at(data: Any, path: tuple[str | int, ...], *, as_text: bool) -> ColumnElement[Any]:
    """The JSON (or, ``as_text``, its text) at ``path`` on PostgreSQL (``#>``, ``#>>``), the path
    bound as an array of text: any key works, whatever characters it holds."""
    keys = bindparam(None, [str(k) for k in path], type_=ARRAY(Text()))
    if as_text:
        return data.op("#>>", return_type=Text())(keys)  # type: ignore[no-any-return]
    return data.op("#>", return_type=JSONB())(keys)  # type: ignore[no-any-return]


#: The JSON types a filter's value is compared with: (PostgreSQL's ``jsonb_typeof``, SQLite's
#: ``json_type``) per kind of value.
_JSON_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "string": (("string",), ("text",)),
    "number": (("number",), ("integer", "real")),
    "boolean": (("boolean",), ("true", "false")),
}


def _json_typed(data: Any, path: tuple[str | int, ...], kind: str, dialect: str) -> ColumnElement[Any]:
    """The JSON value at ``path`` when it is of ``kind`` (a string as text, a number, a boolean),
    else NULL: a value of another type never matches, on either database, and PostgreSQL never
    casts a value that is not of the type (an error when the statement runs)."""
    pg_types, sqlite_types = _JSON_TYPES[kind]
    sql_type: Any = {"string": Text(), "number": Numeric(), "boolean": Boolean()}[kind]
    if dialect == "postgresql":
        typeof = func.jsonb_typeof(_pg_at(data, path, as_text=False))
        raw = _pg_at(data, path, as_text=True)
        value: Any = raw if kind == "string" else cast(raw, sql_type)
        return case((typeof.in_(pg_types), value), else_=None)
    where = _sqlite_path(path)
    json_type = func.json_type(data, where)
    if kind == "boolean":
        return case((json_type.in_(sqlite_types), json_type == "true"), else_=None)
    return type_coerce(case((json_type.in_(sqlite_types), func.json_extract(data, where)), else_=None), sql_type)


def _json_text(data: Any, path: tuple[str | int, ...], dialect: str) -> ColumnElement[Any]:
    """The value at ``path``, NULL when it is missing or JSON null (any other value is not NULL)."""
    if dialect == "postgresql":
        return _pg_at(data, path, as_text=True)
    return func.json_extract(data, _sqlite_path(path))


def _json_condition(item: Filter, dialect: str, table: Table) -> ColumnElement[bool]:
    data = table.c.data
    op = item.operator
    if op in (Operator.JSON_CONTAINS, Operator.JSON_CONTAINED_BY):
        target = cast(data, JSONB) if item.field is None else _pg_at(data, _path(item.field, dialect), as_text=False)
        document = cast(bindparam(None, orjson.dumps(_plain(item.value)).decode(), type_=String()), JSONB)
        return target.op(op.value, is_comparison=True)(document)
    if op in (Operator.JSON_PATH_EXISTS, Operator.JSON_PATH_MATCH):
        if item.field is not None:
            raise FilterError(f"operator {op.value!r} takes a JSON path as its value, not a field")
        if not isinstance(item.value, str):
            raise FilterError(f"operator {op.value!r} needs a JSON path (text), not {_shown(item.value)}")
        return _json_path(data, op, item.value)
    if item.field is None:
        if op in (Operator.IS_NULL, Operator.IS_NOT_NULL):
            return data.is_(None) if op is Operator.IS_NULL else data.is_not(None)
        raise FilterError(f"operator {op.value!r} on column 'data' needs a field (a path into its JSON)")
    path = _path(item.field, dialect)
    if op is Operator.ANY:
        return _json_any(path, item, dialect, table)
    if op in (Operator.IS_NULL, Operator.IS_NOT_NULL) or (op in (Operator.IS, Operator.IS_NOT) and item.value is None):
        missing = _json_text(data, path, dialect).is_(None)
        return missing if op in (Operator.IS_NULL, Operator.IS) else not_(missing)
    sample = _sample(item.value)
    kind = "boolean" if isinstance(sample, bool) else "number" if isinstance(sample, int | float) else "string"
    left = _json_typed(data, path, kind, dialect)
    return _compare(item, left, _plain(item.value), is_text=kind == "string", dialect=dialect)


def _json_path(data: Any, op: Operator, path: str) -> ColumnElement[bool]:
    """``data @? path`` or ``data @@ path`` as PostgreSQL's ``jsonb_path_exists_tz`` and
    ``jsonb_path_match_tz`` (silent, as the operators are): the same answers, but a datetime with
    a zone compared with one without (``.datetime()``) takes the session's time zone instead of
    failing the statement."""
    function = func.jsonb_path_exists_tz if op is Operator.JSON_PATH_EXISTS else func.jsonb_path_match_tz
    variables = cast(bindparam(None, "{}", type_=String()), JSONB)
    return function(
        cast(data, JSONB), cast(bindparam(None, path, type_=String()), JSONPATH), variables, true(), type_=Boolean()
    )


def _plain(value: Any) -> Any:
    """Datetimes as the ISO text JSON holds them (a list item by item)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.isoformat() if isinstance(value, datetime) else value


def _sample(value: FilterValue) -> Any:
    if isinstance(value, list):
        return next((v for v in value if v is not None), None)
    return value


#: SQLite's ``json_type`` of JSON's constants, and the Python value of each.
_JSON_CONSTANTS = (("true", True), ("false", False), ("null", None))


def _json_any(path: tuple[str | int, ...], item: Filter, dialect: str, table: Table) -> ColumnElement[bool]:
    """The JSON array at ``path`` holds at least one of the values (one value or a list), each
    matched as its own JSON type (a string never matches a number, true never matches 1)."""
    values: list[Any] = _plain(item.value) if isinstance(item.value, list) else [_plain(item.value)]
    if not values:
        return false()
    if dialect == "postgresql":
        # [value] @> for each value, as one expression: target @> ANY(ARRAY['["a"]', '[1]']::jsonb[])
        target = _pg_at(table.c.data, path, as_text=False)
        documents = bindparam(None, [orjson.dumps([v]).decode() for v in values], type_=ARRAY(Text()))
        return target.op("@>", is_comparison=True)(any_(cast(documents, ARRAY(JSONB()))))
    where = _sqlite_path(path)
    each = func.json_each(table.c.data, where).table_valued("value", "type")
    texts = [v for v in values if isinstance(v, str)]
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    matches: list[ColumnElement[bool]] = []
    if texts:
        matches.append(and_(each.c.type == "text", each.c.value.in_(texts)))
    if numbers:
        matches.append(and_(each.c.type.in_(("integer", "real")), each.c.value.in_(numbers)))
    matches.extend(each.c.type == name for name, wanted in _JSON_CONSTANTS if any(v is wanted for v in values))
    is_array = func.json_type(table.c.data, where) == "array"
    return and_(is_array, exists(select(literal_column("1")).select_from(each).where(or_(*matches))))


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
    found = (
        (item.operator, item.value)
        for item in _items(request)
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
    for operator, path in paths:
        problem = _unfit(path)
        if problem is not None:
            raise _refused(f"JSON path {_shown(path)} of operator {operator.value!r} is {problem}")
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


#: The SQLSTATEs of a read that failed on the values its filters met in the rows: a data exception
#: (class 22) or a conversion PostgreSQL will not make for them (0A000, a feature not supported).
_FAILED_ON_DATA_CLASS = "22"
_FAILED_ON_DATA = frozenset({"0A000"})


def failed_on_data(exc: DBAPIError) -> tuple[str, str] | None:
    """The SQLSTATE and PostgreSQL's reason when a read with filters failed on the values its
    filters met in the rows (the filter's doing, not the server's); ``None`` for any other
    failure (the database gone, a timeout, a missing table), which stays a server error."""
    code = str(getattr(exc.orig, "pgcode", None) or "")
    if not code.startswith(_FAILED_ON_DATA_CLASS) and code not in _FAILED_ON_DATA:
        return None
    diag = getattr(exc.orig, "diag", None)
    reason = getattr(diag, "message_primary", None) or str(exc.orig).strip().splitlines()[0]
    return code, str(reason)


def described(request: FilterRequest) -> str:
    """The filters of ``request`` without their values (for a log): column, field, operator."""
    return ", ".join(
        f"{item.column}{'.' + item.field if item.field else ''} {item.operator.value}" for item in _items(request)
    )


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
    "described",
    "failed_on_data",
    "json_paths",
    "split_images",
    "unstorable",
]
