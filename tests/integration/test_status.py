"""``kat-scheduler status`` against real PostgreSQL, SQLite, Redis and RabbitMQ."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from click.testing import CliRunner, Result
from kombu.connection import Connection
from sqlalchemy import Engine, update

from kat_scheduler.dispatch.publishing import OutgoingMessage, make_publisher
from kat_scheduler.models import SchedulerId, TaskStatus
from kat_scheduler.models.producers import ProducerName, RunOutcome
from kat_scheduler.queues import Queue, TaskName
from kat_scheduler.settings import Settings, load_settings
from kat_scheduler.status import StatusReport, collect_broker, collect_status, status_cmd
from kat_scheduler.storage import ScheduleStore, TaskRow, TaskStore, UnpublishedTask, migrate
from kat_scheduler.storage.producers import ProducerRunStore
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.workers.reaper import Reaper
from tests.conftest import vhost_name
from tests.factories import NewScheduleFactory, NewTaskFactory
from tests.vhosts import own_vhost

#: The JSON keys docs/operations.md documents.
REPORT_KEYS = {"generated_at", "ok", "failed", "database", "broker", "tasks", "schedules", "producers", "stalled"}
SECTION_KEYS = {
    "database": {"url", "revision", "head", "up_to_date", "error"},
    "broker": {"transport", "url", "queues", "backpressure", "error"},
    "tasks": {"total", "by_status", "by_scheduler", "queued_by_band", "rate_limited", "rate_limited_next", "error"},
    "schedules": {"enabled", "disabled", "due", "oldest_due_at", "oldest_due_seconds", "error"},
    "producers": {"producers", "error"},
    "stalled": {"running", "unpublished", "error"},
}
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
UNREACHABLE_POSTGRES = "postgresql://127.0.0.1:1/kat"


@pytest.fixture
def settings(redis_url: str, postgres_uri: str) -> Settings:
    # running rows count as stalled after 120 + 60 seconds, unpublished ones after 60
    return load_settings(broker_url=redis_url, db_uri=postgres_uri, soft_time_limit=60, hard_time_limit=120)


def run_status(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(status_cmd, list(args), obj=settings)


def age(engine: Engine, task_id: uuid.UUID, **columns) -> None:
    """Set columns of a task row; an older ``created_at`` makes its claim (if unpublished) as old."""
    with engine.begin() as conn:
        conn.execute(update(TaskRow).where(TaskRow.id == task_id).values(**columns))
        if "created_at" in columns:
            conn.execute(
                update(UnpublishedTask)
                .where(UnpublishedTask.task_id == task_id)
                .values(claimed_at=columns["created_at"])
            )


def message(band: int, queue: Queue = Queue.BOEFJES) -> OutgoingMessage:
    name = TaskName.BOEFJE_RUN if queue == Queue.BOEFJES else TaskName.NORMALIZER_RUN
    return OutgoingMessage(uuid.uuid4(), name.value, queue.value, band, {"organisation": "aa"})


# --- the database -----------------------------------------------------------------------------


def test_tasks_are_counted_by_status_scheduler_and_queued_band(settings: Settings, engine: Engine) -> None:
    store = TaskStore(engine)
    running, done, cancelled = (NewTaskFactory(band=b) for b in (0, 5, 5))
    waiting = NewTaskFactory(band=9)
    normalizer = NewTaskFactory(band=3, scheduler_id=SchedulerId.NORMALIZER, type="normalizer")
    store.claim([running, done, cancelled, waiting, normalizer])
    store.start(running.id, "w:1")
    store.start(done.id, "w:1")
    store.finish(done.id, TaskStatus.COMPLETED)
    store.cancel([cancelled.id])

    tasks = collect_status(settings, engine=engine).tasks
    assert tasks.error is None and tasks.total == 5
    assert {s: n for s, n in (tasks.by_status or {}).items() if n} == {
        TaskStatus.QUEUED: 2,
        TaskStatus.RUNNING: 1,
        TaskStatus.COMPLETED: 1,
        TaskStatus.CANCELLED: 1,
    }
    by_scheduler = tasks.by_scheduler or {}
    assert {s: n for s, n in by_scheduler["boefje"].items() if n} == {
        TaskStatus.QUEUED: 1,
        TaskStatus.RUNNING: 1,
        TaskStatus.COMPLETED: 1,
        TaskStatus.CANCELLED: 1,
    }
    assert {s: n for s, n in by_scheduler["normalizer"].items() if n} == {TaskStatus.QUEUED: 1}
    assert tasks.queued_by_band == {
        "boefjes": {band: int(band == 9) for band in range(10)},
        "normalizers": {band: int(band == 3) for band in range(10)},
    }


def test_rows_the_reaper_would_repair_are_listed_as_stalled_until_it_has(
    settings: Settings, engine: Engine, redis_url: str
) -> None:
    store = TaskStore(engine)
    stuck, busy, orphan, young, published = NewTaskFactory.create_batch(5)
    store.claim([stuck, busy, orphan, young, published])
    store.start(stuck.id, "lost-host:12")
    store.start(busy.id, "live-host:13")
    store.mark_published([published.id])
    age(engine, stuck.id, started_at=utcnow() - timedelta(seconds=181))
    age(engine, busy.id, started_at=utcnow() - timedelta(seconds=170))
    for task in (orphan, published):
        age(engine, task.id, created_at=utcnow() - timedelta(minutes=5))

    stalled = collect_status(settings, engine=engine).stalled
    assert stalled.error is None and stalled.running is not None and stalled.unpublished is not None
    assert stalled.running.threshold_seconds == 180 and stalled.running.count == 1
    [row] = stalled.running.rows
    assert (row.id, row.worker, row.status) == (stuck.id, "lost-host:12", TaskStatus.RUNNING)
    assert 180 < (row.age_seconds or 0) < 240
    assert stalled.unpublished.threshold_seconds == 60
    assert [r.id for r in stalled.unpublished.rows] == [orphan.id] and stalled.unpublished.count == 1

    publisher = make_publisher(settings)
    try:
        Reaper(store, publisher, settings).reap(utcnow())
    finally:
        publisher.close()
    after = collect_status(settings, engine=engine).stalled
    assert after.running is not None and after.running.count == 0
    assert after.unpublished is not None and after.unpublished.count == 0


def test_only_as_many_stalled_rows_are_listed_as_asked_oldest_first(settings: Settings, engine: Engine) -> None:
    store = TaskStore(engine)
    orphans = NewTaskFactory.create_batch(4)
    store.claim(orphans)
    for minutes, task in enumerate(orphans, start=2):
        age(engine, task.id, created_at=utcnow() - timedelta(minutes=minutes))
    unpublished = collect_status(settings, engine=engine, examples=2).stalled.unpublished
    assert unpublished is not None and unpublished.count == 4
    assert [r.id for r in unpublished.rows] == [orphans[3].id, orphans[2].id]


def test_due_schedules_are_the_enabled_ones_whose_deadline_passed(settings: Settings, engine: Engine) -> None:
    now = utcnow()
    overdue = NewScheduleFactory(deadline_at=now - timedelta(minutes=10))
    due = NewScheduleFactory(deadline_at=now - timedelta(minutes=1))
    disabled_due = NewScheduleFactory(deadline_at=now - timedelta(hours=1))
    later = NewScheduleFactory.create_batch(2, deadline_at=now + timedelta(hours=1))
    schedules = ScheduleStore(engine)
    schedules.upsert([overdue, due, disabled_due, *later])
    schedules.disable_hashes([disabled_due.hash], "plugin disabled")

    section = collect_status(settings, engine=engine, now=now).schedules
    assert section.error is None
    assert (section.enabled, section.disabled, section.due) == (4, 1, 2)
    assert section.oldest_due_at == overdue.deadline_at and section.oldest_due_seconds == pytest.approx(600, abs=1)


def test_a_database_behind_the_newest_schema_says_so_and_the_sections_needing_newer_tables_fail(
    settings: Settings, tmp_path
) -> None:
    uri = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(uri, "0002")
    report = collect_status(settings.model_copy(update={"db_uri": uri}))
    assert report.database.error is None
    assert (report.database.revision, report.database.up_to_date) == ("0002", False)
    assert report.failed == ["producers", "stalled"]
    assert "producer_runs" in (report.producers.error or "")
    assert "unpublished_tasks" in (report.stalled.error or "")
    assert report.tasks.error is None and report.tasks.total == 0


# --- the broker -------------------------------------------------------------------------------


def test_redis_depths_per_band_are_what_the_publisher_put_there(settings: Settings) -> None:
    publisher = make_publisher(settings)
    try:
        publisher.publish([message(0), message(0), message(3), message(9), message(1, Queue.NORMALIZERS)])
    finally:
        publisher.close()
    broker = collect_broker(settings)
    assert broker.error is None and broker.transport == "redis"
    depths = {q.queue: q for q in broker.queues or []}
    assert depths["boefjes"].messages == 4
    assert depths["boefjes"].bands == {0: 2, 1: 0, 2: 0, 3: 1, 4: 0, 5: 0, 6: 0, 7: 0, 8: 0, 9: 1}
    assert depths["normalizers"].messages == 1 and (depths["normalizers"].bands or {})[1] == 1
    assert depths["scheduler"].messages == 0


@pytest.fixture
def status_amqp(events_amqp_base: str) -> Iterator[str]:
    """RabbitMQ on a vhost of our own, without our task queues before and after."""
    url = own_vhost(events_amqp_base, vhost_name("status"))

    def drop() -> None:
        with Connection(url, connect_timeout=3) as conn:
            for queue in Queue:
                with conn.channel() as channel, contextlib.suppress(*conn.channel_errors):
                    channel.queue_delete(queue.value)

    drop()
    yield url
    drop()


def test_rabbitmq_depths_are_totals_per_queue_and_undeclared_queues_are_said_to_be(status_amqp: str) -> None:
    settings = load_settings(broker_url=status_amqp)
    before = collect_broker(settings)
    assert before.error is None and before.transport == "amqp"
    assert all(q.messages is None and "not declared" in (q.error or "") for q in before.queues or [])

    publisher = make_publisher(settings)  # declares our queues, as workers do
    try:
        publisher.publish([message(0), message(5), message(9)])
    finally:
        publisher.close()
    depths = {q.queue: q for q in collect_broker(settings).queues or []}
    assert (depths["boefjes"].messages, depths["boefjes"].consumers, depths["boefjes"].bands) == (3, 0, None)
    assert depths["normalizers"].messages == 0 and depths["normalizers"].error is None


# --- the command ------------------------------------------------------------------------------


def test_the_json_output_parses_has_the_documented_keys_and_exits_0(settings: Settings, pg_engine: Engine) -> None:
    TaskStore(pg_engine).claim([NewTaskFactory(band=4)])
    result = run_status(settings, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == REPORT_KEYS
    for section, keys in SECTION_KEYS.items():
        assert set(data[section]) == keys, section
    assert data["ok"] is True and data["failed"] == []
    assert data["tasks"]["queued_by_band"]["boefjes"]["4"] == 1
    assert [p["name"] for p in data["producers"]["producers"]] == [
        "plan-boefjes",
        "queue-due-schedules",
        "queue-report-schedules",
        "reap",
        "listener",
    ]
    assert StatusReport.model_validate(data).tasks.total == 1  # and it reads back


def test_the_table_output_exits_0_when_everything_answers(settings: Settings, pg_engine: Engine) -> None:
    result = run_status(settings)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].endswith(": ok")
    for title in ("Database", "Broker", "Tasks", "Queued tasks per band", "Schedules", "Producers", "Stalled rows"):
        assert any(line.startswith(title) for line in result.output.splitlines()), title


def test_a_broker_that_is_down_fails_its_section_and_exit_code_but_the_database_is_reported(
    settings: Settings, pg_engine: Engine
) -> None:
    TaskStore(pg_engine).claim(NewTaskFactory.create_batch(2))
    result = run_status(settings.model_copy(update={"broker_url": UNREACHABLE_REDIS}), "--json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["ok"] is False and data["failed"] == ["broker"]
    assert "Connection refused" in data["broker"]["error"] and data["broker"]["queues"] is None
    assert data["tasks"]["error"] is None and data["tasks"]["by_status"]["queued"] == 2
    assert data["schedules"]["error"] is None and data["producers"]["error"] is None

    table = run_status(settings.model_copy(update={"broker_url": UNREACHABLE_REDIS}))
    assert table.exit_code == 1 and "FAILED: broker" in table.output and "  ERROR: BrokerError" in table.output


def test_a_database_that_is_down_fails_its_sections_but_the_broker_is_reported(settings: Settings) -> None:
    publisher = make_publisher(settings)
    try:
        publisher.publish([message(2)])
    finally:
        publisher.close()
    result = run_status(settings.model_copy(update={"db_uri": UNREACHABLE_POSTGRES}), "--json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["failed"] == ["database", "tasks", "schedules", "producers", "stalled"]
    assert "Connection refused" in data["database"]["error"]
    assert data["broker"]["error"] is None and data["broker"]["queues"][0]["bands"]["2"] == 1


def test_a_missing_sqlite_file_is_reported_not_created(settings: Settings, tmp_path) -> None:
    path = tmp_path / "absent.db"
    report = collect_status(settings.model_copy(update={"db_uri": f"sqlite:///{path}"}))
    assert report.database.error == f"no database file at {path}: run `kat-scheduler db upgrade`"
    assert not path.exists()


def test_a_database_without_a_schema_says_so_in_each_section_that_needs_it(settings: Settings, tmp_path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    report = collect_status(settings.model_copy(update={"db_uri": f"sqlite:///{path}"}))
    assert report.database.error is None and (report.database.revision, report.database.up_to_date) == (None, False)
    assert report.failed == ["tasks", "schedules", "producers", "stalled"]
    assert report.tasks.error == "no schema (see database)"
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [], "nothing may be created"


def test_no_broker_reads_only_the_database_and_a_broker_that_is_gone_is_no_failure(
    settings: Settings, pg_engine: Engine
) -> None:
    TaskStore(pg_engine).claim(NewTaskFactory.create_batch(2))
    result = run_status(settings.model_copy(update={"broker_url": UNREACHABLE_REDIS}), "--no-broker", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True and data["broker"]["queues"] is None and data["broker"]["error"] is None
    assert data["tasks"]["by_status"]["queued"] == 2


# --- backpressure -----------------------------------------------------------------------------


def test_backpressure_is_off_while_the_boefjes_queue_is_within_its_limit_and_on_above_it(settings: Settings) -> None:
    publisher = make_publisher(settings)
    try:
        publisher.publish([message(2), message(7)])
    finally:
        publisher.close()
    shallow = collect_broker(settings).backpressure
    assert shallow is not None and (shallow.depth, shallow.max_band) == (2, None)
    deep = collect_broker(settings.model_copy(update={"queue_depth_limit_boefjes": 1, "backpressure_band": 3}))
    assert deep.backpressure is not None and (deep.backpressure.depth, deep.backpressure.max_band) == (2, 3)
    assert deep.backpressure.reason == "queue boefjes holds 2 messages (limit 1): only bands <= 3 are added"


def test_a_broker_that_is_down_means_backpressure_and_status_says_so(settings: Settings, pg_engine: Engine) -> None:
    down = settings.model_copy(update={"broker_url": "redis://:s3cret@127.0.0.1:1/0", "backpressure_band": 2})
    data = json.loads(run_status(down, "--json").output)
    state = data["broker"]["backpressure"]
    assert state["depth"] is None and state["max_band"] == 2
    assert state["reason"].startswith("the depth of queue boefjes could not be read (BrokerError: ")
    table = run_status(down).output
    [line] = [line for line in table.splitlines() if line.startswith("Backpressure")]
    assert line.startswith("Backpressure (boefjes): ON, the depth of queue boefjes could not be read")
    assert line.endswith("only bands <= 2 are added, as when the queue is deep")
    assert "s3cret" not in table + json.dumps(data)


def test_a_producer_whose_last_run_held_bands_back_says_why(settings: Settings, pg_engine: Engine) -> None:
    now = utcnow()
    runs = ProducerRunStore(pg_engine)
    summary = {"queued": 0, "queue_depth": None, "queue_depth_error": "BrokerError: refused", "backpressure": True}
    runs.record(
        ProducerName.QUEUE_DUE_SCHEDULES, started_at=now, finished_at=now, outcome=RunOutcome.OK, summary=summary
    )
    runs.record(
        ProducerName.REAP, started_at=now, finished_at=now, outcome=RunOutcome.OK, summary={"backpressure": False}
    )
    producers = run_status(settings).output.split("Producers (last run)")[1].split("\n\n")[0]
    assert (
        "  queue-due-schedules: BACKPRESSURE in its last run, only urgent bands added: "
        "the queue depth could not be read (BrokerError: refused)"
    ) in producers.splitlines()
    assert "reap: BACKPRESSURE" not in producers
