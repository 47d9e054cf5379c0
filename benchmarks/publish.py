"""Benchmark: publishing task messages, our bulk path against Celery's ``send_task``.

    .venv/bin/python -m benchmarks.publish [--messages 20000 --runs 3 --skip-stock]

Publishes ``--messages`` boefje task messages (mixed bands, realistic kwargs) from this one
process, on Redis (db 13 by default) and on RabbitMQ, once with :func:`make_publisher`'s
publisher in batches of ``--batch`` (what a producer does per claim) and once with stock
``send_task`` on an app with our configuration (which also sends a ``task-sent`` event per
message, as configured for Flower). Prints the median msg/s of ``--runs`` runs. Each run starts
from an empty queue. Uses a queue of its own (``kat_bench_boefjes``) and deletes it, and
flushes its Redis db, at the end. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import redis
from celery import Celery
from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.entity import Queue as KombuQueue

from kat_scheduler.dispatch.publishing import OutgoingMessage, Publisher
from kat_scheduler.dispatch.publishing.kombu_publisher import KombuPublisher
from kat_scheduler.dispatch.publishing.redis_publisher import RedisPublisher
from kat_scheduler.queues import AMQP_MAX_PRIORITY, TaskName, broker_priority, transport_of
from kat_scheduler.runtime.celery_app import create_app
from kat_scheduler.runtime.celery_config import broker_transport_options
from kat_scheduler.settings import Settings, load_settings

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
AMQP = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = "kat_bench_boefjes"


def bench_queue(broker_url: str) -> KombuQueue:
    arguments = {"x-max-priority": AMQP_MAX_PRIORITY} if transport_of(broker_url) == "amqp" else None
    return KombuQueue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE, queue_arguments=arguments, durable=True)


def make_messages(count: int) -> list[OutgoingMessage]:
    rng = random.Random(1)
    return [
        OutgoingMessage(
            task_id=uuid.uuid4(),
            task_name=TaskName.BOEFJE_RUN,
            queue=QUEUE,
            band=rng.randrange(10),
            kwargs={
                "organisation": f"org-{rng.randrange(50)}",
                "boefje_id": rng.choice(["dns-records", "nmap", "ssl-certificates", "webpage-analysis"]),
                "input_ooi": f"Hostname|internet|host-{index}.example.com",
            },
        )
        for index in range(count)
    ]


def bulk_publishers(settings: Settings) -> Iterator[tuple[str, Publisher]]:
    url, options = settings.broker_url, broker_transport_options(settings)
    if transport_of(url) == "redis":
        yield "bulk path", RedisPublisher(url, transport_options=options, queues=[QUEUE])
        return
    yield "bulk path", KombuPublisher(url, transport_options=options, queues=[bench_queue(url)])
    yield "bulk, no confirms", KombuPublisher(url, transport_options=options, queues=[bench_queue(url)], confirm=False)


def stock_app(settings: Settings) -> Celery:
    app = create_app(settings, main="bench_publish")
    app.conf.task_queues = [bench_queue(settings.broker_url)]
    app.conf.task_routes = {"kat.boefje.*": {"queue": QUEUE}}
    return app


def empty_queue(settings: Settings) -> None:
    if transport_of(settings.broker_url) == "redis":
        redis.Redis.from_url(settings.broker_url).flushdb()
        return
    with Connection(settings.broker_url) as conn:
        channel = conn.default_channel
        bench_queue(settings.broker_url).bind(channel).declare()
        channel.queue_purge(QUEUE)


def delete_queue(settings: Settings) -> None:
    if transport_of(settings.broker_url) == "redis":
        redis.Redis.from_url(settings.broker_url).flushdb()
        return
    with Connection(settings.broker_url) as conn:
        conn.default_channel.queue_delete(QUEUE)
        conn.default_channel.exchange_delete(QUEUE)


def timed(run: Callable[[], None], settings: Settings, runs: int, count: int) -> list[float]:
    rates = []
    for _ in range(runs):
        empty_queue(settings)
        started = time.perf_counter()
        run()
        rates.append(count / (time.perf_counter() - started))
    return rates


def bench_broker(
    url: str, messages: Sequence[OutgoingMessage], args: argparse.Namespace
) -> Iterator[tuple[str, float]]:
    settings = load_settings(broker_url=url, db_uri="sqlite://")
    transport = transport_of(url)
    try:
        batches = [messages[start : start + args.batch] for start in range(0, len(messages), args.batch)]
        for path, publisher in bulk_publishers(settings):

            def bulk() -> None:
                for batch in batches:
                    publisher.publish(batch)  # noqa: B023 - runs before the loop moves on

            yield path, statistics.median(timed(bulk, settings, args.runs, len(messages)))
            publisher.close()

        if args.skip_stock:
            return
        app = stock_app(settings)

        def stock() -> None:
            with app.producer_or_acquire() as producer:
                for m in messages:
                    app.send_task(
                        m.task_name,
                        kwargs=m.kwargs,
                        task_id=str(m.task_id),
                        queue=QUEUE,
                        priority=broker_priority(m.band, transport),
                        producer=producer,
                    )

        yield "stock send_task", statistics.median(timed(stock, settings, args.runs, len(messages)))
    finally:
        delete_queue(settings)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000, help="messages per publish call")
    parser.add_argument("--skip-stock", action="store_true", help="only the bulk path")
    parser.add_argument("--redis-url", default=REDIS)
    parser.add_argument("--amqp-url", default=AMQP)
    args = parser.parse_args(argv)

    messages = make_messages(args.messages)
    print(f"{args.messages} messages, batches of {args.batch}, median of {args.runs} runs")
    for name, url in (("Redis", args.redis_url), ("RabbitMQ", args.amqp_url)):
        for path, rate in bench_broker(url, messages, args):
            print(f"  {name:<9} {path:<18} {rate:>10,.0f} msg/s", flush=True)


if __name__ == "__main__":
    main()
