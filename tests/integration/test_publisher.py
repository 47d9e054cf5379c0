"""The bulk publishing path, proven against real brokers and a stock ``celery worker`` process.

Messages published by :mod:`kat_scheduler.dispatch.publishing` (not by Celery) must be consumed by an
unmodified worker on our configuration: kwargs and headers intact, most urgent band first,
redelivered to the same queue when a worker dies mid-task. The publisher must survive a dropped
connection and fail fast, saying what was published, when the broker is down.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import redis

from kat_scheduler.dispatch.publishing import BrokerError, OutgoingMessage, Publisher, PublishError, make_publisher
from kat_scheduler.dispatch.publishing.redis_publisher import CLIENT_NAME
from kat_scheduler.queues import Queue, broker_priority, transport_of
from kat_scheduler.settings import Settings, load_settings
from tests.workers import celery_worker, wait_for

PROBE = "kat.boefje.record_probe"


@pytest.fixture(params=["redis", "amqp"])
def broker_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")  # type: ignore[no-any-return]


@pytest.fixture
def settings(broker_url: str, tmp_path: Path) -> Settings:
    return load_settings(broker_url=broker_url, db_uri=f"sqlite:///{tmp_path / 'db.sqlite'}")


@pytest.fixture
def publisher(settings: Settings) -> Iterator[Publisher]:
    publisher = make_publisher(settings)
    yield publisher
    publisher.close()


@pytest.fixture
def probe_results(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def worker_env(settings: Settings, redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "SCHEDULER_BROKER_URL": settings.broker_url,
        "SCHEDULER_DB_URI": settings.db_uri,
        "PROBE_REDIS_URL": redis_url,
        **extra,
    }


def message(band_: int, queue: str = Queue.BOEFJES, **kwargs: Any) -> OutgoingMessage:
    return OutgoingMessage(task_id=uuid.uuid4(), task_name=PROBE, queue=queue, band=band_, kwargs=kwargs)


def records(results: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(item) for item in results.lrange("probe:record", 0, -1)]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("prepared", [False, True], ids=["encoded-when-sent", "prepared-ahead"])
def test_a_bulk_published_backlog_is_consumed_by_a_stock_worker_most_urgent_first_with_kwargs_intact(
    settings: Settings,
    publisher: Publisher,
    redis_url: str,
    probe_results: redis.Redis,
    tmp_path: Path,
    prepared: bool,
) -> None:
    bands = [band for band in range(10) for _ in range(3)]
    random.Random(11).shuffle(bands)
    messages = [
        message(
            band,
            organisation=f"org-{index % 4}",
            boefje_id="dns-records",
            input_ooi=f'Hostname|internet|h{index}.example.com "quoted" {{braces}} %s ünïcode',
            rank=band,
        )
        for index, band in enumerate(bands)
    ]

    publisher.publish(publisher.prepare(messages) if prepared else messages)
    assert publisher.queue_depth(Queue.BOEFJES) == len(messages)

    with celery_worker(
        "tests.probe_app", [Queue.BOEFJES], worker_env(settings, redis_url), log_file=tmp_path / "w.log"
    ):
        finished = wait_for(lambda: probe_results.llen("probe:record") >= len(messages), timeout=30)
    assert finished, (tmp_path / "w.log").read_text()[-3000:]

    # Most urgent band first; within a band, in the order published.
    expected = sorted(messages, key=lambda m: m.band)
    ran = records(probe_results)
    assert [record["id"] for record in ran] == [str(m.task_id) for m in expected]
    transport = transport_of(settings.broker_url)
    for record, sent in zip(ran, expected, strict=True):
        task_id = str(sent.task_id)
        assert record["kwargs"] == sent.kwargs
        assert record["args"] == []
        assert record["task"] == PROBE
        assert record["root_id"] == record["correlation_id"] == task_id
        assert record["parent_id"] is None
        assert record["retries"] == 0
        assert record["kwargsrepr"] == repr(sent.kwargs)  # what Flower shows
        assert record["origin"].startswith("gen")
        assert record["delivery_info"] == {
            "exchange": "",
            "routing_key": Queue.BOEFJES,
            "priority": broker_priority(sent.band, transport),
            "redelivered": False,
        }


def test_a_message_whose_worker_dies_mid_task_is_delivered_again_on_the_same_queue(
    settings: Settings, publisher: Publisher, redis_url: str, probe_results: redis.Redis, tmp_path: Path
) -> None:
    # Redis redelivers an unacked message once it is older than the visibility timeout, when a
    # worker starts; RabbitMQ as soon as the dead worker's connection drops.
    # The visibility timeout leaves the second worker 6 s to run and ack the message before Redis
    # would hand it out once more (3 s was too short on a loaded machine).
    visibility = 6
    limits = {
        "SCHEDULER_SOFT_TIME_LIMIT": "1",
        "SCHEDULER_HARD_TIME_LIMIT": "2",
        "SCHEDULER_VISIBILITY_TIMEOUT": str(visibility),
    }
    env = worker_env(settings, redis_url, **limits)
    doomed = message(4, organisation="org-1", probe_sleep=30)
    publisher.publish([doomed])

    with celery_worker("tests.probe_app", [Queue.BOEFJES], env, log_file=tmp_path / "first.log") as worker:
        started = wait_for(lambda: probe_results.llen("probe:started") >= 1, timeout=20)
        assert started, (tmp_path / "first.log").read_text()[-3000:]
        delivered_at = time.monotonic()
        os.killpg(worker.pid, signal.SIGKILL)  # the worker and its pool child: nothing is acked
        worker.wait(5)
    assert probe_results.llen("probe:record") == 0

    if transport_of(settings.broker_url) == "amqp":
        assert wait_for(lambda: publisher.queue_depth(Queue.BOEFJES) == 1, timeout=5)
    else:
        time.sleep(max(0.0, delivered_at + visibility + 0.5 - time.monotonic()))

    with celery_worker("tests.probe_app", [Queue.BOEFJES], env, log_file=tmp_path / "second.log"):
        finished = wait_for(lambda: probe_results.llen("probe:record") >= 1, timeout=20)
    assert finished, (tmp_path / "second.log").read_text()[-3000:]

    [record] = records(probe_results)
    assert record["id"] == str(doomed.task_id)
    assert record["kwargs"] == doomed.kwargs
    assert record["delivery_info"]["routing_key"] == Queue.BOEFJES
    assert record["delivery_info"]["redelivered"] is True
    assert publisher.queue_depth(Queue.BOEFJES) == 0


def test_queue_depth_counts_every_priority_of_a_queue(publisher: Publisher, settings: Settings) -> None:
    bands = [0, 0, 3, 9, 9, 9]
    publisher.publish([message(band) for band in bands] + [message(5, Queue.NORMALIZERS) for _ in range(2)])

    assert publisher.queue_depth(Queue.BOEFJES) == len(bands)
    assert publisher.queue_depth(Queue.NORMALIZERS) == 2
    assert publisher.queue_depth(Queue.SCHEDULER) == 0
    if transport_of(settings.broker_url) == "redis":
        # One list per band, named as kombu's consumer expects: queue, queue:3, queue:9.
        client = redis.Redis.from_url(settings.broker_url)
        assert {key: client.llen(key) for key in ("boefjes", "boefjes:3", "boefjes:9")} == {
            "boefjes": 2,
            "boefjes:3": 1,
            "boefjes:9": 3,
        }


def close_amqp_connections(url: str) -> list[str]:
    """RabbitMQ closes every client connection on ``url``'s vhost (the publisher's), as a broker restart does."""
    vhost = unquote(urlsplit(url).path[1:]) or "/"
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "vhost"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    pids = [pid for pid, on in (line.split("\t") for line in listed.stdout.splitlines() if line) if on == vhost]
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "closed by a test"], check=True, timeout=60)
    return pids


def test_publish_reconnects_after_the_broker_dropped_the_connection(publisher: Publisher, settings: Settings) -> None:
    publisher.publish([message(1)])
    if transport_of(settings.broker_url) == "redis":
        admin = redis.Redis.from_url(settings.broker_url)
        killed = [
            admin.client_kill_filter(_id=client["id"])
            for client in admin.client_list()
            if client["name"] == CLIENT_NAME and client["db"] == str(admin.connection_pool.connection_kwargs["db"])
        ]
        assert killed
    else:
        assert close_amqp_connections(settings.broker_url)  # as a broker restart does

    publisher.publish([message(2)])

    assert publisher.queue_depth(Queue.BOEFJES) == 2


def test_publishing_to_a_broker_that_is_down_fails_fast_and_says_nothing_was_published(
    broker_url: str, tmp_path: Path
) -> None:
    scheme = "redis" if transport_of(broker_url) == "redis" else "amqp"
    url = (
        f"redis://127.0.0.1:{closed_port()}/0"
        if scheme == "redis"
        else f"amqp://guest:guest@127.0.0.1:{closed_port()}//"
    )
    publisher = make_publisher(load_settings(broker_url=url, db_uri=f"sqlite:///{tmp_path / 'db.sqlite'}"))

    started = time.monotonic()
    with pytest.raises(PublishError) as failure:
        publisher.publish([message(0), message(5)])
    assert time.monotonic() - started < 3
    assert failure.value.published == ()
    assert failure.value.certain
    with pytest.raises(BrokerError):
        publisher.queue_depth(Queue.BOEFJES)
    publisher.close()


def test_a_refused_message_is_reported_and_the_others_are_published(redis_url: str, tmp_path: Path) -> None:
    publisher = make_publisher(load_settings(broker_url=redis_url, db_uri=f"sqlite:///{tmp_path / 'db.sqlite'}"))
    redis.Redis.from_url(redis_url).set("boefjes:5", "not a list")  # LPUSH on it fails: WRONGTYPE
    urgent, refused, other = message(0), message(5), message(7, Queue.NORMALIZERS)

    with pytest.raises(PublishError) as failure:
        publisher.publish([urgent, refused, other])

    assert set(failure.value.published) == {urgent.task_id, other.task_id}
    assert failure.value.certain
    publisher.close()


def test_a_message_that_can_never_be_sent_fails_the_call_before_anything_is_sent(publisher: Publisher) -> None:
    with pytest.raises(ValueError, match="unknown queue"):
        publisher.publish([message(0), message(0, queue="boefjse")])
    with pytest.raises(TypeError):
        publisher.publish([message(0), message(0, when=object())])
    with pytest.raises(ValueError, match="unknown queue"):
        publisher.prepare([message(0), message(0, queue="boefjse")])
    with pytest.raises(TypeError):
        publisher.prepare([message(0), message(0, when=object())])
    assert publisher.queue_depth(Queue.BOEFJES) == 0
