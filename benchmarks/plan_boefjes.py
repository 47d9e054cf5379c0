"""Benchmark: one planning tick of a real scheduler worker on a large simulated world.

    .venv/bin/python -m benchmarks.plan_boefjes [--organisations 10 --oois 10000 --boefjes 10 --runs 3]
        [--rate-limits] [--deduplicate [--shared 2000]]

Per run: a fresh PostgreSQL database and Redis db, the simulated KAT (in this process, so its
request counts per service are exact), and a stock ``celery worker -Q scheduler -P solo``
subprocess (one process: its peak RSS is the producer's). The tick is one
``kat.scheduler.plan_boefjes_for_org`` task for all organisations; its time runs from sending it
to the last task row's ``published_at``. Then a warm tick (nothing new). The queued set is
compared with the set the rules allow, computed independently from the world
(``kat_scheduler.sim.oracle``, with the scheduler's stall age): precision (the share of queued
tasks the rules allow) and recall (the share of allowed tasks queued). The world's history holds
runs that are still going in Bytes and runs that died, and cron runs due by cron inside the
grace period. Prints figures; asserts nothing about time.

``--rate-limits``: the boefjes that call outside services carry Katalogus rate limits
(``kat_scheduler.sim.catalogue.RATE_LIMITS``); the tick then sends each limited group only what it
can start before the next tick, so their tasks are checked for precision and counted, and recall
is measured on the other boefjes. ``--deduplicate``: ``SCHEDULER_DEDUPLICATE=true`` and a world
whose organisations share ``--shared`` domains.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import redis
import sqlalchemy as sa

from benchmarks.common import cpu_seconds, cpu_used, drop_database, fresh_database, redis_database
from kat_scheduler.queues import Queue, TaskName, broker_priority
from kat_scheduler.runtime.celery_app import create_app
from kat_scheduler.settings import load_settings
from kat_scheduler.sim import SimulatedKAT, WorldConfig, generate_world
from kat_scheduler.sim.oracle import allowed_boefje_tasks, unfinished_runs
from kat_scheduler.storage.db import normalise_url

ROOT = Path(__file__).resolve().parent.parent
#: The Celery broker: ``$BENCH_REDIS_URL``, else a Redis database claimed for the run (set by ``main``).
REDIS = ""


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_once(world, kat: SimulatedKAT, args) -> dict[str, Any]:
    db_uri, admin = fresh_database()
    broker = redis.Redis.from_url(REDIS)
    broker.flushdb()
    env = {
        **os.environ,
        "OCTOPOES_API": kat.octopoes_url,
        "KATALOGUS_API": kat.katalogus_url,
        "BYTES_API": kat.bytes_url,
        "SCHEDULER_DB_URI": db_uri,
        "SCHEDULER_BROKER_URL": REDIS,
        "SCHEDULER_RESULT_BACKEND": REDIS,
        "SCHEDULER_BATCH_SIZE": str(args.batch),
        "SCHEDULER_ORG_CAP_PER_TICK": "10000000",
        "SCHEDULER_QUEUE_DEPTH_LIMIT_BOEFJES": "10000000",
        "SCHEDULER_DEDUPLICATE": "true" if args.deduplicate else "false",
        "PYTHONPATH": str(ROOT),
    }
    log = open(ROOT / "benchmarks" / "last-worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "kat_scheduler",
            "worker",
            "-Q",
            "scheduler",
            "-P",
            "solo",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "WARNING",
            "-n",
            f"bench-{uuid.uuid4().hex[:6]}@%h",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    settings = load_settings(broker_url=REDIS, result_backend=REDIS, db_uri=db_uri)
    app = create_app(settings, main="bench")
    engine = sa.create_engine(normalise_url(db_uri))
    database = engine.url.database
    orgs = world.organisation_ids
    try:
        # Warm the worker up (imports, connections) with an empty plan.
        app.send_task(
            TaskName.PLAN_BOEFJES_FOR_ORG.value,
            kwargs={"organisations": []},
            queue=Queue.SCHEDULER.value,
            priority=broker_priority(0, "redis"),
        ).get(timeout=120)
        figures: dict[str, Any] = {}
        expected: set[tuple[str, str, str]] = set()
        for phase in ("cold", "warm"):
            kat.reset_counts()
            cpu_start = cpu_seconds({worker.pid: "worker"}, database)
            sent = datetime.now(UTC)
            t0 = time.perf_counter()
            summary = app.send_task(
                TaskName.PLAN_BOEFJES_FOR_ORG.value,
                kwargs={"organisations": orgs},
                queue=Queue.SCHEDULER.value,
                priority=broker_priority(0, "redis"),
            ).get(timeout=1800)
            task_seconds = time.perf_counter() - t0
            cpu = cpu_used(cpu_start, cpu_seconds({worker.pid: "worker"}, database))
            last = summary["last_published_at"]
            last_publish = datetime.fromisoformat(last) if last else None
            queued = summary["queued"]
            tick_seconds = (last_publish - sent).total_seconds() if (queued and last_publish) else task_seconds
            if phase == "cold":
                # The allowed set at the tick's own moment (grace periods expire as runs go by).
                expected = allowed_boefje_tasks(
                    world, datetime.fromisoformat(summary["now"]), stall_age_seconds=settings.effective_bytes_stall_age
                )
            figures[phase] = {
                "queued": queued,
                "tick_s": tick_seconds,
                "task_s": task_seconds,
                "rate": queued / tick_seconds if queued else 0.0,
                "requests": dict(kat.request_counts),
                "errors": summary["errors"],
                "timings": summary["timings"],
                "cpu": cpu,
            }
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT organisation, plugin_id, input_ooi FROM tasks")).all()
        queued_set = {(r[0], r[1], r[2]) for r in rows}
        depth = 0
        for key in cast(list[bytes], broker.keys("boefjes*")):
            if not key.startswith(b"_kombu"):
                depth += broker.llen(key)
        # A rate-limited group is sent only what it can start before the next tick; the rest is
        # found again then. So its tasks must be allowed ones (precision) and are counted, while
        # recall is measured on the boefjes without a limit.
        limited = {boefje.id for boefje in world.boefjes if boefje.rate_limit}
        free_expected = {t for t in expected if t[1] not in limited}
        free_queued = {t for t in queued_set if t[1] not in limited}
        figures["limited"] = {
            boefje: (sum(t[1] == boefje for t in queued_set), sum(t[1] == boefje for t in expected))
            for boefje in sorted(limited)
        }
        figures["exact"] = (
            free_queued == free_expected and queued_set - free_queued <= expected and len(rows) == len(queued_set)
        )
        figures["missing"] = len(free_expected - free_queued)
        figures["extra"] = len(queued_set - expected)
        right = len(queued_set & expected)
        figures["precision"] = right / len(rows) if rows else 1.0
        figures["recall"] = len(free_queued & free_expected) / len(free_expected) if free_expected else 1.0
        figures["broker_depth"] = depth
        figures["rss_mb"] = peak_rss_mb(worker.pid)
        return figures
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
        engine.dispose()
        drop_database(admin, db_uri)
        admin.dispose()
        broker.flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organisations", type=int, default=10)
    parser.add_argument("--oois", type=int, default=10_000)
    parser.add_argument("--boefjes", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--rate-limits", action="store_true", help="Katalogus rate limits on the boefjes that call outside services"
    )
    parser.add_argument(
        "--deduplicate",
        action="store_true",
        help="SCHEDULER_DEDUPLICATE=true and objects held by several organisations (--shared of them)",
    )
    parser.add_argument("--shared", type=int, default=2000, help="shared domains with --deduplicate")
    args = parser.parse_args()
    global REDIS
    REDIS = redis_database("BENCH_REDIS_URL")

    t = time.perf_counter()
    world = generate_world(
        WorldConfig(
            seed=args.seed,
            organisations=args.organisations,
            oois_per_org=args.oois,
            boefjes=args.boefjes,
            rate_limits=args.rate_limits,
            shared_domains=args.shared if args.deduplicate else 0,
        )
    )
    print(
        f"world: {args.organisations} orgs x {args.oois} OOIs x {args.boefjes} boefjes, "
        f"generated in {time.perf_counter() - t:.1f} s; rate limits: "
        f"{ {b.id: b.rate_limit for b in world.boefjes if b.rate_limit} or 'none' }; "
        f"deduplication {'on, ' + str(args.shared) + ' shared domains' if args.deduplicate else 'off'}"
    )
    import gc

    gc.freeze()
    with SimulatedKAT(world).start() as kat:
        stall_age = load_settings().effective_bytes_stall_age
        counts = unfinished_runs(world, datetime.now(UTC), stall_age)
        print(
            f"the rules allow {len(allowed_boefje_tasks(world, datetime.now(UTC), stall_age_seconds=stall_age))} "
            f"tasks now; newest Bytes runs without an end: {counts['running']} running, {counts['stalled']} stalled"
        )
        runs = []
        for n in range(args.runs):
            figures = run_once(world, kat, args)
            runs.append(figures)
            cold, warm = figures["cold"], figures["warm"]
            req = sum(cold["requests"].values())
            print(
                f"run {n + 1}: cold {cold['queued']} tasks in {cold['tick_s']:.2f} s = {cold['rate']:,.0f} tasks/s; "
                f"requests {cold['requests']} = {req / max(cold['queued'], 1):.4f}/task; "
                f"warm {warm['queued']} new in {warm['task_s']:.2f} s, requests {warm['requests']}; "
                f"peak RSS {figures['rss_mb']:.0f} MB; exact set: {figures['exact']} "
                f"(missing {figures['missing']}, extra {figures['extra']}; precision {figures['precision']:.4f}, "
                f"recall {figures['recall']:.4f}); on broker: {figures['broker_depth']}"
            )
            if figures["limited"]:
                print(f"  rate-limited boefjes, queued of allowed: {figures['limited']}")
            print(f"  phases (s): cold {cold['timings']}, warm {warm['timings']}")
            print(f"  CPU s, cold tick (sent to summary): {cold['cpu']}")
            if cold["errors"] or warm["errors"]:
                print(f"  errors: {cold['errors'] or warm['errors']}")
    rates = [r["cold"]["rate"] for r in runs]
    per_task = [sum(r["cold"]["requests"].values()) / max(r["cold"]["queued"], 1) for r in runs]
    print(
        f"median of {len(runs)}: {statistics.median(rates):,.0f} tasks/s claimed and published (cold), "
        f"{statistics.median(per_task):.4f} HTTP requests per queued task, "
        f"peak RSS {statistics.median(r['rss_mb'] for r in runs):.0f} MB, "
        f"warm tick {statistics.median(r['warm']['task_s'] for r in runs):.2f} s, "
        f"exact in {sum(r['exact'] for r in runs)}/{len(runs)} runs, "
        f"precision {statistics.median(r['precision'] for r in runs):.4f}, "
        f"recall {statistics.median(r['recall'] for r in runs):.4f}"
    )


if __name__ == "__main__":
    main()
