"""``/schedules`` over real HTTP, on SQLite and PostgreSQL: Rocky's report schedules and the
planner's boefje schedules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from croniter import croniter
from sqlalchemy import Engine, select

from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.rules.identity import boefje_task_hash, report_task_hash
from kat_scheduler.storage.schedules import NewSchedule, ScheduleStore
from kat_scheduler.storage.tables import ScheduleRow, table_of
from tests.factories import NewScheduleFactory


def report_schedule(recipe: str | None = None, org: str = "aa", **extra: object) -> dict[str, Any]:
    """What Rocky sends: rocky/rocky/scheduler.py, post_schedule, with a ScheduleRequest whose data
    is ``ReportTask(organisation_id=..., report_recipe_id=...)`` dumped with its ``type``."""
    body: dict[str, Any] = {
        "scheduler_id": "report",
        "organisation": org,
        "data": {"organisation_id": org, "report_recipe_id": recipe or str(uuid.uuid4()), "type": "report"},
        "schedule": "0 6 * * *",
    }
    return body | extra


def stored(engine: Engine) -> list[tuple[Any, ...]]:
    """Every schedule as it is in the database, for 'nothing changed' checks."""
    with engine.connect() as conn:
        cols = table_of(ScheduleRow).c
        return sorted(
            tuple(r)
            for r in conn.execute(
                select(cols.id, cols.hash, cols.enabled, cols.schedule, cols.deadline_at, cols.modified_at)
            )
        )


def next_six_am(after: datetime) -> datetime:
    following: datetime = croniter("0 6 * * *", after).get_next(datetime)
    return following


def test_a_report_schedule_is_created_with_its_hash_and_next_cron_deadline_and_a_second_is_409(api, engine):
    recipe = str(uuid.uuid4())
    before = datetime.now(UTC)

    created = api.post("/schedules", json=report_schedule(recipe))
    again = api.post("/schedules", json=report_schedule(recipe, schedule="0 7 * * *"))

    assert created.status_code == 201, created.text
    schedule = created.json()
    assert schedule["scheduler_id"] == "report" and schedule["enabled"] is True
    assert schedule["hash"] == report_task_hash(recipe, "aa")
    assert schedule["data"] == {"organisation_id": "aa", "report_recipe_id": recipe, "type": "report"}
    assert datetime.fromisoformat(schedule["deadline_at"]) == next_six_am(before)
    assert schedule["created_at"] and schedule["modified_at"]
    assert api.get(f"/schedules/{schedule['id']}").json() == schedule
    assert again.status_code == 409
    assert again.json() == {"detail": f"a schedule with hash {schedule['hash']} exists already"}
    assert len(stored(engine)) == 1


def test_a_one_off_schedule_keeps_its_deadline_and_has_no_cron(api):
    deadline = "2030-01-02T03:04:05+00:00"

    created = api.post("/schedules", json=report_schedule(schedule=None, deadline_at=deadline))

    assert created.status_code == 201, created.text
    assert created.json()["schedule"] is None
    assert datetime.fromisoformat(created.json()["deadline_at"]) == datetime.fromisoformat(deadline)


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (report_schedule(schedule="every morning"), 400, "schedule 'every morning' is not a valid cron expression"),
        (report_schedule(schedule="0 6 30 2 *"), 400, "schedule '0 6 30 2 *' is not a valid cron expression"),
        (report_schedule(schedule="0 6 1 1 * 0 2020"), 400, "schedule '0 6 1 1 * 0 2020' has no time after"),
        (report_schedule(schedule=None), 400, "needs a cron expression (schedule), a deadline_at, or both"),
        (
            {**report_schedule(), "data": {"organisation_id": "aa"}},
            400,
            "data is not a report task: report_recipe_id: Field required",
        ),
        (report_schedule(org="bb") | {"organisation": "aa"}, 400, "differs from the data's organisation 'bb'"),
        (
            report_schedule() | {"scheduler_id": "boefje"},
            400,
            "data is not a boefje task: boefje: Field required",
        ),
        (report_schedule() | {"scheduler_id": "nope"}, 404, "scheduler not found: 'nope'"),
        (report_schedule() | {"colour": "red"}, 422, "Extra inputs are not permitted"),
        (report_schedule() | {"data": "recipe"}, 422, "valid dictionary"),
        (report_schedule() | {"deadline_at": "tomorrow"}, 422, "valid datetime"),
        ({"scheduler_id": "report", "data": {}}, 422, "organisation"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_problem_and_nothing_is_stored(api, engine, body, status, detail):
    response = api.post("/schedules", json=body)

    assert response.status_code == status, response.text
    assert detail in str(response.json()["detail"])
    assert stored(engine) == []


def test_a_schedule_that_is_not_json_is_422(api, engine):
    response = api.post("/schedules", data=b"{", headers={"Content-Type": "application/json"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert stored(engine) == []


def add_boefje_schedules(engine: Engine, count: int, **fields: object) -> list[NewSchedule]:
    schedules: list[NewSchedule] = []
    for _ in range(count):
        schedule: NewSchedule = NewScheduleFactory.build(**fields)
        data = {
            "boefje": {"id": schedule.plugin_id},
            "input_ooi": schedule.input_ooi,
            "organization": schedule.organisation,
        }
        schedules.append(NewScheduleFactory.build(input_ooi=schedule.input_ooi, data=data, **fields))
    ScheduleStore(engine).upsert(schedules)
    return schedules


def ids(response: Any) -> set[str]:
    assert response.status_code == 200, response.text
    return {s["id"] for s in response.json()["results"]}


def test_the_list_narrows_by_each_query_parameter_and_pages(api, engine):
    soon = datetime.now(UTC) + timedelta(hours=1)
    later = datetime.now(UTC) + timedelta(days=3)
    boefjes = add_boefje_schedules(engine, 3, organisation="aa", deadline_at=soon)
    add_boefje_schedules(engine, 2, organisation="bb", deadline_at=later)
    # due between the two (its cron's next 06:00 is within the hour from 05:00 UTC: soon's window)
    in_between = (soon + timedelta(days=1)).isoformat()
    report = api.post("/schedules", json=report_schedule(org="bb", deadline_at=in_between)).json()
    ScheduleStore(engine).disable_hashes([boefjes[0].hash], "plugin disabled")
    everything = api.get("/schedules", params={"limit": 500})
    first = api.get("/schedules", params={"limit": 2})
    second = api.get("/schedules", params={"limit": 2, "offset": 2})

    assert everything.json()["count"] == 6 and len(ids(everything)) == 6
    assert ids(api.get("/schedules", params={"scheduler_id": "report"})) == {report["id"]}
    assert len(ids(api.get("/schedules", params={"organisation": "aa"}))) == 3
    assert len(ids(api.get("/schedules", params={"schedule_hash": boefjes[1].hash}))) == 1
    assert len(ids(api.get("/schedules", params={"enabled": "false"}))) == 1
    assert len(ids(api.get("/schedules", params={"max_deadline_at": (soon + timedelta(minutes=1)).isoformat()}))) == 3
    assert len(ids(api.get("/schedules", params={"min_deadline_at": (later - timedelta(minutes=1)).isoformat()}))) == 2
    assert api.get("/schedules", params={"min_created_at": "2000-01-01", "limit": 0}).json() == {
        "count": 6,
        "next": None,
        "previous": None,
        "results": [],
    }
    assert api.get("/schedules", params={"max_created_at": "2000-01-01"}).json()["count"] == 0
    assert first.json()["count"] == 6 and "offset=2" in first.json()["next"] and first.json()["previous"] is None
    assert ids(first).isdisjoint(ids(second)) and "offset=0" in second.json()["previous"]
    partial = api.get("/schedules", params={"limit": 1, "max_pages": 1, "allow_partial_count": "true"}).json()
    assert (partial["count"], partial["is_partial_count"]) == (2, True)  # offset + max_pages * limit + 1


@pytest.mark.parametrize(
    ("params", "status", "detail"),
    [
        ({"min_deadline_at": "2030-01-02", "max_deadline_at": "2030-01-01"}, 400, "min_deadline_at must be less"),
        ({"min_created_at": "2030-01-02", "max_created_at": "2030-01-01"}, 400, "min_created_at must be less"),
        ({"limit": 501}, 422, "less than or equal to 500"),
        ({"offset": -1}, 422, "greater than or equal to 0"),
        ({"scheduler_id": "nope"}, 422, "boefje"),
        ({"enabled": "perhaps"}, 422, "valid boolean"),
        ({"min_deadline_at": "soon"}, 422, "valid datetime"),
    ],
)
def test_a_bad_listing_is_refused_naming_the_problem(api, params, status, detail):
    response = api.get("/schedules", params=params)

    assert response.status_code == status, response.text
    assert detail in str(response.json()["detail"])


def test_search_finds_rockys_report_recipe_and_refuses_missing_or_bad_filters(api, engine):
    recipe = str(uuid.uuid4())
    wanted = api.post("/schedules", json=report_schedule(recipe)).json()
    api.post("/schedules", json=report_schedule())
    add_boefje_schedules(engine, 2)
    by_recipe = {"filters": [{"column": "data", "field": "report_recipe_id", "operator": "==", "value": recipe}]}

    assert ids(api.post("/schedules/search", json=by_recipe)) == {wanted["id"]}
    either = {
        "filters": {
            "or": [
                {"column": "scheduler_id", "operator": "==", "value": "boefje"},
                {"column": "hash", "operator": "==", "value": wanted["hash"]},
            ]
        }
    }
    assert len(ids(api.post("/schedules/search", json=either, params={"limit": 10}))) == 3
    no_filters: list[dict[str, object] | None] = [None, {"filters": []}]
    for body in no_filters:
        missing = api.post("/schedules/search", json=body)
        assert missing.status_code == 400 and missing.json() == {"detail": "missing search filters"}
    bad = api.post("/schedules/search", json={"filters": [{"column": "status", "operator": "==", "value": "queued"}]})
    assert bad.status_code == 400 and "unknown filter column 'status'" in bad.json()["detail"]
    enabled_text = {"filters": [{"column": "enabled", "operator": "==", "value": "yes"}]}
    assert api.post("/schedules/search", json=enabled_text).status_code == 400
    assert api.post("/schedules/search", json=by_recipe, params={"limit": 501}).status_code == 422


def test_patching_disables_moves_the_deadline_with_the_cron_and_changes_data(api, engine):
    schedule = api.post("/schedules", json=report_schedule()).json()
    path = f"/schedules/{schedule['id']}"
    before = datetime.now(UTC)

    disabled = api.patch(path, json={"enabled": False})
    recron = api.patch(path, json={"schedule": "30 2 * * 1"})
    new_recipe = str(uuid.uuid4())
    redata = api.patch(path, json={"data": {"organisation_id": "aa", "report_recipe_id": new_recipe}})
    enabled = api.patch(path, json={"enabled": True, "deadline_at": "2031-05-06T07:08:09Z"})

    assert disabled.status_code == 200 and disabled.json()["enabled"] is False
    assert disabled.json()["modified_at"] > schedule["modified_at"]
    assert recron.json()["schedule"] == "30 2 * * 1"
    expected = croniter("30 2 * * 1", before).get_next(datetime)
    assert datetime.fromisoformat(recron.json()["deadline_at"]) == expected
    assert redata.json()["hash"] == report_task_hash(new_recipe, "aa")
    assert enabled.json()["enabled"] is True
    assert datetime.fromisoformat(enabled.json()["deadline_at"]) == datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert api.get(path).json() == enabled.json()


def test_a_boefje_schedule_the_planner_wrote_is_visible_and_editable(api, engine):
    (written,) = add_boefje_schedules(engine, 1, schedule=None, deadline_at=datetime.now(UTC) + timedelta(hours=2))
    (listed,) = api.get("/schedules", params={"scheduler_id": "boefje"}).json()["results"]
    path = f"/schedules/{listed['id']}"
    before = datetime.now(UTC)

    disabled = api.patch(path, json={"enabled": False})
    recron = api.patch(path, json={"schedule": "0 3 * * *", "enabled": True})

    assert listed["hash"] == written.hash == boefje_task_hash("dns-records", "aa", written.input_ooi)
    assert disabled.json()["enabled"] is False
    row = ScheduleStore(engine).get_by_hash(written.hash)
    assert row is not None and row.enabled is True and row.schedule == "0 3 * * *"
    assert row.deadline_at == croniter("0 3 * * *", before).get_next(datetime)
    assert recron.json()["deadline_at"] is not None


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({}, 400, "no data to patch"),
        ({"schedule": "61 * * * *"}, 400, "is not a valid cron expression"),
        ({"schedule": "0 6 1 1 * 0 2020"}, 400, "has no time after"),
        ({"enabled": None}, 400, "enabled cannot be null"),
        ({"data": None}, 400, "data cannot be null"),
        ({"data": {"organisation_id": "zz", "report_recipe_id": "r"}}, 400, "differs from the data's organisation"),
        ({"data": {"report_recipe_id": "r"}}, 400, "data is not a report task: organisation_id"),
        ({"hash": "abc"}, 422, "Extra inputs are not permitted"),
        ({"enabled": "sometimes"}, 422, "valid boolean"),
    ],
)
def test_a_bad_patch_is_refused_naming_the_problem_and_changes_nothing(api, engine, body, status, detail):
    schedule = api.post("/schedules", json=report_schedule()).json()
    before = stored(engine)

    response = api.patch(f"/schedules/{schedule['id']}", json=body)

    assert response.status_code == status, response.text
    assert detail in str(response.json()["detail"])
    assert stored(engine) == before


def test_patching_data_onto_another_schedules_hash_is_409_and_changes_nothing(api, engine):
    taken = str(uuid.uuid4())
    api.post("/schedules", json=report_schedule(taken))
    schedule = api.post("/schedules", json=report_schedule()).json()
    before = stored(engine)

    response = api.patch(
        f"/schedules/{schedule['id']}", json={"data": {"organisation_id": "aa", "report_recipe_id": taken}}
    )

    assert response.status_code == 409
    assert response.json() == {"detail": f"a schedule with hash {report_task_hash(taken, 'aa')} exists already"}
    assert stored(engine) == before


def test_deleting_is_204_then_the_schedule_is_gone_and_unknown_or_malformed_ids_are_404_and_422(api, engine):
    schedule = api.post("/schedules", json=report_schedule()).json()
    path = f"/schedules/{schedule['id']}"
    missing = f"/schedules/{uuid.uuid4()}"

    deleted = api.http.delete(api.url + path, timeout=10)

    assert deleted.status_code == 204 and deleted.content == b""
    assert api.get(path).status_code == 404
    assert api.http.delete(api.url + path, timeout=10).status_code == 404
    assert api.get(missing).json() == {"detail": f"schedule not found: {missing.rsplit('/', 1)[1]}"}
    assert api.patch(missing, json={"enabled": False}).status_code == 404
    assert api.get("/schedules/not-a-uuid").status_code == 422
    assert api.patch("/schedules/not-a-uuid", json={"enabled": False}).status_code == 422
    assert api.http.delete(api.url + "/schedules/not-a-uuid", timeout=10).status_code == 422
    assert stored(engine) == []


def test_a_due_report_schedule_is_not_read_as_a_boefje_schedule(api, engine):
    # The boefje producer (queue_due) re-checks what iter_due gives it against Katalogus: a report
    # recipe is no plugin, so it would disable the schedule as "plugin no longer exists".
    report = api.post("/schedules", json=report_schedule(deadline_at="2020-01-01T00:00:00Z")).json()
    (boefje,) = add_boefje_schedules(engine, 1, deadline_at=datetime(2020, 1, 1, tzinfo=UTC))
    store = ScheduleStore(engine)
    now = datetime.now(UTC)

    assert [row.hash for batch in store.iter_due(now) for row in batch] == [boefje.hash]
    reports = [row.id for batch in store.iter_due(now, scheduler_id=SchedulerId.REPORT) for row in batch]
    assert reports == [uuid.UUID(report["id"])]
    assert len([row for batch in store.iter_due(now, scheduler_id=None) for row in batch]) == 2
