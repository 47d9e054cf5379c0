"""The task store on SQLite and PostgreSQL: one live task per hash, conditional transitions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from kat_scheduler.models import TaskStatus
from kat_scheduler.storage import TaskStore
from tests.factories import NewTaskFactory


def test_a_claim_returns_the_tasks_whose_hash_was_free(engine: Engine) -> None:
    store = TaskStore(engine)
    first = NewTaskFactory.create_batch(3)
    assert store.claim(first) == first
    again = [NewTaskFactory(input_ooi=t.input_ooi) for t in first[:2]] + [NewTaskFactory()]
    claimed = store.claim(again)
    assert claimed == [again[2]]
    assert store.get(again[0].id) is None
    row = store.get(first[0].id)
    assert row is not None and row.status == TaskStatus.QUEUED
    assert store.unpublished_ids([t.id for t in first]) == {t.id for t in first}  # until marked


def test_duplicate_hashes_within_one_claim_are_claimed_once(engine: Engine) -> None:
    store = TaskStore(engine)
    task = NewTaskFactory()
    twin = NewTaskFactory(input_ooi=task.input_ooi)
    assert [t.id for t in store.claim([task, twin])] == [task.id]


def test_a_finished_task_frees_its_hash_for_the_next_run(engine: Engine) -> None:
    store = TaskStore(engine)
    task = NewTaskFactory()
    store.claim([task])
    assert store.start(task.id, worker="w1") is not None
    assert store.finish(task.id, TaskStatus.COMPLETED)
    rerun = NewTaskFactory(input_ooi=task.input_ooi)
    assert store.claim([rerun]) == [rerun]


def test_a_task_starts_once_and_a_redelivery_is_skipped(engine: Engine) -> None:
    store = TaskStore(engine)
    task = NewTaskFactory()
    store.claim([task])
    assert store.mark_dispatched(task.id, worker="w1")
    started = store.start(task.id, worker="w1")
    assert started is not None and started.status == TaskStatus.RUNNING and started.attempts == 1
    assert store.start(task.id, worker="w2") is None  # the redelivered message runs nothing
    assert store.get(task.id).worker == "w1"  # type: ignore[union-attr]


def test_a_cancelled_task_never_starts(engine: Engine) -> None:
    store = TaskStore(engine)
    task = NewTaskFactory()
    store.claim([task])
    assert store.cancel([task.id]) == 1
    assert store.start(task.id, worker="w1") is None
    assert store.get(task.id).status == TaskStatus.CANCELLED  # type: ignore[union-attr]


def test_a_task_only_finishes_from_running(engine: Engine) -> None:
    store = TaskStore(engine)
    task = NewTaskFactory()
    store.claim([task])
    assert not store.finish(task.id, TaskStatus.FAILED, error="boom")
    store.start(task.id, worker="w1")
    assert store.finish(task.id, TaskStatus.FAILED, error="boom")
    row = store.get(task.id)
    assert row is not None and row.error == "boom" and row.ended_at is not None


def test_cancelling_an_objects_tasks_leaves_running_ones_and_other_objects_alone(engine: Engine) -> None:
    store = TaskStore(engine)
    ref = "Hostname|internet|gone.example.nl"
    queued = NewTaskFactory(input_ooi=ref, plugin_id="dns-records")
    running = NewTaskFactory(input_ooi=ref, plugin_id="nmap")
    other = NewTaskFactory()
    store.claim([queued, running, other])
    store.start(running.id, worker="w")
    assert store.cancel_for_ooi("aa", ref) == [queued.id]
    assert store.get(running.id).status == TaskStatus.RUNNING  # type: ignore[union-attr]
    assert store.get(other.id).status == TaskStatus.QUEUED  # type: ignore[union-attr]


def test_last_runs_report_the_latest_end_per_hash(engine: Engine) -> None:
    store = TaskStore(engine)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    first = NewTaskFactory()
    store.claim([first])
    store.start(first.id, "w")
    store.finish(first.id, TaskStatus.COMPLETED, now=base)
    second = NewTaskFactory(input_ooi=first.input_ooi)
    store.claim([second])
    store.start(second.id, "w")
    store.finish(second.id, TaskStatus.FAILED, now=base + timedelta(hours=1))
    never = NewTaskFactory()
    runs = store.last_runs([first.hash, never.hash])
    assert runs == {first.hash: base + timedelta(hours=1)}
    assert runs[first.hash].tzinfo is not None


def test_live_hashes_are_the_queued_dispatched_and_running_ones(engine: Engine) -> None:
    store = TaskStore(engine)
    queued, running, done = NewTaskFactory.create_batch(3)
    store.claim([queued, running, done])
    store.start(running.id, "w")
    store.start(done.id, "w")
    store.finish(done.id, TaskStatus.COMPLETED)
    assert store.live_hashes([queued.hash, running.hash, done.hash]) == {queued.hash, running.hash}


def test_unclaiming_frees_only_unpublished_rows(engine: Engine) -> None:
    store = TaskStore(engine)
    published, unpublished = NewTaskFactory.create_batch(2)
    store.claim([published, unpublished])
    store.mark_published([published.id])
    assert store.unclaim([published.id, unpublished.id]) == 1
    assert store.get(unpublished.id) is None
    assert store.get(published.id) is not None


def test_a_large_claim_is_split_into_statements_and_counted(engine: Engine) -> None:
    store = TaskStore(engine)
    tasks = NewTaskFactory.create_batch(2500)
    assert len(store.claim(tasks)) == 2500
    assert store.count_by_status()[TaskStatus.QUEUED] == 2500
    assert store.mark_published([t.id for t in tasks]) == 2500
    assert store.mark_published([t.id for t in tasks]) == 0  # once is enough
    assert not store.unpublished_ids([t.id for t in tasks])


def test_unknown_task_ids_are_absent(engine: Engine) -> None:
    assert TaskStore(engine).get(uuid.uuid4()) is None


def test_an_object_key_longer_than_the_column_is_refused_not_cut(pg_engine) -> None:
    import psycopg2.errors
    import pytest

    store = TaskStore(pg_engine)
    too_long = NewTaskFactory(input_ooi="Hostname|internet|" + "a" * 2000)
    with pytest.raises(psycopg2.errors.StringDataRightTruncation, match="too long"):
        store.claim([too_long])
    assert store.count_by_status()[TaskStatus.QUEUED] == 0


def test_the_waiting_tasks_of_published_schedulers_come_page_by_page_and_none_twice(engine: Engine) -> None:
    from kat_scheduler.models import SchedulerId

    store = TaskStore(engine)
    tasks = NewTaskFactory.create_batch(5)
    store.claim(tasks)
    store.mark_dispatched(tasks[0].id, "boefjes@host")
    store.start(tasks[1].id, "host:1")  # running: its worker holds it, no message needed
    pages, after = [], None
    while page := store.waiting_page([SchedulerId.BOEFJE], after=after, limit=2):
        pages.append([row.id for row in page])
        after = page[-1].id
    assert [len(p) for p in pages] == [2, 2]
    assert sorted(i for p in pages for i in p) == sorted(t.id for t in tasks if t.id != tasks[1].id)
    assert store.waiting_page([SchedulerId.NORMALIZER]) == [] and store.waiting_page([]) == []


def test_a_run_handed_to_another_worker_is_ended_only_by_that_worker(engine: Engine) -> None:
    store = TaskStore(engine)
    task = NewTaskFactory()
    store.claim([task])
    node_id = uuid.uuid4()
    store.start(task.id, "silent:1", node_id=node_id)
    recovered = store.recover_lost_nodes([node_id], now=datetime.now(UTC), max_retries=5)
    assert [row.id for row in recovered.requeued] == [task.id] and recovered.failed == 0
    row = store.get(task.id)
    assert row is not None and row.status == TaskStatus.QUEUED and row.node_id is None
    assert store.start(task.id, "rescuer:2") is not None
    assert not store.finish(task.id, TaskStatus.COMPLETED, by_worker="silent:1")
    assert store.finish(task.id, TaskStatus.COMPLETED, by_worker="rescuer:2")
