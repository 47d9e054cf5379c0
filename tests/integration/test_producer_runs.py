"""``producer_runs``: the store on both databases, and the producers that write it for real."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
from celery.app import app_or_default
from sqlalchemy import Engine, create_engine, text

from kat_scheduler.celery_tasks import scheduler as scheduler_tasks
from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.events.consumer import TransientError
from kat_scheduler.events.handlers import make_handlers
from kat_scheduler.models.producers import ProducerName, RunOutcome
from kat_scheduler.queues import RAW_FILE_RECEIVED, SCAN_PROFILE_MUTATIONS, Queue
from kat_scheduler.runtime.celery_app import create_app
from kat_scheduler.runtime.resources import Runtime
from kat_scheduler.settings import Settings, load_settings
from kat_scheduler.status import collect_status
from kat_scheduler.storage import ScheduleStore, TaskStore, migrate
from kat_scheduler.storage.producers import ProducerRunStore
from kat_scheduler.storage.tables import utcnow
from tests.events import profile_mutation

# --- the store ------------------------------------------------------------------------------


def test_a_producers_last_run_replaces_the_one_before(engine: Engine) -> None:
    runs = ProducerRunStore(engine)
    t0 = utcnow()
    runs.record(
        ProducerName.REAP, started_at=t0, finished_at=t0 + timedelta(seconds=1), outcome=RunOutcome.OK, summary={"a": 1}
    )
    runs.record(
        ProducerName.REAP,
        started_at=t0 + timedelta(seconds=60),
        finished_at=t0 + timedelta(seconds=62),
        outcome=RunOutcome.ERROR,
        summary={"a": 2},
        error="boom",
        host="other-host",
        pid=9,
    )
    run = runs.get(ProducerName.REAP)
    assert run is not None
    assert (run.name, run.outcome, run.summary, run.error) == ("reap", RunOutcome.ERROR, {"a": 2}, "boom")
    assert (run.started_at, run.finished_at) == (t0 + timedelta(seconds=60), t0 + timedelta(seconds=62))
    assert (run.host, run.pid) == ("other-host", 9)
    assert run.last_ok_at == t0 + timedelta(seconds=1)  # the last run that went well


def test_a_run_that_ended_before_the_recorded_one_changes_nothing(engine: Engine) -> None:
    runs = ProducerRunStore(engine)
    t0 = utcnow()
    runs.record(ProducerName.LISTENER, started_at=t0, finished_at=t0, outcome=RunOutcome.OK, summary={"new": True})
    earlier = t0 - timedelta(seconds=5)
    runs.record(ProducerName.LISTENER, started_at=earlier, finished_at=earlier, outcome=RunOutcome.ERROR, summary={})
    run = runs.get(ProducerName.LISTENER)
    assert run is not None and run.summary == {"new": True} and run.outcome == RunOutcome.OK


def test_each_producer_has_its_own_row_and_summaries_are_stored_as_json(engine: Engine) -> None:
    runs = ProducerRunStore(engine)
    now = utcnow()
    for name in ProducerName:
        runs.record(name, started_at=now, finished_at=now, outcome=RunOutcome.OK, summary={"at": now})
    assert [run.name for run in runs.all()] == sorted(name.value for name in ProducerName)
    assert runs.all()[0].summary == {"at": str(now)}


# --- the producers --------------------------------------------------------------------------


@pytest.fixture
def runtime(planner_settings: Settings, pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """The scheduler tasks' runtime on the test services, and a Celery app publishing to the test Redis."""
    runtime = Runtime(planner_settings)
    monkeypatch.setattr(scheduler_tasks, "get_runtime", lambda: runtime)
    app = create_app(planner_settings, main="producer_runs_test")
    previous = app_or_default()
    app.set_current()
    yield runtime
    previous.set_current()
    runtime.close()


def test_a_plan_tick_records_its_fan_out_and_status_shows_it(runtime: Runtime, pg_engine: Engine, world) -> None:
    sent = scheduler_tasks.plan_boefjes()
    run = ProducerRunStore(pg_engine).get(ProducerName.PLAN_BOEFJES)
    assert run is not None and run.outcome == RunOutcome.OK and run.error is None
    assert run.summary == {"organisations": len(world.organisation_ids), "planning_tasks": sent}
    assert run.started_at <= run.finished_at <= utcnow()

    report = collect_status(runtime.settings, engine=pg_engine)
    [plan] = [p for p in report.producers.producers or [] if p.name == ProducerName.PLAN_BOEFJES]
    assert plan.outcome == RunOutcome.OK and not plan.late and 0 <= (plan.age_seconds or -1) < 30
    assert plan.interval_seconds == runtime.settings.plan_interval
    # the planning tasks it sent wait on the scheduler queue, at the planning band
    [scheduler_queue] = [q for q in report.broker.queues or [] if q.queue == Queue.SCHEDULER]
    assert scheduler_queue.bands == {band: sent if band == scheduler_tasks.PLANNING_BAND else 0 for band in range(10)}


def test_a_tick_whose_services_are_down_is_recorded_as_an_error_and_still_raises(
    runtime: Runtime, pg_engine: Engine, kat
) -> None:
    kat.inject_fault("katalogus", status=503, times=None)
    with pytest.raises(Exception, match="503"):
        scheduler_tasks.plan_boefjes()
    run = ProducerRunStore(pg_engine).get(ProducerName.PLAN_BOEFJES)
    assert run is not None and run.outcome == RunOutcome.ERROR and "503" in (run.error or "")


def test_the_reaper_and_due_schedules_record_their_runs(runtime: Runtime, pg_engine: Engine) -> None:
    reaped = scheduler_tasks.reap()
    due = scheduler_tasks.queue_due_schedules()
    runs = {run.name: run for run in ProducerRunStore(pg_engine).all()}
    assert runs["reap"].summary == reaped and runs["reap"].outcome == RunOutcome.OK
    assert runs["queue-due-schedules"].summary["queued"] == due["queued"]


def test_each_beat_task_runs_its_producer_timed(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "kat_scheduler.producers.middleware"):
        scheduler_tasks.reap()
        scheduler_tasks.queue_due_schedules()
        scheduler_tasks.queue_report_schedules()
    timed = [r.getMessage() for r in caplog.records if r.name == "kat_scheduler.producers.middleware"]
    assert [message.split(" ran in ")[0] for message in timed] == [
        ProducerName.REAP,
        ProducerName.QUEUE_DUE_SCHEDULES,
        ProducerName.QUEUE_REPORT_SCHEDULES,
    ]


def test_a_producer_on_a_database_without_producer_runs_runs_and_logs(
    redis_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(uri)
    engine = create_engine(uri)
    with engine.begin() as conn:  # as if producer_runs had never been created (or was lost)
        conn.execute(text("DROP TABLE producer_runs"))
    engine.dispose()
    runtime = Runtime(load_settings(db_uri=uri, broker_url=redis_url))
    monkeypatch.setattr(scheduler_tasks, "get_runtime", lambda: runtime)
    try:
        with caplog.at_level(logging.WARNING, "kat_scheduler.producers.recording"):
            assert scheduler_tasks.reap()["errors"] == 0
    finally:
        runtime.close()
    assert any(
        "could not record the run of reap" in r.getMessage() and "producer_runs" in r.getMessage()
        for r in caplog.records
    )


def test_the_listener_records_a_batch_then_waits_out_its_interval_unless_it_fails(
    planner_settings: Settings, clients, pg_engine: Engine, world, kat
) -> None:
    publisher = make_publisher(planner_settings)
    plugins = PluginCache(clients.katalogus, ttl=0)
    handlers = make_handlers(
        plugins, TaskStore(pg_engine), ScheduleStore(pg_engine), publisher, planner_settings, record_interval=3600
    )
    runs = ProducerRunStore(pg_engine)
    org = world.organisation_ids[0]
    on_mutations = handlers[SCAN_PROFILE_MUTATIONS]
    try:
        assert on_mutations(SCAN_PROFILE_MUTATIONS, [profile_mutation(org, "Hostname|internet|a.nl", 2)]) == []
        first = runs.get(ProducerName.LISTENER)
        assert first is not None and first.outcome == RunOutcome.OK
        assert first.summary["events"] == {SCAN_PROFILE_MUTATIONS: 1, RAW_FILE_RECEIVED: 0}
        assert first.summary["queued"] > 0

        on_mutations(SCAN_PROFILE_MUTATIONS, [profile_mutation(org, "Hostname|internet|b.nl", 2)])
        again = runs.get(ProducerName.LISTENER)
        assert again is not None and again.finished_at == first.finished_at  # within the interval

        kat.inject_fault("katalogus", status=503, times=None)
        with pytest.raises(TransientError):
            on_mutations(SCAN_PROFILE_MUTATIONS, [profile_mutation(org, "Hostname|internet|c.nl", 2)])
        failed = runs.get(ProducerName.LISTENER)
        assert failed is not None and failed.error is not None
        assert failed.outcome == RunOutcome.ERROR and failed.error.startswith("scan_profile_mutations: ")
        assert failed.last_ok_at == first.finished_at
        assert failed.summary["events"][SCAN_PROFILE_MUTATIONS] == 2
    finally:
        publisher.close()
