"""A KAT service that fails is not a run (#19): real boefje workers against the simulated KAT with
injected faults. A failed store is retried without running the plugin again; a task that gives
up on a service leaves its pair due after the short retry delay, not after its grace period."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from kat_scheduler.events.handlers import MutationHandler
from kat_scheduler.models import ScanProfileMutation, TaskStatus
from kat_scheduler.plugin_cache import PluginCache
from kat_scheduler.publisher import make_publisher
from kat_scheduler.queues import Queue
from kat_scheduler.rules import SkipReason
from kat_scheduler.storage import ScheduleStore, TaskRow, TaskStore
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.workers.lifecycle import KEPT_OUTPUT, BoefjeJob
from kat_scheduler.workers.simulated import SimulatedRunner
from tests.integration.conftest import WORLD_NOW
from tests.integration.test_worker_lifecycle import queued_boefje_task
from tests.integration.test_workers import publish_boefje, write_plugin
from tests.workers import celery_worker, wait_for

#: The event handlers' clock: the simulated world's "now" (its history is relative to it).
EVENTS_NOW = WORLD_NOW + timedelta(minutes=5)


def hostnames_with_dns(world, count: int) -> list[tuple[str, str]]:
    """``count`` (organisation, hostname) pairs that dns-records may scan."""
    found = [
        (org, ooi.primary_key)
        for org in world.organisation_ids
        if world.is_enabled(org, "dns-records")
        for ooi in world.oois(org).values()
        if ooi.object_type == "Hostname" and ooi.scan_level >= 1
    ]
    assert len(found) >= count, f"the world has {len(found)} hostnames for dns-records, not {count}"
    return found[:count]


def worker_env(kat, postgres_uri: str, redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "OCTOPOES_API": kat.octopoes_url,
        "KATALOGUS_API": kat.katalogus_url,
        "BYTES_API": kat.bytes_url,
        "SCHEDULER_DB_URI": postgres_uri,
        "SCHEDULER_BROKER_URL": redis_url,
        "SCHEDULER_RETRY_BACKOFF": "0.1",
        "SCHEDULER_HTTP_RETRIES": "0",
        **extra,
    }


def rows(store: TaskStore, ids: list[uuid.UUID]) -> list[TaskRow]:
    found = [store.get(task_id) for task_id in ids]
    assert all(row is not None for row in found)
    return [row for row in found if row is not None]


def test_a_malformed_bytes_answer_on_store_retries_the_store_and_the_plugin_runs_once(
    kat, world, clients, pg_engine, postgres_uri, redis_url, tmp_path: Path
) -> None:
    store = TaskStore(pg_engine)
    runs = tmp_path / "runs.log"
    plugins = tmp_path / "plugins"
    write_plugin(
        plugins,
        "kat_dns",
        "boefje.json",
        "main.py",
        "dns-records",
        f"""
        def run(boefje_meta):
            with open({str(runs)!r}, "a") as runs:  # one line per run of the plugin, in any process
                runs.write(boefje_meta["id"] + "\\n")
            return [({{"openkat/dns"}}, "A 192.0.2.1")]
        """,
    )
    pairs = hostnames_with_dns(world, 5)
    task_ids = [queued_boefje_task(store, org, "dns-records", ref, clients) for org, ref in pairs]
    # Every task's first store of its raw file is answered with a body that is no JSON.
    kat.inject_fault(
        "bytes", status=200, body=b"{not json", times=len(task_ids), path_prefix="/bytes/raw", method="POST"
    )
    for task_id, (org, ref) in zip(task_ids, pairs, strict=True):
        publish_boefje(task_id, org, ref, postgres_uri, redis_url)
    env = worker_env(kat, postgres_uri, redis_url, SCHEDULER_RUNNER="local", SCHEDULER_PLUGINS_PATH=str(plugins))
    log = tmp_path / "worker.log"
    with celery_worker("kat_scheduler", [Queue.BOEFJES.value], env, log_file=log):
        done = wait_for(
            lambda: all(row.status == TaskStatus.COMPLETED for row in rows(store, task_ids)), timeout=60, interval=0.2
        )
    assert done, log.read_text()[-3000:]
    plugin_runs = runs.read_text().split()
    assert sorted(plugin_runs) == sorted(str(task_id) for task_id in task_ids)  # each ran exactly once
    for row in rows(store, task_ids):
        assert row.attempts == 2 and KEPT_OUTPUT not in row.data
        raws = world.raw_files_of(row.id)
        assert len(raws) == 1 and raws[0].content == b"A 192.0.2.1"
    assert log.read_text().count("storing the output of its earlier run") == len(task_ids)


def test_a_katalogus_outage_gives_up_naming_it_and_the_pair_is_due_after_the_short_delay_not_grace(
    kat, world, clients, pg_engine, postgres_uri, redis_url, planner, tmp_path: Path
) -> None:
    store = TaskStore(pg_engine)
    [(org, ref)] = hostnames_with_dns(world, 1)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    kat.inject_fault("katalogus", status=503, times=None, path_prefix=f"/v1/organisations/{org}/plugins/dns-records")
    publish_boefje(task_id, org, ref, postgres_uri, redis_url)
    delay = 120
    env = worker_env(
        kat,
        postgres_uri,
        redis_url,
        SCHEDULER_RUNNER="simulated",
        SCHEDULER_MAX_RETRIES="2",
        SCHEDULER_SERVICE_FAILURE_RETRY_DELAY=str(delay),
    )
    log = tmp_path / "worker.log"
    before = utcnow()
    with celery_worker("kat_scheduler", [Queue.BOEFJES.value], env, log_file=log):
        failed = wait_for(lambda: rows(store, [task_id])[0].status == TaskStatus.FAILED, timeout=60, interval=0.2)
    after = utcnow()
    assert failed, log.read_text()[-3000:]
    kat.clear_faults()
    [row] = rows(store, [task_id])
    assert row.attempts == 3  # the first try and two retries
    assert row.reason == "service failed: katalogus"
    assert row.error is not None and row.error.startswith("gave up after 2 retries: katalogus: GET /v1/organisations/")
    assert world.boefje_meta(task_id) is None  # the boefje never ran
    assert store.last_runs([row.hash]) == {}
    schedule = planner.schedules.get_by_hash(row.hash)
    assert schedule is not None and schedule.enabled
    assert before + timedelta(seconds=delay) <= schedule.deadline_at <= after + timedelta(seconds=delay)
    # The tick leaves the pair to its schedule; due schedules queue it only once the short delay passed.
    tick = planner.plan([org], now=after, dry_run=True)
    assert row.hash not in {c.hash for c in tick.planned} and tick.skipped[SkipReason.SCHEDULED] >= 1
    early = planner.queue_due(now=schedule.deadline_at - timedelta(seconds=1), dry_run=True)
    assert row.hash not in {c.hash for c in early.planned}
    due = planner.queue_due(now=schedule.deadline_at + timedelta(seconds=1), dry_run=True)
    assert [c.hash for c in due.planned] == [row.hash]


def test_events_leave_a_pair_given_up_on_for_a_service_alone_until_the_short_delay_then_queue_it(
    clients, world, pg_engine, planner_settings
) -> None:
    """The event path agrees with the tick and due schedules: the pair waits for its retry deadline,
    not for a grace period counted from the task that never ran its boefje."""
    tasks, schedules = TaskStore(pg_engine), ScheduleStore(pg_engine)
    publisher = make_publisher(planner_settings)
    plugins = PluginCache(clients.katalogus, ttl=60)

    def handle_at(when: datetime, operation: str) -> set[str]:
        handler = MutationHandler(plugins, tasks, schedules, publisher, planner_settings, clock=lambda: when)
        assert handler("scan_profile_mutations", [mutation(org, pk, operation)]) == []
        with pg_engine.connect() as conn:
            queued = conn.execute(
                select(TaskRow.plugin_id).where(TaskRow.input_ooi == pk, TaskRow.status == TaskStatus.QUEUED)
            )
            return set(queued.scalars())

    org = world.organisation_ids[0]
    pk = "Hostname|internet|service-failure.example.nl"
    try:
        first = handle_at(EVENTS_NOW, "create")
        assert first, "the new hostname should queue some boefje"
        boefje_id = sorted(first)[0]
        with pg_engine.connect() as conn:
            task_id = conn.execute(
                select(TaskRow.id).where(TaskRow.input_ooi == pk, TaskRow.plugin_id == boefje_id)
            ).scalar_one()
        job = BoefjeJob(tasks, clients, SimulatedRunner(), clock=lambda: EVENTS_NOW + timedelta(seconds=10))
        retry_at = EVENTS_NOW + timedelta(minutes=5)
        job.fail_for_good(task_id, "gave up: bytes down", service="bytes", schedules=schedules, retry_at=retry_at)
        assert boefje_id not in handle_at(EVENTS_NOW + timedelta(minutes=1), "update")
        assert boefje_id in handle_at(retry_at + timedelta(minutes=1), "update")
    finally:
        publisher.close()


def mutation(org: str, pk: str, operation: str) -> ScanProfileMutation:
    value = {
        "primary_key": pk,
        "object_type": "Hostname",
        "scan_profile": {"scan_profile_type": "declared", "reference": pk, "level": 2},
    }
    return ScanProfileMutation.model_validate(
        {"operation": operation, "primary_key": pk, "client_id": org, "value": value}
    )
