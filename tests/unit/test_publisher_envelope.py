"""The Redis envelope we write by hand is the one kombu and Celery write, and read back.

Kombu's in-memory transport shares the Redis transport's envelope (both are kombu "virtual"
transports; Redis adds only where the document is stored), so a stock ``send_task`` on it
shows exactly what a stock producer would push onto Redis — no server needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.worker.request import Request
from kombu.connection import Connection

from kat_scheduler.dispatch.publishing import OutgoingMessage
from kat_scheduler.dispatch.publishing.envelope import RedisEnvelopes, origin, redis_envelope, task_headers
from kat_scheduler.queues import Queue, TaskName, broker_priority
from kat_scheduler.runtime.celery_app import create_app
from kat_scheduler.settings import load_settings

KWARGS: dict[str, Any] = {
    "organisation": "org-1",
    "boefje_id": "dns-records",
    "input_ooi": 'Hostname|internet|www.example.com "quoted" {braces} %s ünïcode',
    "arguments": {"nested": [1, 2.5, None, True]},
}


@pytest.fixture
def app(tmp_path) -> Iterator[Celery]:
    settings = load_settings(broker_url="memory://", db_uri=f"sqlite:///{tmp_path / 'db'}")
    app = create_app(settings, main="envelope")
    app.loader.import_default_modules()  # our own kat.boefje.run, as a worker loads it
    yield app
    with app.connection_for_write() as conn:  # empty the in-memory queues for the next test
        for queue in Queue:
            conn.default_channel.queue_purge(queue.value)


def outgoing(band: int = 3) -> OutgoingMessage:
    return OutgoingMessage(uuid.uuid4(), TaskName.BOEFJE_RUN, Queue.BOEFJES, band, KWARGS)


def stock_envelope(app: Celery, message: OutgoingMessage) -> dict[str, Any]:
    """What ``send_task`` puts on a kombu virtual transport for the same task."""
    priority = broker_priority(message.band, "redis")
    app.send_task(message.task_name, kwargs=message.kwargs, task_id=str(message.task_id), priority=priority)
    with app.connection_for_write() as conn:
        received = conn.default_channel.basic_get(message.queue, no_ack=True)
        return received.serializable()  # type: ignore[no-any-return]


def test_our_envelope_is_the_one_send_task_writes(app: Celery) -> None:
    message = outgoing()
    ours = json.loads(RedisEnvelopes(origin())(message, broker_priority(message.band, "redis")))
    stock = stock_envelope(app, message)

    assert ours.keys() == stock.keys()
    assert ours["properties"].keys() == stock["properties"].keys()
    assert ours["properties"]["delivery_info"] == stock["properties"]["delivery_info"]
    # Only the per-send tag differs, and reply_to: Celery names its result consumer, we have none.
    for name in ("delivery_tag", "reply_to"):
        del ours["properties"][name], stock["properties"][name]
    assert ours["properties"] == stock["properties"]
    assert ours["headers"] == stock["headers"]
    assert ours["headers"].keys() == app.amqp.as_task_v2(str(message.task_id), message.task_name).headers.keys()
    decode = Connection("memory://").default_channel.decode_body
    assert json.loads(decode(ours["body"], "base64")) == json.loads(decode(stock["body"], "base64"))


def test_a_stock_worker_request_reads_our_envelope(app: Celery) -> None:
    message = outgoing(band=7)
    payload = json.loads(RedisEnvelopes(origin())(message, 7))
    channel = Connection("memory://").default_channel
    kombu_message = channel.Message(payload, channel=channel)  # what kombu's consumer builds

    assert kombu_message.decode() == [[], KWARGS, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    request = Request(kombu_message, app=app)
    assert request.id == str(message.task_id)
    assert request.name == TaskName.BOEFJE_RUN
    assert (request.args, request.kwargs) == ([], KWARGS)
    assert request.delivery_info == {"exchange": "", "routing_key": "boefjes", "priority": 7, "redelivered": False}
    assert request.request_dict["kwargsrepr"] == repr(KWARGS)


def test_the_fast_envelope_equals_the_readable_one() -> None:
    sender = "gen1@host %s {x}"
    for band in range(10):
        message = outgoing(band)
        fast = json.loads(RedisEnvelopes(sender)(message, band))
        readable = json.loads(redis_envelope(message, band, sender))
        assert fast["properties"].pop("delivery_tag") != readable["properties"].pop("delivery_tag")
        assert fast == readable


def test_a_long_kwargs_repr_is_cut_as_celery_cuts_it() -> None:
    message = OutgoingMessage(uuid.uuid4(), TaskName.BOEFJE_RUN, Queue.BOEFJES, 0, {"data": "x" * 5000})
    shown = task_headers(message, "gen1@host")["kwargsrepr"]
    assert len(shown) == 1024
    assert shown.endswith("...")


def test_importing_the_publisher_api_loads_no_broker_library() -> None:
    code = (
        "import sys, kat_scheduler.dispatch.publishing\n"
        "loaded = {m.split('.')[0] for m in sys.modules} & {'celery', 'kombu', 'redis', 'amqp'}\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
