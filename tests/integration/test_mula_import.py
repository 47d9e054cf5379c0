"""The import from mula: a mula-shaped PostgreSQL database (our own DDL after mula's migrations),
filled by factories, imported into our database, and the outcome checked through our stores.

Mula's schema as its alembic migrations leave it (``mula/scheduler/storage/migrations/versions``):
current = revision 0011 (0008 added ``schedules`` and ``tasks.data/hash/priority/schedule_id``,
0009/0010 ``organisation``, 0011 the indexes below); legacy = revision 0007 (``tasks.p_item``,
``items``). Status is the enum ``taskstatus`` with mula's upper-case member names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy import Engine

from kat_scheduler.models import TaskStatus
from kat_scheduler.mula_import import (
    DISABLED_REASON,
    IMPORT_REASON,
    ImportSummary,
    MulaSchemaError,
    Outcome,
    import_from_mula,
    mula_import_cmd,
)
from kat_scheduler.producers import TickProducer
from kat_scheduler.rules import grace_skip
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.storage import ScheduleStore, TaskStore
from kat_scheduler.storage.db import make_engine, normalise_url
from tests.conftest import new_database
from tests.factories import (
    MULA_EPOCH,
    BoefjeFactory,
    MulaBoefjeTaskRowFactory,
    MulaNormalizerTaskRowFactory,
    MulaScheduleRowFactory,
    mula_boefje_hash,
)

NOW = MULA_EPOCH + timedelta(hours=1)
#: Small pages, so that every test also walks the keyset pagination.
BATCH = 3

CURRENT_DDL = """
CREATE TYPE taskstatus AS ENUM ('PENDING', 'QUEUED', 'DISPATCHED', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED');
CREATE TABLE schedules (
    id UUID PRIMARY KEY,
    scheduler_id VARCHAR NOT NULL,
    organisation VARCHAR NOT NULL,
    hash VARCHAR(32) UNIQUE,
    data JSONB NOT NULL,
    enabled BOOLEAN NOT NULL,
    schedule VARCHAR,
    deadline_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    modified_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now()
);
CREATE INDEX ix_schedules_enabled ON schedules (enabled);
CREATE INDEX ix_schedules_organisation ON schedules (organisation);
CREATE INDEX ix_schedules_scheduler_id ON schedules (scheduler_id);
CREATE TABLE tasks (
    id UUID PRIMARY KEY,
    scheduler_id VARCHAR NOT NULL,
    schedule_id UUID REFERENCES schedules (id) ON DELETE SET NULL,
    organisation VARCHAR NOT NULL,
    type VARCHAR NOT NULL,
    hash VARCHAR(32),
    priority INTEGER,
    data JSONB NOT NULL,
    status taskstatus NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    modified_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now()
);
CREATE INDEX ix_tasks_hash ON tasks (hash);
CREATE INDEX ix_tasks_status_queued ON tasks (scheduler_id, status) WHERE status = 'QUEUED';
CREATE UNIQUE INDEX ix_tasks_active_per_schedule ON tasks (schedule_id)
    WHERE status IN ('PENDING', 'QUEUED', 'DISPATCHED', 'RUNNING');
CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY);
INSERT INTO alembic_version VALUES ('0011');
"""

LEGACY_DDL = """
CREATE SCHEMA legacy;
SET search_path TO legacy;
CREATE TYPE taskstatus AS ENUM ('PENDING', 'QUEUED', 'DISPATCHED', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED');
CREATE TABLE tasks (
    id UUID PRIMARY KEY,
    scheduler_id VARCHAR,
    p_item JSONB NOT NULL,
    status taskstatus NOT NULL,
    type VARCHAR,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    modified_at TIMESTAMP WITH TIME ZONE NOT NULL
);
CREATE INDEX ix_tasks_p_item_hash ON tasks ((p_item->>'hash'), created_at DESC);
CREATE TABLE items (
    id UUID PRIMARY KEY,
    scheduler_id VARCHAR,
    hash VARCHAR,
    priority INTEGER,
    data JSONB NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    modified_at TIMESTAMP WITH TIME ZONE NOT NULL
);
CREATE INDEX ix_items_hash ON items (hash);
CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY);
INSERT INTO alembic_version VALUES ('0007');
SET search_path TO public;
CREATE SCHEMA empty;
"""


@pytest.fixture(scope="session")
def mula_uri() -> Iterator[str]:
    """A database of its own, shaped like mula's (current schema in public, legacy in ``legacy``)."""
    with new_database("mula_test") as uri:
        engine = sa.create_engine(uri)
        with engine.begin() as conn:
            conn.exec_driver_sql(CURRENT_DDL)
            conn.exec_driver_sql(LEGACY_DDL)
        engine.dispose()
        yield uri


@pytest.fixture
def mula(mula_uri: str) -> Iterator[Engine]:
    """Mula's current schema, emptied after each test."""
    engine = make_engine(mula_uri, pool_size=2)
    yield engine
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE tasks, schedules"))
    engine.dispose()


@pytest.fixture
def legacy_mula(mula_uri: str) -> Iterator[Engine]:
    """Mula's legacy schema (revision 0007): the default schema of this engine is ``legacy``."""
    url = normalise_url(mula_uri)
    engine = sa.create_engine(url, connect_args={"options": "-csearch_path=legacy"})
    yield engine
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE tasks, items"))
    engine.dispose()


def insert(engine: Engine, table: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with engine.begin() as conn:
        target = sa.Table(table, sa.MetaData(), autoload_with=conn)
        conn.execute(target.insert(), rows)


def run(mula: Engine, ours: Engine, **kwargs: Any) -> ImportSummary:
    kwargs.setdefault("batch_size", BATCH)
    kwargs.setdefault("now", NOW)
    return import_from_mula(mula, ours, **kwargs)


def count_rows(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


# --- schedules ----------------------------------------------------------------------------------


def test_schedules_keep_hash_cron_enabled_and_deadline(mula: Engine, pg_engine: Engine) -> None:
    daily = MulaScheduleRowFactory(input_ooi="Hostname|internet|daily.example.nl")
    disabled = MulaScheduleRowFactory(enabled=False, schedule=None, boefje_id="nmap")
    no_deadline = MulaScheduleRowFactory(deadline_at=None, schedule="*/30 * * * *")
    others = MulaScheduleRowFactory.create_batch(4)
    insert(mula, "schedules", [daily, disabled, no_deadline, *others])

    summary = run(mula, pg_engine)

    assert summary.count("boefje schedules", Outcome.IMPORTED) == 7
    store = ScheduleStore(pg_engine)
    ours = boefje_task_hash("dns-records", "aa", "Hostname|internet|daily.example.nl")
    assert ours == daily["hash"]  # mula's hash and ours are one and the same
    row = store.get_by_hash(ours)
    assert row is not None
    assert row.id == daily["id"] and row.enabled and row.disabled_reason is None
    assert row.schedule == "0 3 * * *" and row.deadline_at == daily["deadline_at"]
    assert (row.plugin_id, row.organisation, row.input_ooi) == ("dns-records", "aa", daily["data"]["input_ooi"])
    assert row.data == {
        "boefje": {"id": "dns-records", "name": "Dns Records", "version": None},
        "input_ooi": "Hostname|internet|daily.example.nl",
        "organization": "aa",
    }
    assert row.created_at == daily["created_at"] and row.modified_at == daily["modified_at"]

    off = store.get_by_hash(disabled["hash"])
    assert off is not None and not off.enabled and off.disabled_reason == DISABLED_REASON
    assert off.schedule is None and off.deadline_at == disabled["deadline_at"]

    fixed = store.get_by_hash(no_deadline["hash"])
    assert fixed is not None and fixed.deadline_at == datetime(2026, 5, 1, 13, 30, tzinfo=UTC)  # next */30 after NOW

    due = [r.hash for batch in store.iter_due(MULA_EPOCH + timedelta(days=1)) for r in batch]
    assert disabled["hash"] not in due and daily["hash"] in due


def test_report_normalizer_and_unknown_schedules_are_counted_not_imported(
    mula: Engine, pg_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    report = MulaScheduleRowFactory(scheduler_id="report", data={"report_recipe_id": "r1", "organisation_id": "aa"})
    odd = MulaScheduleRowFactory(scheduler_id="octopoes")
    kept = MulaScheduleRowFactory(scheduler_id="boefje-aa")  # the per-organisation ids of older mula
    insert(mula, "schedules", [report, odd, kept])
    with caplog.at_level(logging.WARNING, logger="kat_scheduler.mula_import"):
        summary = run(mula, pg_engine)
    assert summary.count("report schedules", Outcome.UNSUPPORTED) == 1
    assert summary.count("schedules (unknown scheduler)", Outcome.UNKNOWN_SCHEDULER) == 1
    assert summary.count("boefje schedules", Outcome.IMPORTED) == 1
    assert str(odd["id"]) in caplog.text
    assert ScheduleStore(pg_engine).existing_hashes([report["hash"], odd["hash"], kept["hash"]]) == {kept["hash"]}


# --- task history -------------------------------------------------------------------------------


def test_the_newest_finished_run_per_hash_is_imported_and_drives_grace(mula: Engine, engine: Engine) -> None:
    ooi = "Hostname|internet|graced.example.nl"
    runs = [
        MulaBoefjeTaskRowFactory(input_ooi=ooi, ended=MULA_EPOCH - timedelta(days=3)),
        MulaBoefjeTaskRowFactory(input_ooi=ooi, ended=MULA_EPOCH - timedelta(days=1), status="FAILED"),
        MulaBoefjeTaskRowFactory(input_ooi=ooi, ended=MULA_EPOCH - timedelta(hours=2)),
    ]
    live = MulaBoefjeTaskRowFactory(input_ooi=ooi, ended=MULA_EPOCH, status="QUEUED")
    failed_elsewhere = MulaBoefjeTaskRowFactory(
        boefje_id="nmap", ended=MULA_EPOCH - timedelta(hours=5), status="FAILED"
    )
    many = MulaBoefjeTaskRowFactory.create_batch(7)  # more hashes than a page holds
    insert(mula, "tasks", [*runs, live, failed_elsewhere, *many])

    summary = run(mula, engine)

    assert summary.count("boefje tasks", Outcome.IMPORTED) == 9
    assert summary.count("boefje tasks", Outcome.SUPERSEDED) == 2
    assert summary.count("boefje tasks", Outcome.LIVE) == 1
    tasks = TaskStore(engine)
    newest = tasks.get(runs[2]["id"])
    assert newest is not None
    assert newest.status == TaskStatus.COMPLETED and newest.reason == IMPORT_REASON
    assert newest.ended_at == runs[2]["modified_at"] and newest.created_at == runs[2]["created_at"]
    assert (newest.plugin_id, newest.organisation, newest.input_ooi) == ("dns-records", "aa", ooi)
    assert newest.data == runs[2]["data"] and newest.published_at is None
    assert tasks.get(runs[0]["id"]) is None and tasks.get(runs[1]["id"]) is None
    assert tasks.get(live["id"]) is None

    # The producers's and the event handlers' grace look-up sees mula's last run.
    hash_ = mula_boefje_hash("dns-records", "aa", ooi)
    assert tasks.last_runs([hash_]) == {hash_: runs[2]["modified_at"]}
    assert tasks.live_hashes([hash_]) == set()
    boefje = BoefjeFactory(id="dns-records", interval=None)
    assert grace_skip(boefje, runs[2]["modified_at"], NOW, 24 * 3600) is not None  # still within grace
    failed = tasks.get(failed_elsewhere["id"])
    assert failed is not None and failed.status == TaskStatus.FAILED
    assert tasks.count_by_status()[TaskStatus.COMPLETED] == 8


def test_live_cancelled_report_and_unknown_tasks_are_skipped_and_counted(
    mula: Engine, pg_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    live = [MulaBoefjeTaskRowFactory(status=s) for s in ("PENDING", "QUEUED", "DISPATCHED", "RUNNING")]
    cancelled = MulaBoefjeTaskRowFactory(status="CANCELLED")
    report = MulaBoefjeTaskRowFactory(scheduler_id="report", type="report", data={"report_recipe_id": "r"})
    unknown = MulaBoefjeTaskRowFactory(scheduler_id="mystery")
    normalizer_live = MulaNormalizerTaskRowFactory(status="RUNNING")
    insert(mula, "tasks", [*live, cancelled, report, unknown, normalizer_live])

    with caplog.at_level(logging.WARNING, logger="kat_scheduler.mula_import"):
        summary = run(mula, pg_engine)

    assert summary.count("boefje tasks", Outcome.LIVE) == 4
    assert summary.count("normalizer tasks", Outcome.LIVE) == 1
    assert summary.count("boefje tasks", Outcome.CANCELLED) == 1
    assert summary.count("report tasks", Outcome.UNSUPPORTED) == 1
    assert summary.count("tasks (unknown scheduler)", Outcome.UNKNOWN_SCHEDULER) == 1
    assert summary.total(Outcome.IMPORTED) == 0
    assert str(unknown["id"]) in caplog.text
    assert count_rows(pg_engine, "tasks") == 0
    text = "\n".join(summary.lines())
    assert "live in mula" in text and "no Celery message" in text


def test_normalizer_history_and_schedule_links_are_kept(mula: Engine, pg_engine: Engine) -> None:
    schedule = MulaScheduleRowFactory(input_ooi="Hostname|internet|linked.example.nl")
    insert(mula, "schedules", [schedule])
    linked = MulaBoefjeTaskRowFactory(input_ooi="Hostname|internet|linked.example.nl", schedule_id=schedule["id"])
    normalizer = MulaNormalizerTaskRowFactory()
    insert(mula, "tasks", [linked, normalizer])

    summary = run(mula, pg_engine)

    assert summary.count("normalizer tasks", Outcome.IMPORTED) == 1
    tasks = TaskStore(pg_engine)
    row = tasks.get(normalizer["id"])
    assert row is not None and row.hash == normalizer["hash"] and row.plugin_id == "kat_dns_normalize"
    assert row.input_ooi == "Hostname|internet|mispo.es"
    assert tasks.get(linked["id"]).schedule_id == schedule["id"]  # type: ignore[union-attr]


def test_running_the_import_twice_imports_nothing_new(mula: Engine, engine: Engine) -> None:
    insert(mula, "schedules", MulaScheduleRowFactory.create_batch(5))
    insert(mula, "tasks", [*MulaBoefjeTaskRowFactory.create_batch(5), MulaNormalizerTaskRowFactory()])

    first = run(mula, engine)
    rows = (count_rows(engine, "tasks"), count_rows(engine, "schedules"))
    second = run(mula, engine)

    assert first.total(Outcome.IMPORTED) == 11
    assert second.total(Outcome.IMPORTED) == 0
    assert second.count("boefje schedules", Outcome.PRESENT) == 5
    assert second.count("boefje tasks", Outcome.PRESENT) == 5
    assert second.count("normalizer tasks", Outcome.PRESENT) == 1
    assert (count_rows(engine, "tasks"), count_rows(engine, "schedules")) == rows == (6, 5)


def test_a_schedule_kat_scheduler_already_has_is_left_alone(mula: Engine, pg_engine: Engine) -> None:
    from tests.factories import NewScheduleFactory

    mine = NewScheduleFactory(input_ooi="Hostname|internet|mine.example.nl")
    ScheduleStore(pg_engine).add_many([mine])
    insert(mula, "schedules", [MulaScheduleRowFactory(input_ooi="Hostname|internet|mine.example.nl", enabled=False)])

    summary = run(mula, pg_engine)

    assert summary.count("boefje schedules", Outcome.PRESENT) == 1
    row = ScheduleStore(pg_engine).get_by_hash(mine.hash)
    assert row is not None and row.enabled  # ours stands


def test_malformed_rows_are_skipped_and_reported(
    mula: Engine, pg_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    bad_json = MulaBoefjeTaskRowFactory(data="not a task")
    no_org = MulaBoefjeTaskRowFactory()
    del no_org["data"]["organization"]
    bad_meta = MulaNormalizerTaskRowFactory()
    bad_meta["data"]["raw_data"]["boefje_meta"]["id"] = "not-a-uuid"
    good = MulaBoefjeTaskRowFactory()
    bad_cron = MulaScheduleRowFactory(schedule="every tuesday")
    empty = MulaScheduleRowFactory(data={})
    insert(mula, "tasks", [bad_json, no_org, bad_meta, good])
    insert(mula, "schedules", [bad_cron, empty, MulaScheduleRowFactory()])

    with caplog.at_level(logging.WARNING, logger="kat_scheduler.mula_import"):
        summary = run(mula, pg_engine)

    assert summary.count("boefje tasks", Outcome.MALFORMED) == 2
    assert summary.count("normalizer tasks", Outcome.MALFORMED) == 1
    assert summary.count("boefje schedules", Outcome.MALFORMED) == 2
    assert summary.count("boefje tasks", Outcome.IMPORTED) == 1
    assert summary.count("boefje schedules", Outcome.IMPORTED) == 1
    for row in (bad_json, no_org, bad_meta, bad_cron, empty):
        assert str(row["id"]) in caplog.text
    assert "not a valid cron expression" in caplog.text
    assert TaskStore(pg_engine).get(good["id"]) is not None


def test_a_dry_run_writes_nothing_and_counts_what_a_real_run_imports(mula: Engine, pg_engine: Engine) -> None:
    insert(mula, "schedules", MulaScheduleRowFactory.create_batch(4))
    insert(mula, "tasks", [*MulaBoefjeTaskRowFactory.create_batch(5), MulaBoefjeTaskRowFactory(status="RUNNING")])

    dry = run(mula, pg_engine, dry_run=True)

    assert (count_rows(pg_engine, "tasks"), count_rows(pg_engine, "schedules")) == (0, 0)
    assert "DRY RUN" in "\n".join(dry.lines()) and "would import" in "\n".join(dry.lines())
    real = run(mula, pg_engine)
    assert real.counts == dry.counts
    again = run(mula, pg_engine, dry_run=True)
    assert again.total(Outcome.IMPORTED) == 0 and again.total(Outcome.PRESENT) == 9


def test_history_before_since_is_left_behind(mula: Engine, pg_engine: Engine) -> None:
    old = MulaBoefjeTaskRowFactory(ended=MULA_EPOCH - timedelta(days=90))
    recent = MulaBoefjeTaskRowFactory(ended=MULA_EPOCH - timedelta(days=2))
    insert(mula, "tasks", [old, recent])
    summary = run(mula, pg_engine, since=MULA_EPOCH - timedelta(days=30))
    assert summary.count("boefje tasks", Outcome.BEFORE_SINCE) == 1
    assert summary.count("boefje tasks", Outcome.IMPORTED) == 1
    assert TaskStore(pg_engine).get(old["id"]) is None


def test_the_mula_database_is_only_read(mula: Engine, pg_engine: Engine) -> None:
    insert(mula, "schedules", [MulaScheduleRowFactory()])
    insert(mula, "tasks", [MulaBoefjeTaskRowFactory(), MulaBoefjeTaskRowFactory(status="QUEUED")])
    with mula.connect() as conn:
        before = conn.execute(sa.text("SELECT id, status::text, modified_at FROM tasks ORDER BY id")).all()
    run(mula, pg_engine)
    with mula.connect() as conn:
        assert conn.execute(sa.text("SELECT id, status::text, modified_at FROM tasks ORDER BY id")).all() == before


# --- the legacy schema and what is not mula -------------------------------------------------------


def test_legacy_tasks_with_p_item_and_per_organisation_scheduler_ids(legacy_mula: Engine, pg_engine: Engine) -> None:
    def legacy(row: dict[str, Any], scheduler_id: str) -> dict[str, Any]:
        p_item = {
            "id": str(row["id"]),
            "scheduler_id": scheduler_id,
            "hash": row["hash"],
            "priority": row["priority"],
            "data": row["data"],
        }
        return {
            "id": row["id"],
            "scheduler_id": scheduler_id,
            "p_item": p_item,
            "status": row["status"],
            "type": row["type"],
            "created_at": row["created_at"],
            "modified_at": row["modified_at"],
        }

    ooi = "Hostname|internet|legacy.example.nl"
    older = MulaBoefjeTaskRowFactory(input_ooi=ooi, ended=MULA_EPOCH - timedelta(days=1))
    newer = MulaBoefjeTaskRowFactory(input_ooi=ooi, ended=MULA_EPOCH - timedelta(hours=3))
    queued = MulaBoefjeTaskRowFactory(status="QUEUED")
    normalizer = MulaNormalizerTaskRowFactory(org="bb")
    rows = [legacy(r, "boefje-aa") for r in (older, newer, queued)] + [legacy(normalizer, "normalizer-bb")]
    rows += [legacy(r, "boefje-aa") for r in MulaBoefjeTaskRowFactory.create_batch(4)]
    insert(legacy_mula, "tasks", rows)
    insert(
        legacy_mula,
        "items",
        [
            {
                "id": queued["id"],
                "scheduler_id": "boefje-aa",
                "hash": queued["hash"],
                "priority": 7,
                "data": queued["data"],
                "created_at": MULA_EPOCH,
                "modified_at": MULA_EPOCH,
            }
        ],
    )

    summary = run(legacy_mula, pg_engine)

    assert "legacy schema" in summary.layout and summary.revision == "0007"
    assert summary.count("boefje tasks", Outcome.IMPORTED) == 5
    assert summary.count("boefje tasks", Outcome.SUPERSEDED) == 1
    assert summary.count("boefje tasks", Outcome.LIVE) == 1
    assert summary.count("normalizer tasks", Outcome.IMPORTED) == 1
    assert summary.count("legacy queue items", Outcome.LIVE) == 1
    tasks = TaskStore(pg_engine)
    hash_ = boefje_task_hash("dns-records", "aa", ooi)
    assert tasks.last_runs([hash_]) == {hash_: newer["modified_at"]}
    row = tasks.get(newer["id"])
    assert row is not None and row.priority == 7 and row.scheduler_id == "boefje"
    assert tasks.get(normalizer["id"]).organisation == "bb"  # type: ignore[union-attr]


def test_a_database_without_mula_tables_is_refused(mula_uri: str, pg_engine: Engine) -> None:
    empty = sa.create_engine(normalise_url(mula_uri), connect_args={"options": "-csearch_path=empty"})
    try:
        with pytest.raises(MulaSchemaError, match="no 'tasks' table"):
            import_from_mula(empty, pg_engine)
    finally:
        empty.dispose()


def test_our_own_database_is_not_taken_for_mula(pg_engine: Engine) -> None:
    with pytest.raises(MulaSchemaError, match="kat_scheduler's own"):
        import_from_mula(pg_engine, pg_engine)


# --- the command ----------------------------------------------------------------------------------


def test_the_command_imports_and_prints_a_summary(
    mula: Engine, mula_uri: str, pg_engine: Engine, postgres_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recent = datetime.now(UTC) - timedelta(hours=1)
    insert(mula, "schedules", [MulaScheduleRowFactory()])
    insert(
        mula,
        "tasks",
        [
            MulaBoefjeTaskRowFactory(ended=recent),
            MulaBoefjeTaskRowFactory(ended=recent - timedelta(days=365)),  # beyond the retention horizon
            MulaBoefjeTaskRowFactory(status="DISPATCHED"),
        ],
    )
    monkeypatch.setenv("SCHEDULER_DB_URI", postgres_uri)
    monkeypatch.setenv("MULA_DB_URI", mula_uri)
    runner = CliRunner()

    dry = runner.invoke(mula_import_cmd, ["--dry-run", "--batch-size", "2"])
    assert dry.exit_code == 0, dry.output
    assert "DRY RUN" in dry.output and count_rows(pg_engine, "tasks") == 0

    result = runner.invoke(mula_import_cmd, ["--batch-size", "2"])
    assert result.exit_code == 0, result.output
    lines = {" ".join(line.split()) for line in result.output.splitlines()}
    assert "boefje schedules imported 1" in lines
    assert "boefje tasks imported 1" in lines
    assert "boefje tasks before --since 1" in lines
    assert "boefje tasks live in mula 1" in lines
    assert count_rows(pg_engine, "tasks") == 1

    since = runner.invoke(mula_import_cmd, ["--since", (recent - timedelta(days=400)).strftime("%Y-%m-%d")])
    assert since.exit_code == 0, since.output
    assert count_rows(pg_engine, "tasks") == 2


def test_the_command_refuses_its_own_database_as_mula(postgres_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_DB_URI", postgres_uri)
    result = CliRunner().invoke(mula_import_cmd, ["--mula-db-uri", postgres_uri])
    assert result.exit_code == 2 and "mula's database" in result.output


def test_the_command_needs_a_mula_database_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MULA_DB_URI", raising=False)
    result = CliRunner().invoke(mula_import_cmd, [])
    assert result.exit_code == 2 and "--mula-db-uri" in result.output


# --- end to end: the producers honours the imported history and schedules ---------------------------


def test_the_planner_sees_imported_history_and_schedules(producers, world, mula: Engine, pg_engine: Engine) -> None:
    from kat_scheduler.rules import SkipReason
    from kat_scheduler.sim.oracle import allowed_boefje_tasks
    from tests.integration.conftest import WORLD_NOW

    now = WORLD_NOW + timedelta(minutes=5)
    allowed = sorted(allowed_boefje_tasks(world, now))
    periodic = [t for t in allowed if not (b := world.plugin(t[1])).cron and (b.interval or 1440) >= 60]
    assert len(periodic) >= 10, "the world should allow some interval boefjes"
    ran, scheduled = periodic[:6], periodic[6:10]
    insert(
        mula,
        "tasks",
        [
            MulaBoefjeTaskRowFactory(org=org, boefje_id=boefje, input_ooi=ooi, ended=now - timedelta(minutes=10))
            for org, boefje, ooi in ran
        ],
    )
    insert(
        mula,
        "schedules",
        [
            MulaScheduleRowFactory(org=org, boefje_id=boefje, input_ooi=ooi, deadline_at=now + timedelta(days=1))
            for org, boefje, ooi in scheduled
        ],
    )

    summary = run(mula, pg_engine)
    assert summary.count("boefje tasks", Outcome.IMPORTED) == 6
    assert summary.count("boefje schedules", Outcome.IMPORTED) == 4

    report = TickProducer(producers).run(now, dry_run=True)
    planned = {(c.organisation, c.boefje.id, c.input_ooi) for c in report.planned}
    assert planned == set(allowed) - set(ran) - set(scheduled)
    assert report.skipped[SkipReason.GRACE] >= len(ran)
    assert report.skipped[SkipReason.SCHEDULED] >= len(scheduled)
