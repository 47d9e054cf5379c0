"""What the live view of ``kat-scheduler run`` counts, from a real (SQLite) task table."""

from __future__ import annotations

from sqlalchemy import Engine

from kat_scheduler.clients import BytesClient, HTTPOptions, KatalogusClient, KATClients, OctopoesClient
from kat_scheduler.dispatch.publishing import BrokerError
from kat_scheduler.models import TaskStatus
from kat_scheduler.run.embedded import free_port
from kat_scheduler.run.monitor import Monitor
from kat_scheduler.storage import TaskStore
from tests.factories import NewTaskFactory


class Broker:
    """A publisher that only answers depths (or fails to)."""

    def __init__(self, depths: dict[str, int] | None = None) -> None:
        self.depths = depths

    def queue_depth(self, queue: str) -> int:
        if self.depths is None:
            raise BrokerError("connection refused")
        return self.depths.get(queue, 0)


def finish(store: TaskStore, n: int) -> None:
    tasks = NewTaskFactory.create_batch(n)
    store.claim(tasks)
    for task in tasks:
        store.start(task.id, "w")
        store.finish(task.id, TaskStatus.COMPLETED)


def test_tasks_are_counted_by_type_and_status(sqlite_engine: Engine) -> None:
    store = TaskStore(sqlite_engine)
    store.claim(NewTaskFactory.create_batch(3))
    finish(store, 2)
    sample = Monitor(sqlite_engine, Broker({"boefjes": 3}), None).sample()  # type: ignore[arg-type]
    assert sample.count("boefje", TaskStatus.QUEUED) == 3
    assert sample.count("boefje", TaskStatus.COMPLETED) == 2
    assert sample.count("normalizer", TaskStatus.COMPLETED) == 0
    assert sample.depths["boefjes"] == 3 and sample.errors == {}


def test_a_broker_that_does_not_answer_is_reported_and_the_database_still_counted(sqlite_engine: Engine) -> None:
    finish(TaskStore(sqlite_engine), 1)
    sample = Monitor(sqlite_engine, Broker(None), None).sample()  # type: ignore[arg-type]
    assert "connection refused" in sample.errors["broker"]
    assert sample.count("boefje", TaskStatus.COMPLETED) == 1


def test_the_rate_is_tasks_finished_per_second_between_samples(sqlite_engine: Engine) -> None:
    store = TaskStore(sqlite_engine)
    monitor = Monitor(sqlite_engine, Broker({}), None)  # type: ignore[arg-type]
    first = monitor.sample()
    finish(store, 4)
    second = monitor.sample()
    second.at = first.at + 2.0  # two seconds later
    assert monitor.rate() == 2.0


def test_a_large_table_is_counted_at_most_every_tasks_every_seconds(sqlite_engine: Engine) -> None:
    store = TaskStore(sqlite_engine)
    monitor = Monitor(sqlite_engine, Broker({}), None, tasks_every=3600)  # type: ignore[arg-type]
    monitor.sample()
    finish(store, 1)
    assert monitor.sample().count("boefje", TaskStatus.COMPLETED) == 0, "counted again too soon"
    assert monitor.sample(full=True).count("boefje", TaskStatus.COMPLETED) == 1, "the final sample counts"


def test_a_katalogus_that_cannot_be_reached_is_named_with_the_whole_reason(sqlite_engine: Engine) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    options = HTTPOptions(timeout=2.0, retries=0)
    clients = KATClients(
        octopoes=OctopoesClient(url, **options),
        katalogus=KatalogusClient(url, **options),
        bytes=BytesClient(url, "bytes", "bytes", **options),
    )
    monitor = Monitor(sqlite_engine, Broker({}), clients, objects_every=3600)  # type: ignore[arg-type]
    try:
        sample = monitor.sample(full=True)
        later = monitor.sample()  # the graph is not counted again yet: its error still stands
    finally:
        clients.close()
    assert set(sample.errors) == {"katalogus"}, sample.errors
    assert later.errors == sample.errors
    reason = sample.errors["katalogus"]
    assert reason.startswith("GET /v1/organisations: connection failed: ") and reason.endswith("Connection refused")
    assert "\n" not in reason
