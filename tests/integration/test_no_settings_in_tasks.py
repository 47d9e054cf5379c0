"""A boefje's settings (its ``environment``: API keys, passwords) are never kept in a task's JSON,
which the API serves: not from a raw file's event, not from a push, not from mula's tables."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, select

from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.events.handlers import RawFileHandler
from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.mula_import.rows import finished_task
from kat_scheduler.storage import ScheduleStore, TaskStore
from kat_scheduler.storage.tables import TaskRow
from tests.events import raw_file_event
from tests.factories import BoefjeMetaFactory, NewTaskFactory

SECRET = "s3cret-api-key"
NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def test_a_normalizer_task_from_a_raw_file_keeps_none_of_the_boefjes_settings(
    clients, world, planner_settings, pg_engine
):
    publisher = make_publisher(planner_settings)
    try:
        handler = RawFileHandler(
            PluginCache(clients.katalogus, ttl=60),
            TaskStore(pg_engine),
            ScheduleStore(pg_engine),
            publisher,
            planner_settings,
            clock=lambda: NOW,
        )
        org = world.organisation_ids[0]
        event = raw_file_event(org, "dns-records", ["boefje/dns-records"], NOW)
        event.raw_data.boefje_meta.environment = {"SHODAN_API": SECRET}
        handler("raw_file_received", [event])
    finally:
        publisher.close()

    rows = normalizer_rows(pg_engine)
    assert rows, "the raw file got no normalizer task"
    for row in rows:
        assert SECRET not in str(row.data)
        assert row.data["raw_data"]["boefje_meta"]["id"] == str(event.raw_data.boefje_meta.id)
        assert "environment" not in row.data["raw_data"]["boefje_meta"]


@pytest.mark.parametrize("scheduler", ["boefje", "normalizer"])
def test_a_pushed_task_is_served_without_the_settings_it_came_with(api, scheduler):
    meta = BoefjeMetaFactory.build(organization="aa", environment={"SHODAN_API": SECRET}).model_dump(mode="json")
    if scheduler == "boefje":  # a BoefjeMeta a runner hydrated, pushed as a new task
        data = {**meta, "boefje": {"id": "dns-records", "version": None}}
    else:
        data = {
            "normalizer": {"id": "kat_dns_normalize"},
            "raw_data": {"id": str(uuid.uuid4()), "boefje_meta": meta, "mime_types": [{"value": "boefje/dns-records"}]},
        }

    pushed = api.post(f"/schedulers/{scheduler}/push", json={"organisation": "aa", "data": data})

    assert pushed.status_code == 201, pushed.text
    assert SECRET not in pushed.text
    assert SECRET not in api.get(f"/tasks/{pushed.json()['id']}").text
    assert SECRET not in api.get("/tasks", params={"organisation": "aa"}).text


def test_a_task_imported_from_mula_keeps_none_of_the_settings():
    meta = BoefjeMetaFactory.build(organization="aa", environment={"SHODAN_API": SECRET}).model_dump(mode="json")
    data = {
        "normalizer": {"id": "kat_dns_normalize"},
        "raw_data": {"id": str(uuid.uuid4()), "boefje_meta": meta, "mime_types": []},
    }
    task = finished_task(
        task_id=uuid.uuid4(),
        kind="normalizer",
        status="completed",
        data=data,
        mula_hash=None,
        priority=1,
        created_at=NOW,
        modified_at=NOW,
        schedule_id=None,
        notes=Counter(),
    )
    assert SECRET not in str(task.data)
    assert data["raw_data"]["boefje_meta"]["environment"] == {"SHODAN_API": SECRET}  # the input is left as it was


def normalizer_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(TaskRow).where(TaskRow.scheduler_id == SchedulerId.NORMALIZER)).all())


def test_a_row_an_earlier_version_wrote_with_settings_is_served_without_them(api, engine):
    """Rows written before settings were dropped keep them in the database; the API never shows them."""
    task = NewTaskFactory.build(
        scheduler_id=SchedulerId.NORMALIZER,
        type="normalizer",
        plugin_id="kat_dns_normalize",
        data={
            "normalizer": {"id": "kat_dns_normalize"},
            "raw_data": {
                "id": str(uuid.uuid4()),
                "boefje_meta": BoefjeMetaFactory.build(
                    organization="aa", environment={"SHODAN_API": SECRET}
                ).model_dump(mode="json"),
            },
        },
    )
    TaskStore(engine).claim([task])
    with engine.connect() as conn:
        assert SECRET in str(conn.execute(select(TaskRow.data).where(TaskRow.id == task.id)).scalar_one())

    served = [api.get(f"/tasks/{task.id}").text, api.get("/tasks", params={"organisation": "aa"}).text]

    assert all(SECRET not in text and str(task.id) in text for text in served)
