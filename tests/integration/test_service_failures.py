"""A KAT service that fails is not a run (#19): real boefje workers against the simulated KAT with
injected faults. A failed store is retried without running the plugin again; a task that gives
up on a service leaves its pair due after the short retry delay, not after its grace period."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.dispatch.dispatcher import message_for
from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.events.handlers import MutationHandler
from kat_scheduler.models import Normalizer, ScanProfileMutation, SchedulerId, TaskStatus
from kat_scheduler.producers import DueSchedulesProducer, TickProducer
from kat_scheduler.queues import Queue
from kat_scheduler.rules import SkipReason
from kat_scheduler.rules.identity import normalizer_task_hash
from kat_scheduler.rules.payloads import normalizer_payload
from kat_scheduler.settings import load_settings
from kat_scheduler.storage import ScheduleStore, TaskRow, TaskStore
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.storage.tasks import NewTask
from kat_scheduler.workers.lifecycle import KEPT_OUTPUT, BoefjeJob
from kat_scheduler.workers.reaper import Reaper
from kat_scheduler.workers.simulated import SimulatedRunner
from tests.integration.conftest import WORLD_NOW
from tests.tasks import forget_nodes_and_markers, publish_boefje, queued_boefje_task
from tests.workers import celery_worker, kat_env, wait_for, write_plugin

#: The normalizer of dns-records' raw files.
NORMALIZER = "kat_dns_normalize"
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
    return {**kat_env(kat, postgres_uri, redis_url, SCHEDULER_RETRY_BACKOFF="0.1", SCHEDULER_HTTP_RETRIES="0"), **extra}


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
    kat, world, clients, pg_engine, postgres_uri, redis_url, producers, tmp_path: Path
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
    schedule = producers.schedules.get_by_hash(row.hash)
    assert schedule is not None and schedule.enabled
    assert before + timedelta(seconds=delay) <= schedule.deadline_at <= after + timedelta(seconds=delay)
    # The tick leaves the pair to its schedule; due schedules queue it only once the short delay passed.
    tick = TickProducer(producers, [org]).run(after, dry_run=True)
    assert row.hash not in {c.hash for c in tick.planned} and tick.skipped[SkipReason.SCHEDULED] >= 1
    early = DueSchedulesProducer(producers).run(schedule.deadline_at - timedelta(seconds=1), dry_run=True)
    assert row.hash not in {c.hash for c in early.planned}
    due = DueSchedulesProducer(producers).run(schedule.deadline_at + timedelta(seconds=1), dry_run=True)
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


# --- normalizers given up on a service failure come back (the reaper) --------------------------


def queued_normalizer_task(store: TaskStore, world, clients, org: str, ref: str) -> TaskRow:
    """A normalizer task for the raw file of a boefje run on ``ref``, claimed as the raw-file handler does."""
    boefje_task = queued_boefje_task(store, org, "dns-records", ref, clients)
    assert BoefjeJob(store, clients, SimulatedRunner()).run(boefje_task, "w", org, "dns-records", ref).outcome
    [raw] = world.raw_files_of(boefje_task)
    task_id = uuid.uuid4()
    normalizer = clients.katalogus.plugin(org, NORMALIZER)
    assert isinstance(normalizer, Normalizer)
    [claimed] = store.claim(
        [
            NewTask(
                id=task_id,
                scheduler_id=SchedulerId.NORMALIZER,
                type="normalizer",
                organisation=org,
                plugin_id=NORMALIZER,
                input_ooi=ref,
                hash=normalizer_task_hash(NORMALIZER, str(raw.id), org),
                band=4,
                priority=0,
                data=normalizer_payload(task_id, normalizer, world.render_raw_meta(raw)),
            )
        ]
    )
    row = store.get(claimed.id)
    assert row is not None
    return row


@contextmanager
def reaper_with(pg_engine: Engine, postgres_uri: str, redis_url: str, **settings: Any) -> Iterator[Reaper]:
    forget_nodes_and_markers(pg_engine)
    reaper_settings = load_settings(broker_url=redis_url, db_uri=postgres_uri, **settings)
    publisher = make_publisher(reaper_settings)
    try:
        yield Reaper(TaskStore(pg_engine), publisher, reaper_settings)
    finally:
        publisher.close()
        forget_nodes_and_markers(pg_engine)


def rows_of_hash(engine: Engine, hash_: str) -> list[TaskRow]:
    """Every row of ``hash_``, oldest first."""
    with Session(engine) as session:
        return list(session.scalars(select(TaskRow).where(TaskRow.hash == hash_).order_by(TaskRow.created_at)))


def normalizer_task_whose_raw_file_bytes_refuses(kat, world, clients, store: TaskStore) -> TaskRow:
    """A queued normalizer task whose raw file Bytes answers 503 for, until the faults are cleared."""
    [(org, ref)] = hostnames_with_dns(world, 1)
    task = queued_normalizer_task(store, world, clients, org, ref)
    raw_id = task.data["raw_data"]["id"]
    kat.inject_fault("bytes", status=503, times=None, path_prefix=f"/bytes/raw/{raw_id}", method="GET")
    return task


def test_a_normalizer_given_up_on_bytes_is_queued_again_after_the_retry_delay_and_completes_once_bytes_answers(
    kat, world, clients, pg_engine, postgres_uri, redis_url, tmp_path: Path
) -> None:
    store = TaskStore(pg_engine)
    task = normalizer_task_whose_raw_file_bytes_refuses(kat, world, clients, store)
    env = worker_env(kat, postgres_uri, redis_url, SCHEDULER_RUNNER="simulated", SCHEDULER_MAX_RETRIES="1")
    log = tmp_path / "worker.log"
    with (
        reaper_with(pg_engine, postgres_uri, redis_url, service_failure_retry_delay=1) as reaper,
        celery_worker("kat_scheduler", [Queue.NORMALIZERS.value], env, log_file=log),
    ):
        reaper.publisher.publish([message_for(task)])
        gave_up = wait_for(lambda: rows(store, [task.id])[0].status == TaskStatus.FAILED, timeout=60, interval=0.2)
        assert gave_up, log.read_text()[-3000:]
        assert rows(store, [task.id])[0].reason == "service failed: bytes"
        kat.clear_faults()

        def completed_again() -> bool:
            reaper.reap(utcnow())
            return [row.status for row in rows_of_hash(pg_engine, task.hash)] == [
                TaskStatus.FAILED,
                TaskStatus.COMPLETED,
            ]

        assert wait_for(completed_again, timeout=60, interval=0.3), log.read_text()[-3000:]
    first, again = rows_of_hash(pg_engine, task.hash)
    assert first.reason == "service failed: bytes; queued again" and first.ended_at is not None
    assert again.created_at >= first.ended_at + timedelta(seconds=1)  # after the retry delay, not before
    assert again.data == {**task.data, "id": str(again.id)}
    assert [run.id for run in world.normalizer_runs] == [again.id]  # stored once, by the new task
    assert [o.task_id for o in world.observations] == [str(again.id)]
    assert store.last_runs([task.hash]) == {task.hash: again.ended_at}


def test_a_normalizer_whose_bytes_keeps_failing_is_queued_again_at_most_the_maximum_then_stays_failed(
    kat, world, clients, pg_engine, postgres_uri, redis_url, tmp_path: Path
) -> None:
    store = TaskStore(pg_engine)
    task = normalizer_task_whose_raw_file_bytes_refuses(kat, world, clients, store)
    env = worker_env(kat, postgres_uri, redis_url, SCHEDULER_RUNNER="simulated", SCHEDULER_MAX_RETRIES="0")
    log = tmp_path / "worker.log"
    maximum = 2
    with (
        reaper_with(
            pg_engine, postgres_uri, redis_url, service_failure_retry_delay=0, service_failure_max_requeues=maximum
        ) as reaper,
        celery_worker("kat_scheduler", [Queue.NORMALIZERS.value], env, log_file=log),
    ):
        reaper.publisher.publish([message_for(task)])

        def gave_up_for_good() -> bool:
            reaper.reap(utcnow())
            newest = rows_of_hash(pg_engine, task.hash)[-1]
            return newest.reason is not None and "gave up after" in newest.reason

        assert wait_for(gave_up_for_good, timeout=90, interval=0.3), log.read_text()[-3000:]
        for _ in range(3):  # later runs of the reaper queue nothing more
            assert reaper.reap(utcnow()).requeued_service_failed == 0
    history = rows_of_hash(pg_engine, task.hash)
    assert len(history) == maximum + 1 and all(row.status == TaskStatus.FAILED for row in history)
    assert [row.reason for row in history] == [
        "service failed: bytes; queued again",
        "service failed: bytes (2 in a row); queued again",
        "service failed: bytes; gave up after 3 service failures",
    ]
    assert world.normalizer_runs == [] and store.last_runs([task.hash]) == {}


# --- a kept output is bounded ------------------------------------------------------------------


def test_a_boefje_output_over_the_kept_limit_is_not_kept_and_reruns_while_one_under_it_is_kept(
    kat, world, clients, pg_engine, postgres_uri, redis_url, tmp_path: Path
) -> None:
    store = TaskStore(pg_engine)
    runs = tmp_path / "runs.log"
    plugins = tmp_path / "plugins"
    (small_org, small_ref), (big_org, big_ref) = hostnames_with_dns(world, 2)
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
            big = boefje_meta["input_ooi"] == {big_ref!r}
            return [({{"openkat/dns"}}, "A 192.0.2.1 secret-ish answer " * (200 if big else 1))]
        """,
    )
    small = queued_boefje_task(store, small_org, "dns-records", small_ref, clients)
    big = queued_boefje_task(store, big_org, "dns-records", big_ref, clients)
    kat.inject_fault("bytes", status=200, body=b"{not json", times=None, path_prefix="/bytes/raw", method="POST")
    for task_id, (org, ref) in ((small, (small_org, small_ref)), (big, (big_org, big_ref))):
        publish_boefje(task_id, org, ref, postgres_uri, redis_url)
    env = worker_env(
        kat,
        postgres_uri,
        redis_url,
        SCHEDULER_RUNNER="local",
        SCHEDULER_PLUGINS_PATH=str(plugins),
        SCHEDULER_RETRY_BACKOFF="2",
        SCHEDULER_KEPT_OUTPUT_MAX_BYTES="2000",
    )
    log = tmp_path / "worker.log"
    with celery_worker("kat_scheduler", [Queue.BOEFJES.value], env, log_file=log):
        both_failed_once = wait_for(
            lambda: all(row.error is not None for row in rows(store, [small, big])), timeout=60, interval=0.1
        )
        assert both_failed_once, log.read_text()[-3000:]
        small_row, big_row = rows(store, [small, big])
        assert KEPT_OUTPUT in small_row.data and KEPT_OUTPUT not in big_row.data
        kat.clear_faults()
        done = wait_for(
            lambda: all(row.status == TaskStatus.COMPLETED for row in rows(store, [small, big])), timeout=60
        )
        assert done, log.read_text()[-3000:]
    plugin_runs = runs.read_text().split()
    assert plugin_runs.count(str(small)) == 1  # kept: only storing it was retried
    assert plugin_runs.count(str(big)) == 2  # over the limit: the whole run again
    [raw] = world.raw_files_of(big)
    assert raw.content == b"A 192.0.2.1 secret-ish answer " * 200
    [warning] = [line for line in log.read_text().splitlines() if "not kept" in line]
    assert str(big) in warning and "over SCHEDULER_KEPT_OUTPUT_MAX_BYTES (2000)" in warning
    assert "secret-ish" not in warning
