"""The life of a boefje and a normalizer task on a worker (jobs called directly; Celery around
them is tested with real workers in test_workers.py)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from kat_scheduler.models import SchedulerId, TaskStatus
from kat_scheduler.rules.identity import normalizer_task_hash
from kat_scheduler.storage import ScheduleStore, TaskStore
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.storage.tasks import NewTask
from kat_scheduler.workers.lifecycle import KEPT_OUTPUT, BoefjeJob, NormalizerJob, Outcome, worker_id
from kat_scheduler.workers.runners import UnknownPlugin
from kat_scheduler.workers.simulated import SimulatedRunner
from tests.tasks import hostname_with_dns, queued_boefje_task


class CrashingRunner(SimulatedRunner):
    def run_boefje(self, boefje_id: str, boefje_meta: dict[str, Any], environment: dict[str, str]):
        raise RuntimeError("the scanner fell over")


class NoPluginsRunner(SimulatedRunner):
    def run_boefje(self, boefje_id: str, boefje_meta: dict[str, Any], environment: dict[str, str]):
        raise UnknownPlugin(f"no local boefje {boefje_id!r}")


@pytest.fixture
def store(pg_engine: Engine) -> TaskStore:
    return TaskStore(pg_engine)


def test_a_boefje_run_stores_its_meta_and_raw_in_bytes_and_completes(store, clients, world) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    result = BoefjeJob(store, clients, SimulatedRunner()).run(task_id, "w1", org, "dns-records", ref)
    assert result.outcome == Outcome.COMPLETED
    row = store.get(task_id)
    assert row.status == TaskStatus.COMPLETED and row.started_at and row.ended_at and row.worker == "w1"
    run = world.boefje_meta(task_id)
    assert run is not None and run.input_ooi == ref and run.ended_at is not None
    raws = world.raw_files_of(task_id)
    assert len(raws) == 1 and "boefje/dns-records" in raws[0].mime_types
    assert json.loads(raws[0].content)["input"] == ref


def test_a_crashing_boefje_stores_an_error_file_and_fails_the_row(store, clients, world) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    result = BoefjeJob(store, clients, CrashingRunner()).run(task_id, "w1", org, "dns-records", ref)
    assert result.outcome == Outcome.FAILED
    row = store.get(task_id)
    assert row.status == TaskStatus.FAILED and "the scanner fell over" in row.error
    raws = world.raw_files_of(task_id)
    assert len(raws) == 1 and "error/boefje" in raws[0].mime_types


def test_an_unknown_plugin_fails_the_task_with_a_clear_error(store, clients, world) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    result = BoefjeJob(store, clients, NoPluginsRunner()).run(task_id, "w1", org, "dns-records", ref)
    assert result.outcome == Outcome.FAILED
    assert "no local boefje 'dns-records'" in store.get(task_id).error


def test_a_boefje_unknown_to_katalogus_fails_the_task(store, clients, world) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    result = BoefjeJob(store, clients, SimulatedRunner()).run(task_id, "w1", org, "no-such-boefje", ref)
    assert result.outcome == Outcome.FAILED and "unknown boefje 'no-such-boefje'" in result.detail


def test_a_bytes_outage_puts_the_task_back_and_a_later_try_completes(store, clients, world, kat) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    job = BoefjeJob(store, clients, SimulatedRunner())
    kat.inject_fault("bytes", status=503, times=None, path_prefix="/bytes/boefje_meta")
    first = job.run(task_id, "w1", org, "dns-records", ref)
    assert first.outcome == Outcome.RETRY
    assert store.get(task_id).status == TaskStatus.QUEUED
    kat.clear_faults()
    second = job.run(task_id, "w1", org, "dns-records", ref)
    assert second.outcome == Outcome.COMPLETED
    assert store.get(task_id).attempts == 2


def test_giving_up_after_the_last_retry_fails_the_row(store, clients, world) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    BoefjeJob(store, clients, SimulatedRunner()).fail_for_good(task_id, "gave up after 5 retries")
    row = store.get(task_id)
    assert row.status == TaskStatus.FAILED and row.error == "gave up after 5 retries"


def test_a_cancelled_task_is_skipped(store, clients, world) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    store.cancel([task_id])
    result = BoefjeJob(store, clients, SimulatedRunner()).run(task_id, "w1", org, "dns-records", ref)
    assert result.outcome == Outcome.SKIPPED
    assert world.boefje_meta(task_id) is None


def test_a_duplicate_delivery_runs_the_boefje_once(store, clients, world) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    job = BoefjeJob(store, clients, SimulatedRunner())
    assert job.run(task_id, "w1", org, "dns-records", ref).outcome == Outcome.COMPLETED
    assert job.run(task_id, "w2", org, "dns-records", ref).outcome == Outcome.SKIPPED
    assert len(world.raw_files_of(task_id)) == 1


def test_a_normalizer_turns_raw_data_into_an_observation_that_grows_the_graph(store, clients, world) -> None:
    org, ref = hostname_with_dns(world)
    boefje_task = queued_boefje_task(store, org, "dns-records", ref, clients)
    BoefjeJob(store, clients, SimulatedRunner()).run(boefje_task, "w1", org, "dns-records", ref)
    raw = world.raw_files_of(boefje_task)[0]
    raw_json = world.render_raw_meta(raw)
    normalizer_id = "kat_dns_normalize"
    task_id = uuid.uuid4()
    store.claim(
        [
            NewTask(
                id=task_id,
                scheduler_id=SchedulerId.NORMALIZER,
                type="normalizer",
                organisation=org,
                plugin_id=normalizer_id,
                input_ooi=ref,
                hash=normalizer_task_hash(normalizer_id, str(boefje_task), org),
                band=4,
                priority=0,
                data={"id": str(task_id), "normalizer": {"id": normalizer_id}, "raw_data": raw_json},
            )
        ]
    )
    before = len(world.oois(org))
    result = NormalizerJob(store, clients, SimulatedRunner()).run(task_id, "w1", org, normalizer_id, str(raw.id))
    assert result.outcome == Outcome.COMPLETED, result.detail
    assert len(world.oois(org)) > before
    observation = world.observations[-1]
    assert observation.method == normalizer_id and observation.source == ref and observation.task_id == str(task_id)
    assert len(world.normalizer_runs) == 1
    assert store.get(task_id).status == TaskStatus.COMPLETED


def dead_worker_id() -> str:
    """The worker id (``host:pid``) of a process on this host that has exited."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return f"{worker_id().rpartition(':')[0]}:{gone.pid}"


def test_a_redelivery_after_its_runner_died_on_this_host_runs_at_once(store, clients, world) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    store.start(task_id, dead_worker_id())  # it was running in a process that is now gone
    result = BoefjeJob(store, clients, SimulatedRunner()).run(task_id, worker_id(), org, "dns-records", ref)
    assert result.outcome == Outcome.COMPLETED
    assert store.get(task_id).attempts == 2


def test_a_task_running_in_a_live_process_is_not_taken_over(store, clients, world) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    store.start(task_id, worker_id())  # this very process: alive
    result = BoefjeJob(store, clients, SimulatedRunner()).run(task_id, "other:1", org, "dns-records", ref)
    assert result.outcome == Outcome.SKIPPED


def test_a_task_whose_runner_died_on_every_attempt_is_failed_not_taken_over_again(store, clients, world) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    dead = dead_worker_id()
    store.start(task_id, dead)  # attempt 1
    for _ in range(2):  # attempts 2 and 3 died too
        assert store.take_over(task_id, dead, dead) is not None
    job = BoefjeJob(store, clients, SimulatedRunner(), max_attempts=3)
    result = job.run(task_id, worker_id(), org, "dns-records", ref)
    assert result.outcome == Outcome.SKIPPED
    row = store.get(task_id)
    assert row.status == TaskStatus.FAILED and row.attempts == 3 and "died on each of 3 attempts" in row.error
    assert world.boefje_meta(task_id) is None


class CountingRunner(SimulatedRunner):
    """The simulated runner, counting the boefjes and normalizers it ran."""

    def __init__(self) -> None:
        self.boefje_runs = 0
        self.normalizer_runs = 0

    def run_boefje(self, boefje_id: str, boefje_meta: dict[str, Any], environment: dict[str, str]):
        self.boefje_runs += 1
        return super().run_boefje(boefje_id, boefje_meta, environment)

    def run_normalizer(self, normalizer_id: str, input_ooi: dict[str, Any], raw: bytes):
        self.normalizer_runs += 1
        return super().run_normalizer(normalizer_id, input_ooi, raw)


def test_a_malformed_bytes_answer_on_store_keeps_the_output_and_the_retry_only_stores_it(
    store, clients, world, kat
) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    runner = CountingRunner()
    job = BoefjeJob(store, clients, runner)
    kat.inject_fault("bytes", status=200, body=b"{not json", times=1, path_prefix="/bytes/raw", method="POST")
    first = job.run(task_id, "w1", org, "dns-records", ref)
    assert first.outcome == Outcome.RETRY and first.service == "bytes"
    row = store.get(task_id)
    assert row.status == TaskStatus.QUEUED and "malformed JSON" in row.error
    assert row.data[KEPT_OUTPUT]["meta_stored"] is True
    assert "environment" not in row.data[KEPT_OUTPUT]["meta"]  # the plugin's settings are not kept
    second = job.run(task_id, "w2", org, "dns-records", ref)
    assert second.outcome == Outcome.COMPLETED, second.detail
    assert runner.boefje_runs == 1
    raws = world.raw_files_of(task_id)
    assert len(raws) == 1 and json.loads(raws[0].content)["input"] == ref
    row = store.get(task_id)
    assert row.status == TaskStatus.COMPLETED and KEPT_OUTPUT not in row.data and row.data["boefje"]


def test_an_output_over_the_kept_limit_is_not_kept_and_the_retry_runs_the_plugin_again(
    store, clients, world, kat, caplog
) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    runner = CountingRunner()
    job = BoefjeJob(store, clients, runner, max_kept_output=100)
    kat.inject_fault("bytes", status=200, body=b"{not json", times=1, path_prefix="/bytes/raw", method="POST")
    with caplog.at_level(logging.WARNING, logger="kat_scheduler.workers.lifecycle"):
        assert job.run(task_id, "w1", org, "dns-records", ref).outcome == Outcome.RETRY
    row = store.get(task_id)
    assert row.status == TaskStatus.QUEUED and KEPT_OUTPUT not in row.data
    [warning] = [r.getMessage() for r in caplog.records if "not kept" in r.getMessage()]
    assert str(task_id) in warning and "over SCHEDULER_KEPT_OUTPUT_MAX_BYTES (100)" in warning
    assert ref not in warning  # the size, never the content
    assert job.run(task_id, "w2", org, "dns-records", ref).outcome == Outcome.COMPLETED
    assert runner.boefje_runs == 2  # the whole run again, as before outputs were kept
    assert len(world.raw_files_of(task_id)) == 1 and world.boefje_meta(task_id) is not None


def test_an_output_under_the_kept_limit_is_kept_and_the_plugin_runs_once(store, clients, world, kat) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    runner = CountingRunner()
    job = BoefjeJob(store, clients, runner, max_kept_output=64 * 1024)
    kat.inject_fault("bytes", status=200, body=b"{not json", times=1, path_prefix="/bytes/raw", method="POST")
    assert job.run(task_id, "w1", org, "dns-records", ref).outcome == Outcome.RETRY
    assert KEPT_OUTPUT in store.get(task_id).data
    assert job.run(task_id, "w2", org, "dns-records", ref).outcome == Outcome.COMPLETED
    assert runner.boefje_runs == 1 and len(world.raw_files_of(task_id)) == 1


def test_a_bytes_outage_on_the_meta_stores_meta_and_raw_on_the_retry_without_running_again(
    store, clients, world, kat
) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    runner = CountingRunner()
    job = BoefjeJob(store, clients, runner)
    kat.inject_fault("bytes", status=503, times=None, path_prefix="/bytes/boefje_meta", method="POST")
    assert job.run(task_id, "w1", org, "dns-records", ref).outcome == Outcome.RETRY
    assert store.get(task_id).data[KEPT_OUTPUT]["meta_stored"] is False
    kat.clear_faults()
    assert job.run(task_id, "w1", org, "dns-records", ref).outcome == Outcome.COMPLETED
    assert runner.boefje_runs == 1
    meta = world.boefje_meta(task_id)
    assert meta is not None and meta.ended_at is not None
    assert len(world.raw_files_of(task_id)) == 1


def test_a_malformed_katalogus_answer_retries_instead_of_failing_the_task(store, clients, world, kat) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    runner = CountingRunner()
    kat.inject_fault("katalogus", status=200, body=b"[1, 2", times=1, path_prefix=f"/v1/organisations/{org}/plugins")
    result = BoefjeJob(store, clients, runner).run(task_id, "w1", org, "dns-records", ref)
    assert result.outcome == Outcome.RETRY and result.service == "katalogus"
    row = store.get(task_id)
    assert row.status == TaskStatus.QUEUED and row.error.startswith("ServiceResponseError: katalogus")
    assert runner.boefje_runs == 0 and KEPT_OUTPUT not in row.data


def test_a_task_given_up_on_for_a_service_is_no_run_and_its_pair_is_due_at_the_short_delay(
    store, clients, world, pg_engine
) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    schedules = ScheduleStore(pg_engine)
    retry_at = utcnow() + timedelta(minutes=5)
    job = BoefjeJob(store, clients, SimulatedRunner())
    job.fail_for_good(
        task_id, "gave up after 5 retries: katalogus: down", service="katalogus", schedules=schedules, retry_at=retry_at
    )
    row = store.get(task_id)
    assert row.status == TaskStatus.FAILED and row.reason == "service failed: katalogus"
    assert row.error == "gave up after 5 retries: katalogus: down" and row.ended_at is not None
    assert store.last_runs([row.hash]) == {}  # not a run: grace does not count from it
    schedule = schedules.get_by_hash(row.hash)
    assert schedule is not None and schedule.enabled and schedule.deadline_at == retry_at
    assert schedule.plugin_id == "dns-records" and schedule.input_ooi == ref


def test_a_boefje_that_fails_by_itself_still_counts_as_a_run(store, clients, world) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    assert BoefjeJob(store, clients, CrashingRunner()).run(task_id, "w1", org, "dns-records", ref).outcome == (
        Outcome.FAILED
    )
    row = store.get(task_id)
    assert row.reason != "service failed: katalogus" and store.last_runs([row.hash]) == {row.hash: row.ended_at}


def test_a_normalizer_whose_observation_failed_to_store_is_not_run_again(store, clients, world, kat) -> None:
    org, ref = hostname_with_dns(world)
    boefje_task = queued_boefje_task(store, org, "dns-records", ref, clients)
    BoefjeJob(store, clients, SimulatedRunner()).run(boefje_task, "w1", org, "dns-records", ref)
    raw = world.raw_files_of(boefje_task)[0]
    normalizer_id = "kat_dns_normalize"
    task_id = uuid.uuid4()
    store.claim(
        [
            NewTask(
                id=task_id,
                scheduler_id=SchedulerId.NORMALIZER,
                type="normalizer",
                organisation=org,
                plugin_id=normalizer_id,
                input_ooi=ref,
                hash=normalizer_task_hash(normalizer_id, str(boefje_task), org),
                band=4,
                priority=0,
                data={"id": str(task_id), "normalizer": {"id": normalizer_id}, "raw_data": world.render_raw_meta(raw)},
            )
        ]
    )
    runner = CountingRunner()
    job = NormalizerJob(store, clients, runner)
    kat.inject_fault("bytes", status=503, times=None, path_prefix="/bytes/normalizer_meta", method="POST")
    assert job.run(task_id, "w1", org, normalizer_id, str(raw.id)).outcome == Outcome.RETRY
    assert store.get(task_id).data[KEPT_OUTPUT]["observation_saved"] is True
    kat.clear_faults()
    result = job.run(task_id, "w1", org, normalizer_id, str(raw.id))
    assert result.outcome == Outcome.COMPLETED, result.detail
    assert runner.normalizer_runs == 1
    assert len(world.observations) == 1 and len(world.normalizer_runs) == 1
    assert KEPT_OUTPUT not in store.get(task_id).data


def test_giving_up_on_a_store_drops_the_kept_output_and_names_bytes(store, clients, world, kat, pg_engine) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    job = BoefjeJob(store, clients, SimulatedRunner())
    kat.inject_fault("bytes", status=503, times=None, path_prefix="/bytes/raw", method="POST")
    result = job.run(task_id, "w1", org, "dns-records", ref)
    assert result.outcome == Outcome.RETRY and KEPT_OUTPUT in store.get(task_id).data
    job.fail_for_good(task_id, f"gave up after 5 retries: {result.detail}", service=result.service)
    row = store.get(task_id)
    assert row.status == TaskStatus.FAILED and row.reason == "service failed: bytes"
    assert "bytes: POST /bytes/raw: HTTP 503" in row.error
    assert KEPT_OUTPUT not in row.data and row.data["boefje"]["id"] == "dns-records"
    assert store.last_runs([row.hash]) == {}


def test_a_run_handed_on_while_it_went_on_does_not_end_the_row_of_the_run_that_took_it(store, clients, world) -> None:
    """The reaper hands a task on when its worker node falls silent; should the silent node's run
    still finish, its end is not recorded: the row belongs to the run that took it over."""
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)

    class HandedOnMidRun(SimulatedRunner):
        def run_boefje(self, boefje_id: str, boefje_meta: dict[str, Any], environment: dict[str, str]):
            store.transition(task_id, [TaskStatus.RUNNING], TaskStatus.QUEUED)  # the reaper
            assert store.start(task_id, "other-host:2") is not None  # another worker took it
            return super().run_boefje(boefje_id, boefje_meta, environment)

    result = BoefjeJob(store, clients, HandedOnMidRun()).run(task_id, "silent-host:1", org, "dns-records", ref)
    assert result.outcome == Outcome.SKIPPED
    row = store.get(task_id)
    assert (row.status, row.worker, row.attempts) == (TaskStatus.RUNNING, "other-host:2", 2)


def test_a_worker_node_id_is_recorded_on_the_tasks_it_runs(store, clients, world) -> None:
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    node_id = uuid.uuid4()
    result = BoefjeJob(store, clients, SimulatedRunner()).run(task_id, "w1", org, "dns-records", ref, node_id=node_id)
    assert result.outcome == Outcome.COMPLETED and store.get(task_id).node_id == node_id
