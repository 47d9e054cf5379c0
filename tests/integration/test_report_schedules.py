"""Schedules fire: Rocky's report schedules become report tasks its report runner pops, and the
boefje schedules the same endpoints edit are honoured by due schedules. Real HTTP (uvicorn on
loopback), on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from croniter import croniter
from sqlalchemy import Engine, select, update

from kat_scheduler.celery_tasks import scheduler as scheduler_tasks
from kat_scheduler.clients import KATClients
from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.models.producers import ProducerName, RunOutcome
from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.producers import DueSchedulesProducer, Producer, ProducerContext, TickProducer
from kat_scheduler.producers.reports import ReportProducer, ReportRun
from kat_scheduler.rules.identity import report_task_hash
from kat_scheduler.rules.reports import SCHEDULED_REPORT_BAND
from kat_scheduler.runtime.resources import Runtime
from kat_scheduler.settings import Settings, load_settings
from kat_scheduler.sim import SimulatedKAT
from kat_scheduler.storage.producers import ProducerRunStore
from kat_scheduler.storage.schedules import ScheduleRecord, ScheduleStore
from kat_scheduler.storage.tables import ScheduleRow, TaskRow, UnpublishedTask, utcnow
from kat_scheduler.storage.tasks import TaskStore
from tests.api_server import ApiServer, serve_api
from tests.integration.conftest import WORLD_NOW

SIX_AM = "0 6 * * *"


def producer(engine: Engine, settings: Settings) -> ReportProducer:
    return ReportProducer(TaskStore(engine), ScheduleStore(engine), settings)


def rockys_schedule(
    recipe: str, *, schedule: str | None = SIX_AM, deadline_at: datetime | None = None, org: str = "aa"
) -> dict[str, Any]:
    """What Rocky sends for a report recipe: rocky/rocky/scheduler.py, post_schedule, a ScheduleRequest
    whose data is ``ReportTask(organisation_id=..., report_recipe_id=...)`` dumped with its ``type``."""
    body: dict[str, Any] = {
        "scheduler_id": "report",
        "organisation": org,
        "data": {"organisation_id": org, "report_recipe_id": recipe, "type": "report"},
        "schedule": schedule,
    }
    if deadline_at is not None:
        body["deadline_at"] = deadline_at.isoformat()
    return body


def create(api: ApiServer, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/schedules", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def pop_report(api: ApiServer) -> list[dict[str, Any]]:
    """Rocky's report runner: ``pop_item("report")`` posts ``/schedulers/report/pop?limit=1`` with no body."""
    response = api.post("/schedulers/report/pop", params={"limit": 1})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def deadline(api: ApiServer, schedule_id: str) -> datetime | None:
    found = api.get(f"/schedules/{schedule_id}").json()["deadline_at"]
    return datetime.fromisoformat(found) if found else None


def report_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(TaskRow).where(TaskRow.scheduler_id == SchedulerId.REPORT)).all())


def test_a_due_report_schedule_rocky_created_yields_a_poppable_report_task_and_then_its_next_cron_deadline(
    api, engine, settings
):
    recipe = str(uuid.uuid4())
    schedule = create(api, rockys_schedule(recipe, deadline_at=utcnow() - timedelta(minutes=1)))
    now = utcnow()

    run = producer(engine, settings).queue_due(now=now)

    assert (run.due, run.queued, run.live, run.advanced, run.finished) == (1, 1, 0, 1, 0)
    [task] = pop_report(api)
    assert task["scheduler_id"] == "report" and task["type"] == "report" and task["status"] == "dispatched"
    assert task["organisation"] == "aa" and task["schedule_id"] == schedule["id"]
    assert task["data"] == {"organisation_id": "aa", "report_recipe_id": recipe, "type": "report"}
    assert task["hash"] == report_task_hash(recipe, "aa") == schedule["hash"]
    assert task["priority"] == int(now.timestamp())
    assert deadline(api, schedule["id"]) == croniter(SIX_AM, now).get_next(datetime)
    assert pop_report(api) == []
    # never published: no row waits for a message
    with engine.connect() as conn:
        assert conn.execute(select(UnpublishedTask)).all() == []
    # not due again before six: a second run queues nothing
    assert producer(engine, settings).queue_due(now=utcnow()).due == 0
    assert len(report_rows(engine)) == 1


def test_the_runner_finishes_the_report_and_the_next_deadline_queues_it_again(api, engine, settings):
    schedule = create(api, rockys_schedule(str(uuid.uuid4()), deadline_at=utcnow() - timedelta(minutes=1)))
    producer(engine, settings).queue_due(now=utcnow())
    [task] = pop_report(api)
    for status in ("running", "completed"):  # what the runner PATCHes
        assert api.patch(f"/tasks/{task['id']}", json={"status": status}).status_code == 200

    at_six = deadline(api, schedule["id"])
    assert at_six is not None
    run = producer(engine, settings).queue_due(now=at_six + timedelta(seconds=1))

    assert run.queued == 1
    [again] = pop_report(api)
    assert again["id"] != task["id"] and again["hash"] == task["hash"]
    assert deadline(api, schedule["id"]) == at_six + timedelta(days=1)


def test_a_report_still_queued_is_not_queued_twice_but_its_schedule_still_advances(api, engine, settings):
    schedule = create(api, rockys_schedule(str(uuid.uuid4()), deadline_at=utcnow() - timedelta(days=2)))
    producer(engine, settings).queue_due(now=utcnow() - timedelta(days=1))  # queued yesterday, never popped
    assert deadline(api, schedule["id"]) == croniter(SIX_AM, utcnow() - timedelta(days=1)).get_next(datetime)

    now = utcnow() + timedelta(days=1)
    run = producer(engine, settings).queue_due(now=now)

    assert (run.due, run.queued, run.live, run.advanced) == (1, 0, 1, 1)
    assert len(report_rows(engine)) == 1
    assert deadline(api, schedule["id"]) == croniter(SIX_AM, now).get_next(datetime)


def test_a_one_off_schedule_fires_exactly_once_and_its_deadline_becomes_null(api, engine, settings):
    schedule = create(api, rockys_schedule(str(uuid.uuid4()), schedule=None, deadline_at=utcnow()))

    first = producer(engine, settings).queue_due(now=utcnow())
    later = producer(engine, settings).queue_due(now=utcnow() + timedelta(days=400))

    assert (first.queued, first.finished, first.advanced) == (1, 1, 0)
    assert later.due == 0
    assert len(pop_report(api)) == 1 and pop_report(api) == []
    found = api.get(f"/schedules/{schedule['id']}").json()
    assert found["deadline_at"] is None and found["enabled"] is True and found["schedule"] is None
    assert len(report_rows(engine)) == 1


def test_a_disabled_report_schedule_never_fires(api, engine, settings):
    due = utcnow() - timedelta(minutes=5)
    schedule = create(api, rockys_schedule(str(uuid.uuid4()), deadline_at=due))
    assert api.patch(f"/schedules/{schedule['id']}", json={"enabled": False}).json()["enabled"] is False

    run = producer(engine, settings).queue_due(now=utcnow() + timedelta(days=30))

    assert run.due == 0 and run.queued == 0
    assert pop_report(api) == [] and report_rows(engine) == []
    assert deadline(api, schedule["id"]) == due  # untouched


def test_report_schedules_wait_with_their_deadlines_while_report_is_not_delivered_by_pull(
    api, engine, settings, redis_url, caplog
):
    due = utcnow() - timedelta(minutes=5)
    schedule = create(api, rockys_schedule(str(uuid.uuid4()), deadline_at=due))
    celery_only = Settings(broker_url=redis_url, pull_schedulers="")

    with caplog.at_level(logging.ERROR, "kat_scheduler.producers.reports"):
        run = producer(engine, celery_only).queue_due(now=utcnow())

    assert run.queued == 0 and run.not_delivered is not None and "SCHEDULER_PULL_SCHEDULERS" in run.not_delivered
    assert report_rows(engine) == []
    assert deadline(api, schedule["id"]) == due
    assert any("1 due report schedule(s) not queued" in r.getMessage() for r in caplog.records)
    assert producer(engine, settings).queue_due(now=utcnow()).queued == 1  # once report is pulled again


def test_a_report_schedule_that_cannot_make_a_task_is_disabled_with_the_reason_and_the_others_fire(
    api, engine, settings, caplog
):
    good = create(api, rockys_schedule(str(uuid.uuid4()), deadline_at=utcnow() - timedelta(minutes=1)))
    now = utcnow()
    bad = [  # written past the API (imported, or edited in the database): the API refuses these
        ScheduleRecord(
            id=uuid.uuid4(),
            scheduler_id=SchedulerId.REPORT,
            organisation="aa",
            plugin_id=str(n),
            input_ooi=None,
            hash=f"{n:032x}",
            data=data,
            enabled=True,
            deadline_at=now - timedelta(hours=1),
            created_at=now,
            modified_at=now,
            schedule=cron,
        )
        for n, (data, cron) in enumerate(
            [
                ({"organisation_id": "aa"}, SIX_AM),
                ({"organisation_id": "bb", "report_recipe_id": "r"}, SIX_AM),
                ({"organisation_id": "aa", "report_recipe_id": "r"}, "every morning"),
            ]
        )
    ]
    ScheduleStore(engine).add_records(bad)

    with caplog.at_level(logging.ERROR, "kat_scheduler.producers.reports"):
        run = producer(engine, settings).queue_due(now=utcnow())

    assert run.queued == 1 and [t["schedule_id"] for t in pop_report(api)] == [good["id"]]
    reasons = {
        "data.report_recipe_id must be a non-empty string, got None",
        "data.organisation_id 'bb' is not the schedule's organisation 'aa'",
        "schedule 'every morning' is not a valid cron expression",
    }
    assert run.disabled == dict.fromkeys(reasons, 1)
    with engine.connect() as conn:
        stored = dict(
            conn.execute(
                select(ScheduleRow.disabled_reason, ScheduleRow.enabled).where(ScheduleRow.id.in_([r.id for r in bad]))
            ).all()
        )
    assert stored == dict.fromkeys(reasons, False)
    assert sum("report schedule" in r.getMessage() and "disabled" in r.getMessage() for r in caplog.records) == 3


def test_a_dry_run_says_what_a_run_would_do_and_changes_nothing(api, engine, settings):
    due = utcnow() - timedelta(minutes=1)
    live = create(api, rockys_schedule(str(uuid.uuid4()), deadline_at=due - timedelta(days=1)))
    producer(engine, settings).queue_due(now=due - timedelta(hours=1))  # its report is queued, not popped
    create(api, rockys_schedule(str(uuid.uuid4()), deadline_at=due))
    create(api, rockys_schedule(str(uuid.uuid4()), schedule=None, deadline_at=due))
    api.patch(f"/schedules/{live['id']}", json={"deadline_at": due.isoformat()})
    before = (api.get("/schedules", params={"limit": 10}).json(), report_rows(engine))
    reports: Producer[ReportRun] = producer(engine, settings)

    run = reports.run(utcnow(), dry_run=True)

    assert (run.dry_run, run.due, run.queued, run.live, run.advanced, run.finished) == (True, 3, 2, 1, 2, 1)
    assert (api.get("/schedules", params={"limit": 10}).json(), report_rows(engine)) == before


def test_a_report_pushed_by_hand_is_popped_before_the_scheduled_ones(api, engine, settings):
    create(api, rockys_schedule(str(uuid.uuid4()), deadline_at=utcnow() - timedelta(minutes=1)))
    producer(engine, settings).queue_due(now=utcnow())
    recipe = str(uuid.uuid4())
    pushed = api.post(  # Rocky's "generate now"
        "/schedulers/report/push",
        json={"organisation": "aa", "priority": 1, "data": {"organisation_id": "aa", "report_recipe_id": recipe}},
    )
    assert pushed.status_code == 201, pushed.text

    first, second = pop_report(api), pop_report(api)

    assert [t["data"]["report_recipe_id"] for t in first] == [recipe]
    assert second and second[0]["schedule_id"] is not None
    with engine.connect() as conn:
        band = conn.execute(select(TaskRow.band).where(TaskRow.id == uuid.UUID(second[0]["id"]))).scalar_one()
    assert band == SCHEDULED_REPORT_BAND


# --- boefje schedules, edited through the same endpoints -------------------------------------


@pytest.fixture
def boefje_producers(
    kat: SimulatedKAT, clients: KATClients, engine: Engine, redis_url: str
) -> Iterator[ProducerContext]:
    settings = load_settings(
        octopoes_api=kat.octopoes_url,
        katalogus_api=kat.katalogus_url,
        bytes_api=kat.bytes_url,
        broker_url=redis_url,
        batch_size=100,
    )
    publisher = make_publisher(settings)
    yield ProducerContext(clients, TaskStore(engine), ScheduleStore(engine), settings, publisher)
    publisher.close()


#: When the due-schedule runs of the boefje tests run: shortly after the tick, before any schedule
#: the tick wrote is due, but after the deadlines :func:`planned_and_due` sets.
DUE_RUN = WORLD_NOW + timedelta(minutes=10)


def planned_and_due(producers: ProducerContext, engine: Engine, count: int) -> list[Any]:
    """A tick, then ``count`` of the pairs it queued ran two days ago and their schedules are due."""
    TickProducer(producers).run(WORLD_NOW)
    with engine.begin() as conn:
        # Pairs the tick queued (a schedule made from Bytes' history has no row of ours to age).
        queued = select(TaskRow.hash)
        schedules = list(
            conn.execute(
                select(ScheduleRow).where(ScheduleRow.hash.in_(queued)).order_by(ScheduleRow.hash).limit(count)
            ).all()
        )
        assert len(schedules) == count
        for schedule in schedules:
            conn.execute(
                update(TaskRow)
                .where(TaskRow.hash == schedule.hash)
                .values(status=TaskStatus.COMPLETED, ended_at=WORLD_NOW - timedelta(days=2))
            )
            conn.execute(
                update(ScheduleRow)
                .where(ScheduleRow.id == schedule.id)
                .values(deadline_at=WORLD_NOW + timedelta(minutes=5))
            )
    return schedules


def queued_hashes(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(TaskRow.hash).where(TaskRow.status == TaskStatus.QUEUED)).scalars())


def test_a_boefje_schedule_disabled_through_the_api_is_not_queued_by_due_schedules(api, engine, boefje_producers):
    disabled, control = planned_and_due(boefje_producers, engine, 2)
    due = deadline(api, str(disabled.id))

    patched = api.patch(f"/schedules/{disabled.id}", json={"enabled": False})
    report = DueSchedulesProducer(boefje_producers).run(DUE_RUN)

    assert patched.status_code == 200 and patched.json()["enabled"] is False
    assert report.queued == 1 and [c.hash for c in report.planned] == [control.hash]
    assert control.hash in queued_hashes(engine) and disabled.hash not in queued_hashes(engine)
    found = api.get(f"/schedules/{disabled.id}").json()
    assert found["enabled"] is False and deadline(api, str(disabled.id)) == due


def test_a_boefje_schedules_new_cron_moves_its_next_deadline_and_due_schedules_waits_for_it(
    api, engine, boefje_producers
):
    recroned, control = planned_and_due(boefje_producers, engine, 2)
    before = utcnow()

    patched = api.patch(f"/schedules/{recroned.id}", json={"schedule": "30 3 * * *"})
    report = DueSchedulesProducer(boefje_producers).run(DUE_RUN)

    assert patched.status_code == 200, patched.text
    moved = datetime.fromisoformat(patched.json()["deadline_at"])
    assert moved == croniter("30 3 * * *", before).get_next(datetime) > utcnow()
    assert patched.json()["schedule"] == "30 3 * * *"
    assert [c.hash for c in report.planned] == [control.hash]
    assert recroned.hash not in queued_hashes(engine)


# --- the beat-ticked task -------------------------------------------------------------------


@pytest.fixture
def runtime(planner_settings: Settings, pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    runtime = Runtime(planner_settings)
    monkeypatch.setattr(scheduler_tasks, "get_runtime", lambda: runtime)
    yield runtime
    runtime.close()


def test_the_report_schedules_task_queues_report_schedules_and_records_its_own_run(runtime, pg_engine):
    with serve_api(runtime.settings, engine=pg_engine) as api:
        schedule = create(api, rockys_schedule(str(uuid.uuid4()), deadline_at=utcnow() - timedelta(minutes=1)))

        result = scheduler_tasks.queue_report_schedules()

        assert result["queued"] == 1 and result["advanced"] == 1
        assert [t["schedule_id"] for t in pop_report(api)] == [schedule["id"]]
    run = ProducerRunStore(pg_engine).get(ProducerName.QUEUE_REPORT_SCHEDULES)
    assert run is not None and run.outcome == RunOutcome.OK and run.summary == result
    assert ProducerRunStore(pg_engine).get(ProducerName.QUEUE_DUE_SCHEDULES) is None


def test_the_due_schedules_task_leaves_report_schedules_to_their_own_task(runtime, pg_engine):
    with serve_api(runtime.settings, engine=pg_engine) as api:
        schedule = create(api, rockys_schedule(str(uuid.uuid4()), deadline_at=utcnow() - timedelta(minutes=1)))

        scheduler_tasks.queue_due_schedules()

        assert pop_report(api) == []
        assert api.get(f"/schedules/{schedule['id']}").json()["deadline_at"] == schedule["deadline_at"]
    assert ProducerRunStore(pg_engine).get(ProducerName.QUEUE_REPORT_SCHEDULES) is None


def test_a_failing_report_run_is_recorded_under_its_own_name_and_raised(runtime, pg_engine, monkeypatch):
    def broken(self: ReportProducer, *, now: datetime, dry_run: bool = False) -> ReportRun:
        raise RuntimeError("report store gone")

    monkeypatch.setattr(ReportProducer, "queue_due", broken)

    with pytest.raises(RuntimeError, match="report store gone"):
        scheduler_tasks.queue_report_schedules()

    run = ProducerRunStore(pg_engine).get(ProducerName.QUEUE_REPORT_SCHEDULES)
    assert run is not None and run.outcome == RunOutcome.ERROR
    assert run.error is not None and "report store gone" in run.error
