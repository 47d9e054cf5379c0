"""KAT's events on a real broker, for the tests of the consumer and the listener: events as KAT
publishes them, the run's own events vhost and its queues, a fake handler and a consumer run in a
thread, and what a listener's events should have queued.

Events are published as KAT publishes them: plain JSON on the default exchange, routing key =
queue name, durable queue. The fixtures on these (``events_amqp_base``, ``amqp_events``) are in
tests/integration/conftest.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from unittest import mock

import redis
from kombu.connection import Connection
from kombu.entity import Queue as KombuQueue
from kombu.messaging import Producer
from sqlalchemy import Engine, select

from kat_scheduler.events.consumer import REDIS_TRANSPORT_OPTIONS, EventConsumer, Rejected, dead_letter_queue
from kat_scheduler.models import RawFileReceived, ScanProfileMutation, TaskStatus
from kat_scheduler.queues import RAW_FILE_RECEIVED, SCAN_PROFILE_MUTATIONS
from kat_scheduler.sim.world import World
from kat_scheduler.storage import TaskRow
from tests.conftest import vhost_name
from tests.consumer_script import event_key

EVENTS_VHOST = vhost_name("events")
OUR_QUEUES = [
    SCAN_PROFILE_MUTATIONS,
    RAW_FILE_RECEIVED,
    dead_letter_queue(SCAN_PROFILE_MUTATIONS),
    dead_letter_queue(RAW_FILE_RECEIVED),
]


def drop_our_queues(url: str) -> None:
    """Delete our event queues (and their dead-letter queues) on ``url``; no other queue is touched."""
    with Connection(url, connect_timeout=3) as conn:
        for name in OUR_QUEUES:
            with conn.channel() as channel, contextlib.suppress(*conn.channel_errors):
                channel.queue_delete(name)


# --- events, publishing, inspecting -----------------------------------------------------------


def mutation(n: int, operation: str = "create") -> dict[str, Any]:
    key = f"Hostname|internet|host-{n}.example.nl"
    return {
        "operation": operation,
        "primary_key": key,
        "client_id": "aa",
        "value": {
            "primary_key": key,
            "object_type": "Hostname",
            "scan_profile": {"scan_profile_type": "declared", "reference": key, "level": 2},
        },
    }


def raw_file(n: int) -> dict[str, Any]:
    return {
        "event_id": "raw_file_received",
        "created_at": "2025-05-27T09:00:16.601+00:00",
        "organization": "aa",
        "raw_data": {
            "id": f"7c1f0000-0000-4000-8000-{n:012d}",
            "boefje_meta": {
                "id": f"0b0e0000-0000-4000-8000-{n:012d}",
                "boefje": {"id": "dns-records", "version": None},
                "input_ooi": "Hostname|internet|mispo.es",
                "organization": "aa",
            },
            "mime_types": [{"value": "boefje/dns-records"}],
            "secure_hash": None,
            "hash_retrieval_link": None,
        },
    }


def key(n: int) -> str:
    return str(mutation(n)["primary_key"])


def publish(url: str, queue: str, bodies: Iterable[dict[str, Any] | bytes]) -> None:
    """As KAT publishes: plain JSON, default exchange, routing key = queue name, durable queue."""
    with Connection(url) as conn, conn.channel() as channel:
        KombuQueue(queue, durable=True).declare(channel=channel)
        producer = Producer(channel)
        for body in bodies:
            if isinstance(body, bytes):
                producer.publish(
                    body,
                    routing_key=queue,
                    content_type="application/octet-stream",
                    content_encoding="binary",
                    delivery_mode=2,
                )
            else:
                producer.publish(body, routing_key=queue, serializer="json", delivery_mode=2)


def depth(url: str, queue: str) -> int:
    """Messages ready on ``queue`` (0 if it does not exist)."""
    with Connection(url) as conn, conn.channel() as channel:
        try:
            return int(KombuQueue(queue).queue_declare(passive=True, channel=channel).message_count)
        except conn.channel_errors:
            return 0


def as_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body


def take_all(url: str, queue: str) -> list[tuple[bytes, dict[str, Any]]]:
    """Every message on ``queue`` as (body, headers), removed."""
    taken = []
    with Connection(url) as conn, conn.channel() as channel:
        bound = KombuQueue(queue, no_declare=True)(channel)
        while (message := bound.get(no_ack=True)) is not None:
            taken.append((as_bytes(message.body), dict(message.headers)))
    return taken


def assert_nothing_left(url: str, *queues: str) -> None:
    """After the consumer closed: nothing ready, hence nothing was left unacked either."""
    for queue in queues:
        assert depth(url, queue) == 0, queue
    if url.startswith("redis"):
        assert redis.Redis.from_url(url).hlen(REDIS_TRANSPORT_OPTIONS["unacked_key"]) == 0


def profile_mutation(org: str, pk: str, level: int | None, operation: str = "create") -> ScanProfileMutation:
    """A scan-profile mutation of ``pk`` in ``org`` as the handlers get it: declared at ``level``,
    or without a value when ``level`` is None (as a ``delete`` comes)."""
    value = None
    if level is not None:
        value = {
            "primary_key": pk,
            "object_type": pk.split("|", 1)[0],
            "scan_profile": {"scan_profile_type": "declared", "reference": pk, "level": level},
        }
    return ScanProfileMutation.model_validate(
        {"operation": operation, "primary_key": pk, "client_id": org, "value": value}
    )


def raw_file_event(org: str, boefje_id: str, mime_types: list[str], at: datetime) -> RawFileReceived:
    """A raw file of a ``boefje_id`` run in ``org`` with ``mime_types``, received 3 minutes before ``at``."""
    meta_id = uuid.uuid4()
    return RawFileReceived.model_validate(
        {
            "event_id": "raw_file_received",
            "created_at": (at - timedelta(minutes=3)).isoformat(),
            "organization": org,
            "raw_data": {
                "id": str(uuid.uuid4()),
                "boefje_meta": {
                    "id": str(meta_id),
                    "started_at": (at - timedelta(minutes=4)).isoformat(),
                    "ended_at": (at - timedelta(minutes=3)).isoformat(),
                    "boefje": {"id": boefje_id, "version": None},
                    "input_ooi": "Hostname|internet|mispo.es",
                    "arguments": {},
                    "organization": org,
                    "runnable_hash": None,
                    "environment": {},
                },
                "mime_types": [{"value": m} for m in mime_types],
                "secure_hash": None,
                "hash_retrieval_link": None,
            },
        }
    )


# --- a fake handler and a consumer in a thread ------------------------------------------------


@dataclass
class Call:
    at: float
    queue: str
    keys: list[str]
    failed: bool = False


class FakeHandler:
    """Records every batch; raises ``fail[call number]`` (1-based) and rejects what ``reject`` names."""

    def __init__(
        self,
        fail: dict[int, Exception] | None = None,
        reject: Callable[[Any], str | None] = lambda event: None,
        before: Callable[[int], object] = lambda number: None,
    ) -> None:
        self.fail = fail or {}
        self.reject = reject
        self.before = before
        self.calls: list[Call] = []

    def __call__(self, queue: str, events: list[Any]) -> list[Rejected]:
        call = Call(time.monotonic(), queue, [event_key(event) for event in events])
        self.calls.append(call)
        self.before(len(self.calls))
        if len(self.calls) in self.fail:
            call.failed = True
            raise self.fail[len(self.calls)]
        return [Rejected(i, reason) for i, event in enumerate(events) if (reason := self.reject(event))]

    def handled(self) -> list[str]:
        """Keys of the events of every batch that succeeded, repeats included."""
        return [k for call in self.calls if not call.failed for k in call.keys]


#: The consumer's idle wait while a test consumes: how soon an idle consumer notices its stop. No
#: test here is about that wait, and every test stops its consumer, which would otherwise wait it
#: out at the default each time.
TEST_IDLE_WAIT = 0.05


@contextlib.contextmanager
def consuming(consumer: EventConsumer) -> Iterator[EventConsumer]:
    """``consumer.run()`` in a thread, stopped (and checked to have stopped cleanly) at the end."""
    from kat_scheduler.events import consumer as consumer_module

    stop_event = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            consumer.run(stop=stop_event)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="event-consumer", daemon=True)
    with mock.patch.object(consumer_module, "IDLE_WAIT", TEST_IDLE_WAIT):
        thread.start()
        try:
            yield consumer
        finally:
            stop_event.set()
            thread.join(15)
    assert not thread.is_alive(), "the consumer did not stop"
    assert not errors, errors


def counted(consumer: EventConsumer, **expected: int) -> Callable[[], bool]:
    return lambda: all(consumer.stats()[name] == value for name, value in expected.items())


# --- what a listener's events should have queued ------------------------------------------------


def boefje_tasks(engine: Engine, pk: str, status: TaskStatus = TaskStatus.QUEUED) -> set[str]:
    """The boefjes of the tasks on ``pk`` in ``status``."""
    with engine.connect() as conn:
        rows = conn.execute(select(TaskRow.plugin_id).where(TaskRow.input_ooi == pk, TaskRow.status == status))
        return set(rows.scalars())


def expected_boefjes(world: World, org: str, object_type: str, level: int, operation: str = "create") -> set[str]:
    """The boefjes ``world`` lets run on a new ``object_type`` at ``level`` in ``org``."""
    return {
        b.id
        for b in world.boefjes
        if world.is_enabled(org, b.id)
        and object_type in b.consumes
        and b.scan_level <= level
        and (not b.run_on or operation in b.run_on)
    }


def hostname_creates(org: str, refs: list[str], level: int = 2) -> list[dict[str, Any]]:
    """``create`` mutations of new Hostnames at ``level``, as Octopoes publishes them."""
    return [
        {
            "operation": "create",
            "primary_key": ref,
            "client_id": org,
            "value": {
                "primary_key": ref,
                "object_type": "Hostname",
                "scan_profile": {"scan_profile_type": "declared", "reference": ref, "level": level},
            },
        }
        for ref in refs
    ]
