"""A stock Celery worker, on our configuration, runs queued work most urgent band first.

Messages are published before the worker starts, as a backlog would be; with prefetch 1 and
late ack the worker takes one message at a time, so the order it runs them in is the
broker's priority order. Runs on Redis and on RabbitMQ.
"""

from __future__ import annotations

import json
import random

import pytest
import redis

from kat_scheduler.queues import Queue, broker_priority, transport_of
from kat_scheduler.runtime.celery_app import create_app
from kat_scheduler.settings import load_settings
from tests.workers import celery_worker, wait_for


@pytest.fixture(params=["redis", "amqp"])
def broker_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")  # type: ignore[no-any-return]


def test_a_backlog_runs_in_band_order_most_urgent_first(broker_url: str, redis_url: str, tmp_path) -> None:
    env = {
        "SCHEDULER_BROKER_URL": broker_url,
        "SCHEDULER_DB_URI": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "PROBE_REDIS_URL": redis_url,
    }
    settings = load_settings(broker_url=broker_url, db_uri=env["SCHEDULER_DB_URI"])
    app = create_app(settings, main="dispatch_priority_test")
    transport = transport_of(broker_url)
    bands = [band for band in range(10) for _ in range(4)]
    random.Random(7).shuffle(bands)

    for band in bands:
        # Published by name: the producer needs no task code, exactly as our producers publish.
        app.send_task("kat.boefje.run", kwargs={"band": band}, priority=broker_priority(band, transport))

    results = redis.Redis.from_url(redis_url)
    with celery_worker("tests.probe_app", [Queue.BOEFJES.value], env, log_file=tmp_path / "worker.log"):
        finished = wait_for(lambda: results.llen("probe:ran") >= len(bands), timeout=60)
    assert finished, (tmp_path / "worker.log").read_text()[-3000:]

    ran = [json.loads(item)["band"] for item in results.lrange("probe:ran", 0, -1)]
    assert ran == sorted(bands)


def test_a_message_routed_by_name_lands_on_its_queue(redis_url: str, tmp_path) -> None:
    settings = load_settings(broker_url=redis_url, db_uri=f"sqlite:///{tmp_path / 'db.sqlite'}")
    app = create_app(settings, main="routing_test")

    @app.task(name="kat.normalizer.routing_probe", shared=False)
    def normalizer_probe() -> None: ...

    @app.task(name="kat.scheduler.routing_probe", shared=False)
    def scheduler_probe() -> None: ...

    normalizer_probe.apply_async(priority=broker_priority(3, "redis"))
    scheduler_probe.apply_async(priority=broker_priority(0, "redis"))
    client = redis.Redis.from_url(redis_url)
    assert client.llen("normalizers:3") == 1
    assert client.llen("scheduler") == 1
    assert client.llen("boefjes") == 0
