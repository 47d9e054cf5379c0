"""``POST /schedulers/{id}/push`` over real HTTP: claimed in SQLite/PostgreSQL, published on a real Redis."""

from __future__ import annotations

import threading
import uuid

import pytest
import requests
from sqlalchemy import Engine, func, select

from kat_scheduler.api.context import ApiContext
from kat_scheduler.api.push import TaskPush, report_task
from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.queues import MANUAL_BAND
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.settings import Settings
from kat_scheduler.storage.tables import TaskRow
from kat_scheduler.storage.task_views import TaskViews
from kat_scheduler.storage.tasks import TaskStore
from tests.api_server import serve_api
from tests.factories import BoefjeMetaFactory

OOI = "Hostname|internet|mispo.es"


def waiting(settings: Settings, queue: str) -> int:
    publisher = make_publisher(settings)
    try:
        return publisher.queue_depth(queue)
    finally:
        publisher.close()


def rocky_push(org: str = "aa", boefje: str = "dns-records", ooi: str | None = OOI) -> dict[str, object]:
    """What Rocky sends: rocky/rocky/scheduler.py, push_task:
    ``self._client.post(f"/schedulers/{item.scheduler_id}/push", content=item.model_dump_json(exclude_none=True))``
    with ``Task(id=..., scheduler_id="boefje", organisation=org, priority=1, data=BoefjeTask(...))``."""
    task_id = str(uuid.uuid4())
    data: dict[str, object] = {"id": task_id, "boefje": {"id": boefje, "name": "DNS records"}, "organization": org}
    if ooi is not None:
        data["input_ooi"] = ooi
    return {"id": task_id, "scheduler_id": "boefje", "organisation": org, "priority": 1, "data": data}


def row_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(TaskRow)).scalar_one())


def test_a_rocky_push_is_queued_at_band_0_then_a_duplicate_is_409_with_retry_after(api, engine, settings):
    body = rocky_push()

    created = api.post("/schedulers/boefje/push", json=body)
    duplicate = api.post("/schedulers/boefje/push", json=rocky_push())

    assert created.status_code == 201, created.text
    task = created.json()
    assert task["id"] == body["id"] == task["data"]["id"]
    assert (task["status"], task["priority"], task["scheduler_id"]) == ("queued", 1, "boefje")
    assert task["hash"] == boefje_task_hash("dns-records", "aa", OOI)
    assert task["data"]["boefje"]["oci_image"] is None
    row = TaskStore(engine).get(uuid.UUID(task["id"]))
    assert row is not None and row.band == MANUAL_BAND and row.reason == "manual"
    assert waiting(settings, "boefjes") == 1
    assert duplicate.status_code == 409
    assert duplicate.headers["Retry-After"] == "60"
    assert duplicate.json() == {"detail": f"a task with hash {task['hash']} is already queued or running"}
    assert row_count(engine) == 1 and waiting(settings, "boefjes") == 1


def test_a_pushed_hash_can_be_pushed_again_once_its_task_completed(api, engine):
    first = api.post("/schedulers/boefje/push", json=rocky_push()).json()
    api.patch(f"/tasks/{first['id']}", json={"status": "running"})
    api.patch(f"/tasks/{first['id']}", json={"status": "completed"})

    again = api.post("/schedulers/boefje/push", json=rocky_push())

    assert again.status_code == 201
    assert again.json()["hash"] == first["hash"] and again.json()["id"] != first["id"]


def test_a_worker_re_pushing_a_whole_task_is_accepted(api, engine):
    whole = {
        **rocky_push(ooi=None),
        "status": "dispatched",
        "type": "boefje",
        "hash": "ignored",
        "created_at": "2025-05-27T09:00:15.129953Z",
        "modified_at": "2025-05-27T09:00:16.516836Z",
    }

    response = api.post("/schedulers/boefje/push", json=whole)

    assert response.status_code == 201, response.text
    assert response.json()["hash"] == boefje_task_hash("dns-records", "aa", None)


def test_a_runner_handing_back_a_dispatched_task_queues_it_again_and_a_taken_id_is_409(api, engine):
    pushed = api.post("/schedulers/boefje/push", json=rocky_push()).json()
    api.patch(f"/tasks/{pushed['id']}", json={"status": "dispatched"})
    handed_back = {**pushed, "status": "dispatched"}

    again = api.post("/schedulers/boefje/push", json=handed_back)
    api.patch(f"/tasks/{pushed['id']}", json={"status": "running"})
    taken = api.post("/schedulers/boefje/push", json=handed_back)

    assert again.status_code == 201 and again.json()["status"] == "queued"
    assert taken.status_code == 409
    assert taken.json() == {"detail": f"a task with id {pushed['id']} exists already (running)"}
    assert row_count(engine) == 1


def test_a_normalizer_push_goes_to_the_normalizer_queue(api, engine, settings):
    meta = BoefjeMetaFactory.build(organization="aa").model_dump(mode="json")
    raw_id = str(uuid.uuid4())
    data = {
        "normalizer": {"id": "kat_dns_normalize"},
        "raw_data": {"id": raw_id, "boefje_meta": meta, "mime_types": [{"value": "boefje/dns-records"}]},
    }

    response = api.post("/schedulers/normalizer/push", json={"organisation": "aa", "data": data})

    assert response.status_code == 201, response.text
    assert response.json()["type"] == "normalizer" and response.json()["data"]["raw_data"]["id"] == raw_id
    assert waiting(settings, "normalizers") == 1


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [
        ("/schedulers/nope/push", rocky_push(), 404, "scheduler not found: 'nope'"),
        ("/schedulers/normalizer/push", rocky_push(), 400, "contradicts the path's scheduler 'normalizer'"),
        (
            "/schedulers/boefje/push",
            {"organisation": "aa", "data": {"input_ooi": OOI, "organization": "aa"}},
            400,
            "data is not a boefje task: boefje: Field required",
        ),
        (
            "/schedulers/boefje/push",
            {**rocky_push(org="aa"), "organisation": "bb"},
            400,
            "organisation 'bb' differs from the data's organization 'aa'",
        ),
        ("/schedulers/boefje/push", {**rocky_push(), "id": str(uuid.uuid4())}, 400, "differ"),
        ("/schedulers/report/push", {"organisation": "aa", "data": {}}, 400, "data is not a report task"),
        ("/schedulers/boefje/push", {"data": {}}, 422, "organisation"),
    ],
)
def test_a_bad_push_names_the_problem_and_queues_nothing(api, engine, settings, path, body, status, detail):
    response = api.post(path, json=body)

    assert response.status_code == status, response.text
    assert detail in str(response.json()["detail"])
    assert row_count(engine) == 0
    assert waiting(settings, "boefjes") == 0 and waiting(settings, "normalizers") == 0


def test_a_push_that_is_not_json_is_422_and_queues_nothing(api, engine):
    response = api.post("/schedulers/boefje/push", data=b"{", headers={"Content-Type": "application/json"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert row_count(engine) == 0


def report_push(recipe: str, org: str = "aa", task_id: str | None = None) -> dict[str, object]:
    """Rocky's report runner hands a report back, or a client pushes one by hand: a pull scheduler's push."""
    body: dict[str, object] = {"organisation": org, "data": {"organisation_id": org, "report_recipe_id": recipe}}
    if task_id is not None:
        body["id"] = task_id
    return body


def test_pushes_arriving_together_each_get_their_own_answer(engine, settings):
    # Pushes to a pull scheduler arriving together are claimed in one statement.
    recipes = [str(uuid.uuid4()) for _ in range(40)]
    bodies = [report_push(recipe) for recipe in recipes] + [report_push(recipes[0]) for _ in range(7)]
    answers: list[int] = []

    with serve_api(settings, engine=engine) as api:

        def pusher(mine: list[dict[str, object]]) -> None:
            with requests.Session() as http:
                for body in mine:
                    answers.append(http.post(f"{api.url}/schedulers/report/push", json=body, timeout=30).status_code)

        threads = [threading.Thread(target=pusher, args=(bodies[i::8],)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)

    assert sorted(answers) == [201] * 40 + [409] * 7, "one live task per hash, every other push of it 409"
    assert row_count(engine) == 40


def test_a_batch_of_claims_with_an_id_twice_claims_the_first_and_refuses_the_second(engine, settings):
    ctx = ApiContext(settings=settings, engine=engine, tasks=TaskViews(engine))
    same_id = str(uuid.uuid4())
    first, again = (
        report_task(TaskPush(**report_push("a", task_id=same_id))),
        report_task(TaskPush(**report_push("b", task_id=same_id))),
    )
    other, same_hash = report_task(TaskPush(**report_push("c"))), report_task(TaskPush(**report_push("c")))

    assert ctx.claim_for_pull([first, again, other, same_hash]) == [True, False, True, False]
    assert row_count(engine) == 2
