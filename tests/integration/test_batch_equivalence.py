"""Batches mean the same as one-by-one (issue 19, item 3).

The listener hands the mutation handler events in batches whose boundaries depend on timing. What
it queues, cancels and schedules must not: handling a sequence of scan-profile mutations one
event at a time, in batches of the default size, or in batches of any other size (each batch
planned before the ones before it are written, as the listener's stages allow) leaves the same
state. Per object, the last word wins; every event in between still counts (a level drop
cancels what it no longer clears, even when a raise follows in the same batch).

The state compared, per (organisation, boefje, object):

* the live tasks (queued, dispatched or running);
* which tasks that existed before the events were cancelled;
* the schedules: enabled or not, and their deadline.

A task that one batch would both queue and cancel is never written by the batch, where
one-by-one writes it and cancels it; neither ever runs. So tasks created during the sequence
and then cancelled are compared as a subset: the batched runs cancel none that one-by-one did not.

Hypothesis generates the plugin list (scan levels, ``run_on``, interval, cron, enabled), what the
database knows before the events (queued, running or finished tasks, schedules in force, due or
disabled, Bytes' newest runs) and the events (creates, updates and deletes over a handful of
objects in two organisations, at levels 0-4). Real storage (PostgreSQL and SQLite) and a stub
Katalogus; the publisher only records (no broker is needed for what is compared). Each run
uses organisations of its own, so no example sees another's rows.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from kat_scheduler.clients import OrganisationNotFound
from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.dispatch.publishing import OutgoingMessage
from kat_scheduler.events.bookkeeping import Bookkeeper
from kat_scheduler.events.handlers import MutationHandler
from kat_scheduler.models import Boefje, ScanProfileMutation, SchedulerId, TaskStatus
from kat_scheduler.models.tasks import LIVE_STATUSES
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.settings import Settings, load_settings
from kat_scheduler.storage import ScheduleRow, ScheduleStore, TaskRow, TaskStore
from kat_scheduler.storage.bytes_runs import BytesRunStore, SeenRun
from kat_scheduler.storage.schedules import ScheduleRecord
from kat_scheduler.storage.tasks import FinishedTask
from tests.factories import BoefjeFactory, NewTaskFactory, OOIFactory

NOW = datetime(2026, 6, 1, 12, 5, tzinfo=UTC)
#: When the tasks known before the events were claimed (tells them from the ones the events queue).
BEFORE = NOW - timedelta(hours=6)
QUEUE = "scan_profile_mutations"

#: (organisation index, primary key): a handful of objects, one of them in both organisations.
OBJECTS = [
    (0, "Hostname|internet|a.example.nl"),
    (0, "Hostname|internet|b.example.nl"),
    (0, "IPAddressV4|internet|192.0.2.1"),
    (1, "Hostname|internet|a.example.nl"),
]
TYPES = [("Hostname",), ("IPAddressV4",), ("Hostname", "IPAddressV4")]
KINDS: dict[str, dict[str, Any]] = {
    "grace": {},
    "interval": {"interval": 90},
    "cron": {"cron": "0 4 * * *"},
    "run_on create": {"run_on": ["create"]},
    "run_on update": {"run_on": ["update"]},
    "run_on both": {"run_on": ["create", "update"]},
}
TASK_SEEDS = [None, "queued", "running", "ran an hour ago", "ran days ago"]
SCHEDULE_SEEDS = [None, "in force", "due", "disabled"]
BYTES_SEEDS = [None, "ended two hours ago", "running in Bytes", "stalled in Bytes"]


@dataclass(frozen=True)
class Scenario:
    boefjes: list[dict[str, Any]]
    #: (object index, boefje index) → (task seed, schedule seed, Bytes seed)
    known: dict[tuple[int, int], tuple[str | None, str | None, str | None]]
    #: (object index, operation, level)
    events: list[tuple[int, str, int]]
    batch_size: int


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    boefjes = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "scan_level": st.integers(0, 4),
                    "kind": st.sampled_from(sorted(KINDS)),
                    "consumes": st.sampled_from(TYPES),
                    "enabled": st.sampled_from([True, True, True, False]),
                }
            ),
            min_size=1,
            max_size=4,
        )
    )
    pairs = st.tuples(st.integers(0, len(OBJECTS) - 1), st.integers(0, len(boefjes) - 1))
    seeds = st.tuples(st.sampled_from(TASK_SEEDS), st.sampled_from(SCHEDULE_SEEDS), st.sampled_from(BYTES_SEEDS))
    known = draw(st.dictionaries(pairs, seeds, max_size=6))
    events = draw(
        st.lists(
            st.tuples(
                st.integers(0, len(OBJECTS) - 1),
                st.sampled_from(["create", "update", "update", "delete"]),
                st.integers(0, 4),
            ),
            min_size=1,
            max_size=16,
        )
    )
    return Scenario(boefjes, known, events, draw(st.integers(1, 8)))


class StubKatalogus:
    """The same plugin list for every organisation of the run; unknown ones are not found."""

    def __init__(self, orgs: Sequence[str], boefjes: list[Boefje]) -> None:
        self.orgs = set(orgs)
        self.list = boefjes

    def boefjes(self, org: str) -> list[Boefje]:
        if org not in self.orgs:
            raise OrganisationNotFound("katalogus", f"/v1/organisations/{org}/plugins", "not found", status_code=404)
        return self.list

    def normalizers(self, org: str) -> list[Any]:
        return []


class RecordingPublisher:
    """A broker that takes everything: the messages are kept, in order."""

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []

    def prepare(self, messages: Sequence[OutgoingMessage]) -> list[OutgoingMessage]:
        return list(messages)

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        self.sent.extend(messages)

    def queue_depth(self, queue: str) -> int:
        return 0

    def close(self) -> None:
        pass


def catalogue(scenario: Scenario) -> list[Boefje]:
    return [
        BoefjeFactory.build(
            id=f"b{n}",
            scan_level=spec["scan_level"],
            consumes=list(spec["consumes"]),
            enabled=spec["enabled"],
            **KINDS[spec["kind"]],
        )
        for n, spec in enumerate(scenario.boefjes)
    ]


def mutation(org: str, pk: str, operation: str, level: int) -> ScanProfileMutation:
    value = (
        None
        if operation == "delete"
        else OOIFactory.build(object_type=pk.split("|", 1)[0], primary_key=pk, level=level)
    )
    return ScanProfileMutation(operation=operation, primary_key=pk, client_id=org, value=value)


def seed(engine: Engine, orgs: Sequence[str], boefjes: list[Boefje], scenario: Scenario) -> None:
    """What the database knows before the events, for the run's organisations."""
    tasks, schedules, bytes_runs = TaskStore(engine), ScheduleStore(engine), BytesRunStore(engine)
    claims, running, finished, records, runs = [], [], [], [], []
    for (obj, b), (task, schedule, bytes_) in sorted(scenario.known.items()):
        org, pk = orgs[OBJECTS[obj][0]], OBJECTS[obj][1]
        boefje = boefjes[b]
        hash_ = boefje_task_hash(boefje.id, org, pk)
        if task in ("queued", "running"):
            new = NewTaskFactory.build(organisation=org, plugin_id=boefje.id, input_ooi=pk, hash=hash_)
            claims.append(new)
            if task == "running":
                running.append(new.id)
        elif task is not None:
            ended = NOW - (timedelta(hours=1) if task == "ran an hour ago" else timedelta(days=3))
            finished.append(
                FinishedTask(
                    id=uuid.uuid4(),
                    scheduler_id=SchedulerId.BOEFJE,
                    type="boefje",
                    organisation=org,
                    plugin_id=boefje.id,
                    input_ooi=pk,
                    hash=hash_,
                    status=TaskStatus.COMPLETED,
                    data={},
                    created_at=ended - timedelta(minutes=5),
                    started_at=ended - timedelta(minutes=1),
                    ended_at=ended,
                )
            )
        if schedule is not None:
            records.append(
                ScheduleRecord(
                    id=uuid.uuid4(),
                    scheduler_id=SchedulerId.BOEFJE,
                    organisation=org,
                    plugin_id=boefje.id,
                    input_ooi=pk,
                    hash=hash_,
                    data={},
                    enabled=schedule != "disabled",
                    deadline_at=NOW + timedelta(hours=1) if schedule == "in force" else NOW - timedelta(hours=1),
                    created_at=BEFORE,
                    modified_at=BEFORE,
                    interval=boefje.interval,
                    schedule=boefje.cron,
                )
            )
        if bytes_ is not None:
            started = {
                "ended two hours ago": NOW - timedelta(hours=2, seconds=30),
                "running in Bytes": NOW - timedelta(minutes=2),
                "stalled in Bytes": NOW - timedelta(hours=5),
            }[bytes_]
            ended_at = NOW - timedelta(hours=2) if bytes_ == "ended two hours ago" else None
            runs.append(SeenRun(hash_, org, boefje.id, pk, started, ended_at))
    # Only what there is to write: most examples know little, and each write is a transaction.
    if claims:
        tasks.claim(claims, now=BEFORE)
        tasks.mark_published([t.id for t in claims])
    for task_id in running:
        assert tasks.start(task_id, worker="w", now=BEFORE) is not None
    if finished:
        tasks.add_finished(finished)
    if records:
        schedules.add_records(records)
    if runs:
        bytes_runs.record(runs, seen_at=NOW - timedelta(minutes=1))


@dataclass(frozen=True)
class Outcome:
    #: (organisation index, boefje, object) of every live task (one each: the hash is unique while live).
    live: frozenset[tuple[int, str, str]]
    #: Of the tasks known before the events, those cancelled.
    cancelled_before: frozenset[tuple[int, str, str]]
    #: Tasks the events queued that were cancelled later.
    cancelled_new: frozenset[tuple[int, str, str]]
    #: Every schedule: enabled, deadline.
    schedules: dict[tuple[int, str, str], tuple[bool, datetime | None]]


def outcome(engine: Engine, orgs: Sequence[str]) -> Outcome:
    index = {org: n for n, org in enumerate(orgs)}
    live: set[tuple[int, str, str]] = set()
    before: set[tuple[int, str, str]] = set()
    new: set[tuple[int, str, str]] = set()
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                TaskRow.organisation, TaskRow.plugin_id, TaskRow.input_ooi, TaskRow.status, TaskRow.created_at
            ).where(TaskRow.organisation.in_(orgs))
        ).all()
        schedule_rows = conn.execute(
            select(
                ScheduleRow.organisation,
                ScheduleRow.plugin_id,
                ScheduleRow.input_ooi,
                ScheduleRow.enabled,
                ScheduleRow.deadline_at,
            ).where(ScheduleRow.organisation.in_(orgs))
        ).all()
    for org, plugin, pk, status, created_at in rows:
        key = (index[org], plugin, str(pk))
        if status in LIVE_STATUSES:
            assert key not in live, f"two live tasks of {key}"
            live.add(key)
        elif status == TaskStatus.CANCELLED:
            known = created_at.replace(tzinfo=created_at.tzinfo or UTC) == BEFORE
            (before if known else new).add(key)
    schedules = {
        (index[org], plugin, str(pk)): (bool(enabled), None if at is None else at.replace(tzinfo=at.tzinfo or UTC))
        for org, plugin, pk, enabled, at in schedule_rows
    }
    return Outcome(frozenset(live), frozenset(before), frozenset(new), schedules)


RUNS = itertools.count()


def run(
    engine: Engine, settings_: Settings, scenario: Scenario, batch_size: int | Sequence[int], *, staged: bool
) -> Outcome:
    """Seed the database for organisations of this run's own, handle the events in batches of
    ``batch_size`` (or of these sizes, in turn) and read back what they left.

    ``staged``: every batch is planned before the first is written (as far ahead as the
    listener's stages could ever get), with the bookkeeping on its own thread as in the listener.
    """
    n = next(RUNS)
    orgs = [f"eq{n}-0", f"eq{n}-1"]
    boefjes = catalogue(scenario)
    seed(engine, orgs, boefjes, scenario)
    bookkeeper = Bookkeeper(threaded=staged)
    handler = MutationHandler(
        PluginCache(StubKatalogus(orgs, boefjes), ttl=3600),  # type: ignore[arg-type]
        TaskStore(engine),
        ScheduleStore(engine),
        RecordingPublisher(),
        settings_,
        clock=lambda: NOW,
        bookkeeper=bookkeeper,
    )
    events = [mutation(orgs[OBJECTS[obj][0]], OBJECTS[obj][1], op, level) for obj, op, level in scenario.events]
    sizes = itertools.cycle([batch_size] if isinstance(batch_size, int) else batch_size)
    batches: list[list[ScanProfileMutation]] = []
    while sum(map(len, batches)) < len(events):
        start = sum(map(len, batches))
        batches.append(events[start : start + next(sizes)])
    try:
        if staged:
            writes = [handler.plan(QUEUE, batch) for batch in batches]
            for write in writes:
                assert write()() == []
        else:
            for batch in batches:
                assert handler(QUEUE, batch) == []
    finally:
        bookkeeper.close()
    assert bookkeeper.failures == 0
    return outcome(engine, orgs)


@pytest.fixture
def handler_settings(postgres_uri: str) -> Settings:
    # Claims of a few tasks (several per batch); no jitter: each run hashes organisations of its own.
    return load_settings(db_uri=postgres_uri, batch_size=3, schedule_jitter=0)


#: A create, then a delete in the same batch, of an object whose pair has a due schedule: the
#: create's new deadline stays on the schedule the delete disables.
CREATE_THEN_DELETE = Scenario(
    boefjes=[{"scan_level": 0, "kind": "cron", "consumes": ("IPAddressV4",), "enabled": True}],
    known={(2, 0): (None, "due", None)},
    events=[(2, "create", 0), (2, "delete", 0)],
    batch_size=1,
)
#: A queued task, then a level its boefje does not clear and one it does again: cancelled, then
#: queued again (Bytes' run long ended).
DROP_AND_RAISE = Scenario(
    boefjes=[{"scan_level": 1, "kind": "grace", "consumes": ("Hostname",), "enabled": True}],
    known={(1, 0): ("queued", None, "ended two hours ago")},
    events=[(1, "update", 0), (1, "update", 1)],
    batch_size=2,
)


@given(scenario=scenarios())
@example(scenario=CREATE_THEN_DELETE)
@example(scenario=DROP_AND_RAISE)
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_batches_leave_what_one_event_at_a_time_leaves(
    engine: Engine, handler_settings: Settings, scenario: Scenario
) -> None:
    one_by_one = run(engine, handler_settings, scenario, 1, staged=False)
    default = run(engine, handler_settings, scenario, handler_settings.events_batch_size, staged=False)
    staged = run(engine, handler_settings, scenario, scenario.batch_size, staged=True)

    for batched in (default, staged):
        assert batched.live == one_by_one.live
        assert batched.cancelled_before == one_by_one.cancelled_before
        assert batched.cancelled_new <= one_by_one.cancelled_new
        assert batched.schedules == one_by_one.schedules


def test_a_drop_and_a_raise_in_one_batch_cancel_the_run_on_create_task_an_earlier_batch_queued(
    pg_engine: Engine, handler_settings: Settings
) -> None:
    """The issue's case: a create (batch 1), then a level decrease and an increase of the same
    object (batch 2). The decrease cancels the ``run_on: create`` task; the increase, an update,
    does not queue it again. A periodic boefje is cancelled and queued again."""
    scenario = Scenario(
        boefjes=[
            {"scan_level": 2, "kind": "run_on create", "consumes": ("Hostname",), "enabled": True},
            {"scan_level": 2, "kind": "grace", "consumes": ("Hostname",), "enabled": True},
        ],
        known={},
        events=[(0, "create", 4), (0, "update", 1), (0, "update", 4)],
        batch_size=2,
    )
    on_create, periodic = (0, "b0", OBJECTS[0][1]), (0, "b1", OBJECTS[0][1])

    one_by_one = run(pg_engine, handler_settings, scenario, 1, staged=False)
    create_then_both = run(pg_engine, handler_settings, scenario, [1, 2], staged=False)
    all_in_one = run(pg_engine, handler_settings, scenario, 3, staged=False)

    for outcome_ in (one_by_one, create_then_both):
        assert outcome_.live == {periodic}
        assert outcome_.cancelled_new == {on_create, periodic}
    assert all_in_one.live == {periodic}
    assert all_in_one.cancelled_new == set()  # queued and withdrawn in one batch: never written
