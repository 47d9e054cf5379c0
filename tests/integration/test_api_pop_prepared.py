"""A pop is a prepared statement on PostgreSQL (``TaskViews.pop_statement``): whatever its filters,
it takes what the same pop unprepared would, on connections new, replaced or full of others."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, select

from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.settings import Settings
from kat_scheduler.storage import task_views
from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.filters import FilterRequest, conditions
from kat_scheduler.storage.tables import TaskRow
from kat_scheduler.storage.task_views import TaskViews
from kat_scheduler.storage.tasks import TaskStore
from tests.api_server import ApiServer, serve_api
from tests.factories import NewTaskFactory


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(broker_url=redis_url, pull_schedulers="report,boefje")


@pytest.fixture
def api(engine: Engine, settings: Settings) -> Iterator[ApiServer]:
    with serve_api(settings, engine=engine) as server:
        yield server


def dispatched(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {str(i) for i in conn.scalars(select(TaskRow.id).where(TaskRow.status == TaskStatus.DISPATCHED))}


def test_a_pop_filtered_by_a_list_and_a_pattern_takes_exactly_the_matching_tasks_most_urgent_first(api, engine):
    # An IN list is written out one parameter per item in the prepared statement; a LIKE
    # pattern's '%' reaches PostgreSQL inside a value.
    wanted = [
        NewTaskFactory.build(plugin_id=plugin, organisation=org, priority=priority)
        for priority, (plugin, org) in enumerate([("nmap", "org-a"), ("dns-records", "org-b"), ("nmap", "org-c")])
    ]
    others = [
        NewTaskFactory.build(plugin_id="nmap", organisation="other", priority=-1),
        NewTaskFactory.build(plugin_id="ssl", organisation="org-a", priority=-1),
        NewTaskFactory.build(plugin_id="nmap", organisation="org%", priority=-1, input_ooi="Hostname|internet|x"),
    ]
    TaskStore(engine).claim([*wanted, *others])
    body = {
        "filters": [
            {"column": "plugin_id", "operator": "in", "value": ["nmap", "dns-records"]},
            {"column": "organisation", "operator": "like", "value": "org-%"},
        ]
    }

    first = api.post("/schedulers/boefje/pop", params={"limit": 2}, json=body)
    again = api.post("/schedulers/boefje/pop", params={"limit": 2}, json=body)
    empty = api.post("/schedulers/boefje/pop", params={"limit": 2}, json=body)

    assert [t["id"] for t in first.json()["results"]] == [str(wanted[0].id), str(wanted[1].id)]
    assert [t["id"] for t in again.json()["results"]] == [str(wanted[2].id)]
    assert empty.json() == {"results": []}
    assert dispatched(engine) == {str(t.id) for t in wanted}


def test_pops_go_on_after_the_databases_connections_were_cut(postgres_uri, pg_engine, settings):
    # A connection replacing one lost has prepared nothing: the pop prepares itself again.
    tasks = [NewTaskFactory.build(priority=priority) for priority in range(3)]
    TaskStore(pg_engine).claim(tasks)

    with serve_api(settings, engine=pg_engine) as api:
        before = api.post("/schedulers/boefje/pop").json()["results"]
        outside = make_engine(postgres_uri, pool_size=1)
        try:
            with outside.connect() as conn:
                cut = conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
        finally:
            outside.dispose()
        after = [api.post("/schedulers/boefje/pop") for _ in range(2)]

    assert cut >= 1
    assert [t["id"] for t in before] == [str(tasks[0].id)]
    assert [r.status_code for r in after] == [200, 200]
    assert [r.json()["results"][0]["id"] for r in after] == [str(tasks[1].id), str(tasks[2].id)]


def test_a_connection_popping_more_ways_than_it_keeps_prepared_forgets_them_and_pops_right(
    postgres_uri, pg_engine, monkeypatch
):
    monkeypatch.setattr(task_views, "PREPARED_POPS", 2)
    plugins = ["nmap", "dns-records", "ssl", "nikto"]
    TaskStore(pg_engine).claim([NewTaskFactory.build(plugin_id=p, priority=n) for p in plugins for n in range(2)])
    one_connection = make_engine(postgres_uri, pool_size=1)
    try:
        views = TaskViews(one_connection)
        pops = {
            plugin: views.pop_statement(
                SchedulerId.BOEFJE,
                where=conditions(
                    FilterRequest.model_validate(
                        {"filters": [{"column": "plugin_id", "operator": "==", "value": plugin}]}
                    ),
                    "postgresql",
                ),
            )
            for plugin in plugins
        }
        taken = [(plugin, pops_one(views, pops[plugin]).data["boefje"]["id"]) for _ in range(2) for plugin in plugins]
        with one_connection.connect() as conn:
            kept = conn.execute(sa.text("SELECT count(*) FROM pg_prepared_statements")).scalar_one()
    finally:
        one_connection.dispose()

    assert taken == [(plugin, plugin) for _ in range(2) for plugin in plugins]
    assert 1 <= kept <= 2
    assert dispatched(pg_engine) == {str(i) for i in task_ids(pg_engine)}


def pops_one(views: TaskViews, statement: task_views.PopStatement) -> sa.Row[Any]:
    (row,) = views.pop_with(statement, 1)
    return row


def task_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [str(i) for i in conn.scalars(select(TaskRow.id))]
