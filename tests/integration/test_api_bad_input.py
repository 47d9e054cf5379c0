"""Every kind of bad input of issue 18 (item 6), on every task route, over real HTTP, on SQLite and
PostgreSQL: unknown fields, wrong types, an unknown scheduler, a malformed uuid, an oversized
``limit``, a body that is not JSON, and what parses but no database takes (an offset or integer
beyond 64 bits, a date outside the years 1 to 9999 in UTC, a NUL character, a lone surrogate,
NaN). Each is answered with the status code mula's clients expect (FastAPI's 422 for a request
that does not parse, 400 for one that parses but makes no sense, 404 for what does not exist) and
a ``{"detail": ...}`` naming the problem; no row and no message changes.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, select

from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.settings import Settings
from kat_scheduler.storage.tables import ScheduleRow, TaskRow, UnpublishedTask
from kat_scheduler.storage.tasks import NewTask, TaskStore
from tests.factories import NewTaskFactory

NOT_JSON = b'{"organisation": "aa",'


@pytest.fixture
def task(engine: Engine) -> NewTask:
    """One queued boefje task, for the routes that name a task."""
    built: NewTask = NewTaskFactory.build()
    TaskStore(engine).claim([built])
    return built


def stored(engine: Engine) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every task, its listing as unpublished, and every schedule, as the database has them."""
    with engine.connect() as conn:
        tasks = [tuple(row) for row in conn.execute(select(TaskRow.__table__).order_by(TaskRow.id))]
        unpublished = [tuple(row) for row in conn.execute(select(UnpublishedTask.__table__))]
        schedules = [tuple(row) for row in conn.execute(select(ScheduleRow.__table__).order_by(ScheduleRow.id))]
    return tasks, unpublished, schedules


def messages(settings: Settings) -> dict[str, int]:
    publisher = make_publisher(settings)
    try:
        return {queue: publisher.queue_depth(queue) for queue in ("boefjes", "normalizers")}
    finally:
        publisher.close()


def rocky_push(data_extra: dict[str, object] | None = None, **changes: object) -> dict[str, object]:
    """Rocky's push of a boefje task (rocky/rocky/scheduler.py, push_task), with ``changes`` (and
    ``data_extra`` in its data)."""
    task_id = str(uuid.uuid4())
    data: dict[str, object] = {
        "id": task_id,
        "boefje": {"id": "dns-records"},
        "input_ooi": "Hostname|internet|a.nl",
        "organization": "aa",
        **(data_extra or {}),
    }
    return {"id": task_id, "scheduler_id": "boefje", "organisation": "aa", "priority": 1, "data": data, **changes}


WORKER_FILTER = {"filters": [{"column": "data", "field": "boefje__oci_image", "operator": "in", "value": ["x"]}]}

#: (case, method, path ("{task}": the queued task's id), query, JSON body or raw bytes, status,
#: what the detail must name).
CASES: list[tuple[str, str, str, dict[str, Any], Any, int, str]] = [
    # unknown fields
    ("patch: an unknown field", "PATCH", "/tasks/{task}", {}, {"status": "running", "colour": "red"}, 422, "colour"),
    ("filter: an unknown key", "POST", "/tasks", {}, {"filters": [{**WORKER_FILTER["filters"][0], "x": 1}]}, 422, "x"),
    (
        "filter: an unknown column",
        "POST",
        "/tasks",
        {},
        {"filters": [{"column": "colour", "operator": "==", "value": 1}]},
        400,
        "colour",
    ),
    ("pop: an unknown body key", "POST", "/schedulers/boefje/pop", {}, {"where": []}, 422, "where"),
    # wrong types
    (
        "push: priority is no integer",
        "POST",
        "/schedulers/boefje/push",
        {},
        rocky_push(priority="high"),
        422,
        "priority",
    ),
    ("push: data is no object", "POST", "/schedulers/boefje/push", {}, rocky_push(data="nmap"), 422, "data"),
    ("push: no organisation", "POST", "/schedulers/boefje/push", {}, {"data": {}}, 422, "organisation"),
    (
        "push: data that is no boefje task",
        "POST",
        "/schedulers/boefje/push",
        {},
        rocky_push(data={"organization": "aa"}),
        400,
        "not a boefje task",
    ),
    ("patch: status is no status", "PATCH", "/tasks/{task}", {}, {"status": "exploded"}, 422, "status"),
    ("patch: status is a number", "PATCH", "/tasks/{task}", {}, {"status": 5}, 422, "status"),
    ("list: limit is no integer", "GET", "/tasks", {"limit": "ten"}, None, 422, "limit"),
    ("list: a date that is none", "GET", "/tasks", {"min_created_at": "yesterday"}, None, 422, "min_created_at"),
    ("pop: filters is no list", "POST", "/schedulers/boefje/pop", {}, {"filters": "boefje"}, 422, "filters"),
    (
        "filter: a text value on a number column",
        "POST",
        "/tasks",
        {},
        {"filters": [{"column": "priority", "operator": "==", "value": "high"}]},
        400,
        "priority",
    ),
    # unknown scheduler
    ("push: an unknown scheduler", "POST", "/schedulers/nope/push", {}, rocky_push(scheduler_id="nope"), 404, "nope"),
    ("pop: an unknown scheduler", "POST", "/schedulers/nope/pop", {}, None, 404, "nope"),
    ("scheduler: an unknown one", "GET", "/schedulers/nope", {}, None, 404, "nope"),
    ("list: an unknown scheduler", "GET", "/tasks", {"scheduler_id": "nope"}, None, 422, "scheduler_id"),
    ("stats: an unknown scheduler", "GET", "/tasks/stats", {"scheduler_id": "nope"}, None, 422, "scheduler_id"),
    (
        "push: a scheduler_id against the path",
        "POST",
        "/schedulers/normalizer/push",
        {},
        rocky_push(),
        400,
        "scheduler_id",
    ),
    # malformed uuid
    ("get: a malformed id", "GET", "/tasks/not-a-uuid", {}, None, 422, "task_id"),
    ("patch: a malformed id", "PATCH", "/tasks/not-a-uuid", {}, {"status": "running"}, 422, "task_id"),
    ("push: a malformed id", "POST", "/schedulers/boefje/push", {}, rocky_push(id="not-a-uuid"), 422, "id"),
    (
        "filter: a malformed id",
        "POST",
        "/tasks",
        {},
        {"filters": [{"column": "id", "operator": "==", "value": "x"}]},
        400,
        "column 'id'",
    ),
    # oversized limit
    ("pop: limit over 500", "POST", "/schedulers/boefje/pop", {"limit": 501}, None, 422, "limit"),
    ("list: limit over 500", "GET", "/tasks", {"limit": 501}, None, 422, "limit"),
    ("search: limit over 500", "POST", "/tasks", {"limit": 501}, None, 422, "limit"),
    (
        "list: max_pages over 20",
        "GET",
        "/tasks",
        {"max_pages": 21, "allow_partial_count": "true"},
        None,
        422,
        "max_pages",
    ),
    # a body that is not JSON
    ("push: not JSON", "POST", "/schedulers/boefje/push", {}, NOT_JSON, 422, "JSON"),
    ("pop: not JSON", "POST", "/schedulers/boefje/pop", {}, NOT_JSON, 422, "JSON"),
    ("patch: not JSON", "PATCH", "/tasks/{task}", {}, NOT_JSON, 422, "JSON"),
    ("search: not JSON", "POST", "/tasks", {}, NOT_JSON, 422, "JSON"),
    # what parses but no database takes (each was a 500)
    ("list: an offset beyond 64 bits", "GET", "/tasks", {"offset": 2**63}, None, 422, "offset"),
    ("search: an offset beyond 64 bits", "POST", "/tasks", {"offset": 2**64}, None, 422, "offset"),
    ("schedules: an offset beyond 64 bits", "GET", "/schedules", {"offset": 10**30}, None, 422, "offset"),
    (
        "schedule search: an offset beyond 64 bits",
        "POST",
        "/schedules/search",
        {"offset": 2**63},
        {"filters": [{"column": "organisation", "operator": "==", "value": "aa"}]},
        422,
        "offset",
    ),
    (
        "list: a date before the year 1 in UTC",
        "GET",
        "/tasks",
        {"min_created_at": "0001-01-01T00:00:00+01:00"},
        None,
        400,
        "min_created_at",
    ),
    (
        "schedules: a date after the year 9999 in UTC",
        "GET",
        "/schedules",
        {"max_deadline_at": "9999-12-31T23:59:59-14:00"},
        None,
        400,
        "max_deadline_at",
    ),
    ("list: NUL in an organisation", "GET", "/tasks", {"organisation": "a\x00"}, None, 400, "organisation"),
    ("search: NUL in a plugin id", "POST", "/tasks", {"plugin_id": "\x00"}, None, 400, "plugin_id"),
    ("stats: NUL in an organisation", "GET", "/tasks/stats", {"organisation_id": "\x00"}, None, 400, "organisation_id"),
    ("schedules: NUL in a hash", "GET", "/schedules", {"schedule_hash": "a\x00"}, None, 400, "schedule_hash"),
    (
        "push: NUL in data",
        "POST",
        "/schedulers/boefje/push",
        {},
        rocky_push(data_extra={"extra": ["ok", "a\x00"]}),
        400,
        "data.extra.1",
    ),
    (
        "push: NUL in the organisation",
        "POST",
        "/schedulers/boefje/push",
        {},
        rocky_push(organisation="a\x00"),
        400,
        "organisation",
    ),
    (
        "push: an integer beyond 64 bits in data",
        "POST",
        "/schedulers/boefje/push",
        {},
        rocky_push(data_extra={"extra": {"n": 2**70}}),
        400,
        "data.extra.n",
    ),
    (
        "push: a priority beyond 64 bits",
        "POST",
        "/schedulers/boefje/push",
        {},
        rocky_push(priority=2**70),
        422,
        "priority",
    ),
    (
        "push: a lone surrogate",
        "POST",
        "/schedulers/boefje/push",
        {},
        b'{"organisation": "aa", "data": {"organization": "\\ud800"}}',
        422,
        "JSON",
    ),
    (
        "push: NaN",
        "POST",
        "/schedulers/boefje/push",
        {},
        b'{"organisation": "aa", "priority": NaN, "data": {}}',
        422,
        "JSON",
    ),
    (
        "report push: NUL in the recipe",
        "POST",
        "/schedulers/report/push",
        {},
        {"organisation": "aa", "data": {"organisation_id": "aa", "report_recipe_id": "r\x00"}},
        400,
        "data.report_recipe_id",
    ),
    ("patch: a lone surrogate", "PATCH", "/tasks/{task}", {}, b'{"status": "\\udc00"}', 422, "JSON"),
    (
        "patch: a created_at after the year 9999 in UTC",
        "PATCH",
        "/tasks/{task}",
        {},
        {"status": "running", "created_at": "9999-12-31T23:59:59-14:00"},
        400,
        "created_at",
    ),
    (
        "pop: a lone surrogate",
        "POST",
        "/schedulers/report/pop",
        {},
        b'{"filters": [{"column": "\\ud800"}]}',
        422,
        "JSON",
    ),
    ("pop: Infinity", "POST", "/schedulers/report/pop", {}, b'{"filters": Infinity}', 422, "JSON"),
]


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "status", "names"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_is_answered_with_the_expected_code_and_a_detail_naming_the_problem_and_changes_nothing(
    api, engine, settings, task, method, path, query, body, status, names
):
    before, waiting = stored(engine), messages(settings)
    sent: dict[str, Any] = {"params": query}
    if isinstance(body, bytes):
        sent.update(data=body, headers={"Content-Type": "application/json"})
    elif body is not None:
        sent["json"] = body

    response = api.http.request(method, api.url + path.format(task=task.id), timeout=10, **sent)

    assert response.status_code == status, response.text
    answer = response.json()
    assert list(answer) == ["detail"], answer
    if status == 422:  # FastAPI's validation errors: each says where (loc) and what (msg)
        assert all({"loc", "msg", "type"} <= set(error) for error in answer["detail"])
        named = [e for e in answer["detail"] if names in [str(part) for part in e["loc"]] or names in e["msg"]]
        assert named, f"{names!r} is not named in {answer['detail']!r}"
    else:
        assert isinstance(answer["detail"], str) and names in answer["detail"], answer["detail"]
    assert stored(engine) == before, "bad input changed what is stored"
    assert messages(settings) == waiting, "bad input published a message"
