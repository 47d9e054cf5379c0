"""Pull delivery for boefjes: with ``SCHEDULER_PULL_SCHEDULERS=report,boefje`` every producer (the
tick, due schedules, the listener, a manual push) claims its rows but publishes nothing; OpenKAT's
own workers pop them over real HTTP. On SQLite and PostgreSQL, with the simulated KAT and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update

from kat_scheduler.clients import KATClients
from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.dispatch.dispatcher import Dispatchable, Dispatcher
from kat_scheduler.dispatch.publishing import Publisher, make_publisher
from kat_scheduler.events.handlers import MutationHandler, RawFileHandler
from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.producers import DueSchedulesProducer, ManualPush, ProducerContext, TickProducer
from kat_scheduler.queues import MANUAL_BAND, RAW_FILE_RECEIVED, SCAN_PROFILE_MUTATIONS, Queue, TaskName
from kat_scheduler.settings import Settings, get_settings, load_settings
from kat_scheduler.sim import SimulatedKAT
from kat_scheduler.sim.world import World
from kat_scheduler.storage.schedules import ScheduleStore
from kat_scheduler.storage.tables import ScheduleRow, TaskRow, UnpublishedTask
from kat_scheduler.storage.tasks import TaskStore
from tests.api_server import ApiServer, serve_api
from tests.events import profile_mutation, raw_file_event
from tests.factories import NewTaskFactory
from tests.integration.conftest import WORLD_NOW

PULLED = "report,boefje"


@pytest.fixture(autouse=True)
def no_bytes_runs(pg_engine: Engine) -> None:
    """Bytes' runs kept by an earlier test's tick (same world, same hashes) are not this test's."""
    with pg_engine.begin() as conn:
        conn.execute(text("DELETE FROM bytes_runs"))  # DELETE, not TRUNCATE: as pg_engine (tests/conftest.py)
        conn.execute(text("DELETE FROM bytes_histories"))


@pytest.fixture
def pull_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``SCHEDULER_PULL_SCHEDULERS=report,boefje`` in the environment, as the process reads it."""
    monkeypatch.setenv("SCHEDULER_PULL_SCHEDULERS", PULLED)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def settings(pull_env: None, kat: SimulatedKAT, redis_url: str) -> Settings:
    return load_settings(
        octopoes_api=kat.octopoes_url,
        katalogus_api=kat.katalogus_url,
        bytes_api=kat.bytes_url,
        broker_url=redis_url,
        batch_size=100,
    )


@pytest.fixture
def publisher(settings: Settings) -> Iterator[Publisher]:
    publisher = make_publisher(settings)
    yield publisher
    publisher.close()


@pytest.fixture
def producers(clients: KATClients, engine: Engine, settings: Settings, publisher: Publisher) -> ProducerContext:
    return ProducerContext(clients, TaskStore(engine), ScheduleStore(engine), settings, publisher)


def queued_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {
            str(i)
            for i in conn.execute(
                select(TaskRow.id).where(
                    TaskRow.scheduler_id == SchedulerId.BOEFJE, TaskRow.status == TaskStatus.QUEUED
                )
            ).scalars()
        }


def unpublished(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(UnpublishedTask)).all())


def pop_all(api: ApiServer) -> list[dict[str, Any]]:
    """What boefjes' worker manager does, until the queue is empty: pop with a JSON null body."""
    popped: list[dict[str, Any]] = []
    while True:
        response = api.post("/schedulers/boefje/pop", params={"limit": 100}, json=None)
        assert response.status_code == 200, response.text
        results: list[dict[str, Any]] = response.json()["results"]
        if not results:
            return popped
        popped.extend(results)


def test_the_setting_reaches_the_dispatcher_every_producer_makes(producers: ProducerContext) -> None:
    assert Dispatcher(producers.tasks, producers.publisher).pull == {SchedulerId.REPORT, SchedulerId.BOEFJE}


def test_a_tick_queues_rows_that_pop_returns_and_no_message_reaches_the_boefjes_queue(
    producers: ProducerContext, engine: Engine, api: ApiServer, publisher: Publisher
) -> None:
    report = TickProducer(producers).run(WORLD_NOW)

    assert report.queued > 0 and report.dispatch.held == report.queued == report.dispatch.claimed
    assert publisher.queue_depth(Queue.BOEFJES.value) == 0
    assert unpublished(engine) == []  # nothing waits for a message: the reaper has nothing to publish
    with engine.connect() as conn:  # each planned pair got its schedule, as on the Celery path
        assert conn.execute(select(ScheduleRow.hash)).scalars().all()
    queued = queued_ids(engine)
    assert len(queued) == report.queued

    popped = pop_all(api)

    assert sorted(t["id"] for t in popped) == sorted(queued)
    assert {t["status"] for t in popped} == {"dispatched"} and queued_ids(engine) == set()
    assert publisher.queue_depth(Queue.BOEFJES.value) == 0


def test_due_boefje_schedules_are_held_for_a_pop_too(
    producers: ProducerContext, engine: Engine, api: ApiServer, publisher: Publisher
) -> None:
    TickProducer(producers).run(WORLD_NOW)
    pop_all(api)
    with engine.begin() as conn:  # one pair the tick queued ran two days ago and its schedule is due
        ours = select(TaskRow.hash)  # (a schedule made from Bytes' history has no row of ours to age)
        schedule = conn.execute(
            select(ScheduleRow).where(ScheduleRow.hash.in_(ours)).order_by(ScheduleRow.hash).limit(1)
        ).one()
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

    report = DueSchedulesProducer(producers).run(WORLD_NOW + timedelta(minutes=10))

    assert report.queued == report.dispatch.held == 1
    assert publisher.queue_depth(Queue.BOEFJES.value) == 0 and unpublished(engine) == []
    [task] = pop_all(api)
    assert task["hash"] == schedule.hash and task["schedule_id"] == str(schedule.id)


def test_a_manual_push_is_held_at_the_most_urgent_band_and_popped_before_the_tick(
    producers: ProducerContext, engine: Engine, api: ApiServer, publisher: Publisher
) -> None:
    TickProducer(producers).run(WORLD_NOW)
    with engine.begin() as conn:  # one planned pair ran already: its hash is free to push again
        row = conn.execute(select(TaskRow).order_by(TaskRow.hash).limit(1)).one()
        conn.execute(update(TaskRow).where(TaskRow.id == row.id).values(status=TaskStatus.COMPLETED))

    push = ManualPush(producers, row.organisation, row.plugin_id, row.input_ooi)  # kat-scheduler push boefje
    pushed = push.run(WORLD_NOW)

    assert pushed.task_id is not None and not pushed.already_live
    assert publisher.queue_depth(Queue.BOEFJES.value) == 0 and unpublished(engine) == []
    first = api.post("/schedulers/boefje/pop", params={"limit": 1}).json()["results"]
    assert [t["id"] for t in first] == [str(pushed.task_id)]
    with engine.connect() as conn:
        band = conn.execute(select(TaskRow.band).where(TaskRow.id == pushed.task_id)).scalar_one()
    assert band == MANUAL_BAND


def test_the_listener_holds_the_boefje_tasks_an_event_causes(
    clients: KATClients, engine: Engine, settings: Settings, publisher: Publisher, world: World, api: ApiServer
) -> None:
    org = world.organisation_ids[0]
    hostname = next(o for o in world.oois(org).values() if o.object_type == "Hostname" and o.scan_level >= 2)
    handler = MutationHandler(
        PluginCache(clients.katalogus, ttl=60),
        TaskStore(engine),
        ScheduleStore(engine),
        publisher,
        settings,
        clock=lambda: WORLD_NOW,
    )

    assert handler(SCAN_PROFILE_MUTATIONS, [profile_mutation(org, hostname.primary_key, hostname.scan_level)]) == []

    queued = queued_ids(engine)
    assert queued, "the event should queue some boefjes"
    assert publisher.queue_depth(Queue.BOEFJES.value) == 0
    assert sorted(t["id"] for t in pop_all(api)) == sorted(queued)


@pytest.fixture
def normalizer_pulled(monkeypatch: pytest.MonkeyPatch, kat: SimulatedKAT, redis_url: str) -> Iterator[Settings]:
    """``SCHEDULER_PULL_SCHEDULERS=report,normalizer``, and the settings of a process reading it."""
    monkeypatch.setenv("SCHEDULER_PULL_SCHEDULERS", "report,normalizer")
    get_settings.cache_clear()
    yield load_settings(
        octopoes_api=kat.octopoes_url, katalogus_api=kat.katalogus_url, bytes_api=kat.bytes_url, broker_url=redis_url
    )
    get_settings.cache_clear()


def test_with_normalizer_pulled_a_raw_file_queues_normalizer_tasks_that_pop_returns_and_nothing_is_published(
    clients: KATClients, engine: Engine, normalizer_pulled: Settings, world: World
) -> None:
    publisher = make_publisher(normalizer_pulled)
    handler = RawFileHandler(
        PluginCache(clients.katalogus, ttl=60),
        TaskStore(engine),
        ScheduleStore(engine),
        publisher,
        normalizer_pulled,
        clock=lambda: WORLD_NOW,
    )
    event = raw_file_event(world.organisation_ids[0], "dns-records", ["boefje/dns-records"], WORLD_NOW)
    try:
        assert handler(RAW_FILE_RECEIVED, [event]) == []
        assert publisher.queue_depth(Queue.NORMALIZERS.value) == 0
    finally:
        publisher.close()

    with engine.connect() as conn:
        normalizers = select(TaskRow.id).where(TaskRow.scheduler_id == SchedulerId.NORMALIZER)
        queued = {str(i) for i in conn.execute(normalizers).scalars()}
    assert queued, "the raw file should queue some normalizers"
    with serve_api(normalizer_pulled, engine=engine) as api:
        popped = api.post("/schedulers/normalizer/pop", params={"limit": 100}).json()["results"]
    assert sorted(t["id"] for t in popped) == sorted(queued)


def test_one_batch_publishes_the_celery_schedulers_tasks_and_holds_the_pulled_ones(
    engine: Engine, settings: Settings, publisher: Publisher
) -> None:
    boefje = NewTaskFactory.build()
    normalizer = NewTaskFactory.build(scheduler_id=SchedulerId.NORMALIZER, type="normalizer", plugin_id="kat_dns")
    items = [
        Dispatchable(boefje, TaskName.BOEFJE_RUN.value, Queue.BOEFJES.value, {"task_id": str(boefje.id)}),
        Dispatchable(normalizer, TaskName.NORMALIZER_RUN.value, Queue.NORMALIZERS.value, {"x": str(uuid.uuid4())}),
    ]
    dispatcher = Dispatcher(TaskStore(engine), publisher, pull=settings.pull_scheduler_ids)

    result = dispatcher.dispatch(items)

    assert (result.claimed, result.published, result.held) == (2, 2, 1)
    assert [t.id for t in result.published_tasks] == [boefje.id, normalizer.id]
    assert publisher.queue_depth(Queue.BOEFJES.value) == 0
    assert publisher.queue_depth(Queue.NORMALIZERS.value) == 1
    assert unpublished(engine) == []


def test_without_boefje_in_the_setting_its_tasks_are_published_as_before(engine: Engine, publisher: Publisher) -> None:
    task = NewTaskFactory.build()
    dispatcher = Dispatcher(TaskStore(engine), publisher, pull={SchedulerId.REPORT})

    result = dispatcher.dispatch([Dispatchable(task, TaskName.BOEFJE_RUN.value, Queue.BOEFJES.value, {})])

    assert (result.published, result.held) == (1, 0)
    assert publisher.queue_depth(Queue.BOEFJES.value) == 1


def test_a_held_task_is_queued_for_a_pop_with_no_claim_left_waiting_for_a_message(engine: Engine) -> None:
    dispatcher = Dispatcher(TaskStore(engine), None, pull={SchedulerId.BOEFJE})
    task = NewTaskFactory.build()

    result = dispatcher.hold([task])
    again = dispatcher.hold([NewTaskFactory.build(input_ooi=task.input_ooi)])  # the same hash: live already

    assert (result.claimed, result.held) == (1, 1) and again.claimed == 0
    assert queued_ids(engine) == {str(task.id)}
    assert unpublished(engine) == []  # the reaper has no message to publish for it


def test_holding_a_task_of_a_celery_scheduler_is_refused_and_claims_nothing(engine: Engine) -> None:
    dispatcher = Dispatcher(TaskStore(engine), None, pull={SchedulerId.REPORT})

    with pytest.raises(ValueError, match="cannot hold tasks of boefje: not in SCHEDULER_PULL_SCHEDULERS"):
        dispatcher.hold([NewTaskFactory.build()])

    assert queued_ids(engine) == set()


def test_when_the_broker_is_down_the_celery_tasks_are_unclaimed_and_the_held_ones_stay_queued_for_a_pop(
    engine: Engine,
) -> None:
    down = make_publisher(Settings(broker_url="redis://127.0.0.1:1/0"))  # nothing listens on port 1
    boefje = NewTaskFactory.build()
    normalizer = NewTaskFactory.build(scheduler_id=SchedulerId.NORMALIZER, type="normalizer", plugin_id="kat_dns")
    items = [
        Dispatchable(boefje, TaskName.BOEFJE_RUN.value, Queue.BOEFJES.value, {}),
        Dispatchable(normalizer, TaskName.NORMALIZER_RUN.value, Queue.NORMALIZERS.value, {}),
    ]
    try:
        result = Dispatcher(TaskStore(engine), down, pull={SchedulerId.BOEFJE}).dispatch(items)
    finally:
        down.close()

    assert result.errors and (result.claimed, result.published, result.held, result.unclaimed) == (2, 1, 1, 1)
    assert [t.id for t in result.published_tasks] == [boefje.id]
    assert queued_ids(engine) == {str(boefje.id)}  # the normalizer's hash is free for the next try
    assert unpublished(engine) == []
