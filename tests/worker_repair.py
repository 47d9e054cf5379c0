"""A worker's repair with real worker processes: a local plugin that sleeps as long as the worker's
environment says, the reaper run in a thread as beat would have it run, and the scenario of a worker
whose main process is SIGKILLed while another is idle (:func:`sigkilled_worker_repair`), which
tests/integration/test_worker_heartbeats.py runs with short settings and ``benchmarks/worker_repair.py``
with every default."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from kat_scheduler.clients import KATClients
from kat_scheduler.dispatch.dispatcher import message_for
from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.models import TaskStatus
from kat_scheduler.queues import Queue
from kat_scheduler.settings import Settings
from kat_scheduler.sim.world import World
from kat_scheduler.storage import TaskRow, TaskStore
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.workers.reaper import Reaper, ReapReport
from tests.tasks import hostname_with_dns, queued_boefje_task
from tests.workers import celery_worker, wait_for

#: What the slow plugin sleeps, from the worker's environment (each worker is told its own).
SLEEP = "KAT_TEST_PLUGIN_SECONDS"


def repair_env(settings: Settings) -> dict[str, str]:
    """The worker's side of :func:`short_settings`: its heartbeat interval."""
    return {"SCHEDULER_WORKER_HEARTBEAT_INTERVAL": str(settings.worker_heartbeat_interval)}


def write_plugins(folder: Path) -> Path:
    """A plugins folder under ``folder`` with dns-records, which sleeps for :data:`SLEEP` seconds."""
    root = folder / "plugins" / "kat_dns"
    root.mkdir(parents=True)
    (root / "boefje.json").write_text(json.dumps({"id": "dns-records", "name": "dns-records"}))
    (root / "main.py").write_text(
        textwrap.dedent(
            f"""
            import os
            import time

            def run(boefje_meta):
                time.sleep(float(os.environ.get("{SLEEP}", "0")))
                return [({{"openkat/dns"}}, "A 192.0.2.1")]
            """
        )
    )
    return root.parent


def worker_env(kat: Any, settings: Settings, **extra: str) -> dict[str, str]:
    """A worker's settings against the simulated KAT ``kat``, the database and broker of ``settings``, and ``extra``."""
    return {
        "OCTOPOES_API": kat.octopoes_url,
        "KATALOGUS_API": kat.katalogus_url,
        "BYTES_API": kat.bytes_url,
        "SCHEDULER_DB_URI": settings.db_uri,
        "SCHEDULER_BROKER_URL": settings.broker_url,
        **extra,
    }


class ReaperLoop:
    """The reaper every ``reap_interval`` seconds in a thread; its reports are kept."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.publisher = make_publisher(settings)
        self.reaper = Reaper(TaskStore(engine), self.publisher, settings)
        self.interval = settings.reap_interval
        self.reports: list[tuple[float, ReapReport]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.reports.append((time.monotonic(), self.reaper.reap(utcnow())))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> ReaperLoop:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.publisher.close()


def row_of(store: TaskStore, task_id: uuid.UUID) -> TaskRow:
    row = store.get(task_id)
    assert row is not None
    return row


@dataclass(frozen=True)
class Repair:
    """Seconds from the SIGKILL until the task was handed on, and until another worker completed it."""

    handed_on_after: float
    completed_after: float


def sigkilled_worker_repair(
    kat: Any, world: World, clients: KATClients, engine: Engine, settings: Settings, plugins: Path, work: Path
) -> Repair:
    """A worker running a long plugin has its main process SIGKILLed while an idle worker is up;
    the reaper (every ``settings.reap_interval``) hands the task on and the idle worker completes
    it, once, as attempt 2 on another node. The workers beat every ``settings.worker_heartbeat_interval``."""
    store = TaskStore(engine)
    org, ref = hostname_with_dns(world)
    task_id = queued_boefje_task(store, org, "dns-records", ref, clients)
    store.mark_published([task_id])
    env = worker_env(
        kat, settings, SCHEDULER_RUNNER="local", SCHEDULER_PLUGINS_PATH=str(plugins), **repair_env(settings)
    )
    rescuer_log = work / "rescuer.log"
    publisher = make_publisher(settings)
    publisher.publish([message_for(row_of(store, task_id))])
    publisher.close()
    with (
        ReaperLoop(engine, settings) as loop,
        celery_worker(
            "kat_scheduler",
            [Queue.BOEFJES.value],
            {**env, SLEEP: "300"},
            hostname="doomed@%h",
            log_file=work / "doomed.log",
        ) as doomed,
    ):
        running = wait_for(lambda: row_of(store, task_id).status == TaskStatus.RUNNING, timeout=60)
        assert running, (work / "doomed.log").read_text()[-3000:]
        first = row_of(store, task_id)
        assert first.node_id is not None, "the running task names the node whose heartbeat vouches for it"
        with celery_worker(
            "kat_scheduler",
            [Queue.BOEFJES.value],
            {**env, SLEEP: "0"},
            hostname="rescuer@%h",
            log_file=rescuer_log,
        ):
            # The rescuer is up and idle (its start is no part of the figure).
            assert wait_for(lambda: "ready." in rescuer_log.read_text(), timeout=60), rescuer_log.read_text()[-3000:]
            os.kill(doomed.pid, signal.SIGKILL)  # the main process only; its pool process dies with it
            killed = time.monotonic()
            handed_on = wait_for(
                lambda: row_of(store, task_id).status != TaskStatus.RUNNING or row_of(store, task_id).attempts > 1,
                timeout=90,
                interval=0.2,
            )
            handed_on_after = time.monotonic() - killed
            done = wait_for(lambda: row_of(store, task_id).status == TaskStatus.COMPLETED, timeout=90, interval=0.2)
            completed_after = time.monotonic() - killed
        assert handed_on and done, rescuer_log.read_text()[-3000:]
        assert any(report.requeued_lost_node == 1 for _, report in loop.reports)
    row = row_of(store, task_id)
    assert row.attempts == 2 and row.worker != first.worker and row.node_id != first.node_id
    assert len(world.raw_files_of(task_id)) == 1, "the plugin's output was stored once"
    return Repair(handed_on_after, completed_after)
