"""Every decision ``explain`` can give, one row each, with its reason and its ``until`` (real
PostgreSQL, the simulated KAT over HTTP; a descheduled pair is descheduled through the raw-file
handler, as the listener does it; a rate-limited task is put back as a worker does it)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from kat_scheduler.clients import KATClients
from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.events.deschedule import DESCHEDULE_MIME_TYPE
from kat_scheduler.events.handlers import RawFileHandler
from kat_scheduler.explain import DECISIONS, Decision, Policy, Sources, explain_object
from kat_scheduler.limiting import WaitingStore
from kat_scheduler.models import RawFileReceived, TaskStatus
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.timing import last_cron, next_cron
from kat_scheduler.settings import Settings, load_settings
from kat_scheduler.sim import SimulatedKAT
from kat_scheduler.sim.world import World
from kat_scheduler.storage import ScheduleStore, TaskStore
from kat_scheduler.storage.tasks import NewTask
from tests.factories import BoefjeMetaFactory, NewScheduleFactory, NewTaskFactory

#: Seconds after its start a run Bytes shows without an end counts as dead, in these tests.
STALL_AGE = 3600
#: The default grace period, in these tests (a schedule's jitter is off, so deadlines are exact).
GRACE = timedelta(days=1)
FIERCE_CRON = "30 2 * * 1"

#: When the rate-limited row's window opens, after ``now``.
WINDOW = timedelta(seconds=40)


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


@dataclass
class Place:
    """A fresh object of the first organisation, a boefje on it, and what sets the scene."""

    world: World
    org: str
    pk: str
    boefje: str
    tasks: TaskStore
    schedules: ScheduleStore
    raw_files: RawFileHandler
    now: datetime

    @property
    def hash(self) -> str:
        return boefje_task_hash(self.boefje, self.org, self.pk)

    def run(self, ended: datetime, status: TaskStatus = TaskStatus.COMPLETED) -> uuid.UUID:
        """Our own run of the pair, ended at ``ended`` as ``status``."""
        task: NewTask = NewTaskFactory(organisation=self.org, plugin_id=self.boefje, input_ooi=self.pk)
        assert self.tasks.claim([task], now=ended - timedelta(minutes=5))
        self.tasks.mark_published([task.id])
        assert self.tasks.start(task.id, "worker@test", now=ended - timedelta(minutes=1))
        assert self.tasks.finish(task.id, status, now=ended)
        return task.id

    def queued(self) -> uuid.UUID:
        task: NewTask = NewTaskFactory(organisation=self.org, plugin_id=self.boefje, input_ooi=self.pk, band=5)
        assert self.tasks.claim([task], now=self.now - timedelta(minutes=4))
        return task.id

    def rate_limited(self) -> uuid.UUID:
        """Queued, then put back by a worker that found its group's limit reached (``limiting``)."""
        task_id = self.queued()
        assert WaitingStore(self.tasks.engine).put_back(
            task_id, limit="5/second", group="dns.example", until=self.now + WINDOW, now=self.now
        )
        return task_id

    def served(self) -> uuid.UUID:
        """Live, served by another organisation's run of the boefje on the object (as a worker that
        deduplicates claims it); that run's task id."""
        serving = uuid.uuid4()
        task: NewTask = NewTaskFactory(organisation=self.org, plugin_id=self.boefje, input_ooi=self.pk, band=4)
        assert self.tasks.claim_served(task, serving, "worker@test", self.now - timedelta(seconds=30))
        return serving

    def bytes_run(self, started: datetime, ended: datetime | None) -> None:
        meta = BoefjeMetaFactory(
            organization=self.org,
            boefje={"id": self.boefje, "version": None},
            input_ooi=self.pk,
            started_at=started,
            ended_at=ended,
        )
        self.world.add_boefje_meta(meta)

    def deschedule(self) -> uuid.UUID:
        """The boefje ran an hour ago and its raw file said "deschedule"; the raw file's id."""
        self.run(self.now - timedelta(hours=1))
        raw_id = uuid.uuid4()
        event = RawFileReceived.model_validate(
            {
                "created_at": self.now.isoformat(),
                "organization": self.org,
                "raw_data": {
                    "id": str(raw_id),
                    "boefje_meta": {
                        "id": str(uuid.uuid4()),
                        "boefje": {"id": self.boefje},
                        "input_ooi": self.pk,
                        "organization": self.org,
                    },
                    "mime_types": [{"value": f"boefje/{self.boefje}"}, {"value": DESCHEDULE_MIME_TYPE}],
                },
            }
        )
        assert self.raw_files("raw_file_received", [event]) == []
        return raw_id


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
    place = Place(world, org, pk, row.boefje, TaskStore(pg_engine), ScheduleStore(pg_engine), raw_files, now)
    made = row.setup(place)

    answer = explain_object(Sources.on(pg_engine, clients), Policy.of(settings), org, pk, now=now)

    found = {e.boefje_id: e for e in answer.explanations}[row.boefje]
    assert found.decision == row.decision, found.detail
    for words in row.reason:
        assert words.format(setup=made) in found.detail
    assert found.until == row.until(place)
    assert found.band == row.band
    assert found.as_json()["decision"] == row.decision.value
