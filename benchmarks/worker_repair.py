"""A SIGKILLed worker's task at the default settings (issue #19's Done-when: run by another worker
within a minute).

    .venv/bin/python -m benchmarks.worker_repair [--runs 1] [--keep-logs]

Per run: a fresh, migrated PostgreSQL database (``BENCH_POSTGRES_URI``), the simulated KAT in this
process, a private ``redis-server`` on a free port (the broker; never the shared one), and two
stock ``celery worker -Q boefjes`` processes of kat_scheduler's own app with a local plugin: the
first runs it for five minutes, the second is idle. The first's main process is SIGKILLed; the
reaper runs in a thread every ``SCHEDULER_REAP_INTERVAL`` seconds, as beat would have a scheduler
worker run it. Every repair setting keeps its default (heartbeat interval, loss age, reaper
interval); the scenario is the test's own (``sigkilled_worker_repair`` in ``tests/worker_repair.py``,
which ``tests/integration/test_worker_heartbeats.py`` runs with short settings).

Printed per run: seconds from the SIGKILL until the task was handed on and until the other worker
completed it. Exits 1 when a run took a minute or more.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import drop_database, fresh_database, workdir
from kat_scheduler.run.embedded import free_port, redis_server_binary, wait_for_redis
from kat_scheduler.settings import load_settings
from kat_scheduler.sim import SimulatedKAT, WorldConfig, generate_world
from kat_scheduler.storage.db import make_engine
from tests.integration.conftest import WORLD_NOW, make_clients
from tests.worker_repair import sigkilled_worker_repair, write_plugins
from tests.workers import stop

#: #19's Done-when: the task runs elsewhere within a minute.
WITHIN = 60.0


@contextlib.contextmanager
def private_redis(work: Path) -> Iterator[str]:
    port = free_port()
    argv = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(
        argv, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for_redis(url, process)
        yield url
    finally:
        stop(process)


def one_run(work: Path) -> tuple[float, float]:
    world = generate_world(WorldConfig(seed=11, organisations=3, oois_per_org=120, boefjes=12, now=WORLD_NOW))
    with SimulatedKAT(world).start() as kat, private_redis(work) as broker:
        db_uri, admin = fresh_database("kat_worker_repair")
        engine = make_engine(db_uri)
        clients = make_clients(kat)
        try:
            settings = load_settings(broker_url=broker, db_uri=db_uri)
            repair = sigkilled_worker_repair(kat, world, clients, engine, settings, write_plugins(work), work)
        finally:
            clients.close()
            engine.dispose()
            drop_database(admin, db_uri)
            admin.dispose()
    return repair.handed_on_after, repair.completed_after


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    defaults = load_settings()
    print(
        f"defaults: heartbeat every {defaults.worker_heartbeat_interval:g} s, lost after "
        f"{defaults.worker_lost_after:g} s, reaper every {defaults.reap_interval:g} s"
    )
    slowest = 0.0
    for n in range(1, args.runs + 1):
        with workdir("kat-worker-repair-", args.keep_logs) as work:
            handed_on, completed = one_run(work)
        slowest = max(slowest, completed)
        print(f"run {n}: handed on after {handed_on:.1f} s, completed by another worker after {completed:.1f} s")
    ok = slowest < WITHIN
    print(f"slowest: {slowest:.1f} s ({'within' if ok else 'NOT within'} {WITHIN:g} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
