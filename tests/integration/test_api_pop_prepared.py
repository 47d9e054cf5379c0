"""The boefje workers' pop (by image) and a pop without filters are prepared statements on
PostgreSQL, planned once per connection (``TaskViews.pop_statement``); they take what the pop
planned each time would, on connections new, replaced or with other pops prepared. A pop with
other filters is planned each time, for its values."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, select

from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.settings import Settings
from kat_scheduler.storage import task_views
from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.tables import TaskRow
from kat_scheduler.storage.task_views import HeldConnection, TaskViews
from kat_scheduler.storage.tasks import NewTask, TaskStore
from tests.api_server import serve_api
from tests.factories import NewTaskFactory


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """For the shared ``api`` (tests/integration/conftest.py): the boefje scheduler is pulled too."""
    return Settings(broker_url=redis_url, pull_schedulers="report,boefje")


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


def cut_connections(postgres_uri: str) -> int:
    """Terminate every other connection to the test database; how many there were."""
    outside = make_engine(postgres_uri, pool_size=1)
    try:
        with outside.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            )
    finally:
        outside.dispose()


def test_pops_go_on_after_the_databases_connections_were_cut(postgres_uri, pg_engine, settings):
    # A connection replacing one lost has prepared nothing: the pop prepares itself again.
    tasks = [NewTaskFactory.build(priority=priority) for priority in range(3)]
    TaskStore(pg_engine).claim(tasks)

    with serve_api(settings, engine=pg_engine) as api:
        before = api.post("/schedulers/boefje/pop").json()["results"]
        cut = cut_connections(postgres_uri)
        after = [api.post("/schedulers/boefje/pop") for _ in range(2)]

    assert cut >= 1
    assert [t["id"] for t in before] == [str(tasks[0].id)]
    assert [r.status_code for r in after] == [200, 200]
    assert [r.json()["results"][0]["id"] for r in after] == [str(tasks[1].id), str(tasks[2].id)]


def backend(conn: sa.Connection) -> int:
    return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def test_pops_in_a_row_share_one_held_connection_given_back_to_the_pool_on_release(pg_engine, one_connection):
    tasks = [NewTaskFactory.build(priority=priority) for priority in range(3)]
    TaskStore(pg_engine).claim(tasks)
    views = TaskViews(one_connection)
    held = HeldConnection(one_connection)
    pop = views.pop_statement(SchedulerId.BOEFJE)

    taken = [row.id for _ in range(2) for row in views.pop_with(pop, 1, held=held)]
    backends = {held.run(backend) for _ in range(2)}
    held.release()

    assert taken == [tasks[0].id, tasks[1].id]
    assert len(backends) == 1
    assert one_connection.pool.checkedout() == 0, "given back"
    assert [row.id for row in views.pop_with(pop, 1)] == [tasks[2].id]


def test_a_held_connection_cut_meanwhile_is_replaced_and_the_pop_takes_the_next_task(postgres_uri, pg_engine):
    tasks = [NewTaskFactory.build(priority=priority) for priority in range(3)]
    TaskStore(pg_engine).claim(tasks)
    engine = make_engine(postgres_uri, pool_size=2)
    try:
        views = TaskViews(engine)
        held = HeldConnection(engine)
        pop = views.pop_statement(SchedulerId.BOEFJE)
        first = views.pop_with(pop, 1, held=held)
        before = held.run(backend)
        cut = cut_connections(postgres_uri)
        second = views.pop_with(pop, 1, held=held)
        after = held.run(backend)
        held.release()
    finally:
        engine.dispose()

    assert cut >= 1
    assert [row.id for row in [*first, *second]] == [tasks[0].id, tasks[1].id]
    assert after != before, "a new connection"
    assert dispatched(pg_engine) == {str(tasks[0].id), str(tasks[1].id)}


def image_task(image: str, priority: int) -> NewTask:
    task: NewTask = NewTaskFactory.build(priority=priority)
    return replace(task, data={**task.data, "boefje": {"id": task.plugin_id, "oci_image": image}})


def by_images(views: TaskViews, images: list[str]) -> task_views.PopStatement:
    """The boefje workers' pop: ``{"filters": [{"column": "data", "field": "boefje__oci_image",
    "operator": "in", "value": images}]}``, as the API splits it."""
    return views.pop_statement(SchedulerId.BOEFJE, images=images)


@pytest.fixture
def one_connection(postgres_uri: str) -> Iterator[Engine]:
    """The test database through a single connection: every pop runs on the same one."""
    engine = make_engine(postgres_uri, pool_size=1)
    yield engine
    engine.dispose()


def prepared_statements(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT generic_plans, custom_plans FROM pg_prepared_statements"))
        return [tuple(row) for row in found]


def test_the_workers_pop_is_planned_once_per_connection_and_takes_the_most_urgent_of_its_images(
    pg_engine, one_connection
):
    tasks = [image_task(image, priority) for priority, image in enumerate(["a", "b", "c"] * 4)]
    TaskStore(pg_engine).claim(tasks)
    views = TaskViews(one_connection)
    pop = by_images(views, ["a", "c"])

    taken = [row.id for _ in range(5) for row in views.pop_with(pop, 1)]
    rest = [row.id for row in views.pop_with(pop, 10)]

    assert taken + rest == [t.id for t in tasks if t.data["boefje"]["oci_image"] in ("a", "c")][: len(taken + rest)]
    assert len(rest) == 3
    assert prepared_statements(one_connection) == [(6, 0)], "one prepared pop, its generic plan every time"


def test_a_connection_popping_more_ways_than_it_keeps_prepared_forgets_them_and_pops_right(
    pg_engine, one_connection, monkeypatch
):
    monkeypatch.setattr(task_views, "PREPARED_POPS", 2)
    images = ["a", "b", "c", "d"]
    TaskStore(pg_engine).claim([image_task(image, n) for image in images for n in range(2)])
    views = TaskViews(one_connection)
    # One image, two, three, four: four statements (the images themselves are parameters).
    pops = [by_images(views, images[i : i + 1] + images[:i][::-1][:i]) for i in range(4)]

    taken = [row.data["boefje"]["oci_image"] for _ in range(2) for pop in pops for row in views.pop_with(pop, 1)]

    assert len({pop.prepare for pop in pops}) == 4
    assert sorted(taken) == sorted(image for image in images for _ in range(2))
    assert 1 <= len(prepared_statements(one_connection)) <= 2
    assert dispatched(pg_engine) == {str(i) for i in task_ids(pg_engine)}


def task_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [str(i) for i in conn.scalars(select(TaskRow.id))]


def test_with_prepared_pops_off_nothing_is_prepared_and_the_pop_is_the_same(pg_engine, one_connection):
    # Behind a pooler in transaction mode (SCHEDULER_API_PREPARED_POPS=false) a connection
    # keeps no statement between transactions: every pop is planned as it comes.
    tasks = [image_task(image, priority) for priority, image in enumerate(["a", "b", "c"] * 4)]
    TaskStore(pg_engine).claim(tasks)
    views = TaskViews(one_connection, prepared_pops=False)
    pop = by_images(views, ["a", "c"])

    taken = [row.id for _ in range(3) for row in views.pop_with(pop, 2)]

    assert taken == [t.id for t in tasks if t.data["boefje"]["oci_image"] in ("a", "c")][:6]
    assert prepared_statements(one_connection) == []
