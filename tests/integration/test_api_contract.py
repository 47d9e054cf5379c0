"""The API as OpenKAT's own clients use it, over real HTTP, on SQLite and PostgreSQL.

Each request is built the way the client builds it (Rocky: ``rocky/rocky/scheduler.py`` and
``rocky/rocky/views/scheduler.py``; the boefje and normalizer workers:
``boefjes/boefjes/clients/scheduler_client.py`` and ``boefjes/boefjes/worker/manager.py``; the
report runner: ``rocky/reports/runner/worker.py``), and each answer is read the way the client
reads it: the models below state, in our own words, the fields each client requires when it
parses an answer (a missing key, a wrong type or an unknown status would fail its parse).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, TypeVar

import pytest
from croniter import croniter
from pydantic import AwareDatetime, BaseModel, Field, TypeAdapter
from sqlalchemy import update

from kat_scheduler.models import Boefje, Normalizer
from kat_scheduler.models.bytes import RawData
from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.producers.reports import ReportProducer
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.payloads import boefje_payload, normalizer_payload
from kat_scheduler.settings import Settings
from kat_scheduler.sim import SimulatedKAT
from kat_scheduler.storage.schedules import ScheduleStore
from kat_scheduler.storage.tables import ScheduleRow, utcnow
from kat_scheduler.storage.tasks import NewTask, TaskStore
from tests.api_server import ApiServer
from tests.factories import BoefjeMetaFactory, NewTaskFactory
from tests.push_kat import with_kat

OOI = "Hostname|internet|mispo.es"
NMAP = "ghcr.io/minvws/openkat/nmap:latest"


@pytest.fixture
def settings(redis_url: str, push_kat: SimulatedKAT) -> Settings:
    """Every scheduler pulled: the workers and the report runner pop (the shared ``api`` fixture)."""
    return with_kat(Settings(broker_url=redis_url, pull_schedulers="report,boefje,normalizer"), push_kat)


# --- what the clients require of an answer -----------------------------------------------------


#: What a page of Rocky's holds.
Item = TypeVar("Item")


class Status(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RockyBoefje(BaseModel):
    id: str
    name: str | None = None
    version: str | None = None
    oci_image: str | None = None


class RockyBoefjeTask(BaseModel):
    id: uuid.UUID | None = None
    boefje: RockyBoefje
    input_ooi: str | None = None
    organization: str


class RockyNormalizerTask(BaseModel):
    id: uuid.UUID | None = None
    normalizer: dict[str, Any]
    raw_data: dict[str, Any]


class RockyReportTask(BaseModel):
    organisation_id: str
    report_recipe_id: str


class RockyTask(BaseModel):
    """Rocky and its report runner: any of the three task kinds in ``data``."""

    id: uuid.UUID
    scheduler_id: str
    schedule_id: str | None = None
    organisation: str
    priority: int
    status: Status
    type: str | None = None
    hash: str | None = None
    data: RockyBoefjeTask | RockyNormalizerTask | RockyReportTask
    created_at: datetime
    modified_at: datetime


class RockyPage(BaseModel, Generic[Item]):
    """Rocky's paginated list (tasks and schedules alike)."""

    count: int
    next: str | None = None
    previous: str | None = None
    results: list[Item]


RockyTaskPage = RockyPage[RockyTask]


class RockySchedule(BaseModel):
    """Rocky's schedule: every key required, hash and both times never null."""

    id: uuid.UUID
    scheduler_id: str
    organisation: str
    hash: str
    data: dict[str, Any]
    enabled: bool
    schedule: str | None
    deadline_at: datetime | None
    created_at: datetime
    modified_at: datetime


RockySchedulePage = RockyPage[RockySchedule]


class WorkerBoefje(BaseModel):
    id: str = Field(min_length=1)
    version: str | None = None
    oci_image: str | None = None


class WorkerBoefjeMeta(BaseModel):
    id: uuid.UUID
    started_at: AwareDatetime | None = None
    ended_at: AwareDatetime | None = None
    boefje: WorkerBoefje
    input_ooi: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    organization: str
    runnable_hash: str | None = None
    environment: dict[str, str] | None = None


class WorkerRawData(BaseModel):
    id: uuid.UUID
    boefje_meta: WorkerBoefjeMeta
    mime_types: list[dict[str, str]]


class WorkerNormalizer(BaseModel):
    id: str = Field(min_length=1)
    version: str | None = None


class WorkerNormalizerMeta(BaseModel):
    id: uuid.UUID
    started_at: AwareDatetime | None = None
    ended_at: AwareDatetime | None = None
    raw_data: WorkerRawData
    normalizer: WorkerNormalizer


class WorkerTask(BaseModel):
    """The boefje and normalizer workers: ``schedule_id`` and ``type`` must be there, and ``data``
    must read as the BoefjeMeta or NormalizerMeta the worker runs."""

    id: uuid.UUID
    scheduler_id: str
    schedule_id: str | None
    organisation: str
    priority: int
    status: Status
    type: str
    hash: str | None = None
    data: WorkerBoefjeMeta | WorkerNormalizerMeta
    created_at: datetime
    modified_at: datetime


class WorkerPop(BaseModel):
    results: list[WorkerTask]


class RockyPop(BaseModel):
    results: list[RockyTask]


def read(model: type[BaseModel], response: Any, status: int = 200) -> Any:
    """The answer as the client reads it (``model_validate_json`` of the body)."""
    assert response.status_code == status, response.text
    return model.model_validate_json(response.content)


# --- what the clients send ---------------------------------------------------------------------


def rocky_scan_now(org: str = "aa", boefje: str = "dns-records", ooi: str | None = OOI) -> bytes:
    """Rocky's "scan now" (``run_boefje``): a TaskPush without an id whose data is a BoefjeTask
    dumped whole (``type``, ``id`` null, ``deduplication_key`` null), sent as
    ``model_dump_json(exclude_none=True)``, which drops the push's own nulls but not the data's."""
    data = {
        "type": "boefje",
        "id": None,
        "boefje": {"id": boefje, "name": "DNS records", "version": None, "oci_image": NMAP},
        "input_ooi": ooi,
        "organization": org,
        "deduplication_key": None,
    }
    return TypeAdapter(dict[str, Any]).dump_json(
        {"scheduler_id": "boefje", "organisation": org, "priority": 1, "data": data}
    )


def rocky_push(api: ApiServer, scheduler_id: str, content: bytes) -> Any:
    return api.post(f"/schedulers/{scheduler_id}/push", data=content, headers={"Content-Type": "application/json"})


def raw_file(org: str = "aa") -> dict[str, Any]:
    """A raw file as Bytes describes it (its boefje run's meta included)."""
    meta = BoefjeMetaFactory.build(organization=org, boefje={"id": "dns-records", "version": None})
    raw = RawData(
        id=uuid.uuid4(),
        boefje_meta=meta,
        mime_types=[{"value": "boefje/dns-records"}, {"value": "dns-records"}],
        secure_hash="sha512:0f",
        hash_retrieval_link="https://timestamp.example/0f",
    )
    return raw.model_dump(mode="json")


def produced_boefje_task(store: TaskStore, org: str = "aa", ooi: str = OOI) -> uuid.UUID:
    """A boefje task with the data the planner writes (``rules/payloads.boefje_payload``)."""
    task_id = uuid.uuid4()
    boefje = Boefje(id="nmap", name="Nmap", oci_image=NMAP, consumes=["IPAddressV4"])
    data = boefje_payload(task_id, boefje, org, ooi)
    store.claim([NewTaskFactory(id=task_id, organisation=org, plugin_id="nmap", input_ooi=ooi, band=3, data=data)])
    return task_id


def produced_normalizer_task(store: TaskStore, org: str = "aa") -> uuid.UUID:
    """A normalizer task with the data the listener writes for a raw file (``normalizer_payload``)."""
    task_id = uuid.uuid4()
    raw = raw_file(org)
    normalizer = Normalizer(id="kat_dns_normalize", name="DNS normalize", consumes=["boefje/dns-records"])
    store.claim(
        [
            NewTaskFactory(
                id=task_id,
                scheduler_id=SchedulerId.NORMALIZER,
                type="normalizer",
                organisation=org,
                plugin_id=normalizer.id,
                input_ooi=raw["boefje_meta"]["input_ooi"],
                hash=uuid.uuid4().hex,
                band=3,
                data=normalizer_payload(task_id, normalizer, raw),
            )
        ]
    )
    return task_id


# --- Rocky: scan now, rescheduling, the task pages ----------------------------------------------


def test_rockys_scan_now_without_an_id_is_queued_with_its_own_id_then_a_duplicate_is_409(api):
    created = read(RockyTask, rocky_push(api, "boefje", rocky_scan_now()), 201)
    duplicate = rocky_push(api, "boefje", rocky_scan_now())

    assert created.data.id == created.id and created.status is Status.QUEUED and created.priority == 1
    assert created.hash == boefje_task_hash("dns-records", "aa", OOI)
    assert created.data.boefje.oci_image == NMAP
    # the worker reads the same task, popped
    [popped] = read(WorkerPop, api.post("/schedulers/boefje/pop")).results
    assert popped.id == created.id and popped.status is Status.DISPATCHED
    assert duplicate.status_code == 409 and duplicate.headers["Retry-After"].isdigit()
    assert list(duplicate.json()) == ["detail"]


def test_rockys_normalizer_push_with_a_raw_file_from_bytes_is_queued(api):
    # rocky/rocky/views/scheduler.py, run_normalizer: NormalizerTask(normalizer=..., raw_data=...).model_dump()
    raw = raw_file()
    data = {
        "type": "normalizer",
        "id": None,
        "normalizer": {"id": "kat_dns_normalize", "name": "DNS normalize", "version": None},
        "raw_data": raw,
    }
    content = TypeAdapter(dict[str, Any]).dump_json(
        {"scheduler_id": "normalizer", "organisation": "aa", "priority": 1, "data": data}
    )

    created = read(RockyTask, rocky_push(api, "normalizer", content), 201)
    again = rocky_push(api, "normalizer", content)

    assert created.type == "normalizer" and created.data.id == created.id
    [popped] = read(WorkerPop, api.post("/schedulers/normalizer/pop")).results
    assert isinstance(popped.data, WorkerNormalizerMeta)
    assert popped.data.raw_data.id == uuid.UUID(raw["id"])
    assert again.status_code == 409


def test_rockys_reschedule_pushes_the_fetched_tasks_data_with_a_new_id(api):
    # rocky/rocky/views/scheduler.py, reschedule_task: the task fetched, data.id replaced, pushed.
    first = read(RockyTask, rocky_push(api, "boefje", rocky_scan_now()), 201)
    fetched = read(RockyTask, api.get(f"/tasks/{first.id}"))
    new_id = uuid.uuid4()
    data = {**fetched.data.model_dump(mode="json"), "type": "boefje", "id": str(new_id), "deduplication_key": None}
    content = TypeAdapter(dict[str, Any]).dump_json(
        {"id": str(new_id), "scheduler_id": "boefje", "organisation": "aa", "priority": 1, "data": data}
    )

    while_live = rocky_push(api, "boefje", content)
    for status in ("running", "completed"):
        assert api.patch(f"/tasks/{first.id}", json={"status": status}).status_code == 200
    once_done = read(RockyTask, rocky_push(api, "boefje", content), 201)

    assert while_live.status_code == 409
    assert once_done.id == new_id and once_done.hash == first.hash


def rocky_list(api: ApiServer, filters: dict[str, Any], **params: Any) -> Any:
    """rocky/rocky/scheduler.py, list_tasks: ``POST /tasks`` with the query parameters (no nulls)
    and the view's ``{"filters": {"and": [...], "or"?: [...]}}`` as the body."""
    return api.post("/tasks", params={k: v for k, v in params.items() if v is not None}, json=filters)


def test_rockys_task_pages_count_then_page_by_organisation_and_object(api, engine):
    store = TaskStore(engine)
    mine = [produced_boefje_task(store, "aa", OOI) for _ in range(1)]
    mine += [produced_boefje_task(store, "aa", f"Hostname|internet|h{n}.nl") for n in range(3)]
    produced_boefje_task(store, "bb", OOI)
    organisation = {"column": "organisation", "operator": "==", "value": "aa"}
    on_object = {"column": "data", "field": "input_ooi", "operator": "==", "value": OOI}
    page = {"scheduler_id": "boefje", "task_type": "boefje"}

    # LazyTaskList: the count first (limit=0), then the page it shows
    count = read(RockyTaskPage, rocky_list(api, {"filters": {"and": [organisation]}}, **page, limit=0))
    shown = read(RockyTaskPage, rocky_list(api, {"filters": {"and": [organisation]}}, **page, limit=2, offset=2))
    object_count = read(RockyTaskPage, rocky_list(api, {"filters": {"and": [organisation, on_object]}}, limit=0))
    search = {"column": "data", "field": "input_ooi", "operator": "ilike", "value": "%H1.NL%"}
    searched = read(RockyTaskPage, rocky_list(api, {"filters": {"and": [organisation, search]}}, **page, limit=20))
    by_id = {"column": "id", "operator": "==", "value": str(mine[0])}
    one = read(RockyTaskPage, rocky_list(api, {"filters": {"and": [organisation, by_id]}}, **page, limit=20))

    assert (count.count, count.results) == (4, [])
    assert shown.count == 4 and len(shown.results) == 2 and shown.next is None and shown.previous is not None
    assert {t.id for t in shown.results} < set(mine)
    assert (object_count.count, object_count.results) == (1, [])
    assert [t.data.input_ooi for t in searched.results] == ["Hostname|internet|h1.nl"]
    assert [t.id for t in one.results] == [mine[0]]


def test_rockys_normalizer_page_with_a_plugin_ors_the_normalizer_and_the_boefje_it_read(api, engine):
    # UnboundSchedulerView.get_task_filters for normalizers with a plugin: "and" and "or" in one body
    store = TaskStore(engine)
    normalizer_task = produced_normalizer_task(store, "aa")
    produced_normalizer_task(store, "bb")
    produced_boefje_task(store, "aa")
    body = {
        "filters": {
            "and": [{"column": "organisation", "operator": "in", "value": ["aa"]}],
            "or": [
                {"column": "data", "field": "normalizer__id", "operator": "==", "value": "dns-records"},
                {
                    "column": "data",
                    "field": "raw_data__boefje_meta__boefje__id",
                    "operator": "==",
                    "value": "dns-records",
                },
            ],
        }
    }
    everything: dict[str, Any] = {
        "filters": {"and": []}
    }  # no organisation chosen: the unbound view sends an empty "and"

    found = read(RockyTaskPage, rocky_list(api, body, scheduler_id="normalizer", task_type="normalizer", limit=20))
    listed = read(RockyTaskPage, rocky_list(api, everything, scheduler_id="normalizer", limit=20))

    assert [t.id for t in found.results] == [normalizer_task]
    assert listed.count == 2


def test_rockys_task_page_with_a_date_range_from_its_filter_form(api, engine):
    store = TaskStore(engine)
    produced_boefje_task(store)
    today = datetime.now(UTC).date()
    organisation = {"column": "organisation", "operator": "==", "value": "aa"}

    params = {"scheduler_id": "boefje", "task_type": "boefje", "status": "queued", "limit": 0}
    this_week = rocky_list(
        api, {"filters": {"and": [organisation]}}, **params, min_created_at=str(today - timedelta(days=7))
    )
    tomorrow_on = rocky_list(
        api, {"filters": {"and": [organisation]}}, **params, min_created_at=str(today + timedelta(days=1))
    )

    assert read(RockyTaskPage, this_week).count == 1
    assert read(RockyTaskPage, tomorrow_on).count == 0


# --- the boefje and normalizer workers ----------------------------------------------------------


def test_the_workers_read_the_tasks_the_planner_and_the_listener_wrote(api, engine):
    store = TaskStore(engine)
    boefje_id, normalizer_id = produced_boefje_task(store), produced_normalizer_task(store)
    image = {"filters": [{"column": "data", "field": "boefje__oci_image", "operator": "in", "value": [NMAP]}]}

    # SchedulerAPIClient.pop_items: the filters, or no body at all without them; ?limit
    boefjes = read(WorkerPop, api.post("/schedulers/boefje/pop", params={"limit": 1}, json=image))
    normalizers = read(WorkerPop, api.post("/schedulers/normalizer/pop", params={"limit": 1}))

    [boefje] = boefjes.results
    [normalizer] = normalizers.results
    assert boefje.id == boefje_id and isinstance(boefje.data, WorkerBoefjeMeta)
    assert boefje.data.boefje.oci_image == NMAP and boefje.data.id == boefje_id
    assert normalizer.id == normalizer_id and isinstance(normalizer.data, WorkerNormalizerMeta)
    # the manager's cleanup reads the task back before it fails it
    assert read(WorkerTask, api.get(f"/tasks/{boefje_id}")).status is Status.DISPATCHED


def test_a_worker_handing_back_a_hydrated_task_queues_it_again_and_stores_none_of_its_settings(api, engine):
    store = TaskStore(engine)
    task_id = produced_boefje_task(store)
    [popped] = read(WorkerPop, api.post("/schedulers/boefje/pop")).results
    # pop_items hydrates the BoefjeMeta (the plugin's arguments, the object, its settings); on
    # shutdown the manager pushes it back whole: push_item, json=p_item.model_dump(mode="json")
    hydrated = popped.model_copy(
        update={
            "data": popped.data.model_copy(
                update={
                    "arguments": {"oci_image": NMAP, "oci_arguments": [], "input": {"name": "mispo.es"}},
                    "runnable_hash": "abc",
                    "environment": {"SHODAN_API": "s3cret-key"},
                }
            )
        }
    )

    handed_back = read(RockyTask, api.post("/schedulers/boefje/push", json=hydrated.model_dump(mode="json")), 201)
    [again] = read(WorkerPop, api.post("/schedulers/boefje/pop")).results

    assert handed_back.id == task_id and handed_back.status is Status.QUEUED
    assert again.id == task_id
    assert "s3cret-key" not in api.get(f"/tasks/{task_id}").text


# --- the report runner ---------------------------------------------------------------------------


def test_the_report_runner_pops_runs_and_hands_back_a_report_as_rocky_reads_it(api, engine, settings):
    recipe = str(uuid.uuid4())
    schedule = read(
        RockySchedule,
        api.post(
            "/schedules",
            json={
                "scheduler_id": "report",
                "organisation": "aa",
                "data": {"type": "report", "organisation_id": "aa", "report_recipe_id": recipe},
                "schedule": "0 6 * * *",
                "deadline_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
            },
        ),
        201,
    )
    second = str(uuid.uuid4())
    api.post(
        "/schedules",
        json={
            "scheduler_id": "report",
            "organisation": "aa",
            "data": {"type": "report", "organisation_id": "aa", "report_recipe_id": second},
            "deadline_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        },
    )
    ReportProducer(TaskStore(engine), ScheduleStore(engine), settings).queue_due(now=utcnow())

    # pop_item("report"): POST /schedulers/report/pop?limit=1, no body
    [first] = read(RockyPop, api.post("/schedulers/report/pop?limit=1")).results
    [other] = read(RockyPop, api.post("/schedulers/report/pop?limit=1")).results
    # _start_working: PATCH running, run, read the task, PATCH completed while it is running
    assert api.patch(f"/tasks/{first.id}", json={"status": "running"}).status_code == 200
    assert read(RockyTask, api.get(f"/tasks/{first.id}")).status is Status.RUNNING
    assert api.patch(f"/tasks/{first.id}", json={"status": "completed"}).status_code == 200
    # exit(): the task it had not started yet is pushed back, model_dump_json(exclude_none=True)
    content = other.model_dump_json(exclude_none=True).encode()
    handed_back = read(RockyTask, rocky_push(api, "report", content), 201)
    [again] = read(RockyPop, api.post("/schedulers/report/pop?limit=1")).results

    assert {first.schedule_id, other.schedule_id} >= {str(schedule.id)}
    assert isinstance(first.data, RockyReportTask) and first.data.report_recipe_id in (recipe, second)
    assert handed_back.id == other.id and handed_back.status is Status.QUEUED
    assert handed_back.schedule_id == other.schedule_id
    assert again.id == other.id
    assert read(RockyTask, api.get(f"/tasks/{first.id}")).status is Status.COMPLETED


# --- Rocky's report schedules ---------------------------------------------------------------------


def rocky_schedule(recipe: str, cron: str | None, deadline_at: datetime, org: str = "aa") -> dict[str, Any]:
    """rocky/rocky/scheduler.py, post_schedule: ScheduleRequest.model_dump(exclude_none=True)."""
    body: dict[str, Any] = {
        "scheduler_id": "report",
        "organisation": org,
        "data": {"type": "report", "organisation_id": org, "report_recipe_id": recipe},
        "deadline_at": deadline_at.isoformat(),
    }
    if cron is not None:
        body["schedule"] = cron
    return body


def test_rockys_monthly_schedule_on_the_last_day_and_its_search_by_recipe(api):
    # convert_recurrence_to_cron_expressions: a start on the 28th or later is monthly "L"
    recipe = str(uuid.uuid4())
    start = datetime(2030, 1, 31, 7, 30, tzinfo=UTC)

    created = read(RockySchedule, api.post("/schedules", json=rocky_schedule(recipe, "30 7 L * *", start)), 201)
    # post_schedule_search: the view's filter on the recipe, and the client's on the organisation
    search = {
        "filters": [
            {"column": "data", "field": "report_recipe_id", "operator": "==", "value": recipe},
            {"column": "organisation", "operator": "eq", "value": "aa"},
        ]
    }
    found = read(RockySchedulePage, api.post("/schedules/search", json=search))
    # get_scheduled_reports: every report schedule of the organisation
    reports = {
        "filters": [
            {"column": "scheduler_id", "operator": "eq", "value": "report"},
            {"column": "organisation", "operator": "eq", "value": "aa"},
        ]
    }
    listed = read(RockySchedulePage, api.post("/schedules/search", json=reports))

    assert created.schedule == "30 7 L * *" and created.deadline_at == start
    assert [s.id for s in found.results] == [created.id]
    assert [s.id for s in listed.results] == [created.id]


def test_rockys_cron_change_with_a_deadline_of_now_fires_then_follows_the_new_cron(api, engine, settings):
    # the recipe edit view: PATCH {"schedule": cron, "deadline_at": now} for the recipe's schedule
    recipe = str(uuid.uuid4())
    created = read(
        RockySchedule,
        api.post("/schedules", json=rocky_schedule(recipe, "0 6 * * *", datetime.now(UTC) + timedelta(days=1))),
        201,
    )
    now = datetime.now(UTC)

    patched = read(
        RockySchedule,
        api.patch(f"/schedules/{created.id}", json={"schedule": "15 4 * * 1", "deadline_at": now.isoformat()}),
    )
    ran_at = utcnow()
    run = ReportProducer(TaskStore(engine), ScheduleStore(engine), settings).queue_due(now=ran_at)
    [report] = read(RockyPop, api.post("/schedulers/report/pop?limit=1")).results
    moved = read(RockySchedule, api.get(f"/schedules/{created.id}"))

    assert patched.schedule == "15 4 * * 1" and patched.deadline_at == now
    assert run.queued == 1 and report.schedule_id == str(created.id)
    assert moved.deadline_at == croniter("15 4 * * 1", ran_at).get_next(datetime)


# --- crons that never come ----------------------------------------------------------------------

NEVER = ["0 6 30 2 *", "0 6 31 4,6 *"]


@pytest.mark.parametrize("cron", NEVER)
def test_a_cron_with_no_date_is_refused_on_create_and_patch_and_nothing_changes(api, engine, cron):
    created = read(
        RockySchedule, api.post("/schedules", json=rocky_schedule(str(uuid.uuid4()), "0 6 * * *", utcnow())), 201
    )

    refused = api.post("/schedules", json=rocky_schedule(str(uuid.uuid4()), cron, utcnow()))
    without_deadline = api.post(
        "/schedules",
        json={k: v for k, v in rocky_schedule(str(uuid.uuid4()), cron, utcnow()).items() if k != "deadline_at"},
    )
    patch = api.patch(f"/schedules/{created.id}", json={"schedule": cron})

    for response in (refused, without_deadline, patch):
        assert response.status_code == 400, response.text
        assert response.json() == {"detail": f"schedule {cron!r} is not a valid cron expression"}
    assert read(RockySchedule, api.get(f"/schedules/{created.id}")) == created
    assert read(RockySchedulePage, api.get("/schedules", params={"limit": 0})).count == 1


@pytest.mark.parametrize(
    ("cron", "reason"),
    [
        ("0 6 30 2 *", "schedule '0 6 30 2 *' is not a valid cron expression"),
        ("0 6 1 1 * 0 2020", "schedule '0 6 1 1 * 0 2020' has no time after "),  # a year field, all past
    ],
)
def test_a_stored_report_schedule_whose_cron_never_comes_is_disabled_and_the_others_fire(
    api, engine, settings, cron, reason
):
    store = ScheduleStore(engine)
    good = read(
        RockySchedule, api.post("/schedules", json=rocky_schedule(str(uuid.uuid4()), "0 6 * * *", utcnow())), 201
    )
    recipe = str(uuid.uuid4())
    bad = read(RockySchedule, api.post("/schedules", json=rocky_schedule(recipe, "0 6 * * *", utcnow())), 201)
    with engine.begin() as conn:  # written past the API (an import from mula, an edit in the database)
        conn.execute(update(ScheduleRow).where(ScheduleRow.id == bad.id).values(schedule=cron))

    run = ReportProducer(TaskStore(engine), store, settings).queue_due(now=utcnow())

    assert run.queued == 1
    [(why, count)] = run.disabled.items()
    assert why.startswith(reason) and count == 1
    [report] = read(RockyPop, api.post("/schedulers/report/pop?limit=1")).results
    assert report.schedule_id == str(good.id)
    disabled = api.get(f"/schedules/{bad.id}").json()
    assert disabled["enabled"] is False and disabled["disabled_reason"] == why
    assert read(RockySchedule, api.get(f"/schedules/{bad.id}")).deadline_at == bad.deadline_at


# --- every operator of the filter language, on columns and on JSON paths -----------------------

#: The operators PostgreSQL alone has: SQLite answers them with 400, never with a wrong result.
POSTGRESQL_ONLY = {"match", "@>", "<@", "@?", "@@"}

ORG = {"column": "organisation"}
PRIORITY = {"column": "priority"}
LEVEL = {"column": "data", "field": "scan_level"}
NOTE = {"column": "data", "field": "note"}
TAGS = {"column": "data", "field": "tags"}
ENABLED = {"column": "data", "field": "enabled"}
OBJECT = {"column": "data", "field": "input_ooi"}

#: (filter, the tasks it finds of A, B and C below)
OPERATORS: list[tuple[dict[str, Any], str]] = [
    ({**ORG, "operator": "==", "value": "beta"}, "B"),
    ({**ORG, "operator": "eq", "value": "beta"}, "B"),
    ({**ORG, "operator": "!=", "value": "beta"}, "AC"),
    ({**ORG, "operator": "ne", "value": "beta"}, "AC"),
    ({**LEVEL, "operator": "==", "value": 3}, "B"),
    ({**LEVEL, "operator": "!=", "value": 3}, "A"),
    ({**ENABLED, "operator": "is", "value": True}, "A"),
    ({**ENABLED, "operator": "is_not", "value": True}, "BC"),  # SQL's IS NOT: a missing value is not true
    ({"column": "schedule_id", "operator": "is", "value": None}, "ABC"),
    ({"column": "schedule_id", "operator": "is_not", "value": None}, ""),
    ({**NOTE, "operator": "is_null", "value": None}, "BC"),
    ({**NOTE, "operator": "is_not_null", "value": None}, "A"),
    ({"column": "schedule_id", "operator": "is_null", "value": None}, "ABC"),
    ({**PRIORITY, "operator": ">", "value": 1}, "BC"),
    ({**PRIORITY, "operator": "gt", "value": 1}, "BC"),
    ({**PRIORITY, "operator": "<", "value": 5}, "A"),
    ({**PRIORITY, "operator": "lt", "value": 5}, "A"),
    ({**PRIORITY, "operator": ">=", "value": 5}, "BC"),
    ({**PRIORITY, "operator": "gte", "value": 5}, "BC"),
    ({**PRIORITY, "operator": "<=", "value": 5}, "AB"),
    ({**PRIORITY, "operator": "lte", "value": 5}, "AB"),
    ({**LEVEL, "operator": ">", "value": 1}, "B"),
    ({**LEVEL, "operator": "<=", "value": 2.5}, "A"),
    ({"column": "created_at", "operator": ">=", "value": "2000-01-01T00:00:00+00:00"}, "ABC"),
    ({**ORG, "operator": "like", "value": "acme%"}, "A"),
    ({**ORG, "operator": "not_like", "value": "acme%"}, "BC"),
    ({**ORG, "operator": "ilike", "value": "acme%"}, "AC"),
    ({**ORG, "operator": "not_ilike", "value": "acme%"}, "B"),
    ({**OBJECT, "operator": "like", "value": "Hostname|%"}, "AB"),
    ({**OBJECT, "operator": "ilike", "value": "%MISPO%"}, "A"),
    ({**ORG, "operator": "in", "value": ["acme", "beta"]}, "AB"),
    ({**ORG, "operator": "not_in", "value": ["acme", "beta"]}, "C"),
    ({**LEVEL, "operator": "in", "value": [1, 3]}, "AB"),
    ({**ORG, "operator": "contains", "value": "cme"}, "AC"),
    ({**NOTE, "operator": "contains", "value": "mispo"}, "A"),
    ({"column": "input_ooi", "operator": "starts_with", "value": "IPAddress"}, "C"),
    ({**OBJECT, "operator": "starts_with", "value": "Hostname|internet|ex"}, "B"),
    ({**TAGS, "operator": "any", "value": ["dns", "x"]}, "A"),
    ({**NOTE, "operator": "match", "value": "scan"}, "A"),
    ({**TAGS, "operator": "@>", "value": ["web"]}, "A"),
    ({**TAGS, "operator": "<@", "value": ["ports", "x"]}, "B"),
    ({"column": "data", "operator": "@?", "value": '$.tags[*] ? (@ == "ports")'}, "B"),
    ({"column": "data", "operator": "@@", "value": "$.scan_level > 2"}, "B"),
]


def test_every_operator_finds_exactly_its_tasks_and_sqlite_refuses_postgresqls_own(api, engine):
    store = TaskStore(engine)
    tasks: dict[str, uuid.UUID] = {}
    extras: dict[str, tuple[str, int, str, dict[str, Any]]] = {
        "A": ("acme", 1, OOI, {"scan_level": 1, "enabled": True, "tags": ["web", "dns"], "note": "port scan of mispo"}),
        "B": (
            "beta",
            5,
            "Hostname|internet|example.nl",
            {"scan_level": 3, "enabled": False, "tags": ["ports"], "note": None},
        ),
        "C": ("Acme-2", 9, "IPAddressV4|internet|1.2.3.4", {}),
    }
    for name, (org, priority, ooi, extra) in extras.items():
        task_id = uuid.uuid4()
        data = {"id": str(task_id), "boefje": {"id": "nmap"}, "input_ooi": ooi, "organization": org, **extra}
        store.claim(
            [
                NewTask(
                    id=task_id,
                    scheduler_id=SchedulerId.BOEFJE,
                    type="boefje",
                    organisation=org,
                    plugin_id="nmap",
                    input_ooi=ooi,
                    hash=boefje_task_hash("nmap", org, ooi),
                    band=3,
                    priority=priority,
                    data=data,
                    reason="new",
                )
            ]
        )
        tasks[name] = task_id
    names = {task_id: name for name, task_id in tasks.items()}

    found: dict[str, str] = {}
    refused: dict[str, Any] = {}
    for item, _ in OPERATORS:
        response = api.post("/tasks", params={"limit": 10}, json={"filters": [item]})
        key = f"{item['operator']} {item.get('field') or item['column']}"
        if response.status_code == 200:
            found[key] = "".join(sorted(names[uuid.UUID(t["id"])] for t in response.json()["results"]))
        else:
            refused[key] = (response.status_code, response.json())

    sqlite = engine.dialect.name == "sqlite"
    expected = {
        f"{item['operator']} {item.get('field') or item['column']}": wanted
        for item, wanted in OPERATORS
        if not (sqlite and item["operator"] in POSTGRESQL_ONLY)
    }
    assert found == expected
    if sqlite:
        assert refused == {
            f"{item['operator']} {item.get('field') or item['column']}": (
                400,
                {"detail": f"operator {item['operator']!r} needs PostgreSQL; this scheduler's database is sqlite"},
            )
            for item, _ in OPERATORS
            if item["operator"] in POSTGRESQL_ONLY
        }
    else:
        assert refused == {}


# --- the OpenAPI page ------------------------------------------------------------------------------

#: Every route of SCHEDULER-API.md with its methods, and our own /explain.
ROUTES = {
    "/health": {"get"},
    "/metrics": {"get"},
    "/schedulers": {"get"},
    "/schedulers/{scheduler_id}": {"get"},
    "/schedulers/{scheduler_id}/push": {"post"},
    "/schedulers/{scheduler_id}/pop": {"post"},
    "/tasks": {"get", "post"},
    "/tasks/stats": {"get"},
    "/tasks/{task_id}": {"get", "patch"},
    "/schedules": {"get", "post"},
    "/schedules/search": {"post"},
    "/schedules/{schedule_id}": {"get", "patch", "delete"},
    "/explain": {"get"},
}


def test_the_openapi_page_documents_every_route_with_its_methods_and_answers(api):
    schema = api.get("/openapi.json").json()
    page = api.get("/docs")

    assert {path: set(methods) for path, methods in schema["paths"].items()} == ROUTES
    operations = [op for methods in schema["paths"].values() for op in methods.values()]
    assert all(op.get("summary") for op in operations)
    push = schema["paths"]["/schedulers/{scheduler_id}/push"]["post"]["responses"]
    assert {"201", "400", "404", "409", "422"} <= set(push)
    assert set(schema["paths"]["/schedules/{schedule_id}"]["delete"]["responses"]) >= {"204", "404"}
    assert page.status_code == 200 and "/openapi.json" in page.text
