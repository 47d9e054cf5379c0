"""``kat-scheduler listen`` as a real process on RabbitMQ: KAT's events in, work queued.

The simulated KAT publishes its events through the event bridge, exactly as Octopoes and Bytes
do, on a vhost of the run's own (``kat_test_<run id>_listener``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kombu.connection import Connection
from kombu.entity import Queue as KombuQueue
from sqlalchemy import func, select, text

from kat_scheduler.models import BoefjeMeta, SchedulerId, TaskStatus
from kat_scheduler.producers import TickProducer
from kat_scheduler.sim.bridge import EventBridge
from kat_scheduler.storage import ScheduleRow, TaskRow, UnpublishedTask
from tests.conftest import vhost_name
from tests.events import boefje_tasks, drop_our_queues, expected_boefjes, hostname_creates, take_all
from tests.vhosts import own_vhost
from tests.workers import start_listener, stop, wait_for

VHOST = vhost_name("listener")


@pytest.fixture
def events_url(events_amqp_base: str) -> Iterator[str]:
    url = own_vhost(events_amqp_base, VHOST)
    drop_our_queues(url)
    yield url
    drop_our_queues(url)


@pytest.fixture
def bridge(events_url: str, world) -> Iterator[EventBridge]:
    with EventBridge(events_url) as b:
        world.add_listener(b)
        yield b
        world.remove_listener(b)


@pytest.fixture
def listener(kat, events_url, postgres_uri, redis_url, tmp_path) -> Iterator[subprocess.Popen[bytes]]:
    with open(tmp_path / "listener.log", "wb") as log:
        process = start_listener(kat, events_url, postgres_uri, redis_url, log)
        yield process
        stop(process)


def test_a_new_object_in_octopoes_gets_its_boefjes_queued(world, bridge, listener, pg_engine) -> None:
    org = world.organisation_ids[0]
    pk = "Hostname|internet|fresh.example.nl"
    world.add_ooi(org, "Hostname", pk, level=2, scan_profile_type="declared")
    assert (bridge.published, bridge.failed) == (1, 0)
    expected = expected_boefjes(world, org, "Hostname", 2)
    ok = wait_for(lambda: boefje_tasks(pg_engine, pk) == expected, timeout=20)
    if not ok:
        print(
            subprocess.run(
                ["rabbitmqctl", "list_queues", "-p", VHOST, "name", "messages", "consumers", "durable"],
                capture_output=True,
                text=True,
            ).stdout
        )
    assert ok, boefje_tasks(pg_engine, pk)


def test_a_deleted_object_has_its_queued_tasks_cancelled(world, bridge, listener, pg_engine) -> None:
    org = world.organisation_ids[0]
    pk = "Hostname|internet|short-lived.example.nl"
    world.add_ooi(org, "Hostname", pk, level=2, scan_profile_type="declared")
    assert wait_for(lambda: boefje_tasks(pg_engine, pk), timeout=20)
    queued = boefje_tasks(pg_engine, pk)
    world.delete_ooi(org, pk)
    assert wait_for(lambda: boefje_tasks(pg_engine, pk, TaskStatus.CANCELLED) == queued, timeout=20)
    assert boefje_tasks(pg_engine, pk) == set()


def test_a_stored_raw_file_gets_its_normalizers_and_an_error_file_none(
    world, bridge, listener, clients, pg_engine
) -> None:
    org = world.organisation_ids[0]
    now = datetime.now(UTC)

    def store(tags: list[str]) -> uuid.UUID:
        meta = BoefjeMeta.model_validate(
            {
                "id": str(uuid.uuid4()),
                "started_at": now.isoformat(),
                "ended_at": now.isoformat(),
                "boefje": {"id": "dns-records", "version": None},
                "input_ooi": "Hostname|internet|mispo.es",
                "organization": org,
            }
        )
        clients.bytes.save_boefje_meta(meta)
        clients.bytes.save_raw(meta.id, [("0", b"raw output", tags)])
        return meta.id

    good = store(["boefje/dns-records"])
    bad = store(["boefje/dns-records", "error/boefje"])
    expected = {n.id for n in world.normalizers if world.is_enabled(org, n.id) and "boefje/dns-records" in n.consumes}

    def normalizers_for(meta_id: uuid.UUID) -> set[str]:
        with pg_engine.connect() as conn:
            rows = conn.execute(
                select(TaskRow.plugin_id, TaskRow.data).where(TaskRow.scheduler_id == SchedulerId.NORMALIZER)
            ).all()
        return {p for p, data in rows if data["raw_data"]["boefje_meta"]["id"] == str(meta_id)}

    assert wait_for(lambda: normalizers_for(good) == expected, timeout=20), normalizers_for(good)
    assert normalizers_for(bad) == set()


def test_a_poison_message_is_dead_lettered_and_the_next_event_still_handled(
    world, bridge, listener, events_url, pg_engine
) -> None:
    with Connection(events_url) as conn:
        # Declared as KAT declares it (durable, no arguments): unroutable messages would be dropped.
        KombuQueue("scan_profile_mutations", durable=True)(conn.default_channel).declare()
        producer = conn.Producer()
        producer.publish(
            b"{not json", routing_key="scan_profile_mutations", exchange="", content_type="application/json"
        )
    org = world.organisation_ids[0]
    pk = "Hostname|internet|after-poison.example.nl"
    world.add_ooi(org, "Hostname", pk, level=2, scan_profile_type="declared")
    assert wait_for(lambda: boefje_tasks(pg_engine, pk), timeout=20)

    dead: list[tuple[bytes, dict[str, Any]]] = []

    def dead_lettered() -> bool:
        dead.extend(take_all(events_url, "scan_profile_mutations.dead"))
        return bool(dead)

    assert wait_for(dead_lettered, timeout=10)
    body, headers = dead[0]
    assert body == b"{not json" and "x-death-reason" in headers


def test_killing_the_listener_mid_storm_loses_nothing_and_queues_nothing_twice(
    kat, world, bridge, events_url, postgres_uri, redis_url, pg_engine, tmp_path
) -> None:
    org = world.organisation_ids[0]
    count = 1500
    refs = [f"Hostname|internet|storm-{n}.example.nl" for n in range(count)]
    bodies = hostname_creates(org, refs)
    assert bridge.publish_many("scan_profile_mutations", bodies) == count
    per_object = len(expected_boefjes(world, org, "Hostname", 2))

    def queued() -> int:
        with pg_engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(TaskRow)).scalar_one())

    with open(tmp_path / "first.log", "wb") as log:
        first = start_listener(kat, events_url, postgres_uri, redis_url, log)
        assert wait_for(lambda: queued() > 0, timeout=30), (tmp_path / "first.log").read_text()
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    partial = queued()
    with open(tmp_path / "second.log", "wb") as log:
        second = start_listener(kat, events_url, postgres_uri, redis_url, log)
        try:
            assert wait_for(lambda: queued() >= count * per_object, timeout=60), (tmp_path / "second.log").read_text()
        finally:
            stop(second)
    with pg_engine.connect() as conn:
        rows = conn.execute(select(TaskRow.hash, TaskRow.input_ooi)).all()
    assert len(rows) == len({h for h, _ in rows}) == count * per_object
    assert {ref for _, ref in rows} == set(refs)
    assert 0 < partial < count * per_object, f"the first listener was not killed mid-storm ({partial} tasks)"


def test_a_listener_stopped_right_after_a_storm_has_recorded_everything_it_queued(
    kat, world, bridge, events_url, postgres_uri, redis_url, pg_engine, tmp_path
) -> None:
    org = world.organisation_ids[0]
    refs = [f"Hostname|internet|recorded-{n}.example.nl" for n in range(1000)]
    bodies = hostname_creates(org, refs)
    expected = len(refs) * len(expected_boefjes(world, org, "Hostname", 2))
    assert bridge.publish_many("scan_profile_mutations", bodies) == len(refs)

    def claimed() -> int:
        with pg_engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(TaskRow)).scalar_one())

    with open(tmp_path / "listener.log", "wb") as log:
        process = start_listener(kat, events_url, postgres_uri, redis_url, log)
        try:
            assert wait_for(lambda: claimed() >= expected, timeout=60, interval=0.01)
        finally:
            stop(process)  # at once: the bookkeeping of the last batches may still be pending
    assert process.returncode == 0, (tmp_path / "listener.log").read_text()
    with pg_engine.connect() as conn:
        unpublished = conn.execute(select(func.count()).select_from(UnpublishedTask)).scalar_one()
        scheduled = conn.execute(
            select(func.count()).select_from(ScheduleRow).where(ScheduleRow.input_ooi.in_(refs))
        ).scalar_one()
    # Every claimed row was marked published before the stop; new objects get their schedules
    # from their first run (at the next tick), not from the listener.
    assert (claimed(), unpublished, scheduled) == (expected, 0, 0)


def test_a_raise_after_the_tick_leaves_a_boefje_bytes_shows_running_or_inside_its_grace_alone(
    world, bridge, listener, producers, pg_engine
) -> None:
    """Shodan (level 1, a week's interval) on three new addresses at level 0: Bytes shows it running
    on one, ended 14 hours ago on another, never on the third. After a tick, all three are raised
    to level 2: only the third gets shodan; nmap (no run in Bytes) runs on all three."""
    org = "org01"
    assert world.is_enabled(org, "shodan") and world.is_enabled(org, "nmap")
    with pg_engine.begin() as conn:  # what an earlier test's tick kept is not this test's
        conn.execute(text("DELETE FROM bytes_runs"))  # DELETE, not TRUNCATE: as pg_engine (tests/conftest.py)
        conn.execute(text("DELETE FROM bytes_histories"))
    refs = {name: f"IPAddressV4|internet|192.0.2.{n}" for n, name in enumerate(("running", "grace", "never"), 201)}
    for ref in refs.values():
        world.add_ooi(org, "IPAddressV4", ref, level=0)
    now = datetime.now(UTC)
    for ref, started, ended in (
        (refs["running"], now - timedelta(minutes=1), None),
        (refs["grace"], now - timedelta(hours=14, seconds=30), now - timedelta(hours=14)),
    ):
        meta = BoefjeMeta.model_validate(
            {
                "id": str(uuid.uuid4()),
                "boefje": {"id": "shodan", "version": None},
                "input_ooi": ref,
                "arguments": {},
                "organization": org,
                "started_at": started.isoformat(),
                "ended_at": ended.isoformat() if ended else None,
            }
        )
        world.add_boefje_meta(meta)
    TickProducer(producers).run(now)  # lists shodan's history in Bytes; the addresses are below clearance

    for ref in refs.values():
        world.set_scan_level(org, ref, 2)

    assert wait_for(lambda: all("nmap" in boefje_tasks(pg_engine, ref) for ref in refs.values()), timeout=20)
    assert "shodan" in boefje_tasks(pg_engine, refs["never"])
    assert "shodan" not in boefje_tasks(pg_engine, refs["running"])
    assert "shodan" not in boefje_tasks(pg_engine, refs["grace"])


def test_events_whose_keys_the_database_cannot_store_are_dead_lettered_and_the_good_ones_around_them_handled(
    world, bridge, listener, events_url, pg_engine
) -> None:
    org = world.organisation_ids[0]
    good = [f"Hostname|internet|good-{n}.example.nl" for n in range(50)]
    too_long = "Hostname|internet|" + "x" * 1100 + ".nl"
    with_nul = "Hostname|internet|nul\x00.example.nl"
    bodies = (
        hostname_creates(org, good[:25])
        + hostname_creates(org, [too_long, with_nul])
        + hostname_creates(org, good[25:])
    )
    assert bridge.publish_many("scan_profile_mutations", bodies) == 52
    per_object = expected_boefjes(world, org, "Hostname", 2)
    assert per_object

    def handled() -> bool:
        with pg_engine.connect() as conn:
            refs = conn.execute(select(TaskRow.input_ooi).where(TaskRow.input_ooi.in_(good)).distinct())
            return set(refs.scalars()) == set(good)

    assert wait_for(handled, timeout=30), "the good events around the bad ones were not all handled"
    dead: list[tuple[bytes, dict[str, Any]]] = []

    def both_dead_lettered() -> bool:
        dead.extend(take_all(events_url, "scan_profile_mutations.dead"))
        return len(dead) >= 2

    assert wait_for(both_dead_lettered, timeout=10)
    reasons = sorted(str(headers["x-death-reason"]) for _, headers in dead)
    assert any("at most 1024 characters" in reason for reason in reasons), reasons
    assert any("NUL character" in reason for reason in reasons), reasons
