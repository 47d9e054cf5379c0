"""Local plugins in KAT's layout, and a real worker enforcing the time limit."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from kat_scheduler.models import TaskStatus
from kat_scheduler.queues import Queue, TaskName
from kat_scheduler.storage import TaskRow, TaskStore
from kat_scheduler.workers.local import LocalPluginRunner
from kat_scheduler.workers.runners import UnknownPlugin
from tests.tasks import hostname_with_dns, publish_boefje, queued_boefje_task
from tests.workers import celery_worker, kat_env, wait_for, write_plugin


def row_of(store: TaskStore, task_id: uuid.UUID) -> TaskRow:
    """The task's row, which must exist."""
    row = store.get(task_id)
    assert row is not None, f"no row for task {task_id}"
    return row


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    root = tmp_path / "plugins"
    write_plugin(
        root,
        "kat_dns",
        "boefje.json",
        "main.py",
        "dns-records",
        """
        import os

        def run(boefje_meta):
            name = boefje_meta["arguments"]["input"]["primary_key"]
            return [({"openkat/dns"}, f"A 192.0.2.1 for {name} token={os.environ.get('TOKEN')}")]
        """,
    )
    write_plugin(
        root,
        "kat_dns_normalize",
        "normalizer.json",
        "normalize.py",
        "kat_dns_normalize",
        """
        def run(input_ooi, raw):
            yield {"object_type": "IPAddressV4", "primary_key": "IPAddressV4|internet|192.0.2.1"}
        """,
    )
    write_plugin(
        root,
        "slow",
        "boefje.json",
        "main.py",
        "dns-records-slow",
        """
        import time

        def run(boefje_meta):
            time.sleep(30)
            return []
        """,
    )
    (root / "broken").mkdir()
    (root / "broken" / "boefje.json").write_text("{not json")
    return root


def local_worker_env(kat, plugins: Path, postgres_uri: str, redis_url: str, soft: int, hard: int) -> dict[str, str]:
    return kat_env(
        kat,
        postgres_uri,
        redis_url,
        SCHEDULER_RUNNER="local",
        SCHEDULER_PLUGINS_PATH=str(plugins),
        SCHEDULER_SOFT_TIME_LIMIT=str(soft),
        SCHEDULER_HARD_TIME_LIMIT=str(hard),
    )


def test_local_plugins_run_with_kat_signatures_and_settings_as_environment(plugins: Path) -> None:
    runner = LocalPluginRunner(plugins)
    meta = {"arguments": {"input": {"primary_key": "Hostname|internet|mispo.es"}}}
    [(mime, raw)] = runner.run_boefje("dns-records", meta, {"TOKEN": "s3cret"})
    assert mime == {"openkat/dns"} and raw == b"A 192.0.2.1 for Hostname|internet|mispo.es token=s3cret"
    import os

    assert "TOKEN" not in os.environ  # the environment is restored after the run
    assert runner.run_normalizer("kat_dns_normalize", {}, raw) == [
        {"object_type": "IPAddressV4", "primary_key": "IPAddressV4|internet|192.0.2.1"}
    ]


def test_an_unknown_local_plugin_is_a_clear_error(plugins: Path) -> None:
    with pytest.raises(UnknownPlugin, match="no local boefje 'nope'"):
        LocalPluginRunner(plugins).run_boefje("nope", {}, {})


def test_a_boefje_past_its_soft_time_limit_fails_and_the_worker_lives_on(
    plugins, kat, world, clients, pg_engine, postgres_uri, redis_url, tmp_path
) -> None:
    store = TaskStore(pg_engine)
    org, ref = hostname_with_dns(world)
    world.set_plugin_enabled(org, "dns-records", True)
    slow = queued_boefje_task(store, org, "dns-records", ref, clients)
    env = local_worker_env(kat, plugins, postgres_uri, redis_url, soft=1, hard=5)
    # Make "dns-records" the slow plugin for this worker: point the id at the sleeping module.
    (plugins / "kat_dns" / "boefje.json").write_text(json.dumps({"id": "unused"}))
    (plugins / "slow" / "boefje.json").write_text(json.dumps({"id": "dns-records"}))
    publish_boefje(slow, org, ref, postgres_uri, redis_url)
    with celery_worker("kat_scheduler", [Queue.BOEFJES.value], env, log_file=tmp_path / "worker.log") as worker:
        finished = wait_for(lambda: row_of(store, slow).status == TaskStatus.FAILED, timeout=30)
        assert finished, (tmp_path / "worker.log").read_text()[-3000:]
        assert worker.poll() is None
    row = row_of(store, slow)
    assert row.error is not None and "SoftTimeLimitExceeded" in row.error
    with pg_engine.connect() as conn:
        assert conn.execute(select(TaskRow.status).where(TaskRow.id == slow)).scalar_one() == TaskStatus.FAILED
    assert any("error/boefje" in r.mime_types for r in world.raw_files_of(slow))


def test_a_boefje_that_ignores_its_soft_limit_is_killed_at_the_hard_limit_and_its_row_failed(
    plugins, kat, world, clients, pg_engine, postgres_uri, redis_url, tmp_path
) -> None:
    store = TaskStore(pg_engine)
    org, ref = hostname_with_dns(world)
    stubborn = queued_boefje_task(store, org, "dns-records", ref, clients)
    (plugins / "kat_dns" / "boefje.json").write_text(json.dumps({"id": "unused"}))
    (plugins / "slow" / "main.py").write_text(
        "import time\n\ndef run(boefje_meta):\n    while True:\n        try:\n            time.sleep(60)\n"
        "        except BaseException:\n            pass\n"
    )
    (plugins / "slow" / "boefje.json").write_text(json.dumps({"id": "dns-records"}))
    env = local_worker_env(kat, plugins, postgres_uri, redis_url, soft=1, hard=3)
    publish_boefje(stubborn, org, ref, postgres_uri, redis_url)
    with celery_worker("kat_scheduler", [Queue.BOEFJES.value], env, log_file=tmp_path / "worker.log") as worker:
        failed = wait_for(lambda: row_of(store, stubborn).status == TaskStatus.FAILED, timeout=30)
        assert failed, (tmp_path / "worker.log").read_text()[-3000:]
        assert worker.poll() is None
    assert "hard time limit" in (row_of(store, stubborn).error or "")


def test_a_worker_records_every_state_of_a_task(
    kat, world, clients, pg_engine, postgres_uri, redis_url, tmp_path
) -> None:
    """A real worker runs a queued task: started by its pool process (host:pid), then completed."""
    from kat_scheduler.workers.lifecycle import worker_id

    store = TaskStore(pg_engine)
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    env = {
        "OCTOPOES_API": kat.octopoes_url,
        "KATALOGUS_API": kat.katalogus_url,
        "BYTES_API": kat.bytes_url,
        "SCHEDULER_DB_URI": postgres_uri,
        "SCHEDULER_BROKER_URL": redis_url,
        "SCHEDULER_RUNNER": "simulated",
    }
    publish_boefje(task_id, org, ref, postgres_uri, redis_url)
    with celery_worker("kat_scheduler", [Queue.BOEFJES.value], env, log_file=tmp_path / "worker.log"):
        done = wait_for(lambda: row_of(store, task_id).status == TaskStatus.COMPLETED, timeout=30)
    assert done, (tmp_path / "worker.log").read_text()[-3000:]
    row = row_of(store, task_id)
    assert row.started_at and row.ended_at and row.attempts == 1
    host = worker_id().rpartition(":")[0]
    assert row.worker is not None and row.worker.startswith(f"{host}:")  # the pool process that ran it
    log = (tmp_path / "worker.log").read_text()
    assert "could not mark task" not in log


def test_the_received_signal_marks_a_queued_row_dispatched(monkeypatch, pg_engine, clients, world) -> None:
    from types import SimpleNamespace

    from celery.signals import task_received

    from kat_scheduler.celery_tasks import workers as worker_tasks

    store = TaskStore(pg_engine)
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    monkeypatch.setattr(worker_tasks, "get_runtime", lambda: SimpleNamespace(tasks=store))
    # What a worker's consumer sends when a message arrives, before a pool process runs it.
    request = SimpleNamespace(name=TaskName.BOEFJE_RUN.value, id=str(task_id), hostname="boefjes@host")
    task_received.send(sender=None, request=request)
    row = row_of(store, task_id)
    assert row.status == TaskStatus.DISPATCHED and row.worker == "boefjes@host"
    task_received.send(sender=None, request=SimpleNamespace(name="other.task", id=str(task_id), hostname="x"))
    assert row_of(store, task_id).worker == "boefjes@host"
