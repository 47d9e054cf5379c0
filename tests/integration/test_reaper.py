"""The reaper's repairs, each against PostgreSQL and a real Redis broker."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any, cast

import pytest
import redis
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session

from kat_scheduler.dispatch.dispatcher import message_for
from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.models import SchedulerId, TaskStatus
from kat_scheduler.rules.identity import normalizer_task_hash
from kat_scheduler.settings import load_settings
from kat_scheduler.storage import TaskRow, TaskStore, UnpublishedTask
from kat_scheduler.storage.bytes_runs import BytesRunStore, SeenRun
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.storage.tasks import NewTask
from kat_scheduler.storage.worker_nodes import BrokerMarkerStore, WorkerNode, WorkerNodeStore
from kat_scheduler.workers.broker_marker import MARKER_KEY, broker_marker
from kat_scheduler.workers.reaper import BROKER_MARKER, Reaper, ReapReport, bytes_runs_horizon
from tests.factories import NewTaskFactory
from tests.tasks import broker_messages, forget_nodes_and_markers, reaper_on


@pytest.fixture
def reaper(pg_engine: Engine, redis_url: str, postgres_uri: str):
    settings = load_settings(
        broker_url=redis_url, db_uri=postgres_uri, soft_time_limit=60, hard_time_limit=120, retention_days=7
    )
    with reaper_on(pg_engine, settings) as reaper:
        yield reaper


def age(engine: Engine, task_id, **columns) -> None:
    """Set columns of a task row; an older ``created_at`` makes its claim (if unpublished) as old."""
    with engine.begin() as conn:
        conn.execute(update(TaskRow).where(TaskRow.id == task_id).values(**columns))
        if "created_at" in columns:
            conn.execute(
                update(UnpublishedTask)
                .where(UnpublishedTask.task_id == task_id)
                .values(claimed_at=columns["created_at"])
            )


def test_a_claim_by_a_version_before_0004_that_never_published_is_published(reaper, pg_engine, redis_url) -> None:
    store = reaper.tasks
    orphan = NewTaskFactory()
    store.claim([orphan])
    with pg_engine.begin() as conn:  # how an older version left it: not listed, no published_at
        conn.execute(delete(UnpublishedTask))
        conn.execute(update(TaskRow).values(published_at=None, created_at=utcnow() - timedelta(minutes=5)))
    assert reaper.reap(utcnow()).published_unpublished == 1
    assert [m["headers"]["id"] for m in broker_messages(redis_url)] == [str(orphan.id)]
    assert reaper.reap(utcnow()).published_unpublished == 0


def test_a_listing_of_a_task_that_ran_after_all_is_dropped_not_published(reaper, pg_engine, redis_url) -> None:
    store = reaper.tasks
    ran = NewTaskFactory()
    store.claim([ran])  # published, but the producer died before marking it
    store.start(ran.id, "w")
    age(pg_engine, ran.id, created_at=utcnow() - timedelta(minutes=5))
    assert reaper.reap(utcnow()).published_unpublished == 0
    assert broker_messages(redis_url) == []
    assert store.unpublished_ids([ran.id]) == set()


def test_a_task_left_running_past_the_hard_limit_is_run_again(reaper, pg_engine, redis_url) -> None:
    store = reaper.tasks
    stuck, fresh = NewTaskFactory.create_batch(2)
    store.claim([stuck, fresh])
    store.start(stuck.id, "dead-host:1")
    store.start(fresh.id, "live-worker")
    age(pg_engine, stuck.id, started_at=utcnow() - timedelta(minutes=10))
    report = reaper.reap(utcnow())
    assert (report.requeued_stuck, report.failed_stuck) == (1, 0)
    assert store.get(stuck.id).status == TaskStatus.QUEUED
    assert [m["headers"]["id"] for m in broker_messages(redis_url)] == [str(stuck.id)]
    assert store.get(fresh.id).status == TaskStatus.RUNNING
    assert store.start(stuck.id, "another-worker") is not None  # the republished message can run it


def test_a_task_stuck_on_every_attempt_is_failed_and_its_hash_freed(reaper, pg_engine) -> None:
    store = reaper.tasks
    stuck = NewTaskFactory()
    store.claim([stuck])
    store.start(stuck.id, "dead-host:1")
    age(pg_engine, stuck.id, started_at=utcnow() - timedelta(minutes=10), attempts=reaper.settings.max_retries + 1)
    report = reaper.reap(utcnow())
    assert (report.requeued_stuck, report.failed_stuck) == (0, 1)
    assert store.get(stuck.id).status == TaskStatus.FAILED and "hard time limit" in store.get(stuck.id).error
    assert store.claim([NewTaskFactory(input_ooi=stuck.input_ooi)])  # the hash is free again


def test_a_claimed_task_that_was_never_published_is_published(reaper, pg_engine, redis_url) -> None:
    store = reaper.tasks
    orphan, young = NewTaskFactory.create_batch(2)
    store.claim([orphan, young])
    age(pg_engine, orphan.id, created_at=utcnow() - timedelta(minutes=5))
    report = reaper.reap(utcnow())
    assert report.published_unpublished == 1
    messages = broker_messages(redis_url)
    assert [m["headers"]["id"] for m in messages] == [str(orphan.id)]
    assert json.loads(__import__("base64").b64decode(messages[0]["body"]))[1]["input_ooi"] == orphan.input_ooi
    assert store.unpublished_ids([orphan.id, young.id]) == {young.id}
    assert reaper.reap(utcnow()).published_unpublished == 0


def test_queued_tasks_whose_messages_were_lost_are_republished_when_the_queue_is_empty(
    reaper, pg_engine, redis_url
) -> None:
    store = reaper.tasks
    lost = NewTaskFactory()
    store.claim([lost])
    store.mark_published([lost.id])
    long_ago = utcnow() - timedelta(hours=2)
    age(pg_engine, lost.id, published_at=long_ago, modified_at=long_ago)
    report = reaper.reap(utcnow())
    assert report.republished_lost == 1
    assert [m["headers"]["id"] for m in broker_messages(redis_url)] == [str(lost.id)]


def test_a_task_received_by_a_worker_that_lost_it_is_republished_and_can_run(reaper, pg_engine, redis_url) -> None:
    store = reaper.tasks
    received = NewTaskFactory()
    store.claim([received])
    store.mark_published([received.id])
    assert store.mark_dispatched(received.id, "vanished-worker:1")
    long_ago = utcnow() - timedelta(hours=2)
    age(pg_engine, received.id, published_at=long_ago, modified_at=long_ago)
    report = reaper.reap(utcnow())
    assert report.republished_lost == 1, "a dispatched row whose message is gone would block its hash for ever"
    assert [m["headers"]["id"] for m in broker_messages(redis_url)] == [str(received.id)]
    assert store.start(received.id, "another-worker") is not None


def test_a_healthy_backlog_is_not_duplicated(reaper, pg_engine, redis_url) -> None:
    store = reaper.tasks
    waiting = NewTaskFactory()
    store.claim([waiting])
    reaper.publisher.publish([message_for(store.get(waiting.id))])
    store.mark_published([waiting.id])
    long_ago = utcnow() - timedelta(hours=2)
    age(pg_engine, waiting.id, published_at=long_ago, modified_at=long_ago)
    assert reaper.reap(utcnow()).republished_lost == 0
    assert len(broker_messages(redis_url)) == 1


def test_old_finished_rows_are_pruned_and_recent_ones_kept(reaper, pg_engine) -> None:
    store = reaper.tasks
    old, recent, running = NewTaskFactory.create_batch(3)
    store.claim([old, recent, running])
    for task in (old, recent, running):
        store.start(task.id, "w")
    store.finish(old.id, TaskStatus.COMPLETED, now=utcnow() - timedelta(days=30))
    store.finish(recent.id, TaskStatus.FAILED, now=utcnow() - timedelta(days=1))
    assert reaper.reap(utcnow()).pruned == 1
    assert store.get(old.id) is None
    assert store.get(recent.id) is not None and store.get(running.id) is not None


# --- worker nodes that stopped beating --------------------------------------------------------


def reap_at(reaper: Reaper, at: datetime) -> ReapReport:
    """A reaper run at ``at``, heartbeats judged at ``at`` too (not by the database's clock)."""
    reaper.node_clock = lambda: at
    return reaper.reap(at)


def a_node(name: str = "boefjes@host-a") -> WorkerNode:
    return WorkerNode(id=uuid.uuid4(), name=name, host=name.partition("@")[2], pid=4242)


def test_a_silent_node_is_suspected_first_and_its_tasks_handed_on_when_a_later_run_confirms(reaper, redis_url) -> None:
    store, nodes = reaper.tasks, WorkerNodeStore(reaper.tasks.engine)
    t0 = utcnow()
    dead, live = a_node("boefjes@dead"), a_node("boefjes@live")
    for node in (dead, live):
        nodes.register(node, t0)
    running, received, other = NewTaskFactory.create_batch(3)
    store.claim([running, received, other])
    store.mark_published([running.id, received.id, other.id])
    store.start(running.id, "dead:11", now=t0, node_id=dead.id)
    store.mark_dispatched(received.id, "boefjes@dead", now=t0, node_id=dead.id)
    store.start(other.id, "live:12", now=t0, node_id=live.id)

    nodes.beat(live, t0 + timedelta(seconds=20))
    first = reap_at(reaper, t0 + timedelta(seconds=25))  # dead silent for 25 s: suspected only
    assert (first.lost_nodes, first.requeued_lost_node) == (0, 0)
    assert store.get(running.id).status == TaskStatus.RUNNING

    nodes.beat(live, t0 + timedelta(seconds=30))
    second = reap_at(reaper, t0 + timedelta(seconds=35))
    assert (second.lost_nodes, second.requeued_lost_node, second.failed_lost_node) == (1, 2, 0)
    assert {store.get(i).status for i in (running.id, received.id)} == {TaskStatus.QUEUED}
    assert sorted(m["headers"]["id"] for m in broker_messages(redis_url)) == sorted([str(running.id), str(received.id)])
    assert store.get(other.id).status == TaskStatus.RUNNING and store.get(other.id).worker == "live:12"
    assert store.start(running.id, "live:13", node_id=live.id) is not None  # the new message runs it


def test_a_node_that_beats_again_before_the_confirming_run_is_left_alone(reaper) -> None:
    """A database outage stops every beat: the run right after it suspects every node, and each
    beats again before the next run, so nothing is handed on."""
    store, nodes = reaper.tasks, WorkerNodeStore(reaper.tasks.engine)
    t0 = utcnow()
    node = a_node()
    nodes.register(node, t0)
    task = NewTaskFactory()
    store.claim([task])
    store.start(task.id, "host-a:1", now=t0, node_id=node.id)
    reap_at(reaper, t0 + timedelta(seconds=60))  # the database is back after a minute: suspected
    nodes.beat(node, t0 + timedelta(seconds=62))
    report = reap_at(reaper, t0 + timedelta(seconds=70))
    assert report.lost_nodes == 0 and store.get(task.id).status == TaskStatus.RUNNING
    row = nodes.get(node.id)
    assert row is not None and row.suspected_at is None


def test_heartbeats_are_judged_by_the_database_clock_not_the_hosts(reaper) -> None:
    """A reaper host whose clock runs two minutes ahead (or a worker's behind) finds no live node silent."""
    store, nodes = reaper.tasks, WorkerNodeStore(reaper.tasks.engine)
    node = a_node()
    nodes.beat(node)  # as the worker's heartbeat writes it: at the database's time
    task = NewTaskFactory()
    store.claim([task])
    store.start(task.id, "host-a:1", node_id=node.id)
    for _ in range(2):
        report = reaper.reap(utcnow() + timedelta(minutes=2))
        assert report.lost_nodes == 0
    row = nodes.get(node.id)
    assert row is not None and row.suspected_at is None
    assert store.get(task.id).status == TaskStatus.RUNNING


def test_a_task_whose_node_died_on_every_attempt_is_failed(reaper) -> None:
    store, nodes = reaper.tasks, WorkerNodeStore(reaper.tasks.engine)
    t0 = utcnow()
    node = a_node()
    nodes.register(node, t0)
    task = NewTaskFactory()
    store.claim([task])
    store.start(task.id, "host-a:1", now=t0, node_id=node.id)
    age(reaper.tasks.engine, task.id, attempts=reaper.settings.max_retries + 1)
    reap_at(reaper, t0 + timedelta(seconds=25))
    report = reap_at(reaper, t0 + timedelta(seconds=35))
    assert (report.failed_lost_node, report.requeued_lost_node) == (1, 0)
    row = store.get(task.id)
    assert row.status == TaskStatus.FAILED and "stopped beating" in row.error


def test_a_worker_whose_run_was_handed_on_cannot_end_the_row(reaper) -> None:
    store = reaper.tasks
    task = NewTaskFactory()
    store.claim([task])
    store.start(task.id, "silent-host:1")
    store.transition(task.id, [TaskStatus.RUNNING], TaskStatus.QUEUED)  # as the reaper hands it on
    assert store.start(task.id, "other-host:2") is not None
    assert not store.finish(task.id, TaskStatus.COMPLETED, by_worker="silent-host:1")
    assert not store.requeue(task.id, by_worker="silent-host:1")
    assert store.get(task.id).status == TaskStatus.RUNNING
    assert store.finish(task.id, TaskStatus.COMPLETED, by_worker="other-host:2")


def test_nodes_silent_for_an_hour_are_forgotten(reaper) -> None:
    nodes = WorkerNodeStore(reaper.tasks.engine)
    old, recent = a_node("a@old"), a_node("b@recent")
    nodes.register(old, utcnow() - timedelta(hours=2))
    nodes.register(recent, utcnow())
    reap_at(reaper, utcnow())
    assert nodes.get(old.id) is None and nodes.get(recent.id) is not None


# --- a broker that lost its data ---------------------------------------------------------------


def test_a_flushed_redis_broker_has_every_waiting_task_published_again_on_the_next_run(
    reaper, pg_engine, redis_url
) -> None:
    store = reaper.tasks
    queued, received, running, done = NewTaskFactory.create_batch(4)
    store.claim([queued, received, running, done])
    reaper.publisher.publish([message_for(store.get(t.id)) for t in (queued, received, running, done)])
    store.mark_published([t.id for t in (queued, received, running, done)])
    store.mark_dispatched(received.id, "boefjes@host")
    store.start(running.id, "host:1")
    store.start(done.id, "host:1")
    store.finish(done.id, TaskStatus.COMPLETED)

    first = reaper.reap(utcnow())  # the first run leaves its marker; the backlog is healthy
    assert first.republished_wiped == 0 and len(broker_messages(redis_url)) == 4

    redis.Redis.from_url(redis_url).flushdb()
    report = reaper.reap(utcnow())
    assert report.republished_wiped == 2
    assert sorted(m["headers"]["id"] for m in broker_messages(redis_url)) == sorted([str(queued.id), str(received.id)])
    assert reaper.reap(utcnow()).republished_wiped == 0, "the marker is back: nothing more to republish"
    assert len(broker_messages(redis_url)) == 2


def test_the_marker_of_a_broker_new_to_this_database_is_adopted_without_republishing(reaper, redis_url) -> None:
    store = reaper.tasks
    waiting = NewTaskFactory()
    store.claim([waiting])
    store.mark_published([waiting.id])
    redis.Redis.from_url(redis_url).set(MARKER_KEY, "left-by-another-reaper")
    assert reaper.reap(utcnow()).republished_wiped == 0
    assert BrokerMarkerStore(reaper.tasks.engine).token(BROKER_MARKER) == "left-by-another-reaper"
    assert broker_messages(redis_url) == []


def test_only_a_redis_broker_is_watched_for_lost_data() -> None:
    assert broker_marker("amqp://guest:guest@localhost:5672//") is None
    assert broker_marker("sentinel://localhost:26379") is None
    assert broker_marker("redis://localhost:6379/3") is not None


# --- Bytes' runs -----------------------------------------------------------------------------


def test_bytes_runs_no_tick_saw_for_the_longest_horizon_that_matters_are_forgotten(reaper, pg_engine) -> None:
    runs = BytesRunStore(pg_engine)
    now = utcnow()
    horizon = bytes_runs_horizon(reaper.settings)
    assert horizon == timedelta(days=7), "the retention (7 days here) is longer than the grace period plus a day"

    def seen(hash_: str, at) -> None:
        runs.record([SeenRun(hash_, "org", "dns-records", f"Hostname|internet|{hash_}", at, at)], at)

    seen("a" * 32, now - horizon - timedelta(hours=1))
    seen("b" * 32, now - horizon + timedelta(hours=1))
    runs.record_listed([("org", "dns-records")], now - horizon - timedelta(hours=1))
    assert reaper.prune_bytes_runs(now) == 1
    assert set(runs.newest(["a" * 32, "b" * 32])) == {"b" * 32}
    listed, _ = runs.listing_state("org", now=now, stall_age=timedelta(minutes=7))
    assert listed == set(), "the stale listing goes too: the next tick lists that history again"


# --- normalizers given up on a service failure ----------------------------------------------


def normalizer_task(raw_id: str | None = None) -> NewTask:
    """A normalizer task as the raw-file handler claims it (its payload names the raw file)."""
    task_id = uuid.uuid4()
    raw_id = raw_id or str(uuid.uuid4())
    return NewTaskFactory(
        id=task_id,
        scheduler_id=SchedulerId.NORMALIZER,
        type="normalizer",
        plugin_id="kat_dns_normalize",
        hash=normalizer_task_hash("kat_dns_normalize", raw_id, "aa"),
        band=4,
        data={"id": str(task_id), "normalizer": {"id": "kat_dns_normalize"}, "raw_data": {"id": raw_id}},
    )


def normalizer_messages(redis_url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    keys = [k for k in cast(list[bytes], client.keys("normalizers*")) if not k.startswith(b"_kombu")]
    return [json.loads(raw) for key in keys for raw in client.lrange(key, 0, -1)]


def given_up_on_bytes(store: TaskStore, engine: Engine, task_id: uuid.UUID, ago: timedelta) -> None:
    """The task ran and gave up because Bytes kept failing, ``ago`` before now."""
    store.start(task_id, "w")
    assert store.fail_for_service(task_id, "bytes", "gave up after 5 retries: bytes: HTTP 503") is not None
    age(engine, task_id, ended_at=utcnow() - ago)


def live_row_of(engine: Engine, hash_: str) -> TaskRow | None:
    with Session(engine) as session:
        return session.scalars(
            select(TaskRow).where(TaskRow.hash == hash_, TaskRow.status == TaskStatus.QUEUED)
        ).one_or_none()


def test_a_normalizer_given_up_on_a_service_is_queued_again_as_a_new_row_after_the_retry_delay(
    reaper, pg_engine, redis_url
) -> None:
    store = reaper.tasks
    delay = timedelta(seconds=reaper.settings.service_failure_retry_delay)
    waiting, due = normalizer_task(), normalizer_task()
    store.claim([waiting, due])
    given_up_on_bytes(store, pg_engine, waiting.id, delay - timedelta(seconds=30))
    given_up_on_bytes(store, pg_engine, due.id, delay + timedelta(seconds=1))
    report = reaper.reap(utcnow())
    assert (report.requeued_service_failed, report.gave_up_service_failed) == (1, 0)
    again = live_row_of(pg_engine, due.hash)
    assert again is not None and again.id != due.id and again.reason == "queued again after 1 service failure"
    assert again.data == {**due.data, "id": str(again.id)}  # the same payload, under the new task's id
    assert (again.plugin_id, again.organisation, again.band) == (due.plugin_id, due.organisation, due.band)
    assert [m["headers"]["id"] for m in normalizer_messages(redis_url)] == [str(again.id)]
    assert store.unpublished_ids([again.id]) == set()
    old = store.get(due.id)
    assert old.status == TaskStatus.FAILED and old.reason == "service failed: bytes; queued again"
    assert store.last_runs([due.hash]) == {}  # the given-up row is still no run
    assert live_row_of(pg_engine, waiting.hash) is None  # its delay has not passed yet
    assert reaper.reap(utcnow()).requeued_service_failed == 0  # each given-up row once


def test_a_boefje_given_up_on_a_service_is_left_to_its_schedule_not_queued_by_the_reaper(reaper, pg_engine) -> None:
    store = reaper.tasks
    boefje = NewTaskFactory()
    store.claim([boefje])
    given_up_on_bytes(store, pg_engine, boefje.id, timedelta(hours=1))
    assert reaper.reap(utcnow()).requeued_service_failed == 0
    assert live_row_of(pg_engine, boefje.hash) is None
    assert store.get(boefje.id).reason == "service failed: bytes"


def test_a_normalizer_failing_on_a_service_every_time_stops_after_the_maximum_saying_so(
    reaper, pg_engine, redis_url
) -> None:
    store = reaper.tasks
    maximum = reaper.settings.service_failure_max_requeues
    first = normalizer_task()
    store.claim([first])
    current = first.id
    past = timedelta(seconds=reaper.settings.service_failure_retry_delay + 1)
    for failures in range(1, maximum + 1):
        given_up_on_bytes(store, pg_engine, current, past)
        assert reaper.reap(utcnow()).requeued_service_failed == 1
        again = live_row_of(pg_engine, first.hash)
        assert again is not None and (again.reason or "").startswith(f"queued again after {failures} service failure")
        current = again.id
    given_up_on_bytes(store, pg_engine, current, past)
    report = reaper.reap(utcnow())
    assert (report.requeued_service_failed, report.gave_up_service_failed) == (0, 1)
    assert live_row_of(pg_engine, first.hash) is None
    last = store.get(current)
    assert last.status == TaskStatus.FAILED
    assert last.reason == f"service failed: bytes; gave up after {maximum + 1} service failures"
    assert len(normalizer_messages(redis_url)) == maximum
    assert reaper.reap(utcnow()).gave_up_service_failed == 0  # said once


def test_a_normalizer_given_up_on_whose_hash_ran_again_since_is_not_queued_again(reaper, pg_engine) -> None:
    store = reaper.tasks
    given_up = normalizer_task()
    store.claim([given_up])
    given_up_on_bytes(store, pg_engine, given_up.id, timedelta(hours=1))
    newer = normalizer_task(given_up.data["raw_data"]["id"])  # the raw file's event came again, and it ran
    store.claim([newer])
    store.start(newer.id, "w")
    store.finish(newer.id, TaskStatus.COMPLETED)
    assert reaper.reap(utcnow()).requeued_service_failed == 0
    assert live_row_of(pg_engine, given_up.hash) is None
    assert store.get(given_up.id).reason == "service failed: bytes; superseded"


def test_a_pull_schedulers_normalizer_given_up_on_a_service_is_queued_again_for_a_pop_without_a_message(
    pg_engine, postgres_uri, redis_url
) -> None:
    forget_nodes_and_markers(pg_engine)
    settings = load_settings(broker_url=redis_url, db_uri=postgres_uri, pull_schedulers="normalizer,report")
    publisher = make_publisher(settings)
    try:
        reaper = Reaper(TaskStore(pg_engine), publisher, settings)
        task = normalizer_task()
        reaper.tasks.claim([task])
        given_up_on_bytes(reaper.tasks, pg_engine, task.id, timedelta(seconds=settings.service_failure_retry_delay + 1))
        assert reaper.reap(utcnow()).requeued_service_failed == 1
    finally:
        publisher.close()
        forget_nodes_and_markers(pg_engine)
    again = live_row_of(pg_engine, task.hash)
    assert again is not None and reaper.tasks.unpublished_ids([again.id]) == set()
    assert normalizer_messages(redis_url) == []
