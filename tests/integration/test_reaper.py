"""The reaper's repairs, each against PostgreSQL and a real Redis broker."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, cast

import pytest
import redis
from sqlalchemy import Engine, delete, update

from kat_scheduler.models import TaskStatus
from kat_scheduler.publisher import make_publisher
from kat_scheduler.settings import load_settings
from kat_scheduler.storage import TaskRow, TaskStore, UnpublishedTask
from kat_scheduler.storage.tables import BrokerMarkerRow, WorkerNodeRow, utcnow
from kat_scheduler.workers.reaper import Reaper
from tests.factories import NewTaskFactory


def forget_nodes_and_markers(engine: Engine) -> None:
    """Empty the tables of worker nodes and broker markers (a broker of an earlier test is gone)."""
    with engine.begin() as conn:
        conn.execute(delete(WorkerNodeRow))
        conn.execute(delete(BrokerMarkerRow))


@pytest.fixture
def reaper(pg_engine: Engine, redis_url: str, postgres_uri: str):
    forget_nodes_and_markers(pg_engine)
    settings = load_settings(
        broker_url=redis_url, db_uri=postgres_uri, soft_time_limit=60, hard_time_limit=120, retention_days=7
    )
    publisher = make_publisher(settings)
    yield Reaper(TaskStore(pg_engine), publisher, settings)
    publisher.close()
    forget_nodes_and_markers(pg_engine)


def boefje_messages(redis_url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    keys = [k for k in cast(list[bytes], client.keys("boefjes*")) if not k.startswith(b"_kombu")]
    return [json.loads(raw) for key in keys for raw in client.lrange(key, 0, -1)]


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
    assert [m["headers"]["id"] for m in boefje_messages(redis_url)] == [str(orphan.id)]
    assert reaper.reap(utcnow()).published_unpublished == 0


def test_a_listing_of_a_task_that_ran_after_all_is_dropped_not_published(reaper, pg_engine, redis_url) -> None:
    store = reaper.tasks
    ran = NewTaskFactory()
    store.claim([ran])  # published, but the producer died before marking it
    store.start(ran.id, "w")
    age(pg_engine, ran.id, created_at=utcnow() - timedelta(minutes=5))
    assert reaper.reap(utcnow()).published_unpublished == 0
    assert boefje_messages(redis_url) == []
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
    assert [m["headers"]["id"] for m in boefje_messages(redis_url)] == [str(stuck.id)]
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
    messages = boefje_messages(redis_url)
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
    assert [m["headers"]["id"] for m in boefje_messages(redis_url)] == [str(lost.id)]


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
    assert [m["headers"]["id"] for m in boefje_messages(redis_url)] == [str(received.id)]
    assert store.start(received.id, "another-worker") is not None


def test_a_healthy_backlog_is_not_duplicated(reaper, pg_engine, redis_url) -> None:
    store = reaper.tasks
    waiting = NewTaskFactory()
    store.claim([waiting])
    from kat_scheduler.workers.reaper import message_for

    reaper.publisher.publish([message_for(store.get(waiting.id))])
    store.mark_published([waiting.id])
    long_ago = utcnow() - timedelta(hours=2)
    age(pg_engine, waiting.id, published_at=long_ago, modified_at=long_ago)
    assert reaper.reap(utcnow()).republished_lost == 0
    assert len(boefje_messages(redis_url)) == 1


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
