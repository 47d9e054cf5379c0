"""Every decision ``explain`` can give, one row each, with its reason and its ``until`` (real
PostgreSQL, the simulated KAT over HTTP; a descheduled pair is descheduled through the raw-file
handler, as the listener does it; a rate-limited task is put back as a worker does it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from kat_scheduler.clients import KATClients
from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.events.handlers import RawFileHandler
from kat_scheduler.explain import DECISIONS, Decision, Policy, Sources, explain_object
from kat_scheduler.rules.timing import last_cron, next_cron
from kat_scheduler.settings import Settings, load_settings
from kat_scheduler.sim import SimulatedKAT
from kat_scheduler.sim.world import World
from kat_scheduler.storage import ScheduleStore, TaskStore
from tests.explain_place import WINDOW, Place
from tests.factories import NewScheduleFactory

#: Seconds after its start a run Bytes shows without an end counts as dead, in these tests.
STALL_AGE = 3600
#: The default grace period, in these tests (a schedule's jitter is off, so deadlines are exact).
GRACE = timedelta(days=1)
FIERCE_CRON = "30 2 * * 1"


@pytest.fixture
def settings(kat: SimulatedKAT, postgres_uri: str, redis_url: str) -> Settings:
    return load_settings(
        octopoes_api=kat.octopoes_url,
        katalogus_api=kat.katalogus_url,
        bytes_api=kat.bytes_url,
        db_uri=postgres_uri,
        broker_url=redis_url,
        bytes_stall_age=STALL_AGE,
        grace_period=int(GRACE.total_seconds()),
        schedule_jitter=0,
    )


@pytest.fixture
def raw_files(clients: KATClients, pg_engine: Engine, settings: Settings):
    publisher = make_publisher(settings)
    plugins = PluginCache(clients.katalogus, ttl=60)
    yield RawFileHandler(plugins, TaskStore(pg_engine), ScheduleStore(pg_engine), publisher, settings)
    publisher.close()


@dataclass(frozen=True)
class Row:
    boefje: str
    object_type: str
    level: int
    decision: Decision
    #: Words the detail says (a ``{setup}`` in them is what the set-up returned).
    reason: tuple[str, ...]
    #: When the decision holds until, from the place (``None``: it says no time).
    until: Callable[[Place], datetime | None]
    setup: Callable[[Place], object] = lambda place: None
    band: int | None = None


def _no_time(place: Place) -> None:
    return None


def _cron_run(place: Place) -> None:
    """A run of the cron boefje just after its last cron time: not due before the next one."""
    place.run(last_cron(FIERCE_CRON, place.now) + timedelta(minutes=5))


TABLE: dict[str, Row] = {
    "queue": Row("dns-records", "Hostname", 1, Decision.QUEUE, ("band 2", "never run"), _no_time, band=2),
    "not_enabled": Row(
        "dns-sec",
        "Hostname",
        1,
        Decision.NOT_ENABLED,
        ("not enabled for organisation",),
        _no_time,
        setup=lambda p: p.world.set_plugin_enabled(p.org, "dns-sec", False),
    ),
    "clearance": Row("fierce", "Hostname", 1, Decision.CLEARANCE, ("needs L3, object has L1",), _no_time),
    "grace": Row(
        "dns-records",
        "Hostname",
        1,
        Decision.GRACE,
        ("within the default grace period 1 day", "last run: completed"),
        lambda p: p.now - timedelta(hours=1) + GRACE,
        setup=lambda p: p.run(p.now - timedelta(hours=1)),
    ),
    "cron": Row(
        "fierce",
        "Hostname",
        3,
        Decision.CRON,
        (f"cron {FIERCE_CRON!r}: next at",),
        lambda p: next_cron(FIERCE_CRON, last_cron(FIERCE_CRON, p.now) + timedelta(minutes=5)),
        setup=_cron_run,
    ),
    "live": Row(
        "dns-records", "Hostname", 1, Decision.LIVE, ("task {setup} queued since",), _no_time, Place.queued, band=5
    ),
    "rate_limited": Row(
        "dns-records",
        "Hostname",
        1,
        Decision.RATE_LIMITED,
        ("task {setup} waits for its rate limit (5/second, group dns.example) until",),
        lambda p: p.now + WINDOW,
        setup=Place.rate_limited,
        band=5,
    ),
    "deduplicated": Row(
        "dns-records",
        "Hostname",
        1,
        Decision.DEDUPLICATED,
        ("deduplicated into task {setup}", "running since"),
        _no_time,
        setup=Place.served,
        band=4,
    ),
    "running": Row(
        "dns-records",
        "Hostname",
        1,
        Decision.RUNNING,
        ("running in Bytes since", "stall age 1 h"),
        lambda p: p.now - timedelta(minutes=2) + timedelta(seconds=STALL_AGE),
        setup=lambda p: p.bytes_run(p.now - timedelta(minutes=2), None),
    ),
    "stalled": Row(
        "dns-records",
        "Hostname",
        1,
        Decision.STALLED,
        ("taken for dead",),
        _no_time,
        setup=lambda p: p.bytes_run(p.now - timedelta(hours=2), None),
        band=2,
    ),
    "descheduled": Row(
        "dns-records",
        "Hostname",
        1,
        Decision.DESCHEDULED,
        (
            "descheduled by boefje dns-records: raw file {setup} is tagged openkat/deschedule",
            "with enabled: true",
            "last run: completed",
        ),
        _no_time,
        setup=Place.deschedule,
    ),
    "scheduled, not yet due": Row(
        "dns-records",
        "Hostname",
        1,
        Decision.GRACE,
        ("is due at",),
        lambda p: p.now + timedelta(minutes=20),
        setup=lambda p: p.schedules.add_many(
            [
                NewScheduleFactory(
                    organisation=p.org, plugin_id=p.boefje, input_ooi=p.pk, deadline_at=p.now + timedelta(minutes=20)
                )
            ],
            now=p.now,
        ),
    ),
}

PRIMARY_KEYS = {
    "Hostname": "Hostname|internet|decision-{n}.example.nl",
    "IPAddressV4": "IPAddressV4|internet|10.40.30.{n}",
}


def test_the_table_has_a_row_for_every_decision_explain_gives() -> None:
    assert {row.decision.value for row in TABLE.values()} == set(DECISIONS)


@pytest.mark.parametrize("name", TABLE)
def test_each_decision_with_its_reason_and_until(
    name: str, world: World, pg_engine: Engine, clients: KATClients, settings: Settings, raw_files: RawFileHandler
) -> None:
    row = TABLE[name]
    org = world.organisation_ids[0]
    pk = PRIMARY_KEYS[row.object_type].format(n=list(TABLE).index(name) + 1)
    world.add_ooi(org, row.object_type, pk, level=row.level)
    world.set_plugin_enabled(org, row.boefje, True)
    # Whole seconds: the sim serves times as given, the database keeps microseconds.
    now = datetime.now(UTC).replace(microsecond=0)
    place = Place(world, org, pk, row.boefje, TaskStore(pg_engine), ScheduleStore(pg_engine), now, raw_files)
    made = row.setup(place)

    answer = explain_object(Sources.on(pg_engine, clients), Policy.of(settings), org, pk, now=now)

    found = {e.boefje_id: e for e in answer.explanations}[row.boefje]
    assert found.decision == row.decision, found.detail
    for words in row.reason:
        assert words.format(setup=made) in found.detail
    assert found.until == row.until(place)
    assert found.band == row.band
    assert found.as_json()["decision"] == row.decision.value
