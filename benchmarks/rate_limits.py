"""Rate limits under load (issue #20): one limited group drained by several worker processes while
an unlimited group runs beside it.

    .venv/bin/python -m benchmarks.rate_limits [--tasks 300] [--free 300] [--limit 5/second]
        [--nodes 2] [--concurrency 2] [--seed 1] [--keep-logs]
    .venv/bin/python -m benchmarks.rate_limits --race 8 [--race-seconds 60] [--limit 5/second]

Per run: a fresh, migrated PostgreSQL database (``BENCH_POSTGRES_URI``), the simulated KAT in this
process, a private ``redis-server`` on a free port (the broker and the rate-limit counters; never
the shared one), and ``--nodes`` stock ``celery worker -Q boefjes -c --concurrency`` processes of
kat_scheduler's own app with the simulated runner (4 worker processes by default).

Two phases, each from an empty broker:

1. **free alone**: ``--free`` tasks of boefjes without a limit; their drain rate.
2. **together**: ``--tasks`` tasks of the limited group (every boefje of the world but the last
   ``--free-boefjes`` has ``SCHEDULER_RATE_LIMITS`` ``<id>=<limit>@bench-limited``, so they share one counter across
   organisations) and ``--free`` more unlimited ones, in mixed bands, all claimed at once. As a
   producer holds back what a group cannot start yet, only one window's worth of the limited
   group is published; the rest wait in the database (held in one go, as the event listener holds
   what a group cannot start, all due at once: the worst case for the release) for the worker
   nodes to release them. ``--flood`` publishes the whole limited backlog instead, the worst case
   for the workers: every limited message costs a worker one refusal. On a PostgreSQL server
   whose autovacuum is off, the task tables are analyzed once after this setup (as autovacuum
   would be within its first minute).

Start times are the rows' ``started_at``: the moment the limiter's window counted the start (the
Redis server's clock, :mod:`kat_scheduler.limiting.window`). Printed: the most starts of the
limited group in any 1-second window (must be ≤ the limit's amount per second), its achieved
rate after the first window ((starts − amount) / (last − first start)) against the limit, how
often its tasks waited (put back and released again), and the unlimited group's drain rate alone
and beside the limited backlog. Exits 1 when the window check fails or rows were left live.
``--beside-only`` ends phase 2 when the unlimited tasks are done (their rate beside the backlog only).

``--race N``: the limiter alone, at a window's edge (no database, no workers). ``N`` processes, each
with its own limiter and connection to a private Redis, admit starts of one group in a tight loop
for ``--race-seconds``, so every window's opening is raced for by all of them; the moments they
were admitted at (what a row records) are counted per 1-second window as above. Printed: the most
in any window, how many starts ended a window over the limit, the achieved rate and the shortest
cycle. Exits 1 when a window holds more than the limit.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import redis
import sqlalchemy as sa

from benchmarks.common import drop_database, fresh_database, workdir
from kat_scheduler.dispatch.dispatcher import message_for
from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.limiting import RateLimiter
from kat_scheduler.models import SchedulerId, TaskStatus
from kat_scheduler.models.plugins import Boefje
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.payloads import boefje_payload
from kat_scheduler.rules.rate_limits import RateLimit, parse_overrides, rate_limit
from kat_scheduler.settings import load_settings
from kat_scheduler.sim import SimulatedKAT, World, WorldConfig, generate_world
from kat_scheduler.storage import TaskStore
from kat_scheduler.storage.db import normalise_url
from kat_scheduler.storage.tables import TaskRow, table_of, utcnow
from kat_scheduler.storage.tasks import NewTask
from kat_scheduler.storage.waiting import WaitingStore

ROOT = Path(__file__).resolve().parent.parent
_TASKS = table_of(TaskRow)
GROUP = "bench-limited"
LIVE = (TaskStatus.QUEUED, TaskStatus.DISPATCHED, TaskStatus.RUNNING)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def private_redis(work: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("private redis did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        process.send_signal(signal.SIGKILL)
        process.wait(10)


@contextlib.contextmanager
def workers(env: dict[str, str], work: Path, nodes: int, concurrency: int) -> Iterator[None]:
    processes = []
    for n in range(nodes):
        log = open(work / f"worker{n}.log", "ab")  # noqa: SIM115
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "kat_scheduler",
            "worker",
            "-Q",
            "boefjes",
            "-c",
            str(concurrency),
            "-P",
            "prefork",
            "-n",
            f"bench{n}@%h",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "WARNING",
        ]
        processes.append(
            (
                subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                ),
                log,
            )
        )
    try:
        yield
    finally:
        for process, _ in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process, log in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            log.close()


def candidates(world: World, boefjes: set[str]) -> list[tuple[str, str, str]]:
    """Every (org, boefje, object) the world allows for ``boefjes``."""
    found: list[tuple[str, str, str]] = []
    for org in world.organisation_ids:
        enabled = [b for b in world.boefjes if b.id in boefjes and world.is_enabled(org, b.id) and b.consumes]
        for ooi in world.oois(org).values():
            level = ooi.level if ooi.scan_profile_type != "empty" else 0
            found.extend(
                (org, b.id, ooi.primary_key)
                for b in enabled
                if ooi.object_type in b.consumes and b.scan_level <= level and not b.run_on
            )
    return found


def new_tasks(world: World, chosen: list[tuple[str, str, str]], rng: random.Random) -> list[NewTask]:
    """A task for each (org, boefje, object) of ``chosen``, its payload built as the producers build it
    from the boefje as Katalogus lists it for the organisation."""
    plugins: dict[tuple[str, str], Boefje] = {}
    tasks = []
    for org, boefje_id, ref in chosen:
        plugin = plugins.get((org, boefje_id))
        if plugin is None:
            found = world.plugin(boefje_id)
            assert found is not None, f"{boefje_id} is not in the world"
            listed = world.plugin_json(org, found, world.is_enabled(org, boefje_id))
            plugin = plugins[(org, boefje_id)] = Boefje.model_validate(listed)
        task_id = uuid.uuid4()
        tasks.append(
            NewTask(
                id=task_id,
                scheduler_id=SchedulerId.BOEFJE,
                type="boefje",
                organisation=org,
                plugin_id=boefje_id,
                input_ooi=ref,
                hash=boefje_task_hash(boefje_id, org, ref),
                band=rng.randrange(10),
                priority=0,
                data=boefje_payload(task_id, plugin, org, ref),
            )
        )
    return tasks


def per_bucket(times: list[datetime], seconds: float) -> list[int]:
    """Starts per ``seconds`` from the first."""
    counts: Counter[int] = Counter(int((t - times[0]).total_seconds() // seconds) for t in times)
    return [counts[k] for k in range(max(counts) + 1)] if counts else []


def listings_updated(engine: sa.Engine) -> int:
    """Rows of ``unpublished_tasks`` updated so far (PostgreSQL's statistics, flushed within a
    second or so): mostly the release moving the times of tasks that wait on."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))
        found = conn.execute(
            sa.text("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'unpublished_tasks'")
        ).scalar_one_or_none()
    return int(found or 0)


def analyze_without_autovacuum(engine: sa.Engine) -> None:
    """On a server whose autovacuum is off (this project's test machine), ``ANALYZE`` the task
    tables once, as autovacuum would within its first minute (its default naptime) after the
    phase's thousands of new rows: without it every plan is made for empty tables."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if conn.execute(sa.text("SHOW autovacuum")).scalar_one() == "off":
            conn.execute(sa.text("ANALYZE tasks, unpublished_tasks"))
            print("autovacuum is off on this server: tasks and unpublished_tasks analyzed once", flush=True)


def drain(engine: sa.Engine, ids: set[uuid.UUID], timeout: float) -> float:
    """Seconds until none of ``ids`` is live (or ``timeout``)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with engine.connect() as conn:
            live = conn.execute(
                sa.select(sa.func.count()).where(_TASKS.c.status.in_(LIVE), _TASKS.c.id.in_(list(ids)))
            ).scalar_one()
        if live == 0:
            break
        time.sleep(0.2)
    return time.monotonic() - start


def starts(engine: sa.Engine, ids: set[uuid.UUID]) -> list[datetime]:
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(_TASKS.c.started_at).where(_TASKS.c.id.in_(list(ids)), _TASKS.c.started_at.is_not(None))
        ).scalars()
        return sorted(found)


def waited(engine: sa.Engine, ids: set[uuid.UUID]) -> int:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(_TASKS.c.data).where(_TASKS.c.id.in_(list(ids)))).scalars()
        return sum(1 for data in rows if "rate_limit" in data)


def most_in_window(times: list[datetime], window: timedelta) -> int:
    most, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:  # starts in (t - window, t]
            j += 1
        most = max(most, i - j + 1)
    return most


def rate(times: list[datetime]) -> float:
    if len(times) < 2:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0]).total_seconds()


def admit_until(url: str, text: str, seconds: float, found: multiprocessing.SimpleQueue[list[datetime]]) -> None:
    """One racing process (``--race``): admit starts of the group until ``seconds`` are over."""
    gate = RateLimiter(url, parse_overrides(f"race={text}@{GROUP}"))
    admitted: list[datetime] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        admission = gate.admit("race", None, "org", None)
        if admission.allowed and admission.at is not None:
            admitted.append(admission.at)
    found.put(admitted)


def race(limit: RateLimit, processes: int, seconds: float, work: Path) -> int:
    """``--race``: ``processes`` limiters admitting at once; 1 when a window holds more than the limit."""
    per_second = min(item.amount / item.get_expiry() for item in limit.items)
    context = multiprocessing.get_context("fork")
    found: multiprocessing.SimpleQueue[list[datetime]] = context.SimpleQueue()
    with private_redis(work) as url:
        racers = [context.Process(target=admit_until, args=(url, limit.text, seconds, found)) for _ in range(processes)]
        for racer in racers:
            racer.start()
        times = sorted(t for _ in racers for t in found.get())
        for racer in racers:
            racer.join()
    most = most_in_window(times, timedelta(seconds=1))
    over, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - timedelta(seconds=1):
            j += 1
        over += i - j + 1 > per_second
    n = limit.capacity
    cycles = [(times[i + n] - times[i]).total_seconds() for i in range(len(times) - n)]
    print(f"{len(times)} starts of one group at {limit.text} admitted by {processes} racing processes in {seconds:g} s")
    print(f"  most starts in any 1 s window: {most} (limit {per_second:g}/s); starts ending a window over it: {over}")
    shortest = min(cycles, default=0.0)
    print(f"  achieved rate: {rate(times):.3f} starts/s; shortest cycle (start i to i+{n}): {shortest:.6f} s")
    return 1 if most > per_second else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=300, help="tasks of the limited group")
    parser.add_argument("--free", type=int, default=300, help="tasks of unlimited boefjes (each phase)")
    parser.add_argument("--limit", default="5/second")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--free-boefjes", type=int, default=3, help="boefjes without a limit (the rest share one)")
    parser.add_argument("--organisations", type=int, default=10)
    parser.add_argument("--oois", type=int, default=400, help="objects per organisation")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=7200.0)
    parser.add_argument("--flood", action="store_true", help="publish the whole limited backlog at once")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument(
        "--beside-only",
        action="store_true",
        help="end phase 2 once the unlimited tasks are done: their rate beside the backlog, without the "
        "limited group's drain (minutes instead of --tasks / limit seconds; its checks are skipped)",
    )
    parser.add_argument("--race", type=int, default=0, help="racing processes: the limiter alone at a window's edge")
    parser.add_argument("--race-seconds", type=float, default=60.0)
    args = parser.parse_args()
    limit = rate_limit(args.limit)
    if args.race:
        with workdir("kat-rate-race-", args.keep_logs) as work:
            return race(limit, args.race, args.race_seconds, work)
    per_second = min(item.amount / item.get_expiry() for item in limit.items)
    rng = random.Random(args.seed)

    world = generate_world(
        WorldConfig(seed=args.seed, organisations=args.organisations, oois_per_org=args.oois, boefjes=10)
    )
    ids = sorted(b.id for b in world.boefjes)
    limited_ids = set(ids[: len(ids) - args.free_boefjes])
    limited = candidates(world, limited_ids)
    free = candidates(world, set(ids) - limited_ids)
    rng.shuffle(limited)
    rng.shuffle(free)
    if len(limited) < args.tasks or len(free) < 2 * args.free:
        raise SystemExit(f"the world has {len(limited)} limited and {len(free)} free tasks; raise --oois")
    overrides = " ".join(f"{b}={limit.text}@{GROUP}" for b in sorted(limited_ids))

    failed = False
    with (
        SimulatedKAT(world).start() as kat,
        workdir("kat-rate-limits-", args.keep_logs) as work,
        private_redis(work) as broker,
    ):
        db_uri, admin = fresh_database("kat_rate_limits")
        engine = sa.create_engine(normalise_url(db_uri))
        try:
            settings = load_settings(db_uri=db_uri, broker_url=broker)
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "OCTOPOES_API": kat.octopoes_url,
                "KATALOGUS_API": kat.katalogus_url,
                "BYTES_API": kat.bytes_url,
                "SCHEDULER_DB_URI": db_uri,
                "SCHEDULER_BROKER_URL": broker,
                "SCHEDULER_RUNNER": "simulated",
                "SCHEDULER_RATE_LIMITS": overrides,
                "SCHEDULER_LOG_LEVEL": "WARNING",
            }
            env.pop("SCHEDULER_RESULT_BACKEND", None)
            env.pop("SCHEDULER_RATE_LIMIT_STORAGE", None)
            store = TaskStore(engine)
            publisher = make_publisher(settings)

            def publish(tasks: list[NewTask]) -> set[uuid.UUID]:
                claimed = store.claim(tasks)
                assert len(claimed) == len(tasks), "hashes not distinct"
                publisher.publish([message_for(t) for t in tasks])
                store.mark_published([t.id for t in tasks])
                return {t.id for t in tasks}

            processes = args.nodes * args.concurrency
            print(
                f"{args.tasks} tasks of one group at {limit.text} ({len(limited_ids)} boefjes, "
                f"{args.organisations} organisations) and {args.free} unlimited tasks; "
                f"{args.nodes} worker nodes x {args.concurrency} processes = {processes} worker processes"
            )
            with workers(env, work, args.nodes, args.concurrency):
                alone = publish(new_tasks(world, free[: args.free], rng))
                seconds = drain(engine, alone, args.timeout)
                alone_rate = rate(starts(engine, alone))
                print(f"phase 1, unlimited alone:   {args.free} tasks in {seconds:.1f} s: {alone_rate:.1f} starts/s")

                both = new_tasks(world, limited[: args.tasks], rng) + new_tasks(
                    world, free[args.free : 2 * args.free], rng
                )
                rng.shuffle(both)
                limited_set = {t.id for t in both if t.plugin_id in limited_ids}
                free_set = {t.id for t in both if t.plugin_id not in limited_ids}
                sent = both
                moved_before = listings_updated(engine)  # and the hold's own below
                if not args.flood:  # held back, waiting in the database (as a producer leaves them)
                    held = [t for t in both if t.plugin_id in limited_ids][limit.capacity :]
                    held_ids = {t.id for t in held}
                    sent = [t for t in both if t.id not in held_ids]
                    assert len(store.claim(held)) == len(held), "hashes not distinct"
                    now = utcnow()
                    moved_before += WaitingStore(engine).hold({t.id: (limit.text, GROUP, now) for t in held})
                analyze_without_autovacuum(engine)
                began = time.monotonic()
                publish(sent)
                print(f"phase 2: {len(sent)} tasks published, {len(both) - len(sent)} waiting", flush=True)
                free_seconds = drain(engine, free_set, args.timeout)
                if args.beside_only:
                    print(
                        f"phase 2, unlimited beside:  {args.free} tasks in {free_seconds:.1f} s: "
                        f"{rate(starts(engine, free_set)):.1f} starts/s (--beside-only: the limited group not drained)"
                    )
                    print(f"  per 5 s: {per_bucket(starts(engine, free_set), 5.0)}")
                    print(f"  phase 1 per 5 s: {per_bucket(starts(engine, alone), 5.0)}")
                    print(f"  waiting times moved meanwhile: {listings_updated(engine) - moved_before:,}")
                    publisher.close()
                    return 0
                limited_seconds = free_seconds + drain(engine, limited_set, args.timeout - free_seconds)
                total = time.monotonic() - began
            free_rate = rate(starts(engine, free_set))
            times = starts(engine, limited_set)
            most = most_in_window(times, timedelta(seconds=1))
            steady = (len(times) - limit.capacity) / (times[-1] - times[0]).total_seconds() if len(times) > 1 else 0
            waits = waited(engine, limited_set)
            with engine.connect() as conn:
                live = conn.execute(sa.select(sa.func.count()).where(_TASKS.c.status.in_(LIVE))).scalar_one()
            free_times = starts(engine, free_set)
            beside = [t for t in times if free_times and free_times[0] <= t <= free_times[-1]]
            print(
                f"phase 2, unlimited beside:  {args.free} tasks in {free_seconds:.1f} s: {free_rate:.1f} starts/s "
                f"(with the {len(beside)} limited starts meanwhile: "
                f"{rate(sorted(free_times + beside)):.1f} starts/s of all)"
            )
            if free_times:
                since = [(t - free_times[0]).total_seconds() for t in free_times]
                marks = {q: since[min(len(since) - 1, int(q * len(since)))] for q in (0.5, 0.9, 0.99)}
                with engine.connect() as conn:
                    attempts = Counter(
                        conn.execute(sa.select(_TASKS.c.attempts).where(_TASKS.c.id.in_(list(free_set)))).scalars()
                    )
                print(
                    f"  unlimited starts after the first: half by {marks[0.5]:.1f} s, 90 % by {marks[0.9]:.1f} s, "
                    f"99 % by {marks[0.99]:.1f} s, the last at {since[-1]:.1f} s; "
                    f"attempts {dict(sorted(attempts.items()))}"
                )
            print(
                f"phase 2, limited group:     {len(times)} of {args.tasks} started in {limited_seconds:.1f} s "
                f"(whole phase {total:.1f} s)"
            )
            print(f"  most starts in any 1 s window: {most} (limit {per_second:g}/s)")
            print(
                f"  achieved rate after the first window: {steady:.3f} starts/s "
                f"({100 * (steady - per_second) / per_second:+.1f} % of the limit)"
            )
            n = limit.capacity
            cycles = [(times[i + n] - times[i]).total_seconds() for i in range(len(times) - n)]
            if cycles:
                print(
                    f"  a slot's cycle (start i to start i+{n}): mean {sum(cycles) / len(cycles):.3f} s, "
                    f"min {min(cycles):.6f} s, max {max(cycles):.3f} s"
                )
            print(f"  tasks that waited for their window at least once: {waits}")
            print(f"  waiting times moved (updates of unpublished_tasks): {listings_updated(engine) - moved_before:,}")
            print(f"  rows left live: {live}")
            failed = most > per_second or live > 0 or len(times) < args.tasks
            publisher.close()
        finally:
            engine.dispose()
            drop_database(admin, db_uri)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
