"""Cross-organisation deduplication: one boefje run on an object several organisations hold, stored
in Bytes for each organisation that wants it now, and for none that does not (real PostgreSQL and
Redis, the simulated KAT over HTTP; the last tests with real worker processes)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from kat_scheduler.clients import KATClients
from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.explain import Decision, Policy, Sources, explain_object
from kat_scheduler.explain.decide import Explanation
from kat_scheduler.models import SchedulerId, TaskStatus
from kat_scheduler.models.plugins import Boefje
from kat_scheduler.queues import RAW_FILE_RECEIVED, Queue
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.runtime.resources import Runtime
from kat_scheduler.settings import load_settings
from kat_scheduler.sim import SimulatedKAT, WorldConfig, generate_world
from kat_scheduler.sim.world import World
from kat_scheduler.storage import TaskRow, TaskStore
from kat_scheduler.storage.bytes_runs import BytesRunStore
from kat_scheduler.storage.schedules import NewSchedule, ScheduleStore
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.storage.tasks import FinishedTask
from kat_scheduler.workers.dedup import SERVED_BY, Deduplicator, deduplicator_of
from kat_scheduler.workers.lifecycle import BoefjeJob, Outcome
from kat_scheduler.workers.simulated import SimulatedRunner
from tests.closed_loop import closed_loop, worker_env
from tests.conftest import vhost_name
from tests.events import drop_our_queues
from tests.integration.conftest import WORLD_NOW
from tests.tasks import publish_boefje, queued_boefje_task
from tests.vhosts import own_vhost
from tests.workers import celery_worker, wait_for

BOEFJE = "dns-records"  # needs L1
REF = "Hostname|internet|gedeeld-voorbeeld.nl"

#: The organisations holding REF, and what each is to the run of org01's task.
RUNS = "org01"  # its task runs: level 2
TAKEN_OVER = "org02"  # level 3, its own task queued: taken over
SERVED = "org03"  # level 1, no task: a row is made for it
NO_CLEARANCE = "org04"  # level 0
DISABLED = "org05"  # level 2, the boefje not enabled
IN_GRACE = "org06"  # level 2, ran an hour ago
NO_DEDUP = "org07"  # level 2, its plugin says deduplicate: false
RECEIVED = "org08"  # level 2, its own task received by a worker (dispatched)
SCHEDULED_LATER = "org09"  # level 2, no task, its schedule due in an hour
LEVELS = {
    RUNS: 2,
    TAKEN_OVER: 3,
    SERVED: 1,
    NO_CLEARANCE: 0,
    DISABLED: 2,
    IN_GRACE: 2,
    NO_DEDUP: 2,
    RECEIVED: 2,
    SCHEDULED_LATER: 2,
}
NOT_SERVED = (NO_CLEARANCE, DISABLED, IN_GRACE, NO_DEDUP, RECEIVED, SCHEDULED_LATER)


@pytest.fixture
def world() -> World:
    world = generate_world(WorldConfig(seed=11, organisations=10, oois_per_org=30, boefjes=12, now=WORLD_NOW))
    for org, level in LEVELS.items():
        world.add_ooi(org, "Hostname", REF, level=level)
    for org in world.organisation_ids:
        world.set_plugin_enabled(org, BOEFJE, org != DISABLED)
        world.set_boefje_settings(org, BOEFJE, {"RESOLVER": "192.0.2.53"})
    world.set_plugin_deduplicate(NO_DEDUP, BOEFJE, False)
    return world


@pytest.fixture
def raw_events(world: World) -> list[dict[str, Any]]:
    """The ``raw_file_received`` events the simulated Bytes sends."""
    seen: list[dict[str, Any]] = []
    world.add_listener(lambda queue, body: seen.append(body) if queue == RAW_FILE_RECEIVED else None)
    return seen


@dataclass
class Scene:
    store: TaskStore
    task: uuid.UUID  # org01's task, the one that runs
    taken_over: uuid.UUID  # org02's queued task
    received: uuid.UUID  # org08's dispatched task


@pytest.fixture
def scene(world: World, clients: KATClients, pg_engine: Engine) -> Scene:
    store = TaskStore(pg_engine)
    task = queued_boefje_task(store, RUNS, BOEFJE, REF, clients)
    taken_over = queued_boefje_task(store, TAKEN_OVER, BOEFJE, REF, clients)
    received = queued_boefje_task(store, RECEIVED, BOEFJE, REF, clients)
    assert store.mark_dispatched(received, "elsewhere")
    ended = utcnow() - timedelta(hours=1)
    store.add_finished(
        [
            FinishedTask(
                id=uuid.uuid4(),
                scheduler_id=SchedulerId.BOEFJE,
                type="boefje",
                organisation=IN_GRACE,
                plugin_id=BOEFJE,
                input_ooi=REF,
                hash=boefje_task_hash(BOEFJE, IN_GRACE, REF),
                status=TaskStatus.COMPLETED,
                data={},
                created_at=ended - timedelta(minutes=1),
                ended_at=ended,
            )
        ]
    )
    # Both have a schedule due later: org02's as a producer leaves it once it queued its task (the
    # queued task is still taken over), org09's as after a run of its own (not served before it).
    ScheduleStore(pg_engine).upsert(
        [
            NewSchedule(
                scheduler_id=SchedulerId.BOEFJE,
                organisation=org,
                plugin_id=BOEFJE,
                input_ooi=REF,
                hash=boefje_task_hash(BOEFJE, org, REF),
                data={"boefje": {"id": BOEFJE}, "input_ooi": REF, "organization": org},
                deadline_at=utcnow() + timedelta(hours=1),
            )
            for org in (TAKEN_OVER, SCHEDULED_LATER)
        ]
    )
    return Scene(store, task, taken_over, received)


def deduplicator(clients: KATClients, engine: Engine) -> Deduplicator:
    return Deduplicator(
        TaskStore(engine),
        ScheduleStore(engine),
        BytesRunStore(engine),
        clients,
        PluginCache(clients.katalogus, 30.0),
        default_grace=timedelta(days=1),
        stall_age=timedelta(minutes=10),
        organisations_ttl=30.0,
    )


def rows_of(engine: Engine, org: str) -> list[TaskRow]:
    with engine.connect() as conn:
        found = conn.execute(
            select(TaskRow).where(TaskRow.organisation == org, TaskRow.input_ooi == REF, TaskRow.plugin_id == BOEFJE)
        )
        return list(found)  # type: ignore[arg-type]


def status_of(store: TaskStore, task_id: uuid.UUID) -> TaskStatus | None:
    row = store.get(task_id)
    return None if row is None else row.status


def served_row(engine: Engine, org: str) -> Any:
    [row] = [r for r in rows_of(engine, org) if SERVED_BY in r.data]
    return row


def assert_served(world: World, engine: Engine, scene: Scene, raw_events: list[dict[str, Any]]) -> None:
    """org01's one run is stored for org02 (its queued task taken over) and org03 (a row of its
    own), each with its own BoefjeMeta, raw file and event; for no other organisation."""
    taken = scene.store.get(scene.taken_over)
    assert taken is not None and taken.status == TaskStatus.COMPLETED
    assert taken.data[SERVED_BY] == str(scene.task)
    made = served_row(engine, SERVED)
    assert made.status == TaskStatus.COMPLETED and made.data[SERVED_BY] == str(scene.task)
    assert made.hash == boefje_task_hash(BOEFJE, SERVED, REF) and made.data["organization"] == SERVED
    for org, meta_id in ((RUNS, scene.task), (TAKEN_OVER, scene.taken_over), (SERVED, made.id)):
        run = world.boefje_meta(meta_id)
        assert run is not None and run.organization == org and run.input_ooi == REF and run.ended_at is not None
        assert run.arguments is not None and run.arguments["input"]["scan_profile"]["level"] == LEVELS[org]
        assert [r.organization for r in world.raw_files_of(meta_id)] == [org]
        assert "boefje/dns-records" in world.raw_files_of(meta_id)[0].mime_types
    got_events = sorted(e["organization"] for e in raw_events)
    assert got_events == sorted([RUNS, TAKEN_OVER, SERVED])
    for org in NOT_SERVED:
        assert world.runs(org, BOEFJE, REF) == []
        assert not [r for r in rows_of(engine, org) if SERVED_BY in r.data]
    received = scene.store.get(scene.received)
    assert received is not None and received.status == TaskStatus.DISPATCHED  # left to run itself


def test_one_run_is_stored_for_each_organisation_that_wants_it_and_none_other(
    world: World, clients: KATClients, pg_engine: Engine, scene: Scene, raw_events: list[dict[str, Any]]
) -> None:
    job = BoefjeJob(scene.store, clients, SimulatedRunner())
    job.dedup = deduplicator(clients, pg_engine)
    result = job.run(scene.task, "w1", RUNS, BOEFJE, REF)
    assert result.outcome == Outcome.COMPLETED
    assert_served(world, pg_engine, scene, raw_events)


def test_rows_served_by_a_run_whose_worker_node_died_are_queued_again_and_run_themselves(
    world: World, clients: KATClients, pg_engine: Engine, scene: Scene, raw_events: list[dict[str, Any]]
) -> None:
    node = uuid.uuid4()
    assert scene.store.start(scene.task, "w1", node_id=node) is not None
    row = scene.store.get(scene.task)
    boefje = clients.katalogus.plugin(RUNS, BOEFJE)
    assert row is not None and isinstance(boefje, Boefje)
    serving = deduplicator(clients, pg_engine).claim(row, boefje, REF, {"RESOLVER": "192.0.2.53"})
    assert serving is not None  # ... and the worker node dies before the run ends: the reaper's repair
    recovered = scene.store.recover_lost_nodes([node], now=utcnow(), max_retries=3)
    assert {r.id for r in recovered.requeued} >= {scene.taken_over, served_row(pg_engine, SERVED).id}
    made = served_row(pg_engine, SERVED).id
    for org, task_id in ((TAKEN_OVER, scene.taken_over), (SERVED, made)):
        assert BoefjeJob(scene.store, clients, SimulatedRunner()).run(task_id, "w2", org, BOEFJE, REF).outcome == (
            Outcome.COMPLETED
        )
        ran = scene.store.get(task_id)
        assert ran is not None and ran.status == TaskStatus.COMPLETED and SERVED_BY not in ran.data
        assert [r.organization for r in world.raw_files_of(task_id)] == [org]  # its own run


def test_explain_names_the_task_whose_run_serves_a_pair(
    world: World, clients: KATClients, pg_engine: Engine, scene: Scene
) -> None:
    """While org01's run serves org02, explain says org02's pair is deduplicated into org01's task;
    once it ended, the pair is in its grace period and its last run names the serving task."""
    policy = Policy(default_grace_seconds=86400, stall_age=timedelta(minutes=10), jitter=0.0)
    sources = Sources.on(pg_engine, clients)
    assert scene.store.start(scene.task, "w1") is not None
    row = scene.store.get(scene.task)
    assert row is not None
    boefje = clients.katalogus.plugin(RUNS, BOEFJE)
    assert isinstance(boefje, Boefje)
    serving = deduplicator(clients, pg_engine).claim(row, boefje, REF, {"RESOLVER": "192.0.2.53"})
    assert serving is not None and sorted(serving.organisations) == [TAKEN_OVER, SERVED]

    def dns_records(org: str) -> Explanation:
        answer = explain_object(sources, policy, org, REF, now=utcnow())
        return next(e for e in answer.explanations if e.boefje_id == BOEFJE)

    during = dns_records(TAKEN_OVER)
    assert during.decision == Decision.DEDUPLICATED
    assert f"deduplicated into task {scene.task}" in during.detail and str(scene.taken_over) in during.detail
    assert dns_records(RUNS).decision == Decision.LIVE
    assert dns_records(NO_CLEARANCE).decision == Decision.CLEARANCE
    serving.store({"id": str(scene.task), "boefje": {"id": BOEFJE}, "input_ooi": REF}, "COMPLETED", [], None)
    after = dns_records(TAKEN_OVER)
    assert after.decision == Decision.GRACE and f"served by task {scene.task}" in after.detail


def test_an_organisation_whose_own_plugin_says_no_deduplication_serves_no_one(
    world: World, clients: KATClients, pg_engine: Engine, scene: Scene, raw_events: list[dict[str, Any]]
) -> None:
    world.set_plugin_deduplicate(RUNS, BOEFJE, False)
    job = BoefjeJob(scene.store, clients, SimulatedRunner())
    job.dedup = deduplicator(clients, pg_engine)
    assert job.run(scene.task, "w1", RUNS, BOEFJE, REF).outcome == Outcome.COMPLETED
    assert [e["organization"] for e in raw_events] == [RUNS]
    taken = scene.store.get(scene.taken_over)
    assert taken is not None and taken.status == TaskStatus.QUEUED and SERVED_BY not in taken.data
    assert rows_of(pg_engine, SERVED) == []


@pytest.mark.parametrize("opted_out", [SERVED, RUNS])
def test_an_organisation_whose_own_deduplicate_is_false_takes_no_part(
    opted_out: str,
    world: World,
    clients: KATClients,
    pg_engine: Engine,
    scene: Scene,
    raw_events: list[dict[str, Any]],
) -> None:
    """Katalogus' organisation flag: neither served (org03) nor serving (org01)."""
    world.set_organisation_deduplicate(opted_out, False)
    job = BoefjeJob(scene.store, clients, SimulatedRunner())
    job.dedup = deduplicator(clients, pg_engine)
    assert job.run(scene.task, "w1", RUNS, BOEFJE, REF).outcome == Outcome.COMPLETED
    served = sorted(e["organization"] for e in raw_events)
    assert served == ([RUNS, TAKEN_OVER] if opted_out == SERVED else [RUNS])
    assert rows_of(pg_engine, SERVED) == []


def test_a_served_organisation_whose_storing_fails_is_due_again_after_the_retry_delay(
    world: World, kat: SimulatedKAT, clients: KATClients, pg_engine: Engine, scene: Scene
) -> None:
    """Bytes refuses the raw files of the two served organisations (stored first); the run's own
    organisation is stored as usual. The served rows fail as no run and their pairs are due soon."""
    kat.inject_fault("bytes", status=503, times=4, path_prefix="/bytes/raw")  # a retry each
    job = BoefjeJob(scene.store, clients, SimulatedRunner())
    job.dedup = deduplicator(clients, pg_engine)
    before = utcnow()
    assert job.run(scene.task, "w1", RUNS, BOEFJE, REF).outcome == Outcome.COMPLETED
    schedules = ScheduleStore(pg_engine)
    for org in (TAKEN_OVER, SERVED):
        [row] = [r for r in rows_of(pg_engine, org) if r.status == TaskStatus.FAILED]
        assert row.reason == "service failed: bytes" and str(scene.task) in (row.error or "")
        schedule = schedules.get_by_hash(boefje_task_hash(BOEFJE, org, REF))
        assert schedule is not None and schedule.enabled and schedule.deadline_at is not None
        assert before + timedelta(minutes=4) < schedule.deadline_at < utcnow() + timedelta(minutes=6)
    assert [r.organization for r in world.raw_files_of(scene.task)] == [RUNS]


def test_a_failed_run_fails_the_rows_it_served_with_its_error(
    world: World, clients: KATClients, pg_engine: Engine, scene: Scene, raw_events: list[dict[str, Any]]
) -> None:
    class Crashing(SimulatedRunner):
        def run_boefje(self, boefje_id: str, boefje_meta: dict[str, Any], environment: dict[str, str]) -> Any:
            raise RuntimeError("the resolver fell over")

    job = BoefjeJob(scene.store, clients, Crashing())
    job.dedup = deduplicator(clients, pg_engine)
    assert job.run(scene.task, "w1", RUNS, BOEFJE, REF).outcome == Outcome.FAILED
    taken = scene.store.get(scene.taken_over)
    assert taken is not None and taken.status == TaskStatus.FAILED
    assert taken.error is not None and "the resolver fell over" in taken.error and str(scene.task) in taken.error
    assert "error/boefje" in world.raw_files_of(scene.taken_over)[0].mime_types


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "worker.log"


def test_real_workers_with_deduplication_on_serve_each_wanting_organisation(
    kat: SimulatedKAT,
    world: World,
    pg_engine: Engine,
    scene: Scene,
    raw_events: list[dict[str, Any]],
    postgres_uri: str,
    redis_url: str,
    log_file: Path,
) -> None:
    env = worker_env(kat, postgres_uri, redis_url, SCHEDULER_DEDUPLICATE="true")
    publish_boefje(scene.task, RUNS, REF, postgres_uri, redis_url)
    with celery_worker("kat_scheduler", [Queue.BOEFJES.value], env, concurrency=2, log_file=log_file):
        done = wait_for(lambda: status_of(scene.store, scene.task) == TaskStatus.COMPLETED, timeout=60)
        assert done, log_file.read_text()[-3000:]
        # org02's own message, sent late, starts nothing: its task was served.
        publish_boefje(scene.taken_over, TAKEN_OVER, REF, postgres_uri, redis_url)
        assert wait_for(lambda: "not started: it is completed" in log_file.read_text(), timeout=30)
    assert_served(world, pg_engine, scene, raw_events)


def test_real_workers_with_deduplication_off_run_each_organisation_on_its_own(
    kat: SimulatedKAT,
    world: World,
    pg_engine: Engine,
    scene: Scene,
    raw_events: list[dict[str, Any]],
    postgres_uri: str,
    redis_url: str,
    log_file: Path,
) -> None:
    env = worker_env(kat, postgres_uri, redis_url)  # SCHEDULER_DEDUPLICATE unset: off
    publish_boefje(scene.task, RUNS, REF, postgres_uri, redis_url)
    publish_boefje(scene.taken_over, TAKEN_OVER, REF, postgres_uri, redis_url)
    with celery_worker("kat_scheduler", [Queue.BOEFJES.value], env, concurrency=2, log_file=log_file):
        for task in (scene.task, scene.taken_over):
            done = wait_for(lambda t=task: status_of(scene.store, t) == TaskStatus.COMPLETED, timeout=60)  # type: ignore[misc]
            assert done, log_file.read_text()[-3000:]
    for task in (scene.task, scene.taken_over):
        row = scene.store.get(task)
        assert row is not None and SERVED_BY not in row.data
    assert sorted(e["organization"] for e in raw_events) == [RUNS, TAKEN_OVER]  # each its own run
    assert rows_of(pg_engine, SERVED) == []


DEDUP_VHOST = vhost_name("dedup")


@pytest.fixture
def dedup_events_url(events_amqp_base: str) -> Iterator[str]:
    url = own_vhost(events_amqp_base, DEDUP_VHOST)
    drop_our_queues(url)
    yield url
    drop_our_queues(url)


def test_each_served_organisation_gets_its_own_normalizer_work_through_the_whole_cycle(
    kat: SimulatedKAT,
    world: World,
    pg_engine: Engine,
    scene: Scene,
    dedup_events_url: str,
    postgres_uri: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """A real listener and a real worker: the one run's raw file reaches each served organisation
    as its own ``raw_file_received``, is normalized there, and its observation saved in its graph."""
    normalizer = next(n.id for n in world.normalizers if f"boefje/{BOEFJE}" in n.consumes)
    for org in world.organisation_ids:
        world.set_plugin_enabled(org, normalizer, True)
    wanted = {RUNS: str(scene.task), TAKEN_OVER: str(scene.taken_over)}

    def normalized() -> dict[str, str]:
        """Per organisation, the BoefjeMeta id its completed normalizer task of REF's raw file read."""
        with pg_engine.connect() as conn:
            rows = conn.execute(
                select(TaskRow.organisation, TaskRow.data).where(
                    TaskRow.scheduler_id == SchedulerId.NORMALIZER,
                    TaskRow.plugin_id == normalizer,
                    TaskRow.status == TaskStatus.COMPLETED,
                )
            ).all()
        return {
            org: data["raw_data"]["boefje_meta"]["id"]
            for org, data in rows
            if data["raw_data"]["boefje_meta"]["input_ooi"] == REF
        }

    with closed_loop(
        kat, world, dedup_events_url, postgres_uri, redis_url, tmp_path, SCHEDULER_DEDUPLICATE="true"
    ) as loop:
        publish_boefje(scene.task, RUNS, REF, postgres_uri, redis_url)
        assert wait_for(lambda: set(normalized()) >= {RUNS, TAKEN_OVER, SERVED}, timeout=120), loop.logs()
    found = normalized()
    wanted[SERVED] = str(served_row(pg_engine, SERVED).id)
    assert {org: found[org] for org in wanted} == wanted  # each read its own BoefjeMeta
    assert not set(found) & set(NOT_SERVED)
    observed = {o.organization for o in world.observations if o.source == REF}
    assert observed >= {RUNS, TAKEN_OVER, SERVED} and not observed & set(NOT_SERVED)


def test_a_process_has_one_deduplicator_and_none_while_it_is_off(postgres_uri: str) -> None:
    off = Runtime(load_settings(db_uri=postgres_uri))
    on = Runtime(load_settings(db_uri=postgres_uri, deduplicate=True))
    try:
        assert off.settings.deduplicate is False and deduplicator_of(off) is None
        first = deduplicator_of(on)
        assert first is not None and deduplicator_of(on) is first
    finally:
        off.close()
        on.close()
