"""Benchmark: the boefje runs cross-organisation deduplication saves, and what it costs per run.

    .venv/bin/python -m benchmarks.dedup [--organisations 10 --oois 300 --shared-domains 20]

A world whose organisations hold a pool of shared domains (``WorldConfig.shared_domains``), each
at its own level, every organisation with ``dns-records`` enabled and the same settings; a fresh
PostgreSQL database; one queued ``dns-records`` task per hostname each organisation clears. The
tasks are run one after another through the worker's own job (``BoefjeJob``, in this process, the
simulated runner, the simulated KAT over HTTP), once with deduplication off and once on (a fresh
world and database each). Prints per setting: tasks, boefje runs, tasks served by another
organisation's run, requests to KAT per service, wall time and this process's CPU seconds.
Asserts that with deduplication on every organisation still gets its own BoefjeMeta and raw file
for every task; nothing about time.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from benchmarks.common import drop_database, fresh_database
from kat_scheduler.clients import BytesClient, KatalogusClient, KATClients, OctopoesClient
from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.models import SchedulerId
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.payloads import boefje_payload
from kat_scheduler.sim import SimulatedKAT, WorldConfig, generate_world
from kat_scheduler.storage.bytes_runs import BytesRunStore
from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.schedules import ScheduleStore
from kat_scheduler.storage.tasks import NewTask, TaskStore
from kat_scheduler.workers.dedup import SERVED_BY, Deduplicator
from kat_scheduler.workers.lifecycle import BoefjeJob
from kat_scheduler.workers.runners import RawOutput
from kat_scheduler.workers.simulated import SimulatedRunner

BOEFJE = "dns-records"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class CountingRunner(SimulatedRunner):
    """The simulated runner, counting the boefje runs."""

    def __init__(self) -> None:
        self.runs = 0

    def run_boefje(self, boefje_id: str, boefje_meta: dict[str, Any], environment: dict[str, str]) -> RawOutput:
        self.runs += 1
        return super().run_boefje(boefje_id, boefje_meta, environment)


@dataclass
class Figures:
    tasks: int
    shared_tasks: int
    runs: int
    served: int
    requests: dict[str, int]
    seconds: float
    cpu: float


def one_setting(args: argparse.Namespace, deduplicate: bool) -> Figures:
    config = WorldConfig(
        seed=args.seed,
        organisations=args.organisations,
        oois_per_org=args.oois,
        boefjes=10,
        history_fraction=0.0,
        now=NOW,
        shared_domains=args.shared_domains,
    )
    world = generate_world(config)
    for org in world.organisation_ids:
        world.set_plugin_enabled(org, BOEFJE, True)
        world.set_boefje_settings(org, BOEFJE, {})
    uri, admin = fresh_database("kat_bench_dedup")
    engine = make_engine(uri)
    try:
        with SimulatedKAT(world).start() as kat:
            clients = KATClients(
                OctopoesClient(kat.octopoes_url),
                KatalogusClient(kat.katalogus_url),
                BytesClient(kat.bytes_url, "bytes", "bytes"),
            )
            store = TaskStore(engine)
            holders: Counter[str] = Counter()
            tasks: list[NewTask] = []
            for org in world.organisation_ids:
                boefje = clients.katalogus.plugin(org, BOEFJE)
                assert boefje is not None and boefje.type == "boefje"
                for ooi in world.oois(org).values():
                    if ooi.object_type == "Hostname" and ooi.scan_level >= 1:
                        holders[ooi.primary_key] += 1
                        task_id = uuid.uuid4()
                        tasks.append(
                            NewTask(
                                task_id,
                                SchedulerId.BOEFJE,
                                "boefje",
                                org,
                                BOEFJE,
                                ooi.primary_key,
                                boefje_task_hash(BOEFJE, org, ooi.primary_key),
                                2,
                                0,
                                boefje_payload(task_id, boefje, org, ooi.primary_key),
                            )
                        )
            store.claim(tasks)
            runner = CountingRunner()
            job = BoefjeJob(store, clients, runner)
            if deduplicate:
                job.dedup = Deduplicator(
                    store,
                    ScheduleStore(engine),
                    BytesRunStore(engine),
                    clients,
                    PluginCache(clients.katalogus, 30.0),
                    default_grace=timedelta(days=1),
                    stall_age=timedelta(minutes=10),
                    organisations_ttl=30.0,
                )
            kat.reset_counts()
            cpu0, t0 = time.process_time(), time.perf_counter()
            for task in tasks:
                job.run(task.id, "bench", task.organisation, BOEFJE, task.input_ooi)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            requests = kat.request_counts
            with engine.connect() as conn:
                served = conn.execute(
                    sa.text("SELECT count(*) FROM tasks WHERE data ? :key"), {"key": SERVED_BY}
                ).scalar_one()
            for task in tasks:  # every organisation has its own run of every task, deduplicated or not
                assert [r.organization for r in world.raw_files_of(task.id)] == [task.organisation], task
            clients.close()
    finally:
        engine.dispose()
        drop_database(admin, uri)
    shared = sum(n for n in holders.values() if n > 1)
    return Figures(len(tasks), shared, runner.runs, int(served), dict(requests), seconds, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organisations", type=int, default=10)
    parser.add_argument("--oois", type=int, default=300)
    parser.add_argument("--shared-domains", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for deduplicate in (False, True):
        f = one_setting(args, deduplicate)
        print(
            f"deduplication {'on ' if deduplicate else 'off'}: {f.tasks} tasks ({f.shared_tasks} on hostnames "
            f"2+ organisations hold), {f.runs} boefje runs, {f.served} served by another organisation's run; "
            f"requests {f.requests}; {f.seconds:.1f} s wall, {f.cpu:.1f} CPU s in this process "
            f"({1000 * f.seconds / f.tasks:.1f} ms wall per task)"
        )


if __name__ == "__main__":
    main()
