"""What we push onto Redis is what a stock Celery producer (kombu's Redis channel) pushes.

The same task messages go out twice, each into a Redis database of its own: once through
Celery's ``send_task`` (a kombu ``Producer`` on kombu's Redis transport, our configuration) and
once through our publisher. Both databases must then hold the same lists, named alike, with the
same messages in the same order; only the per-send delivery tag, the sender's name and Celery's ``reply_to`` differ, and
the body's JSON may be spelt differently (the same value).
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import redis
from kombu.connection import Connection
from kombu.entity import Queue as KombuQueue
from kombu.messaging import Producer
from kombu.transport.redis import Channel as KombuRedisChannel

from kat_scheduler.dispatch.publishing import OutgoingMessage, make_publisher
from kat_scheduler.dispatch.publishing.redis_publisher import RedisPublisher
from kat_scheduler.queues import Queue, TaskName, broker_priority
from kat_scheduler.runtime.celery_app import create_app
from kat_scheduler.settings import load_settings


def messages() -> list[OutgoingMessage]:
    made = []
    for index, band in enumerate([9, 0, 3, 3, 5, 1, 9, 7, 2, 4, 6, 8, 0]):
        queue = Queue.NORMALIZERS if index % 4 == 3 else Queue.BOEFJES
        kwargs = {"organisation": "org-1", "input_ooi": f'Hostname|internet|h{index} "ü" {{x}} %s', "rank": band}
        made.append(OutgoingMessage(uuid.uuid4(), TaskName.BOEFJE_RUN, queue, band, kwargs))
    return made


def lists(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every list of the database (kombu's own bookkeeping keys left out), oldest message first."""
    client = redis.Redis.from_url(url, decode_responses=True)
    found = {}
    for key in client.scan_iter():
        if key.startswith("_kombu") or client.type(key) != "list":
            continue
        documents = [json.loads(item) for item in reversed(client.lrange(key, 0, -1))]
        for document in documents:
            del document["properties"]["delivery_tag"], document["properties"]["reply_to"]
            document["headers"].pop("origin")  # names the sending process
            # The same JSON value; the text may differ in spacing and in how it writes non-ASCII.
            document["body"] = json.loads(base64.b64decode(document["body"]))
        found[key] = documents
    return found


def test_our_redis_lists_and_messages_are_the_ones_a_stock_producer_writes(
    redis_url: str, second_redis_url: str, tmp_path: Path
) -> None:
    sent = messages()
    stock_settings = load_settings(broker_url=redis_url, db_uri=f"sqlite:///{tmp_path / 'a.db'}")
    app = create_app(stock_settings, main="stock")
    app.conf.task_send_sent_event = False
    with app.producer_or_acquire() as producer:
        for message in sent:
            app.send_task(
                message.task_name,
                kwargs=message.kwargs,
                task_id=str(message.task_id),
                queue=message.queue,
                priority=broker_priority(message.band, "redis"),
                producer=producer,
            )
    publisher = make_publisher(load_settings(broker_url=second_redis_url, db_uri=f"sqlite:///{tmp_path / 'b.db'}"))
    try:
        publisher.publish(sent)
    finally:
        publisher.close()

    stock, ours = lists(redis_url), lists(second_redis_url)
    assert sorted(ours) == sorted(stock)
    assert len(ours) == len({(m.queue, m.band) for m in sent})  # one list per queue and band
    assert ours == stock


def test_with_kombus_default_transport_options_our_lists_are_the_ones_a_kombu_producer_fills(
    redis_url: str, second_redis_url: str
) -> None:
    bands = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 3]
    with Connection(redis_url, transport_options={}) as connection:
        producer = Producer(connection.default_channel)
        queue = KombuQueue("boefjes", routing_key="boefjes")
        for band in bands:
            priority = broker_priority(band, "redis")
            producer.publish({"band": band}, routing_key="boefjes", priority=priority, declare=[queue])
    with RedisPublisher(second_redis_url, transport_options={}, queues=["boefjes"]) as publisher:
        publisher.publish(
            [OutgoingMessage(uuid.uuid4(), TaskName.BOEFJE_RUN, "boefjes", band, {"band": band}) for band in bands]
        )

    stock, ours = bands_by_list(redis_url), bands_by_list(second_redis_url)
    assert ours == stock
    assert len(ours) == 4  # kombu's default: four priority steps, its own separator
    assert all(key == "boefjes" or key.startswith(f"boefjes{KombuRedisChannel.sep}") for key in ours)


def bands_by_list(url: str) -> dict[str, list[int]]:
    client = redis.Redis.from_url(url, decode_responses=True)
    found: dict[str, list[int]] = {}
    for key in client.scan_iter():
        if not key.startswith("_kombu") and client.type(key) == "list":
            bodies = [json.loads(base64.b64decode(json.loads(item)["body"])) for item in client.lrange(key, 0, -1)]
            found[key] = [body["band"] if isinstance(body, dict) else body[1]["band"] for body in reversed(bodies)]
    return found
