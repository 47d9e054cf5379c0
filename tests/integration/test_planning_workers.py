"""Planning through real Celery worker processes: beat's tick on a scheduler worker, the
published boefje tasks consumed by a stock worker, and a manual push overtaking a backlog."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import redis

from kat_scheduler.dispatch.publishing import OutgoingMessage, make_publisher
from kat_scheduler.producers import ManualPush
from kat_scheduler.queues import LEAST_URGENT_BAND, Queue, TaskName, broker_priority
from kat_scheduler.runtime.celery_app import create_app
from kat_scheduler.settings import load_settings
from kat_scheduler.sim.oracle import allowed_boefje_tasks
from tests.tasks import queued_rows
from tests.workers import celery_worker, probe_env, wait_for


def test_a_beat_tick_on_a_scheduler_worker_queues_the_eligible_tasks_and_workers_run_them_in_band_order(
    kat, world, pg_engine, postgres_uri, redis_url, tmp_path
) -> None:
    env = probe_env(kat, postgres_uri, redis_url)
    app = create_app(load_settings(broker_url=redis_url, db_uri=postgres_uri), main="tick_test")
    expected = allowed_boefje_tasks(world, datetime.now(UTC))

    with celery_worker("kat_scheduler", [Queue.SCHEDULER.value], env, log_file=tmp_path / "scheduler.log"):
        app.send_task(TaskName.PLAN_BOEFJES.value, queue=Queue.SCHEDULER.value, priority=broker_priority(2, "redis"))
        done = wait_for(lambda: len(queued_rows(pg_engine)) >= len(expected), timeout=60)
    assert done, (tmp_path / "scheduler.log").read_text()[-3000:]
    rows = queued_rows(pg_engine)
    assert {(o, b, i) for o, b, i, _, _ in rows} == expected

    results = redis.Redis.from_url(redis_url)
    with celery_worker("tests.probe_boefjes", [Queue.BOEFJES.value], env, log_file=tmp_path / "boefjes.log"):
        ran_all = wait_for(lambda: results.llen("probe:boefjes") >= len(rows), timeout=90)
    assert ran_all, (tmp_path / "boefjes.log").read_text()[-3000:]
    band_of = {task_id: band for *_, band, task_id in rows}
    ran = [json.loads(r) for r in results.lrange("probe:boefjes", 0, -1)]
    assert len(ran) == len(rows)
    bands = [band_of[r["id"]] for r in ran]
    assert bands == sorted(bands)
    assert {(r["organisation"], r["boefje_id"], r["input_ooi"]) for r in ran} == expected


def test_a_manual_push_overtakes_a_backlog_of_1000_band_9_tasks(
    kat, world, producers, postgres_uri, redis_url, tmp_path
) -> None:
    settings = load_settings(broker_url=redis_url, db_uri=postgres_uri)
    publisher = make_publisher(settings)
    import uuid

    backlog = [
        OutgoingMessage(
            task_id=uuid.uuid4(),
            task_name=TaskName.BOEFJE_RUN.value,
            queue=Queue.BOEFJES.value,
            band=LEAST_URGENT_BAND,
            kwargs={"organisation": "backlog", "boefje_id": "slow", "input_ooi": f"Hostname|internet|b{n}.nl"},
        )
        for n in range(1000)
    ]
    publisher.publish(backlog)
    publisher.close()

    org = world.organisation_ids[0]
    target = next(
        (t for t in sorted(allowed_boefje_tasks(world, datetime.now(UTC))) if t[0] == org),
    )
    results = redis.Redis.from_url(redis_url)
    env = probe_env(kat, postgres_uri, redis_url, PROBE_SLEEP="0.01")
    with celery_worker("tests.probe_boefjes", [Queue.BOEFJES.value], env, log_file=tmp_path / "boefjes.log"):
        assert wait_for(lambda: results.llen("probe:boefjes") >= 20, timeout=60)
        pushed = ManualPush(producers, org, target[1], target[2]).run(datetime.now(UTC))
        # Counted once the push is on the broker: what the worker ran while the push asked KAT
        # and claimed its row (longer on a loaded machine) went before it fairly.
        ran_before_push = results.llen("probe:boefjes")
        assert pushed.task_id is not None
        found = wait_for(
            lambda: any(json.loads(r)["id"] == str(pushed.task_id) for r in results.lrange("probe:boefjes", 0, -1)),
            timeout=30,
        )
        ran = [json.loads(r)["id"] for r in results.lrange("probe:boefjes", 0, -1)]
    assert found
    position = ran.index(str(pushed.task_id))
    # Prefetch 1: at most the task running and one reserved may go before it.
    assert position - ran_before_push <= 3, (position, ran_before_push)
    assert len(ran) < 1000
