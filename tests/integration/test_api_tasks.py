"""The task routes of the HTTP API, over real HTTP (uvicorn on loopback), on SQLite and PostgreSQL.

Request bodies are the ones OpenKAT's clients send; each test quotes where it comes from.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from kat_scheduler.models.tasks import TaskStatus
from kat_scheduler.storage.tasks import TaskStore
from tests.factories import NewTaskFactory


@pytest.fixture
def store(engine: Engine) -> TaskStore:
    return TaskStore(engine)


def queued(store: TaskStore, count: int = 1, **fields: object) -> list[uuid.UUID]:
    tasks = NewTaskFactory.build_batch(count, **fields)
    store.claim(tasks)
    return [t.id for t in tasks]


def snapshot(store: TaskStore, task_id: uuid.UUID) -> tuple[object, ...]:
    row = store.get(task_id)
    assert row is not None
    return (row.status, row.modified_at, row.started_at, row.ended_at, row.attempts)


# --- GET /tasks/{id} ------------------------------------------------------------------------


def test_a_task_is_served_in_mulas_shape_with_the_boefjes_oci_image_key(api, store):
    [task_id] = queued(store, organisation="aa")

    response = api.get(f"/tasks/{task_id}")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
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
    }
    assert body["id"] == body["data"]["id"] == str(task_id)
    assert (body["scheduler_id"], body["status"], body["type"], body["organisation"]) == (
        "boefje",
        "queued",
        "boefje",
        "aa",
    )
    assert body["data"]["boefje"]["oci_image"] is None
    assert body["created_at"].endswith("Z")


def test_an_unknown_task_is_404_and_a_malformed_id_422(api):
    missing = uuid.uuid4()

    unknown = api.get(f"/tasks/{missing}")
    malformed = api.get("/tasks/not-a-uuid")

    assert unknown.status_code == 404
    assert unknown.json() == {"detail": f"task not found: {missing}"}
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["loc"] == ["path", "task_id"]


# --- PATCH /tasks/{id} ----------------------------------------------------------------------
# boefjes/boefjes/clients/scheduler_client.py, patch_task:
#     self._session.patch(f"/tasks/{task_id}", json={"status": status.value})


def test_a_worker_patching_running_then_completed_frees_the_hash_and_counts_as_a_run(api, store):
    [task_id] = queued(store)
    row = store.get(task_id)
    assert row is not None
    hash_, created = row.hash, row.modified_at

    running = api.patch(f"/tasks/{task_id}", json={"status": "running"})
    completed = api.patch(f"/tasks/{task_id}", json={"status": "completed"})

    assert running.status_code == 200 and running.json()["status"] == "running"
    assert completed.status_code == 200 and completed.json()["status"] == "completed"
    started_at = datetime.fromisoformat(running.json()["modified_at"])
    ended_at = datetime.fromisoformat(completed.json()["modified_at"])
    assert created < started_at <= ended_at
    assert store.live_hashes([hash_]) == set()
    assert store.last_runs([hash_]) == {hash_: ended_at}
    stored = store.get(task_id)
    assert stored is not None and stored.attempts == 1 and stored.started_at == started_at


def test_a_runner_patching_a_running_task_back_to_queued_keeps_its_hash_live(api, store):
    [task_id] = queued(store)
    api.patch(f"/tasks/{task_id}", json={"status": "running"})

    response = api.patch(f"/tasks/{task_id}", json={"status": "queued"})

    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    row = store.get(task_id)
    assert row is not None and row.status is TaskStatus.QUEUED
    assert store.live_hashes([row.hash]) == {row.hash}


def test_a_completed_task_cannot_be_patched_running_and_nothing_changes(api, store):
    [task_id] = queued(store)
    api.patch(f"/tasks/{task_id}", json={"status": "running"})
    api.patch(f"/tasks/{task_id}", json={"status": "completed"})
    before = snapshot(store, task_id)

    response = api.patch(f"/tasks/{task_id}", json={"status": "running"})

    assert response.status_code == 400
    assert response.json() == {
        "detail": f"task {task_id} is completed and cannot become running (it can become nothing: it is final)"
    }
    assert snapshot(store, task_id) == before


def test_patching_the_status_a_task_already_has_changes_nothing(api, store):
    [task_id] = queued(store)
    before = snapshot(store, task_id)

    response = api.patch(f"/tasks/{task_id}", json={"status": "queued"})

    assert response.status_code == 200
    assert snapshot(store, task_id) == before


def test_an_empty_patch_is_400_no_data_to_patch_and_nothing_changes(api, store):
    [task_id] = queued(store)
    before = snapshot(store, task_id)

    response = api.patch(f"/tasks/{task_id}", json={})

    assert response.status_code == 400
    assert response.json() == {"detail": "no data to patch"}
    assert snapshot(store, task_id) == before


def test_an_unknown_status_is_422_naming_the_field_and_nothing_changes(api, store):
    [task_id] = queued(store)
    before = snapshot(store, task_id)

    response = api.patch(f"/tasks/{task_id}", json={"status": "exploded"})

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "status"]
    assert "queued" in error["msg"]
    assert snapshot(store, task_id) == before


def test_a_patch_that_is_not_json_is_422_and_nothing_changes(api, store):
    [task_id] = queued(store)
    before = snapshot(store, task_id)

    response = api.patch(f"/tasks/{task_id}", data=b"status=running", headers={"Content-Type": "application/json"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert snapshot(store, task_id) == before


def test_a_patch_of_another_field_than_status_is_400_naming_it(api, store):
    [task_id] = queued(store)
    before = snapshot(store, task_id)

    response = api.patch(f"/tasks/{task_id}", json={"status": "running", "priority": 99, "organisation": "zz"})

    assert response.status_code == 400
    assert response.json() == {
        "detail": "only status can be patched; these fields differ from the task: ['organisation', 'priority']"
    }
    assert snapshot(store, task_id) == before


def test_patching_an_unknown_task_is_404(api, store):
    missing = uuid.uuid4()

    response = api.patch(f"/tasks/{missing}", json={"status": "running"})

    assert response.status_code == 404
    assert response.json() == {"detail": f"task not found: {missing}"}


# --- GET /tasks -----------------------------------------------------------------------------
# rocky/rocky/scheduler.py: LazyTaskList counts with list_tasks(limit=0, **kwargs) and pages with
# list_tasks(limit=..., offset=...); its search box sends input_ooi and plugin_id.


def test_a_listing_by_organisation_with_limit_0_is_the_count_alone(api, store):
    queued(store, 3, organisation="aa")
    queued(store, 2, organisation="bb")

    response = api.get("/tasks", params={"scheduler_id": "boefje", "organisation": "aa", "limit": 0})

    assert response.status_code == 200
    assert response.json() == {"count": 3, "next": None, "previous": None, "results": []}


def test_a_listing_by_input_ooi_and_plugin_id_finds_only_those_tasks(api, store):
    [on_object] = queued(store, organisation="aa", input_ooi="Hostname|internet|mispo.es", plugin_id="dns-records")
    queued(store, organisation="aa", input_ooi="Hostname|internet|mispo.es", plugin_id="nmap")
    queued(store, 3, organisation="aa", plugin_id="dns-records")

    by_object = api.get("/tasks", params={"organisation": "aa", "input_ooi": "Hostname|internet|mispo.es"})
    by_both = api.get(
        "/tasks", params={"input_ooi": "Hostname|internet|mispo.es", "plugin_id": "dns-records", "limit": 0}
    )

    assert by_object.json()["count"] == 2
    assert {t["data"]["input_ooi"] for t in by_object.json()["results"]} == {"Hostname|internet|mispo.es"}
    assert by_both.json()["count"] == 1
    assert api.get("/tasks", params={"plugin_id": "dns-records", "input_ooi": "Hostname|internet|mispo.es"}).json()[
        "results"
    ][0]["id"] == str(on_object)


def test_a_listing_is_newest_first_with_links_to_the_next_and_previous_pages(api, store):
    start = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    ids = []
    for minute in range(5):
        task = NewTaskFactory.build()
        store.claim([task], now=start + timedelta(minutes=minute))
        ids.append(str(task.id))

    first = api.get("/tasks", params={"limit": 2}).json()
    second = api.get("/tasks", params={"limit": 2, "offset": 2}).json()

    assert [t["id"] for t in first["results"]] == ids[::-1][:2]
    assert [t["id"] for t in second["results"]] == ids[::-1][2:4]
    assert first["count"] == 5 and first["previous"] is None
    assert first["next"] == f"{api.url}/tasks?offset=2&limit=2"
    assert second["previous"] == f"{api.url}/tasks?offset=0&limit=2"
    assert api.get(first["next"].removeprefix(api.url)).json()["results"] == second["results"]


def test_created_at_bounds_take_a_date_alone(api, store):
    for day in (1, 2, 3):
        store.claim([NewTaskFactory.build()], now=datetime(2026, 5, day, 12, tzinfo=UTC))

    response = api.get("/tasks", params={"min_created_at": "2026-05-02", "max_created_at": "2026-05-03", "limit": 0})

    assert response.status_code == 200
    assert response.json()["count"] == 1


def test_a_bounded_count_stops_after_max_pages_and_says_it_is_partial(api, store):
    queued(store, 12)

    bounded = api.get("/tasks", params={"limit": 2, "max_pages": 2, "allow_partial_count": "true"}).json()
    exact = api.get("/tasks", params={"limit": 2, "max_pages": 2}).json()
    enough = api.get("/tasks", params={"limit": 5, "max_pages": 3, "allow_partial_count": "true"}).json()

    assert (bounded["count"], bounded["is_partial_count"]) == (5, True)
    assert len(bounded["results"]) == 2
    assert exact["count"] == 12 and "is_partial_count" not in exact
    assert (enough["count"], enough["is_partial_count"]) == (12, False)


@pytest.mark.parametrize(
    ("params", "status", "detail"),
    [
        ({"limit": 501}, 422, ["query", "limit"]),
        ({"limit": -1}, 422, ["query", "limit"]),
        ({"max_pages": 21}, 422, ["query", "max_pages"]),
        ({"status": "exploded"}, 422, ["query", "status"]),
        ({"scheduler_id": "nope"}, 422, ["query", "scheduler_id"]),
        ({"min_created_at": "yesterday"}, 422, ["query", "min_created_at"]),
        (
            {"min_created_at": "2026-05-03", "max_created_at": "2026-05-02"},
            400,
            "min_created_at must be less than max_created_at",
        ),
    ],
)
def test_a_bad_listing_query_names_the_problem_and_changes_nothing(api, store, params, status, detail):
    [task_id] = queued(store)
    before = snapshot(store, task_id)

    response = api.get("/tasks", params=params)

    assert response.status_code == status
    body = response.json()
    if status == 422:
        assert body["detail"][0]["loc"] == detail
    else:
        assert body == {"detail": detail}
    assert snapshot(store, task_id) == before


# --- GET /tasks/stats -----------------------------------------------------------------------


def test_stats_count_the_last_24_hours_per_hour_and_status_for_the_organisations_asked(api, store):
    now = datetime.now(UTC)
    recent = now - timedelta(seconds=5)
    this_hour = recent.replace(minute=0, second=0, microsecond=0)
    earlier = this_hour - timedelta(hours=3)
    store.claim(NewTaskFactory.build_batch(2, organisation="aa"), now=recent)
    store.claim(NewTaskFactory.build_batch(1, organisation="bb"), now=recent)
    [done] = NewTaskFactory.build_batch(1, organisation="aa")
    store.claim([done], now=earlier)
    store.start(done.id, "w", now=earlier + timedelta(minutes=1))
    store.finish(done.id, TaskStatus.COMPLETED, now=earlier + timedelta(minutes=2))
    store.claim(NewTaskFactory.build_batch(4, organisation="aa"), now=now - timedelta(hours=30))

    one = api.get("/tasks/stats", params={"organisation_id": "aa"}).json()
    both = api.get("/tasks/stats", params=[("organisation_ids", "aa"), ("organisation_ids", "bb")]).json()
    everyone = api.get("/tasks/stats", params={"scheduler_id": "boefje"}).json()

    zero = {s.value: 0 for s in TaskStatus}
    assert one == {
        earlier.isoformat(): {**zero, "completed": 1, "total": 1},
        this_hour.isoformat(): {**zero, "queued": 2, "total": 2},
    }
    assert both[this_hour.isoformat()]["queued"] == 3
    assert everyone == both
    assert api.get("/tasks/stats", params={"scheduler_id": "report"}).json() == {}


def test_stats_for_an_unknown_scheduler_are_422_naming_it(api, store):
    [task_id] = queued(store)
    before = snapshot(store, task_id)

    response = api.get("/tasks/stats", params={"scheduler_id": "boefje-aa"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "scheduler_id"]
    assert snapshot(store, task_id) == before


# --- /schedulers ----------------------------------------------------------------------------


def test_schedulers_report_their_queued_tasks_and_last_activity(api, store):
    ids = queued(store, 3)
    store.start(ids[0], "w")

    listed = api.get("/schedulers").json()
    boefje = api.get("/schedulers/boefje").json()

    assert [s["id"] for s in listed] == ["boefje", "normalizer", "report"]
    assert boefje["qsize"] == 2
    assert (boefje["type"], boefje["item_type"]) == ("boefje", "BoefjeTask")
    row = store.get(ids[0])
    assert row is not None and datetime.fromisoformat(boefje["last_activity"]) == row.modified_at
    assert api.get("/schedulers/report").json() == {
        "id": "report",
        "type": "report",
        "item_type": "ReportTask",
        "qsize": 0,
        "last_activity": None,
    }


def test_an_unknown_scheduler_is_404_naming_it(api):
    response = api.get("/schedulers/boefje-aa")

    assert response.status_code == 404
    assert response.json() == {"detail": "scheduler not found: 'boefje-aa' (schedulers: boefje, normalizer, report)"}


def test_metrics_give_queue_sizes_and_task_counts_as_prometheus_text(api, store):
    ids = queued(store, 3)
    store.start(ids[0], "w")

    response = api.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert 'scheduler_qsize{scheduler_id="boefje"} 2.0' in lines
    assert 'scheduler_task_status_counts{scheduler_id="boefje",status="running"} 1.0' in lines
    assert 'scheduler_task_status_counts{scheduler_id="normalizer",status="queued"} 0.0' in lines


def test_every_route_is_on_the_openapi_page(api):
    paths = api.get("/openapi.json").json()["paths"]

    assert {"/health", "/metrics", "/schedulers", "/schedulers/{scheduler_id}", "/tasks", "/tasks/stats"} <= set(paths)
    assert set(paths["/tasks/{task_id}"]) == {"get", "patch"}
    assert api.get("/docs").status_code == 200
