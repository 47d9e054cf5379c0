"""Pull delivery: ``POST /schedulers/{id}/pop`` and pushes to pull schedulers, over real HTTP."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
import requests
from sqlalchemy import Engine, select, update

from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.rules.identity import report_task_hash
from kat_scheduler.settings import Settings
from kat_scheduler.sim import SimulatedKAT
from kat_scheduler.storage.tables import TaskRow, UnpublishedTask, utcnow
from kat_scheduler.storage.task_views import TaskViews
from kat_scheduler.storage.tasks import NewTask, TaskStore
from tests.api_server import serve_api
from tests.factories import NewTaskFactory
from tests.push_kat import CLEARED, with_kat

NMAP = "ghcr.io/minvws/openkat/nmap:latest"
DNS = "ghcr.io/minvws/openkat/dns:latest"


@pytest.fixture
def settings(redis_url: str, push_kat: SimulatedKAT) -> Settings:
    """For the shared ``api`` (tests/integration/conftest.py): the boefje scheduler is pulled too."""
    return with_kat(Settings(broker_url=redis_url, pull_schedulers="report,boefje"), push_kat)


def boefje_task(image: str | None = NMAP, *, band: int = 5, priority: int = 0, boefje: str = "nmap") -> NewTask:
    task: NewTask = NewTaskFactory.build(plugin_id=boefje, band=band, priority=priority)
    data = {**task.data, "boefje": {"id": boefje, "oci_image": image}}
    built: NewTask = NewTaskFactory.build(
        id=task.id, plugin_id=boefje, hash=task.hash, band=band, priority=priority, data=data
    )
    return built


def statuses(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {str(i): s.value for i, s in conn.execute(select(TaskRow.id, TaskRow.status))}


def waiting(settings: Settings, queue: str) -> int:
    publisher = make_publisher(settings)
    try:
        return publisher.queue_depth(queue)
    finally:
        publisher.close()


#: The workers' filter body: boefjes/boefjes/clients/scheduler_client.py, pop_items.
IMAGE_FILTER = {"filters": [{"column": "data", "field": "boefje__oci_image", "operator": "in", "value": [NMAP]}]}


def test_a_worker_pop_with_the_image_filter_takes_its_most_urgent_tasks_and_marks_them_dispatched(api, engine):
    store = TaskStore(engine)
    later, sooner, soonest = boefje_task(band=5, priority=9), boefje_task(band=5, priority=1), boefje_task(band=2)
    other_image, no_image = boefje_task(DNS, band=0), boefje_task(None, band=0)
    store.claim([later, sooner, soonest, other_image, no_image])
    before = {t.id: store.get(t.id).modified_at for t in (soonest, sooner)}  # type: ignore[union-attr]

    response = api.post("/schedulers/boefje/pop", params={"limit": 2}, json=IMAGE_FILTER)

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [t["id"] for t in results] == [str(soonest.id), str(sooner.id)]
    assert all(t["status"] == "dispatched" and t["data"]["boefje"]["oci_image"] == NMAP for t in results)
    assert statuses(engine) == {
        str(soonest.id): "dispatched",
        str(sooner.id): "dispatched",
        str(later.id): "queued",
        str(other_image.id): "queued",
        str(no_image.id): "queued",
    }
    for task in (soonest, sooner):
        row = store.get(task.id)
        assert row is not None and row.modified_at > before[task.id]
    again = api.post("/schedulers/boefje/pop", params={"limit": 5}, json=IMAGE_FILTER).json()["results"]
    assert [t["id"] for t in again] == [str(later.id)]
    assert api.post("/schedulers/boefje/pop", json=IMAGE_FILTER).json() == {"results": []}


WEB = "ghcr.io/minvws/openkat/web:latest"


def test_a_pop_by_two_images_takes_the_most_urgent_of_either_and_never_another_images(api, engine):
    # On PostgreSQL each image's most urgent are read from ix_tasks_queued_pop_image and merged.
    web_first = [boefje_task(WEB, priority=n) for n in range(5)]  # more urgent, but not asked for
    nmap = [boefje_task(NMAP, priority=n, boefje="nmap") for n in (5, 8, 9)]
    dns = [boefje_task(DNS, priority=n, boefje="dns") for n in (6, 7)]
    other_boefje = boefje_task(NMAP, priority=1, boefje="nmap-udp")
    TaskStore(engine).claim([*web_first, *nmap, *dns, other_boefje])
    body = {
        "filters": [
            {"column": "data", "field": "boefje__oci_image", "operator": "in", "value": [NMAP, DNS]},
            {"column": "data", "field": "boefje__id", "operator": "in", "value": ["nmap", "dns"]},
        ]
    }

    first = api.post("/schedulers/boefje/pop", params={"limit": 3}, json=body).json()["results"]
    rest = api.post("/schedulers/boefje/pop", params={"limit": 10}, json=body).json()["results"]

    assert [t["priority"] for t in first] == [5, 6, 7]
    assert [t["priority"] for t in rest] == [8, 9]
    assert {t.id for t in [*web_first, other_boefje]} == {
        uuid.UUID(i) for i, status in statuses(engine).items() if status == "queued"
    }


def test_a_json_null_body_pops_without_filters_one_task_by_default(api, engine):
    store = TaskStore(engine)
    first, second = boefje_task(DNS, band=1), boefje_task(None, band=3)
    store.claim([first, second])

    response = api.post("/schedulers/boefje/pop", data=b"null", headers={"Content-Type": "application/json"})
    no_body = api.post("/schedulers/boefje/pop")

    assert response.status_code == 200, response.text
    assert [t["id"] for t in response.json()["results"]] == [str(first.id)]
    assert [t["id"] for t in no_body.json()["results"]] == [str(second.id)]
    assert set(statuses(engine).values()) == {"dispatched"}


@pytest.mark.parametrize(
    ("path", "params", "body", "status", "detail"),
    [
        ("/schedulers/boefje/pop", {"limit": 0}, None, 422, "greater than or equal to 1"),
        ("/schedulers/boefje/pop", {"limit": 501}, None, 422, "less than or equal to 500"),
        ("/schedulers/boefje/pop", {"limit": "many"}, None, 422, "valid integer"),
        ("/schedulers/nope/pop", {}, None, 404, "scheduler not found: 'nope'"),
        (
            "/schedulers/boefje/pop",
            {},
            {"filters": [{"column": "colour", "operator": "==", "value": "red"}]},
            400,
            "unknown filter column 'colour'",
        ),
        ("/schedulers/boefje/pop", {}, {"filters": [{"column": "data"}]}, 422, "operator"),
    ],
)
def test_a_bad_pop_names_the_problem_and_takes_nothing(api, engine, path, params, body, status, detail):
    TaskStore(engine).claim([boefje_task()])

    response = api.post(path, params=params, json=body)

    assert response.status_code == status, response.text
    assert detail in str(response.json()["detail"])
    assert set(statuses(engine).values()) == {"queued"}


def test_a_pop_that_is_not_json_is_422_and_takes_nothing(api, engine):
    TaskStore(engine).claim([boefje_task()])

    response = api.post("/schedulers/boefje/pop", data=b"{", headers={"Content-Type": "application/json"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert set(statuses(engine).values()) == {"queued"}


def test_a_scheduler_delivered_through_celery_answers_a_pop_with_no_tasks(engine, redis_url):
    TaskStore(engine).claim([boefje_task()])

    with serve_api(Settings(broker_url=redis_url), engine=engine) as api:  # default: only report pulls
        response = api.post("/schedulers/boefje/pop", json=IMAGE_FILTER)

    assert response.status_code == 200
    assert response.json() == {"results": []}
    assert set(statuses(engine).values()) == {"queued"}


def report_push(recipe: str, org: str = "aa") -> dict[str, object]:
    return {
        "organisation": org,
        "priority": 1,
        "data": {"organisation_id": org, "report_recipe_id": recipe, "type": "report"},
    }


def test_a_push_to_a_pull_scheduler_is_claimed_unpublished_at_the_top_and_popped_first(api, engine, settings):
    store = TaskStore(engine)
    store.claim([boefje_task(band=1)])
    recipe = str(uuid.uuid4())

    pushed = api.post("/schedulers/report/push", json=report_push(recipe))
    duplicate = api.post("/schedulers/report/push", json=report_push(recipe))
    scan_now = {**boefje_task(boefje="dns-records").data, "input_ooi": CLEARED[0]}  # checked against push_kat
    rocky = api.post("/schedulers/boefje/push", json={"organisation": "aa", "data": scan_now})

    assert pushed.status_code == 201, pushed.text
    task = pushed.json()
    assert (task["scheduler_id"], task["type"], task["status"]) == ("report", "report", "queued")
    assert task["hash"] == report_task_hash(recipe, "aa")
    assert task["data"] == {"organisation_id": "aa", "report_recipe_id": recipe, "type": "report"}
    assert duplicate.status_code == 409 and duplicate.headers["Retry-After"] == "60"
    assert rocky.status_code == 201, rocky.text
    assert waiting(settings, "boefjes") == 0, "a pull scheduler's task is never published"
    assert store.unpublished_ids([uuid.UUID(task["id"]), uuid.UUID(rocky.json()["id"])]) == set()
    popped = api.post("/schedulers/report/pop").json()["results"]
    assert [t["id"] for t in popped] == [task["id"]]
    first_boefje = api.post("/schedulers/boefje/pop").json()["results"]
    assert [t["id"] for t in first_boefje] == [rocky.json()["id"]], "a push takes the top priority"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"organisation": "aa", "data": {"organisation_id": "aa"}}, "data is not a report task: report_recipe_id"),
        (report_push("r1", org="bb") | {"organisation": "aa"}, "differs from the data's organisation_id 'bb'"),
    ],
)
def test_a_bad_report_push_is_400_and_stores_nothing(api, engine, body, detail):
    response = api.post("/schedulers/report/push", json=body)

    assert response.status_code == 400, response.text
    assert detail in response.json()["detail"]
    assert statuses(engine) == {}


def test_a_report_push_is_refused_when_reports_are_not_pulled(engine, redis_url):
    with serve_api(Settings(broker_url=redis_url, pull_schedulers=""), engine=engine) as api:
        response = api.post("/schedulers/report/push", json=report_push("r1"))

    assert response.status_code == 400
    assert "SCHEDULER_PULL_SCHEDULERS" in response.json()["detail"]
    assert statuses(engine) == {}


def test_the_runner_lifecycle_popped_running_completed_frees_the_hash(api, engine):
    # rocky/reports/runner/worker.py: pop one, PATCH running, read it back, PATCH completed.
    recipe = str(uuid.uuid4())
    api.post("/schedulers/report/push", json=report_push(recipe))
    (task,) = api.post("/schedulers/report/pop", params={"limit": 1}).json()["results"]

    running = api.patch(f"/tasks/{task['id']}", json={"status": "running"})
    read = api.get(f"/tasks/{task['id']}").json()
    completed = api.patch(f"/tasks/{task['id']}", json={"status": "completed"})
    again = api.post("/schedulers/report/push", json=report_push(recipe))

    assert running.status_code == 200 and read["status"] == "running"
    assert completed.json()["status"] == "completed"
    assert again.status_code == 201, "a completed report task frees its hash"


def test_two_poppers_racing_over_1000_tasks_each_get_every_task_exactly_once(engine, settings):
    # PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: one writing statement at a time. The poppers
    # send the workers' image filter, so the 200 tasks of another image stay queued.
    wanted = [boefje_task(NMAP, priority=n) for n in range(1000)]
    other = [boefje_task(DNS, priority=n, boefje="dns-records") for n in range(200)]
    TaskStore(engine).claim([*other, *wanted])
    popped: list[list[str]] = [[], []]
    errors: list[str] = []

    with serve_api(settings, engine=engine) as api:

        def popper(mine: list[str]) -> None:
            with requests.Session() as http:
                while True:
                    response = http.post(
                        f"{api.url}/schedulers/boefje/pop", params={"limit": 7}, json=IMAGE_FILTER, timeout=30
                    )
                    if response.status_code != 200:
                        errors.append(response.text)
                        return
                    results = response.json()["results"]
                    if not results:
                        return
                    mine.extend(t["id"] for t in results)

        threads = [threading.Thread(target=popper, args=(mine,)) for mine in popped]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)

    after = statuses(engine)
    assert errors == []
    assert len(popped[0]) + len(popped[1]) == 1000, "every task of the image, and only those"
    assert set(popped[0]) | set(popped[1]) == {str(t.id) for t in wanted}, "a task was popped twice or missed"
    assert popped[0] and popped[1], "both poppers took tasks"
    assert {after[str(t.id)] for t in wanted} == {"dispatched"}
    assert {after[str(t.id)] for t in other} == {"queued"}, "another image's tasks are not taken"


def test_a_runner_repeating_its_pop_gets_the_next_tasks_and_a_changed_request_is_checked_anew(api, engine):
    first, second, third = (boefje_task(priority=n) for n in (1, 2, 3))
    TaskStore(engine).claim([third, first, second])

    def pop(**kwargs: object) -> requests.Response:
        response: requests.Response = api.post("/schedulers/boefje/pop", **kwargs)
        return response

    taken = [pop(json=IMAGE_FILTER), pop(json=IMAGE_FILTER)]  # the second is a request seen before
    refused = [pop(params={"limit": 0}, json=IMAGE_FILTER), pop(json={"filters": [{"column": "colour"}]})]
    after = pop(json=IMAGE_FILTER)
    empty = pop(json=IMAGE_FILTER)

    for response in [*taken, after, empty]:
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert [r.json()["results"][0]["id"] for r in [*taken, after]] == [str(first.id), str(second.id), str(third.id)]
    assert [r.status_code for r in refused] == [422, 422]
    assert empty.json() == {"results": []}
    assert set(statuses(engine).values()) == {"dispatched"}


def test_a_pop_seen_before_fails_as_the_route_does_when_the_database_does(api, monkeypatch):
    # A remembered pop skips FastAPI's routing and validation, nothing else: a statement that
    # fails is the same 500 whether the route or KnownPops ran it.
    def gone(*_: object, **__: object) -> None:
        raise OSError("the database is gone")

    monkeypatch.setattr(TaskViews, "pop_with", gone)
    # A connection each: the server closes one after a 500.
    first, again = (
        requests.post(
            f"{api.url}/schedulers/boefje/pop", json=IMAGE_FILTER, headers={"Connection": "close"}, timeout=10
        )
        for _ in range(2)
    )

    assert first.status_code == again.status_code == 500
    assert (again.headers["content-type"], again.text) == (first.headers["content-type"], first.text)


def test_eight_runners_popping_one_task_at_a_time_each_get_distinct_tasks_most_urgent_first(engine, settings):
    # Pops arriving together run as one statement; each runner still gets its own tasks, in order.
    TaskStore(engine).claim([boefje_task(priority=n) for n in range(300)])
    popped: list[list[int]] = [[] for _ in range(8)]
    errors: list[str] = []

    with serve_api(settings, engine=engine) as api:

        def popper(mine: list[int]) -> None:
            with requests.Session() as http:
                while True:
                    response = http.post(f"{api.url}/schedulers/boefje/pop", json=IMAGE_FILTER, timeout=30)
                    if response.status_code != 200:
                        errors.append(response.text)
                        return
                    results = response.json()["results"]
                    if not results:
                        return
                    mine.extend(t["priority"] for t in results)

        threads = [threading.Thread(target=popper, args=(mine,)) for mine in popped]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)

    assert errors == []
    assert sorted(p for mine in popped for p in mine) == list(range(300)), "every task popped exactly once"
    assert all(mine == sorted(mine) for mine in popped), "each runner gets its tasks most urgent first"


def test_a_popped_task_never_started_is_queued_again_by_the_reaper_without_a_message(pg_engine, settings):
    from kat_scheduler.workers.reaper import Reaper

    store = TaskStore(pg_engine)
    lost, fresh, report = boefje_task(), boefje_task(), boefje_task()
    store.claim([lost, fresh])
    report_row = NewTask(
        id=report.id,
        scheduler_id=SchedulerId.REPORT,
        type="report",
        organisation="aa",
        plugin_id="recipe",
        input_ooi=None,
        hash=report_task_hash("recipe", "aa"),
        band=0,
        priority=0,
        data={"organisation_id": "aa", "report_recipe_id": "recipe"},
    )
    store.claim([report_row])  # listed as unpublished, as a producer's claim would leave it
    with serve_api(settings, engine=pg_engine) as api:
        assert len(api.post("/schedulers/boefje/pop", params={"limit": 2}).json()["results"]) == 2
    long_ago = utcnow() - timedelta(seconds=settings.effective_visibility_timeout + 60)
    with pg_engine.begin() as conn:
        conn.execute(update(TaskRow).where(TaskRow.id == lost.id).values(modified_at=long_ago))
        conn.execute(update(UnpublishedTask).values(claimed_at=long_ago))
    publisher = make_publisher(settings)
    try:
        report_of_reaper = Reaper(store, publisher, settings).reap(utcnow())
    finally:
        publisher.close()

    assert report_of_reaper.requeued_popped == 1
    assert report_of_reaper.published_unpublished == 0
    assert statuses(pg_engine) == {str(lost.id): "queued", str(fresh.id): "dispatched", str(report.id): "queued"}
    assert store.unpublished_ids([report.id]) == set(), "the report claim's listing is dropped, not published"
    assert waiting(settings, "boefjes") == 0 and waiting(settings, "normalizers") == 0
    row = store.get(lost.id)
    assert row is not None and row.status is TaskStatus.QUEUED


def test_a_pulled_task_running_past_the_hard_limit_is_queued_again_for_a_pop_without_a_message(pg_engine, settings):
    from kat_scheduler.workers.reaper import Reaper

    store = TaskStore(pg_engine)
    stuck = boefje_task()
    store.claim([stuck])
    store.mark_published([stuck.id])
    long_ago = utcnow() - timedelta(seconds=settings.hard_time_limit + settings.running_slack + 60)
    with pg_engine.begin() as conn:
        conn.execute(update(TaskRow).values(status=TaskStatus.RUNNING, started_at=long_ago, attempts=1))
    publisher = make_publisher(settings)
    try:
        report = Reaper(store, publisher, settings).reap(utcnow())
    finally:
        publisher.close()

    assert report.requeued_stuck == 1
    assert statuses(pg_engine) == {str(stuck.id): "queued"}
    assert waiting(settings, "boefjes") == 0, "a pulled task is popped again, never published"
    with serve_api(settings, engine=pg_engine) as api:
        assert [t["id"] for t in api.post("/schedulers/boefje/pop").json()["results"]] == [str(stuck.id)]
