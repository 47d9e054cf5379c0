"""The reaper never queues a boefje task again while Bytes shows another run of its pair going
(the rules core's ``may_requeue``): PostgreSQL and a real Redis broker.

Bytes' newest run of a pair is what a tick last saw of it (``bytes_runs``)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, update

from kat_scheduler.models import TaskStatus
from kat_scheduler.settings import load_settings
from kat_scheduler.storage import TaskRow
from kat_scheduler.storage.bytes_runs import BytesRunStore, SeenRun
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.storage.tasks import NewTask
from kat_scheduler.storage.worker_nodes import WorkerNode, WorkerNodeStore
from kat_scheduler.workers.reaper import Reaper
from tests.factories import NewTaskFactory
from tests.tasks import broker_messages, reaper_on

#: Runs without an end count as dead an hour after their start (longer than the hard limit).
STALL_AGE = timedelta(hours=1)


@pytest.fixture
def reaper(pg_engine: Engine, redis_url: str, postgres_uri: str):
    settings = load_settings(
        broker_url=redis_url,
        db_uri=postgres_uri,
        soft_time_limit=60,
        hard_time_limit=120,
        bytes_stall_age=int(STALL_AGE.total_seconds()),
    )
    with reaper_on(pg_engine, settings) as reaper:
        yield reaper


def seen_in_bytes(engine: Engine, task: NewTask, started: datetime) -> None:
    """Bytes shows a run of ``task``'s pair going since ``started`` (as a tick saw it)."""
    run = SeenRun(task.hash, task.organisation, task.plugin_id, task.input_ooi or "", started, None)
    BytesRunStore(engine).record([run], started)


def stuck_since(reaper: Reaper, started: datetime) -> NewTask:
    """A boefje task running since ``started``, on a worker that died: past the hard limit."""
    task: NewTask = NewTaskFactory()
    reaper.tasks.claim([task])
    reaper.tasks.mark_published([task.id])
    reaper.tasks.start(task.id, "dead-host:1")
    with reaper.tasks.engine.begin() as conn:
        conn.execute(update(TaskRow).where(TaskRow.id == task.id).values(started_at=started))
    return task


def test_a_stuck_task_whose_pair_bytes_shows_running_under_another_runner_is_cancelled_not_queued(
    reaper, pg_engine, redis_url
) -> None:
    now = utcnow()
    task = stuck_since(reaper, now - timedelta(minutes=10))
    seen_in_bytes(pg_engine, task, now - timedelta(minutes=11))  # started before ours: another runner's

    report = reaper.reap(now)

    assert (report.requeued_stuck, report.cancelled_running_in_bytes) == (0, 1)
    assert reaper.tasks.get(task.id).status == TaskStatus.CANCELLED
    assert broker_messages(redis_url) == []
    assert reaper.tasks.claim([NewTaskFactory(input_ooi=task.input_ooi)])  # the hash is free for when it is due


def test_a_stuck_task_whose_own_run_bytes_shows_going_is_queued_again(reaper, pg_engine, redis_url) -> None:
    now = utcnow()
    task = stuck_since(reaper, now - timedelta(minutes=10))
    seen_in_bytes(pg_engine, task, now - timedelta(minutes=10) + timedelta(seconds=2))  # its own run: it died

    report = reaper.reap(now)

    assert (report.requeued_stuck, report.cancelled_running_in_bytes) == (1, 0)
    assert reaper.tasks.get(task.id).status == TaskStatus.QUEUED
    assert [m["headers"]["id"] for m in broker_messages(redis_url)] == [str(task.id)]


def test_a_stuck_task_whose_pair_has_a_stalled_run_in_bytes_is_queued_again(reaper, pg_engine, redis_url) -> None:
    now = utcnow()
    task = stuck_since(reaper, now - timedelta(minutes=10))
    seen_in_bytes(pg_engine, task, now - STALL_AGE - timedelta(minutes=1))

    report = reaper.reap(now)

    assert (report.requeued_stuck, report.cancelled_running_in_bytes) == (1, 0)
    assert [m["headers"]["id"] for m in broker_messages(redis_url)] == [str(task.id)]


def test_a_received_task_of_a_lost_node_is_cancelled_while_bytes_shows_its_pair_running(
    reaper, pg_engine, redis_url
) -> None:
    store, nodes = reaper.tasks, WorkerNodeStore(pg_engine)
    t0 = utcnow()
    dead = WorkerNode(id=uuid.uuid4(), name="boefjes@dead", host="dead", pid=4242)
    nodes.register(dead, t0)
    received, other = NewTaskFactory.create_batch(2)
    store.claim([received, other])
    store.mark_published([received.id, other.id])
    store.mark_dispatched(received.id, "boefjes@dead", now=t0, node_id=dead.id)
    store.mark_dispatched(other.id, "boefjes@dead", now=t0, node_id=dead.id)
    seen_in_bytes(pg_engine, received, t0 - timedelta(minutes=1))  # never started by us: another runner's

    reaper.node_clock = lambda: t0 + timedelta(seconds=25)
    reaper.reap(t0 + timedelta(seconds=25))  # suspected
    reaper.node_clock = lambda: t0 + timedelta(seconds=35)
    report = reaper.reap(t0 + timedelta(seconds=35))  # confirmed: its tasks handed on

    assert (report.lost_nodes, report.requeued_lost_node, report.cancelled_running_in_bytes) == (1, 1, 1)
    assert store.get(received.id).status == TaskStatus.CANCELLED
    assert [m["headers"]["id"] for m in broker_messages(redis_url)] == [str(other.id)]
