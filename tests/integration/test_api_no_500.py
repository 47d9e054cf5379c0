"""No filter ends in a 500 (issue 18): every operator, on columns and on JSON values of ``data`` of
every type, through the real HTTP server on SQLite and PostgreSQL, on every route that takes
filters. A filter is answered with the rows it means (the same rows on both databases) or, when it
cannot be applied, a 400 (422 for a body that is not the filter language, or not JSON) whose
detail names the problem; nothing stored changes, and the server logs no error.

The rows hold the same key (``mixed``) as text, integer, float, boolean, object, JSON null, an
unzoned datetime, and not at all: a filter compares with the values of its own type only (casting
the others failed PostgreSQL's statement, a 500), and a row whose value has another type, like a
row without the value, never matches.
"""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError

from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.filters import MAX_FILTERS, MAX_VALUES, Operator, failed_on_data
from kat_scheduler.storage.tables import ScheduleRow, TaskRow
from kat_scheduler.storage.tasks import TaskStore
from tests.api_server import ApiServer
from tests.factories import NewTaskFactory

#: The rows (by name) and the data each holds besides a boefje task's own.
ROWS: dict[str, dict[str, Any]] = {
    "text": {"mixed": "abc", "created": "2020-01-01T00:00:00+00:00", "tags": ["x", 1, True, None], "name": "Émile"},
    "int": {"mixed": 5, "created": "2021-06-01", "tags": [1, 2]},
    "float": {"mixed": 1.5, "created": "2020-03-01T00:00:00"},
    "true": {"mixed": True, "created": "soon", "tags": "x"},
    "object": {"mixed": {"a": 1}, 'we"ird': 1, "a,b": {"c": 2}},
    "null": {"mixed": None},
    "missing": {},
    "date": {"mixed": "2020-01-01T00:00:00", "created": "2019-12-31T23:00:00-02:00", "name": "émile"},
}
ALL = frozenset(ROWS)
SEARCHES = ["/tasks", "/schedulers/boefje/pop", "/schedulers/report/pop", "/schedules/search"]


def on(field: str, operator: str, value: object = None) -> dict[str, object]:
    return {"column": "data", "field": field, "operator": operator, "value": value}


def mixed(operator: str, value: object = None) -> dict[str, object]:
    return on("mixed", operator, value)


#: (case, filters, the rows found on SQLite, on PostgreSQL: a set of names, or the 400's detail).
FOUND: list[tuple[str, Any, frozenset[str] | str, frozenset[str] | str]] = [
    ("text ==", [mixed("==", "abc")], frozenset({"text"}), frozenset({"text"})),
    ("text != (only text)", [mixed("!=", "abc")], frozenset({"date"}), frozenset({"date"})),
    ("text > (text order)", [mixed(">", "2019")], frozenset({"text", "date"}), frozenset({"text", "date"})),
    ("text order is code point order", [mixed(">", "B")], frozenset({"text"}), frozenset({"text"})),
    ("integer >", [mixed(">", 2)], frozenset({"int"}), frozenset({"int"})),
    ("integer == float", [mixed("==", 5.0)], frozenset({"int"}), frozenset({"int"})),
    ("float <", [mixed("lt", 2)], frozenset({"float"}), frozenset({"float"})),
    ("numbers in", [mixed("in", [5, 1.5, 7])], frozenset({"int", "float"}), frozenset({"int", "float"})),
    ("texts not_in", [mixed("not_in", ["abc"])], frozenset({"date"}), frozenset({"date"})),
    ("is true", [mixed("is", True)], frozenset({"true"}), frozenset({"true"})),
    ("== false", [mixed("==", False)], frozenset(), frozenset()),
    ("is_not true", [mixed("is_not", True)], ALL - {"true"}, ALL - {"true"}),
    ("is_null", [mixed("is_null")], frozenset({"null", "missing"}), frozenset({"null", "missing"})),
    ("is null", [mixed("is", None)], frozenset({"null", "missing"}), frozenset({"null", "missing"})),
    ("is_not_null", [mixed("is_not_null")], ALL - {"null", "missing"}, ALL - {"null", "missing"}),
    ("like on text only", [mixed("like", "%")], frozenset({"text", "date"}), frozenset({"text", "date"})),
    ("like escaped", [mixed("like", "2020\\-%")], frozenset({"date"}), frozenset({"date"})),
    ("ilike", [mixed("ilike", "ABC")], frozenset({"text"}), frozenset({"text"})),
    ("contains", [mixed("contains", "b")], frozenset({"text"}), frozenset({"text"})),
    ("starts_with", [mixed("starts_with", "2020")], frozenset({"date"}), frozenset({"date"})),
    ("datetime as text", [mixed("<", "2020-01-01T00:00:01")], frozenset({"date"}), frozenset({"date"})),
    ("any text (arrays only)", [on("tags", "any", ["x"])], frozenset({"text"}), frozenset({"text"})),
    ("any number", [on("tags", "any", [2])], frozenset({"int"}), frozenset({"int"})),
    ("any 1 is no true", [on("tags", "any", [1])], frozenset({"text", "int"}), frozenset({"text", "int"})),
    ("any true", [on("tags", "any", True)], frozenset({"text"}), frozenset({"text"})),
    ("an array index", [on("tags__0", "==", "x")], frozenset({"text"}), frozenset({"text"})),
    ("a key with a comma", [on("a,b__c", "==", 2)], frozenset({"object"}), frozenset({"object"})),
    ("not: unknown stays out", {"not": [mixed("==", "abc")]}, frozenset({"date"}), frozenset({"date"})),
    (
        "created_at (was a 500)",
        [{"column": "created_at", "operator": ">", "value": "2000-01-01"}],
        ALL,
        ALL,
    ),
    (
        "created_at none",
        [{"column": "created_at", "operator": "<", "value": "2000-01-01T00:00:00+02:00"}],
        frozenset(),
        frozenset(),
    ),
    (
        "a key with a double quote",
        [on('we"ird', "==", 1)],
        "SQLite's JSON paths cannot name a key with a double quote",
        frozenset({"object"}),
    ),
    (
        "ilike on letters beyond ASCII",
        [on("name", "ilike", "ÉMILE")],
        "SQLite ignores the case of ASCII letters only",
        frozenset({"text", "date"}),
    ),
    (
        "@? datetimes with and without a zone (was a 500)",
        [
            {
                "column": "data",
                "operator": "@?",
                "value": '$.created ? (@.datetime() < "2020-06-01T00:00:00+00:00".datetime())',
            }
        ],
        "operator '@?' needs PostgreSQL",
        frozenset({"text", "float", "date"}),
    ),
    (
        "@@ a datetime against a date, and text that is none",
        [{"column": "data", "operator": "@@", "value": '$.mixed.datetime() < "2020-06-01".datetime()'}],
        "operator '@@' needs PostgreSQL",
        frozenset({"date"}),
    ),
    ("@>", [on("tags", "@>", ["x"])], "operator '@>' needs PostgreSQL", frozenset({"text"})),
    ("match", [mixed("match", "abc")], "operator 'match' needs PostgreSQL", frozenset({"text"})),
]

#: (case, filters, status, what the detail names): refused alike on both databases.
REFUSED: list[tuple[str, Any, int, str]] = [
    ("an ordered boolean (was a 500)", [mixed(">", True)], 400, "true and false take ==, !=, is, is_not"),
    ("false ordered", [mixed("gte", False)], 400, "orders values"),
    ("a pattern ending in its escape (was a 500)", [mixed("like", "ab\\")], 400, "ends with the escape character"),
    ("NUL in a value (was a 500)", [mixed("==", "a\x00")], 400, "NUL character"),
    ("NUL in a field (was a 500)", [on("mi\x00xed", "==", 1)], 400, "NUL character"),
    ("NUL in a column filter", [{"column": "organisation", "operator": "==", "value": "\x00"}], 400, "NUL"),
    ("an integer beyond 64 bits (was a 500)", [mixed("==", 2**70)], 400, "outside the 64-bit range"),
    (
        "text as a datetime column (was a 500)",
        [{"column": "created_at", "operator": "==", "value": "x"}],
        400,
        "created_at",
    ),
    ("a number as a datetime column", [{"column": "created_at", "operator": "<", "value": 5}], 400, "created_at"),
    (
        "a datetime out of range in UTC",
        [{"column": "modified_at", "operator": "<", "value": "0001-01-01T00:00:00+01:00"}],
        400,
        "modified_at",
    ),
    ("a list for ==", [mixed("==", [1])], 400, "needs a single value"),
    ("no list for in", [mixed("in", 1)], 400, "needs a list value"),
    ("too many values", [mixed("in", list(range(MAX_VALUES + 1)))], 400, f"at most {MAX_VALUES}"),
    ("too many filters", [mixed("==", n) for n in range(MAX_FILTERS + 1)], 400, f"at most {MAX_FILTERS}"),
    ("an empty key", [on("tags____0", "==", 1)], 400, "empty key"),
    ("a JSON path with NUL", [{"column": "data", "operator": "@?", "value": "$.a\x00"}], 400, "@?"),
    ("an unknown operator", [mixed("~", 1)], 422, "operator"),
    ("an object value", [mixed("==", {"a": 1})], 422, "value"),
    ("a mixed list", [mixed("in", [1, "a"])], 422, "value"),
]
#: Bodies Python's parser reads but JSON does not allow: 422 json_invalid, as any body that is not JSON.
NOT_JSON: list[tuple[str, bytes]] = [
    (
        "a lone surrogate (was a 500)",
        b'{"filters": [{"column": "organisation", "operator": "==", "value": "\\ud800"}]}',
    ),
    ("a lone surrogate as a column (was a 500)", b'{"filters": [{"column": "\\udfff", "operator": "==", "value": 1}]}'),
    ("NaN (was a 500)", b'{"filters": [{"column": "data", "field": "mixed", "operator": "<", "value": NaN}]}'),
    ("Infinity", b'{"filters": [{"column": "priority", "operator": "<", "value": -Infinity}]}'),
    ("a number beyond a double", b'{"filters": [{"column": "priority", "operator": "<", "value": 1e400}]}'),
]


@pytest.fixture
def rows(engine: Engine) -> dict[str, str]:
    """The rows of :data:`ROWS` as boefje tasks; their ids by name."""
    store = TaskStore(engine)
    found: dict[str, str] = {}
    for name, extra in ROWS.items():
        task = NewTaskFactory.build()
        store.claim(
            [NewTaskFactory.build(id=task.id, hash=task.hash, input_ooi=task.input_ooi, data=task.data | extra)]
        )
        found[str(task.id)] = name
    return found


def stored(engine: Engine) -> tuple[object, ...]:
    with engine.connect() as conn:
        tasks = conn.execute(select(func.count(), func.max(TaskRow.modified_at))).one()
        schedules = conn.execute(select(func.count(), func.max(ScheduleRow.modified_at))).one()
    return (*tasks, *schedules)


def search(api: ApiServer, path: str, filters: Any) -> Any:
    return api.post(path, json={"filters": filters}, params={"limit": 500})


def assert_no_server_error(caplog: pytest.LogCaptureFixture) -> None:
    assert "Exception in ASGI application" not in caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(("filters", "on_sqlite", "on_postgresql"), [c[1:] for c in FOUND], ids=[c[0] for c in FOUND])
def test_a_filter_finds_the_rows_it_means_or_is_a_400_naming_what_this_database_cannot_do(
    api, engine, rows, filters, on_sqlite, on_postgresql, caplog
):
    expected = on_postgresql if engine.dialect.name == "postgresql" else on_sqlite
    before = stored(engine)

    response = search(api, "/tasks", filters)

    if isinstance(expected, str):
        assert response.status_code == 400, response.text
        assert expected in response.json()["detail"]
    else:
        assert response.status_code == 200, response.text
        assert {rows[t["id"]] for t in response.json()["results"]} == expected
    assert stored(engine) == before
    assert_no_server_error(caplog)


@pytest.mark.parametrize("path", SEARCHES)
@pytest.mark.parametrize(("filters", "status", "names"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_filter_that_cannot_be_applied_is_refused_naming_the_problem_on_every_route(
    api, engine, rows, path, filters, status, names, caplog
):
    before = stored(engine)

    response = search(api, path, filters)

    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    if status == 400:
        assert isinstance(detail, str) and names in detail, detail
    else:
        assert any(names in [str(p) for p in e["loc"]] or names in e["msg"] for e in detail), detail
    assert stored(engine) == before
    assert_no_server_error(caplog)


@pytest.mark.parametrize("path", SEARCHES)
@pytest.mark.parametrize("body", [c[1] for c in NOT_JSON], ids=[c[0] for c in NOT_JSON])
def test_a_body_that_json_does_not_allow_is_422_json_invalid_on_every_route(api, engine, rows, path, body, caplog):
    before = stored(engine)

    response = api.post(path, data=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["type"] == "json_invalid" and error["loc"][0] == "body"
    assert stored(engine) == before
    assert_no_server_error(caplog)


#: Every operator, with a value of every type the filter language has, on a JSON value of every
#: type and on a column of every type: each answers 200 or 400/422 with a detail, never a 500.
VALUES: list[object] = [
    "abc",
    "",
    "a%\\\\_",
    0,
    -(2**63),
    1.5,
    True,
    None,
    "2020-01-01T00:00:00",
    "2020-01-01T00:00:00+02:00",
    "2020-01-01",
    [],
    ["abc", "x"],
    [1, 2],
    [1.5],
    [True, False],
    [None],
    ["2020-01-01T00:00:00Z"],
]
TARGETS: list[tuple[str, str | None]] = [
    ("data", "mixed"),
    ("data", "tags"),
    ("data", "tags__1"),
    ("data", "nothing__here"),
    ("data", None),
    ("organisation", None),
    ("priority", None),
    ("status", None),
    ("created_at", None),
    ("id", None),
    ("schedule_id", None),
]


@pytest.mark.parametrize(("column", "field"), TARGETS, ids=[f"{c}.{f}" if f else c for c, f in TARGETS])
def test_every_operator_with_every_kind_of_value_answers_without_a_server_error(
    api, engine, rows, column, field, caplog
):
    before = stored(engine)
    answers: dict[int, int] = {}
    for operator, value in itertools.product(Operator, VALUES):
        item: dict[str, object] = {"column": column, "operator": operator.value, "value": value}
        if field is not None:
            item["field"] = field

        response = search(api, "/tasks", [item])

        answers[response.status_code] = answers.get(response.status_code, 0) + 1
        assert response.status_code in (200, 400, 422), (item, response.status_code, response.text)
        if response.status_code != 200:
            assert response.json()["detail"], (item, response.text)
    assert answers.get(200), answers
    assert stored(engine) == before
    assert_no_server_error(caplog)


def test_the_pull_pop_takes_only_the_tasks_whose_value_has_the_filters_type(api, engine):
    store = TaskStore(engine)
    ids: dict[str, str] = {}
    for name, value in (("int", 5), ("text", "7"), ("true", True), ("float", 2.5)):
        task = NewTaskFactory.build(
            scheduler_id=SchedulerId.REPORT, type="report", data={"report_recipe_id": name, "level": value}
        )
        store.claim([task])
        ids[str(task.id)] = name

    popped = api.post("/schedulers/report/pop", json={"filters": [on("level", ">", 2)]}, params={"limit": 10})
    listed = search(api, "/tasks", [on("level", ">", "2")])

    assert popped.status_code == 200, popped.text
    assert sorted(ids[t["id"]] for t in popped.json()["results"]) == ["float", "int"]
    assert [ids[t["id"]] for t in listed.json()["results"]] == ["text"]


def test_a_schedule_search_compares_json_values_by_type_and_reads_datetime_columns(api, engine):
    made: dict[str, str] = {}
    for name, value in (("int", 5), ("text", "abc"), ("object", {"a": 1})):
        data = {"organisation_id": "aa", "report_recipe_id": str(uuid.uuid4()), "mixed": value}
        created = api.post(
            "/schedules", json={"scheduler_id": "report", "organisation": "aa", "data": data, "schedule": "0 6 * * *"}
        )
        assert created.status_code == 201, created.text
        made[created.json()["id"]] = name

    numbers = search(api, "/schedules/search", [mixed(">=", 5)])
    recent = search(api, "/schedules/search", [{"column": "deadline_at", "operator": ">", "value": "2000-01-01"}])

    assert [made[s["id"]] for s in numbers.json()["results"]] == ["int"]
    assert {made[s["id"]] for s in recent.json()["results"]} == {"int", "text", "object"}


def test_only_a_read_failing_on_the_values_its_filters_met_counts_as_the_filters_doing(pg_engine):
    # The last resort of POST /tasks and POST /schedules/search (no filter known to reach it):
    # PostgreSQL's data exceptions are the filter's doing, a missing table or a lost server is not.
    def failure(statement: str, engine: Engine = pg_engine) -> DBAPIError:
        with pytest.raises(DBAPIError) as raised, engine.connect() as conn:
            conn.execute(text(statement))
        return raised.value

    lost = make_engine("postgresql://nobody@127.0.0.1:1/none")
    try:
        assert failed_on_data(failure("SELECT CAST('x' AS integer)")) == (
            "22P02",
            'invalid input syntax for type integer: "x"',
        )
        template = failed_on_data(failure("SELECT jsonb_path_query('\"x\"', '$.datetime(\"FMxx\")')"))
        assert template is not None and template[0] == "22007"
        assert failed_on_data(failure("SELECT * FROM no_such_table")) is None
        assert failed_on_data(failure("SELECT 1", lost)) is None
    finally:
        lost.dispose()


def test_a_json_body_in_utf_16_is_still_read(api, rows):
    # JSON that Python reads and the strict check does not (UTF-16) reaches the route as before.
    body = json.dumps({"filters": [mixed("==", "abc")]}).encode("utf-16")

    response = api.post("/tasks", data=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 200, response.text
    assert [rows[t["id"]] for t in response.json()["results"]] == ["text"]
