"""Two ``kat-scheduler listen`` processes on one queue: per-object order holds.

KAT's mutations carry no time, and RabbitMQ deals a queue's messages out to its consumers, so
the second of two events of one object can be handled (by one listener) before the first (by the
other). The test makes that happen for certain: listener A takes the first events of three
objects and is held up (the test locks the ``object_events`` row of an object that comes first in
A's batch), listener B handles the newer events of the same objects, and only then A goes on.
The end state must be the one a single listener reaches handling the events in queue order: no
task for the deleted object, the level the newest update gave, the re-created object queued.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kombu.connection import Connection
from sqlalchemy import Engine, select, text

from kat_scheduler.events.consumer import EventConsumer, Rejected, TransientError
from kat_scheduler.models import TaskStatus
from kat_scheduler.sim.bridge import EventBridge
from kat_scheduler.storage import ScheduleRow
from kat_scheduler.storage.object_events import RETIRED
from kat_scheduler.storage.tables import ObjectEventRow
from tests.conftest import vhost_name
from tests.events import boefje_tasks, consuming, counted, drop_our_queues, expected_boefjes, hostname_creates, publish
from tests.vhosts import own_vhost
from tests.workers import start_listener, stop, wait_for

VHOST = vhost_name("listener_order")
QUEUE = "scan_profile_mutations"
BATCH = 4
#: Batches of 4, so a listener (prefetch: two batches) holds 8 events.
LISTENER_SETTINGS = {"SCHEDULER_EVENTS_BATCH_SIZE": str(BATCH), "SCHEDULER_EVENTS_BATCH_WINDOW": "0.2"}


@pytest.fixture
def events_url(events_amqp_base: str) -> Iterator[str]:
    url = own_vhost(events_amqp_base, VHOST)
    drop_our_queues(url)
    yield url
    drop_our_queues(url)


def queue_counts(url: str) -> tuple[int, int]:
    """(messages ready, consumers) of the mutations queue (0, 0 while it does not exist)."""
    with Connection(url, connect_timeout=3) as conn, conn.channel() as channel:
        try:
            ok = channel.queue_declare(QUEUE, passive=True)
        except conn.channel_errors:
            return 0, 0
        return int(ok.message_count), int(ok.consumer_count)


def mutation(operation: str, org: str, ref: str, level: int | None = None) -> dict[str, Any]:
    if operation == "delete":
        return {"operation": "delete", "primary_key": ref, "client_id": org, "value": None}
    value = {
        "primary_key": ref,
        "object_type": ref.split("|", 1)[0],
        "scan_profile": {"scan_profile_type": "declared", "reference": ref, "level": level},
    }
    return {"operation": operation, "primary_key": ref, "client_id": org, "value": value}


def rows(engine: Engine, org: str, refs: list[str]) -> dict[str, tuple[str, bool]]:
    """``object_events`` of ``refs``: the listener that handled each last, and whether it was contested."""
    with engine.connect() as conn:
        found = conn.execute(
            select(ObjectEventRow.primary_key, ObjectEventRow.listener, ObjectEventRow.contested).where(
                ObjectEventRow.organisation == org, ObjectEventRow.primary_key.in_(refs)
            )
        ).all()
    return {ref: (listener, contested) for ref, listener, contested in found}


def test_a_newer_event_handled_first_by_another_listener_wins_over_the_older_one_handled_after_it(
    kat, world, events_url, postgres_uri, redis_url, pg_engine, tmp_path
) -> None:
    org = world.organisation_ids[0]
    blocker = "Hostname|internet|aaa-blocker.example.nl"  # first in A's batch in key order
    deleted = "Hostname|internet|order-deleted.example.nl"  # create, then delete: gone
    raised = "IPAddressV4|internet|192.0.2.77"  # update to 1, then to 2: at 2
    recreated = "Hostname|internet|order-recreated.example.nl"  # create, delete, create: there
    objects = [deleted, raised, recreated]
    raised_boefjes = expected_boefjes(world, org, "IPAddressV4", 2, "update")
    recreated_boefjes = expected_boefjes(world, org, "Hostname", 2, "create")
    assert raised_boefjes > expected_boefjes(world, org, "IPAddressV4", 1, "update") and recreated_boefjes
    # Octopoes as it is after every event (published by hand below, in KAT's order).
    world.add_ooi(org, "IPAddressV4", raised, level=2, scan_profile_type="declared")
    world.add_ooi(org, "Hostname", recreated, level=2, scan_profile_type="declared")

    older = [
        mutation("create", org, blocker, 2),
        mutation("create", org, deleted, 2),
        mutation("update", org, raised, 1),
        mutation("create", org, recreated, 2),
    ]
    fillers = hostname_creates(org, [f"Hostname|internet|filler-{n}.example.nl" for n in range(BATCH)])
    newer = [
        mutation("delete", org, deleted),
        mutation("update", org, raised, 2),
        mutation("delete", org, recreated),
        mutation("create", org, recreated, 2),
    ]

    held = pg_engine.connect()  # the test's lock on the blocker's row holds listener A up
    held.execute(
        text(
            "INSERT INTO object_events (organisation, primary_key, listener, handled_at, contested)"
            " VALUES (:org, :pk, 'test', now() - interval '1 hour', false)"
        ),
        {"org": org, "pk": blocker},
    )
    held.commit()
    held.execute(
        text("SELECT 1 FROM object_events WHERE organisation = :org AND primary_key = :pk FOR UPDATE"),
        {"org": org, "pk": blocker},
    )
    logs = [open(tmp_path / name, "wb") for name in ("a.log", "b.log")]  # noqa: SIM115
    listeners: list[subprocess.Popen[bytes]] = []
    try:
        with EventBridge(events_url) as bridge:
            listeners.append(start_listener(kat, events_url, postgres_uri, redis_url, logs[0], **LISTENER_SETTINGS))
            assert wait_for(lambda: queue_counts(events_url) == (0, 1), timeout=30), (tmp_path / "a.log").read_text()
            assert bridge.publish_many(QUEUE, older + fillers) == 2 * BATCH
            # A takes all eight (its two batches: its prefetch) and cannot write the first.
            assert wait_for(lambda: queue_counts(events_url) == (0, 1), timeout=30)

            listeners.append(start_listener(kat, events_url, postgres_uri, redis_url, logs[1], **LISTENER_SETTINGS))
            assert wait_for(lambda: queue_counts(events_url) == (0, 2), timeout=30), (tmp_path / "b.log").read_text()
            assert bridge.publish_many(QUEUE, newer) == len(newer)
            # B handles the newer events (A has no room for them) while A waits.
            assert wait_for(lambda: boefje_tasks(pg_engine, recreated) == recreated_boefjes, timeout=30)
            assert wait_for(lambda: boefje_tasks(pg_engine, raised) == raised_boefjes, timeout=30)
            by_b = rows(pg_engine, org, objects)
            assert set(by_b) == set(objects) and not any(contested for _, contested in by_b.values())
            assert queue_counts(events_url) == (0, 2)

            held.rollback()  # A goes on: its older events of the three objects come after B's
            a_done = lambda: all(rows(pg_engine, org, objects)[ref][0] != by_b[ref][0] for ref in objects)  # noqa: E731
            assert wait_for(a_done, timeout=30), (tmp_path / "a.log").read_text()
    finally:
        held.close()
        for process in listeners:
            stop(process)
        for log in logs:
            log.close()

    # A handled each object after B did, and knew it where its last event was not B's.
    assert {ref: contested for ref, (_, contested) in rows(pg_engine, org, objects).items()} == {
        deleted: True,
        raised: True,
        recreated: False,  # a create at level 2 last on both: A's is as good as B's
    }
    # The end state of one listener handling the events in KAT's order:
    assert boefje_tasks(pg_engine, deleted) == set()
    assert boefje_tasks(pg_engine, raised) == raised_boefjes
    assert boefje_tasks(pg_engine, recreated) == recreated_boefjes
    assert boefje_tasks(pg_engine, deleted, TaskStatus.RUNNING) == set()
    with pg_engine.connect() as conn:
        schedules = conn.execute(
            select(ScheduleRow.input_ooi).where(ScheduleRow.input_ooi.in_(objects), ScheduleRow.enabled)
        ).all()
    assert schedules == []  # new pairs get their schedules from their first run, not from events


def object_lookups(kat: Any) -> int:
    """Octopoes look-ups of single objects (what a contested object costs) since the counts were reset."""
    return sum(
        n for (service, _, path), n in kat.path_counts.items() if service == "octopoes" and path.endswith("/object")
    )


def test_a_listener_started_after_one_that_stopped_cleanly_trusts_its_events_and_looks_nothing_up(
    kat, world, events_url, postgres_uri, redis_url, pg_engine, tmp_path
) -> None:
    org = world.organisation_ids[0]
    deleted = "Hostname|internet|restart-deleted.example.nl"  # create, then (after the restart) delete
    raised = "IPAddressV4|internet|192.0.2.78"  # update to 1, then (after the restart) to 2
    objects = [deleted, raised]
    raised_boefjes = expected_boefjes(world, org, "IPAddressV4", 2, "update")
    assert raised_boefjes > expected_boefjes(world, org, "IPAddressV4", 1, "update")
    assert expected_boefjes(world, org, "Hostname", 2, "create")
    world.add_ooi(org, "IPAddressV4", raised, level=2, scan_profile_type="declared")

    logs = [open(tmp_path / name, "wb") for name in ("a.log", "b.log")]  # noqa: SIM115
    listeners: list[subprocess.Popen[bytes]] = []
    try:
        with EventBridge(events_url) as bridge:
            listeners.append(start_listener(kat, events_url, postgres_uri, redis_url, logs[0], **LISTENER_SETTINGS))
            assert wait_for(lambda: queue_counts(events_url) == (0, 1), timeout=30), (tmp_path / "a.log").read_text()
            older = [mutation("create", org, deleted, 2), mutation("update", org, raised, 1)]
            assert bridge.publish_many(QUEUE, older) == len(older)
            assert wait_for(lambda: len(rows(pg_engine, org, objects)) == len(objects), timeout=30)
            by_a = rows(pg_engine, org, objects)

            stop(listeners[0])  # SIGTERM: a clean stop, within the reorder window of A's batch
            assert listeners[0].returncode == 0, (tmp_path / "a.log").read_text()
            assert rows(pg_engine, org, objects) == {ref: (RETIRED, contested) for ref, (_, contested) in by_a.items()}

            kat.reset_counts()
            listeners.append(start_listener(kat, events_url, postgres_uri, redis_url, logs[1], **LISTENER_SETTINGS))
            assert wait_for(lambda: queue_counts(events_url) == (0, 1), timeout=30), (tmp_path / "b.log").read_text()
            newer = [mutation("delete", org, deleted), mutation("update", org, raised, 2)]
            assert bridge.publish_many(QUEUE, newer) == len(newer)
            b_done = lambda: all(listener != RETIRED for listener, _ in rows(pg_engine, org, objects).values())  # noqa: E731
            assert wait_for(b_done, timeout=30), (tmp_path / "b.log").read_text()
    finally:
        for process in listeners:
            stop(process)
        for log in logs:
            log.close()

    # B took its events as they came: A had nothing in flight, so nothing was in doubt.
    assert not any(contested for _, contested in rows(pg_engine, org, objects).values())
    assert object_lookups(kat) == 0
    assert boefje_tasks(pg_engine, deleted) == set()
    assert boefje_tasks(pg_engine, raised) == raised_boefjes


def test_an_event_the_broker_delivers_again_after_a_failed_batch_reaches_the_handler_marked_so(
    amqp_events: str,
) -> None:
    publish(amqp_events, QUEUE, [mutation("create", "aa", "Hostname|internet|again.example.nl", 2)])
    seen: list[list[bool]] = []

    def handler(queue: str, events: list[Any]) -> list[Rejected]:
        seen.append([event.redelivered for event in events])
        if len(seen) == 1:
            raise TransientError("the database is down")
        return []

    consumer = EventConsumer(amqp_events, {QUEUE: handler}, min_backoff=0.05)
    with consuming(consumer):
        assert wait_for(counted(consumer, acked=1), timeout=30), consumer.stats()
    assert seen == [[False], [True]]
