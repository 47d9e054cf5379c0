"""What a new user sees when something is not ready: one line naming it and what to do, a
non-zero exit, nothing created, and no traceback. Every test goes through the real command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from kat_scheduler.run.embedded import free_port
from kat_scheduler.settings import masked_url
from kat_scheduler.storage import migrate
from kat_scheduler.storage.db import make_engine
from tests.conftest import new_database
from tests.runs import (
    CONFIG_PREFIXES,
    clean_environment,
    processes_of_run,
    run_command,
    wait_for_line,
)
from tests.workers import ROOT

#: Where the expected revision comes from: the newest migration script.
HEAD = migrate.head_revision()


def environment(**settings: str) -> dict[str, str]:
    """This process's environment without any scheduler or KAT settings, plus ``settings``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}, **settings}


def kat_scheduler(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kat_scheduler", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command's only line on stderr (it must have said nothing else, and no traceback)."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def closed_port() -> int:
    return free_port()  # nobody listens there


# --- a) the database ----------------------------------------------------------------------------

COMMANDS_NEEDING_THE_SCHEMA = {
    "plan": ["plan", "--dry-run"],
    "push": ["push", "boefje", "--org", "org01", "--boefje", "dns-records", "--ooi", "Hostname|internet|x"],
    "listen": ["listen"],
}


@pytest.mark.parametrize("command", list(COMMANDS_NEEDING_THE_SCHEMA))
def test_a_missing_sqlite_database_is_named_in_one_line_and_not_created(command: str, tmp_path: Path) -> None:
    path = tmp_path / "kat_scheduler.db"
    env = environment(SCHEDULER_DB_URI=f"sqlite:///{path}", SCHEDULER_BROKER_URL=f"redis://127.0.0.1:{closed_port()}")
    result = kat_scheduler(tmp_path, env, *COMMANDS_NEEDING_THE_SCHEMA[command])
    assert result.returncode == 2
    assert one_line(result) == (
        f"kat-scheduler: the database sqlite:///{path} does not exist (no file {path}; expected revision {HEAD}): "
        "run `kat-scheduler db upgrade`"
    )
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == [], "nothing may be created"


@pytest.mark.parametrize("role", [["worker", "-Q", "scheduler", "-c", "1"], ["beat"]], ids=["worker", "beat"])
def test_a_celery_worker_or_beat_on_a_missing_database_stops_at_start_naming_it(
    role: list[str], tmp_path: Path, redis_url: str
) -> None:
    path = tmp_path / "kat_scheduler.db"
    env = environment(SCHEDULER_DB_URI=f"sqlite:///{path}", SCHEDULER_BROKER_URL=redis_url, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "kat_scheduler", *role],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"does not exist (no file {path}; expected revision {HEAD}): run `kat-scheduler db upgrade`" in result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing may be created"


@pytest.mark.parametrize("role", [["worker", "-Q", "scheduler"], ["beat"]], ids=["worker", "beat"])
def test_a_celery_worker_or_beat_with_an_invalid_setting_names_it_in_one_line(role: list[str], tmp_path: Path) -> None:
    env = environment(SCHEDULER_BATCH_SIZE="abc", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "kat_scheduler", *role],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "kat-scheduler: invalid settings:",
        "  SCHEDULER_BATCH_SIZE: Input should be a valid integer, unable to parse string as an integer",
    ]


def test_import_mula_on_a_missing_sqlite_database_says_to_upgrade_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "kat_scheduler.db"
    env = environment(SCHEDULER_DB_URI=f"sqlite:///{path}")
    result = kat_scheduler(tmp_path, env, "import-mula", "--mula-db-uri", "postgresql://127.0.0.1:1/mula", "--dry-run")
    assert result.returncode != 0
    assert "kat-scheduler db upgrade" in one_line(result)
    assert list(tmp_path.iterdir()) == []


def test_status_on_a_missing_sqlite_database_says_to_upgrade_and_creates_nothing(
    tmp_path: Path, redis_url: str
) -> None:
    path = tmp_path / "kat_scheduler.db"
    result = kat_scheduler(
        tmp_path, environment(SCHEDULER_DB_URI=f"sqlite:///{path}", SCHEDULER_BROKER_URL=redis_url), "status"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"ERROR: no database file at {path}: run `kat-scheduler db upgrade`" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_an_empty_postgresql_database_is_named_with_its_revision_and_left_empty(tmp_path: Path) -> None:
    with new_database("kat_unmigrated") as uri:
        result = kat_scheduler(tmp_path, environment(SCHEDULER_DB_URI=uri), "plan", "--dry-run")
        engine = make_engine(uri, pool_size=1)
        try:
            tables = sa.inspect(engine).get_table_names()
        finally:
            engine.dispose()
    assert result.returncode == 2
    assert one_line(result) == (
        f"kat-scheduler: the database {masked_url(uri)} has no schema (revision none, expected {HEAD}): "
        "run `kat-scheduler db upgrade`"
    )
    assert tables == [], "nothing may be created"


def test_a_database_behind_the_newest_revision_names_both_revisions(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(uri, "0002")
    result = kat_scheduler(tmp_path, environment(SCHEDULER_DB_URI=uri), "push", "boefje", "--org", "a", "--boefje", "b")
    assert result.returncode == 2
    assert one_line(result) == (
        f"kat-scheduler: the database {uri} is at revision 0002, expected {HEAD}: run `kat-scheduler db upgrade`"
    )
    assert migrate.current_revision(uri) == "0002"


def test_a_database_migrated_by_a_newer_version_is_not_told_to_upgrade(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'newer.db'}"
    migrate.upgrade(uri)
    engine = make_engine(uri, pool_size=1)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    result = kat_scheduler(tmp_path, environment(SCHEDULER_DB_URI=uri), "listen")
    assert result.returncode == 2
    line = one_line(result)
    assert f"is at revision 9999, which this kat-scheduler does not know (its newest is {HEAD})" in line
    assert "db upgrade" not in line


def test_an_unreachable_database_is_named_without_its_password(tmp_path: Path) -> None:
    uri = f"postgresql://kat:s3cret@127.0.0.1:{closed_port()}/kat"
    result = kat_scheduler(tmp_path, environment(SCHEDULER_DB_URI=uri), "plan", "--dry-run")
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f"kat-scheduler: cannot read the database {masked_url(uri)}: OperationalError: ")
    assert "Connection refused" in line and "s3cret" not in line


# --- b) brokers that cannot be reached ----------------------------------------------------------


def test_listen_with_an_unreachable_event_bus_fails_at_once_naming_it_without_its_password(
    tmp_path: Path, sqlite_uri: str, redis_url: str
) -> None:
    events = f"amqp://guest:s3cret@127.0.0.1:{closed_port()}//"
    env = environment(SCHEDULER_DB_URI=sqlite_uri, SCHEDULER_BROKER_URL=redis_url, QUEUE_URI=events)
    started = time.monotonic()
    result = kat_scheduler(tmp_path, env, "listen")
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert one_line(result) == (
        f"kat-scheduler: cannot reach the event bus (QUEUE_URI) at amqp://guest:***@127.0.0.1:{events.split(':')[3]}: "
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )


def test_listen_with_an_unreachable_broker_fails_at_once_naming_it_without_its_password(
    tmp_path: Path, sqlite_uri: str, redis_url: str
) -> None:
    broker = f"redis://:s3cret@127.0.0.1:{closed_port()}/0"
    env = environment(SCHEDULER_DB_URI=sqlite_uri, SCHEDULER_BROKER_URL=broker, QUEUE_URI=redis_url)
    result = kat_scheduler(tmp_path, env, "listen")
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f"kat-scheduler: cannot reach the broker (SCHEDULER_BROKER_URL) at {masked_url(broker)}: ")
    assert "Connection refused" in line and "s3cret" not in line


def test_run_with_an_unreachable_broker_fails_within_seconds_and_starts_nothing(tmp_path: Path) -> None:
    broker = f"redis://:s3cret@127.0.0.1:{closed_port()}/0"
    env = {**clean_environment(tmp_path / "state"), "SCHEDULER_BROKER_URL": broker}
    started = time.monotonic()
    result = subprocess.run(
        run_command("--no-flower", "--duration", "30"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < 15, "the run must fail at once, not idle for its duration"
    assert result.returncode == 1
    assert f"kat-scheduler run: cannot reach the broker (SCHEDULER_BROKER_URL) at {masked_url(broker)}: " in (
        result.stderr
    )
    assert "s3cret" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert "started in" not in result.stdout and "all stopped cleanly" not in result.stdout
    assert processes_of_run(tmp_path / "state") == []


def test_run_with_an_unreachable_event_bus_fails_within_seconds_and_creates_no_database(
    tmp_path: Path, redis_url: str
) -> None:
    events = f"amqp://guest:s3cret@127.0.0.1:{closed_port()}//"
    env = {**clean_environment(tmp_path / "state"), "QUEUE_URI": events, "SCHEDULER_BROKER_URL": redis_url}
    started = time.monotonic()
    result = subprocess.run(
        run_command("--no-flower", "--duration", "30"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert f"kat-scheduler run: cannot reach the event bus (QUEUE_URI) at {masked_url(events)}: " in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert not (tmp_path / "kat_scheduler.db").exists(), "the external run's default SQLite file was created"


# --- d) the listener's log ----------------------------------------------------------------------


def test_the_listener_logs_its_event_bus_by_url_with_the_password_masked(
    tmp_path: Path,
    sqlite_uri: str,
    redis_url: str,
    amqp_events: str,
) -> None:
    env = environment(SCHEDULER_DB_URI=sqlite_uri, SCHEDULER_BROKER_URL=redis_url, QUEUE_URI=amqp_events)
    log = tmp_path / "listen.log"
    with open(log, "wb") as sink:
        listener = subprocess.Popen(
            [sys.executable, "-m", "kat_scheduler", "listen"], cwd=tmp_path, env=env, stdout=sink, stderr=sink
        )
    try:
        line = wait_for_line(log, r"listening on .*", listener, timeout=60).group(0)
    finally:
        listener.send_signal(signal.SIGINT)
        listener.wait(timeout=30)
    assert f" at {masked_url(amqp_events)} " in line
    assert "<class" not in log.read_text()
    assert ":***@" in masked_url(amqp_events), "the fixture's URL has a password to mask"


# --- e) the run's status lines ------------------------------------------------------------------


def test_a_failing_katalogus_is_named_in_the_run_status_line_with_its_whole_reason(tmp_path: Path) -> None:
    katalogus = f"http://127.0.0.1:{closed_port()}"
    env = {**clean_environment(tmp_path / "state"), "KATALOGUS_API": katalogus}
    args = ("--mode", "embedded", "--no-flower", "--organisations", "1", "--oois-per-org", "10", "--duration", "3")
    result = subprocess.run(run_command(*args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    status_lines = [line for line in result.stdout.splitlines() if re.match(r"t=\d+s ", line)]
    assert status_lines, result.stdout
    errors = re.search(r"errors\[(.*)\]$", status_lines[0])
    assert errors, status_lines[0]
    assert errors.group(1).startswith("katalogus: GET /v1/organisations: connection failed: "), errors.group(1)
    assert errors.group(1).endswith("Connection refused"), "the reason must not be cut off"
    assert "octopoes" not in errors.group(1)


# --- f) this run's status -----------------------------------------------------------------------


def test_the_embedded_run_prints_a_status_command_for_while_it_runs_and_one_that_works_after(tmp_path: Path) -> None:
    executable = str(ROOT / ".venv" / "bin" / "kat-scheduler")
    shell_env = environment()
    output = tmp_path / "run.out"
    args = ("--no-flower", "--organisations", "1", "--oois-per-org", "10", "--duration", "8")
    with open(output, "wb") as sink:
        run = subprocess.Popen(run_command(*args), cwd=tmp_path, env=clean_environment(tmp_path / "state"), stdout=sink)
    try:
        while_up = wait_for_line(output, r"\n  status +(.*)\n", run, timeout=90).group(1)
        broker = wait_for_line(output, r"\n  broker +(\S+)", run, timeout=5).group(1)
        assert executable in while_up and f"SCHEDULER_BROKER_URL={broker}" in while_up
        during = subprocess.run(while_up, shell=True, cwd=tmp_path, env=shell_env, capture_output=True, text=True)
        assert during.returncode == 0, during.stdout + during.stderr
        assert f"Broker  {broker}  (messages waiting" in during.stdout
        assert run.wait(timeout=60) == 0, output.read_text()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    summary = re.search(
        r"this run's tasks until the next run \(its queues went with the embedded Redis\): (.*)", output.read_text()
    )
    assert summary, output.read_text()
    after = subprocess.run(summary.group(1), shell=True, cwd=tmp_path, env=shell_env, capture_output=True, text=True)
    assert after.returncode == 0, after.stdout + after.stderr
    assert executable in summary.group(1) and "Traceback" not in after.stderr
    assert "not read (--no-broker)" in after.stdout
    assert re.search(r"^completed +[1-9]", after.stdout, re.M), after.stdout


@pytest.mark.parametrize(
    ("ooi", "reason"),
    [
        (os.fsdecode(b"Hostname|internet|\xff.example"), "is not valid UTF-8 text"),
        ("Hostname|internet|" + "a" * 1010, "is 1028 characters long; an object key has at most 1024"),
    ],
    ids=["undecodable", "too-long"],
)
def test_push_refuses_an_object_key_the_database_cannot_store_in_one_line(
    ooi: str, reason: str, tmp_path: Path
) -> None:
    env = environment(SCHEDULER_DB_URI=f"sqlite:///{tmp_path / 'kat_scheduler.db'}")
    result = subprocess.run(
        [sys.executable, "-m", "kat_scheduler", "push", "boefje", "--org", "org01", "--boefje", "b", "--ooi", ooi],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr
    assert f"Invalid value for '--ooi': {reason}".encode() in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_import_mula_with_a_url_that_is_no_database_names_it_without_its_password(tmp_path: Path) -> None:
    path = tmp_path / "kat_scheduler.db"
    migrate.upgrade(f"sqlite:///{path}")
    env = environment(SCHEDULER_DB_URI=f"sqlite:///{path}")
    result = kat_scheduler(tmp_path, env, "import-mula", "--mula-db-uri", "garbage://mula:s3cret@db/mula", "--dry-run")
    assert result.returncode == 2
    assert one_line(result) == (
        "kat-scheduler: --mula-db-uri garbage://mula:***@db/mula is not a database URL we can use: "
        "Can't load plugin: sqlalchemy.dialects:garbage"
    )
