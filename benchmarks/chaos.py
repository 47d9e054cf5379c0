"""Reliability run (issue 5): boefje workers killed at random and the broker restarted midway.

    .venv/bin/python -m benchmarks.chaos [--tasks 2000] [--kills 5] [--redis-persist]
        [--running-slack 60] [--max-retries 5] [--timeout 600] [--seed 1]

Per run: a fresh, migrated PostgreSQL database (``BENCH_POSTGRES_URI``); the simulated KAT in
this process; a private ``redis-server`` on a free port as the Celery broker (started, killed and
restarted by this script; never the shared one); two stock ``celery worker -Q boefjes`` processes
on :mod:`benchmarks.chaos_app` (kat_scheduler's app with a runner that sleeps 20–50 ms and records
each run's start and end on the shared Redis, db 6 by default, ``CHAOS_RECORD_URL``).

``--tasks`` boefje task rows are claimed (distinct objects, a boefje the world enables for each)
and published with the bulk publisher. While the workers run them, this script SIGKILLs a worker
``--kills`` times while it runs a task (either the pool child, which Celery's main process
replaces, or the main process, whose child dies with it, and which is started again), restarts
the broker once halfway (``kill -9``; without ``--redis-persist`` it keeps nothing, so every
message on it is lost), and runs the reaper every ``--reap-every`` seconds with the workers'
settings. It stops when no row is live any more (or at ``--timeout``), and prints the rows by
status, the reaper's repairs, and the safety checks: runs of the same task that overlapped in
time, and runs that started after their row had finished (both must be 0).

``--running-slack`` sets the reaper's slack past the hard limit (60 s): ``SCHEDULER_RUNNING_SLACK``
where Settings has it, else the reaper module's ``RUNNING_SLACK`` in this process;
``--max-retries`` is ``SCHEDULER_MAX_RETRIES`` of the workers and the reaper. ``--poison N`` makes
N tasks kill their own pool process on every run (a plugin that segfaults or is OOM-killed).
``--cancel-on-connection-loss`` runs the workers with Celery's
``worker_cancel_long_running_tasks_on_connection_loss``. ``--keep-logs`` keeps the worker and
broker logs and the run records (a temporary directory, printed). A worker killed mid-request
makes the simulated KAT print a ``ConnectionResetError`` traceback: expected. Prints figures;
asserts nothing; exits 1 when a safety check fails or rows were left live.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from benchmarks.chaos_app import POISON_ENV, RECORD_KEY_ENV, RECORD_URL_ENV, RUN_MS_ENV
from benchmarks.common import drop_database, fresh_database
from kat_scheduler.clients import clients_from_settings
from kat_scheduler.dispatch.publishing import OutgoingMessage, Publisher, make_publisher
from kat_scheduler.models import SchedulerId, TaskStatus
from kat_scheduler.models.plugins import Boefje
from kat_scheduler.queues import Queue, TaskName
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.payloads import boefje_message_kwargs, boefje_payload
from kat_scheduler.settings import Settings, load_settings
from kat_scheduler.sim import SimulatedKAT, World, WorldConfig, generate_world
from kat_scheduler.storage import TaskStore
from kat_scheduler.storage.db import normalise_url
from kat_scheduler.storage.tables import TaskRow, table_of, utcnow
from kat_scheduler.storage.tasks import NewTask
from kat_scheduler.workers import reaper as reaper_module
from kat_scheduler.workers.reaper import Reaper, ReapReport

ROOT = Path(__file__).resolve().parent.parent
RECORDS = os.environ.get("CHAOS_RECORD_URL", "redis://127.0.0.1:6379/6")
_TASKS = table_of(TaskRow)
LIVE = (TaskStatus.QUEUED, TaskStatus.DISPATCHED, TaskStatus.RUNNING)


# --- the database -----------------------------------------------------------------------------


# --- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


class PrivateRedis:
    """A ``redis-server`` of our own on a free port: the broker we may kill and restart."""

    def __init__(self, workdir: Path, persist: bool) -> None:
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir()
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--dir",
                    str(self.dir),
                    *persistence,
                    "--daemonize",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"private redis on port {self.port} did not start (see {self.log})") from None
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None


@dataclass
class Kill:
    at: float  # time.time() just after the signal was sent
    slot: str
    kind: str  # "child" or "main"
    pids: list[int]
    running_row: str | None  # a row the slot had just started (it may have finished before the kill)


class WorkerSlot:
    """One boefje worker, ``celery -A benchmarks.chaos_app worker -Q boefjes``, in its own session."""

    def __init__(self, name: str, env: dict[str, str], logdir: Path, concurrency: int) -> None:
        self.name = name
        self.env = env
        self.log = logdir / f"{name}.log"
        self.concurrency = concurrency
        self.generation = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def hostname_prefix(self) -> str:
        return f"chaos-{self.name}."

    def start(self) -> None:
        self.generation += 1
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "benchmarks.chaos_app",
            "worker",
            "-Q",
            Queue.BOEFJES.value,
            "-c",
            str(self.concurrency),
            "-P",
            "prefork",
            "-n",
            f"{self.hostname_prefix}{self.generation}@%h",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "INFO",
        ]
        with open(self.log, "ab") as log:
            log.write(f"\n===== {self.name} generation {self.generation} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def pool_children(self) -> list[int]:
        return children_of(self.process.pid) if self.process and self.process.poll() is None else []

    def kill_child(self) -> tuple[list[int], float]:
        """SIGKILL the pool processes (Celery's main process replaces them); their pids and when."""
        pids = self.pool_children()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids, time.time()

    def kill_main(self) -> tuple[list[int], float]:
        """SIGKILL the whole worker (main and pool processes, as a machine dying would)."""
        assert self.process is not None
        pids = [self.process.pid, *self.pool_children()]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        at = time.time()
        self.process.wait(10)
        return pids, at

    def stop(self, timeout: float = 20) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


# --- the run ----------------------------------------------------------------------------------


def boefje_tasks(world: World, settings: Settings, count: int, rng: random.Random) -> list[NewTask]:
    """``count`` tasks on distinct objects, each with a boefje the world enables for the object."""
    candidates: list[tuple[str, str, str]] = []
    for org in world.organisation_ids:
        boefjes = [b for b in world.boefjes if world.is_enabled(org, b.id) and b.consumes and not b.run_on]
        for ooi in world.oois(org).values():
            level = ooi.level if ooi.scan_profile_type != "empty" else 0
            fits = [b.id for b in boefjes if ooi.object_type in b.consumes and b.scan_level <= level]
            if fits:
                candidates.append((org, rng.choice(fits), ooi.primary_key))
    if len(candidates) < count:
        raise SystemExit(f"the world has only {len(candidates)} objects a boefje may scan; raise --oois")
    chosen = rng.sample(candidates, count)
    clients = clients_from_settings(settings)
    plugins: dict[tuple[str, str], Boefje] = {}
    tasks = []
    try:
        for org, boefje_id, ref in chosen:
            plugin = plugins.get((org, boefje_id))
            if plugin is None:
                found = clients.katalogus.plugin(org, boefje_id)
                assert isinstance(found, Boefje), f"{boefje_id} is no boefje in {org}"
                plugin = plugins[(org, boefje_id)] = found
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
    finally:
        clients.close()
    return tasks


def status_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(_TASKS.c.status, sa.func.count()).group_by(_TASKS.c.status)).all()
    return {str(status): n for status, n in rows}


def just_started_row(engine: sa.Engine, slot: WorkerSlot, within: float = 1.0) -> str | None:
    """A row one of the slot's pool processes started in the last ``within`` seconds (it runs a task).

    ``tasks.worker`` is ``host:pid`` of the pool process (or, in older versions, the Celery node name).
    """
    runners = [f"{socket.gethostname()}:{pid}" for pid in slot.pool_children()]
    since = utcnow() - timedelta(seconds=within)
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.cast(_TASKS.c.id, sa.String))
            .where(
                _TASKS.c.status == TaskStatus.RUNNING,
                _TASKS.c.started_at > since,
                sa.or_(
                    _TASKS.c.worker.in_(runners), _TASKS.c.worker.like(f"{slot.hostname_prefix}{slot.generation}@%")
                ),
            )
            .limit(1)
        ).scalar_one_or_none()


@dataclass
class Figures:
    kills: list[Kill] = field(default_factory=list)
    redis_restarts: list[tuple[float, float]] = field(default_factory=list)  # (down at, up at)
    reaper: Counter[str] = field(default_factory=Counter)
    reaper_exceptions: int = 0
    reap_passes: int = 0
    first_repair: dict[str, float] = field(default_factory=dict)
    last_repair: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    run: str
    task: str
    pid: int
    start: float
    end: float | None = None
    killed: bool = False  # it killed its own process (a poison task)


def read_records(client: redis.Redis, key: str) -> tuple[dict[str, list[Run]], Counter[str]]:
    runs: dict[str, Run] = {}
    outcomes: Counter[str] = Counter()
    raw: list[bytes] = client.lrange(key, 0, -1)  # type: ignore[assignment]
    for item in raw:
        event = json.loads(item)
        if event["ev"] == "start":
            runs[event["run"]] = Run(event["run"], event["task"], event["pid"], event["t"])
        elif event["ev"] == "end":
            runs[event["run"]].end = event["t"]
            runs[event["run"]].killed = bool(event.get("killed"))
        else:
            outcomes[event["outcome"]] += 1
    by_task: dict[str, list[Run]] = defaultdict(list)
    for run in runs.values():
        by_task[run.task].append(run)
    return by_task, outcomes


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kat-chaos-"))
    failed = True
    try:
        yield path
        failed = False
    finally:
        if keep or failed:
            print(f"logs kept in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--organisations", type=int, default=2)
    parser.add_argument("--oois", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=1, help="pool processes per worker (-c)")
    parser.add_argument("--run-ms", default="20,50", help="each boefje run sleeps this many ms (low,high)")
    parser.add_argument("--soft-limit", type=int, default=5)
    parser.add_argument("--hard-limit", type=int, default=10)
    parser.add_argument("--visibility-timeout", type=int, default=15)
    parser.add_argument("--reap-every", type=float, default=2.0)
    parser.add_argument("--running-slack", type=float, default=None, help="seconds; default: the reaper's own")
    parser.add_argument("--max-retries", type=int, default=5, help="SCHEDULER_MAX_RETRIES")
    parser.add_argument("--redis-persist", action="store_true", help="appendonly for the private broker")
    parser.add_argument("--redis-down", type=float, default=2.0, help="seconds the broker stays down")
    parser.add_argument("--no-redis-restart", action="store_true")
    parser.add_argument(
        "--cancel-on-connection-loss",
        action="store_true",
        help="workers set worker_cancel_long_running_tasks_on_connection_loss (benchmarks.chaos_celeryconfig)",
    )
    parser.add_argument("--poison", type=int, default=0, help="tasks whose every run SIGKILLs its pool process")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    slack_setting = "running_slack" in Settings.model_fields
    if args.running_slack is not None and not slack_setting:
        setattr(reaper_module, "RUNNING_SLACK", timedelta(seconds=args.running_slack))  # noqa: B010
    rng = random.Random(args.seed)

    world = generate_world(
        WorldConfig(seed=args.seed, organisations=args.organisations, oois_per_org=args.oois, boefjes=10)
    )
    record_key = f"kat-chaos:{uuid.uuid4().hex[:8]}:runs"
    records = redis.Redis.from_url(RECORDS)
    with SimulatedKAT(world).start() as kat, workdir(args.keep_logs) as work:
        db_uri, admin = fresh_database("kat_chaos")
        broker = PrivateRedis(work, args.redis_persist)
        slots: list[WorkerSlot] = []
        engine = sa.create_engine(normalise_url(db_uri))
        publisher: Publisher | None = None
        try:
            broker.start()
            settings = load_settings(
                octopoes_api=kat.octopoes_url,
                katalogus_api=kat.katalogus_url,
                bytes_api=kat.bytes_url,
                db_uri=db_uri,
                broker_url=broker.url,
                runner="simulated",
                soft_time_limit=args.soft_limit,
                hard_time_limit=args.hard_limit,
                visibility_timeout=args.visibility_timeout,
                max_retries=args.max_retries,
                unpublished_after=5.0,
                **({"running_slack": args.running_slack} if slack_setting and args.running_slack is not None else {}),
            )
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "OCTOPOES_API": kat.octopoes_url,
                "KATALOGUS_API": kat.katalogus_url,
                "BYTES_API": kat.bytes_url,
                "SCHEDULER_DB_URI": db_uri,
                "SCHEDULER_BROKER_URL": broker.url,
                "SCHEDULER_RUNNER": "simulated",
                "SCHEDULER_SOFT_TIME_LIMIT": str(args.soft_limit),
                "SCHEDULER_HARD_TIME_LIMIT": str(args.hard_limit),
                "SCHEDULER_VISIBILITY_TIMEOUT": str(args.visibility_timeout),
                "SCHEDULER_MAX_RETRIES": str(args.max_retries),
                "SCHEDULER_LOG_LEVEL": "INFO",
                RECORD_URL_ENV: RECORDS,
                RECORD_KEY_ENV: record_key,
                RUN_MS_ENV: args.run_ms,
            }
            env.pop("SCHEDULER_RESULT_BACKEND", None)
            if args.cancel_on_connection_loss:
                env["CELERY_CONFIG_MODULE"] = "benchmarks.chaos_celeryconfig"
            store = TaskStore(engine)
            new = boefje_tasks(world, settings, args.tasks, rng)
            claimed = store.claim(new)
            assert len(claimed) == args.tasks, f"claimed {len(claimed)} of {args.tasks}: hashes not distinct"

            poison = [str(t.id) for t in claimed[: args.poison]]
            env[POISON_ENV] = ",".join(poison)
            slots = [WorkerSlot(f"w{i + 1}", env, work, args.concurrency) for i in range(2)]
            for slot in slots:
                slot.start()
            time.sleep(3)  # let them connect: the first kills should hit running tasks, not start-ups

            publisher = make_publisher(settings)
            t0 = time.monotonic()
            started = time.time()
            messages = [
                OutgoingMessage(
                    t.id,
                    TaskName.BOEFJE_RUN.value,
                    Queue.BOEFJES.value,
                    t.band,
                    boefje_message_kwargs(t.organisation, t.plugin_id, t.input_ooi),
                )
                for t in claimed
            ]
            publisher.publish(messages)
            store.mark_published([t.id for t in claimed])
            print(
                f"published {len(messages)} boefje tasks in {time.monotonic() - t0:.2f} s to the private broker "
                f"{broker.url} ({'appendonly' if args.redis_persist else 'no persistence'}); "
                f"2 workers x -c {args.concurrency}; limits soft {args.soft_limit} s, hard {args.hard_limit} s, "
                f"visibility {args.visibility_timeout} s; "
                f"reaper slack {running_slack(settings):.0f} s"
            )

            reaper = Reaper(store, publisher, settings)
            figures = Figures()
            kill_marks = sorted(rng.uniform(0.05, 0.85) for _ in range(args.kills))
            restart_mark = None if args.no_redis_restart else 0.5
            next_reap = time.monotonic() + args.reap_every
            deadline = t0 + args.timeout
            counts: dict[str, int] = {}
            while time.monotonic() < deadline:
                counts = status_counts(engine)
                live = sum(counts.get(s, 0) for s in LIVE)
                progress = 1 - live / args.tasks
                if kill_marks and progress >= kill_marks[0]:
                    kill_marks.pop(0)
                    figures.kills.append(kill_one(engine, slots, rng))
                if restart_mark is not None and progress >= restart_mark:
                    restart_mark = None
                    down = time.time()
                    broker.kill()
                    time.sleep(args.redis_down)
                    broker.start()
                    figures.redis_restarts.append((down, time.time()))
                for slot in slots:
                    if slot.process is not None and slot.process.poll() is not None:
                        print(f"  worker {slot.name} exited by itself ({slot.process.returncode}); starting it again")
                        slot.start()
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + args.reap_every
                    reap(reaper, figures, time.time() - started)
                if live == 0:
                    break
                time.sleep(0.1)
            elapsed = time.monotonic() - t0
            time.sleep(2)  # any stray redelivery would run now
            for slot in slots:
                slot.stop()
            safe = report(
                args,
                engine,
                records,
                record_key,
                figures,
                counts,
                elapsed,
                started,
                broker,
                publisher,
                [s.log for s in slots],
            )
            if poison:
                with engine.connect() as conn:
                    for row in conn.execute(
                        sa.select(_TASKS.c.id, _TASKS.c.status, _TASKS.c.attempts, _TASKS.c.error).where(
                            _TASKS.c.id.in_([t.id for t in claimed[: args.poison]])
                        )
                    ):
                        print(f"poison task {row.id}: {row.status} after {row.attempts} attempts ({row.error})")
            live_left = sum(status_counts(engine).get(s, 0) for s in LIVE)
            return 0 if safe and not live_left else 1
        finally:
            for slot in slots:
                slot.stop(timeout=10)
            if publisher is not None:
                publisher.close()
            broker.kill()
            engine.dispose()
            drop_database(admin, db_uri)
            admin.dispose()
            if args.keep_logs:
                dump: list[bytes] = records.lrange(record_key, 0, -1)  # type: ignore[assignment]
                (work / "records.jsonl").write_bytes(b"\n".join(dump))
            records.delete(record_key)
            records.close()


def running_slack(settings: Settings) -> float:
    """Seconds past the hard limit before the reaper takes a running row for stuck."""
    if "running_slack" in Settings.model_fields:
        return float(getattr(settings, "running_slack"))  # noqa: B009
    slack: timedelta = getattr(reaper_module, "RUNNING_SLACK")  # noqa: B009
    return slack.total_seconds()


def kill_one(engine: sa.Engine, slots: list[WorkerSlot], rng: random.Random) -> Kill:
    """SIGKILL a worker that is running a task (waits up to 3 s for one to be): its child or all of it."""
    deadline = time.monotonic() + 3
    order = rng.sample(slots, len(slots))
    slot, row = order[0], None
    while time.monotonic() < deadline and row is None:
        for candidate in order:
            row = just_started_row(engine, candidate)
            if row is not None:
                slot = candidate
                break
        else:
            time.sleep(0.005)
    kind = rng.choice(["child", "main"])
    if kind == "child":
        pids, at = slot.kill_child()
    else:
        pids, at = slot.kill_main()
        slot.start()
    return Kill(at, slot.name, kind, pids, row)


def reap(reaper: Reaper, figures: Figures, since_start: float) -> None:
    try:
        result: ReapReport = reaper.reap(utcnow())
    except Exception as exc:  # a pass that fails (the broker down) is counted; the next one tries again
        figures.reaper_exceptions += 1
        print(f"  reaper pass failed: {type(exc).__name__}: {exc}")
        return
    figures.reap_passes += 1
    for name, value in result.as_dict().items():
        if value:
            figures.reaper[name] += value
            figures.first_repair.setdefault(name, since_start)
            figures.last_repair[name] = since_start


def recovery(kill: Kill, rows: dict[str, Any], by_task: dict[str, list[Run]]) -> str:
    """What became of the row a kill interrupted: when it ran again, and how it ended."""
    cut = [run for runs in by_task.values() for run in runs if run.end is None and run.pid in kill.pids]
    if cut:
        task, was = cut[0].task, "cut in the runner"
    elif kill.running_row is not None:
        task, was = kill.running_row, "killed outside the runner, or finished just before"
    else:
        return "no row seen running"
    row = rows[task]
    later = [run.start - kill.at for run in by_task.get(task, []) if run.start > kill.at]
    again = f"ran again {later[0]:.1f} s later" if later else "did not run again"
    return f"row {task[:8]} ({was}) {again}; now {row.status}, {row.attempts} attempts"


LOG_PATTERNS = {
    "taken over (runner died)": "died; running it again",
    "WorkerLostError": "Task handler raised error: WorkerLostError",
    "broker connection lost": "Connection to broker lost",
    "soft time limit": "Soft time limit",
    "hard time limit": "Hard time limit",
}


def log_counts(logs: list[Path]) -> dict[str, int]:
    text = "\n".join(log.read_text(errors="replace") for log in logs if log.exists())
    return {name: text.count(pattern) for name, pattern in LOG_PATTERNS.items()}


def report(
    args: argparse.Namespace,
    engine: sa.Engine,
    records: redis.Redis,
    record_key: str,
    figures: Figures,
    counts: dict[str, int],
    elapsed: float,
    started: float,
    broker: PrivateRedis,
    publisher: Publisher,
    logs: list[Path],
) -> bool:
    """Print the figures; ``False`` when a safety check failed."""
    with engine.connect() as conn:
        rows = {
            str(r.id): r
            for r in conn.execute(
                sa.select(_TASKS.c.id, _TASKS.c.status, _TASKS.c.attempts, _TASKS.c.ended_at, _TASKS.c.error)
            )
        }
    by_task, outcomes = read_records(records, record_key)
    kill_time: dict[int, float] = {}
    for kill in figures.kills:
        for pid in kill.pids:
            kill_time.setdefault(pid, kill.at)

    def end_of(run: Run) -> float:
        if run.end is not None:
            return run.end
        killed = kill_time.get(run.pid)
        return killed if killed is not None and killed >= run.start else float("inf")

    total_runs = sum(len(r) for r in by_task.values())
    cut = [run for runs in by_task.values() for run in runs if run.end is None or run.killed]
    cut_by_kill = [run for run in cut if run.killed or end_of(run) != float("inf")]
    poisoned = [run for run in cut if run.killed]
    overlapping: list[tuple[Run, Run]] = []
    after_finish: list[Run] = []
    for task, runs in by_task.items():
        runs.sort(key=lambda r: r.start)
        overlapping += [(a, b) for a, b in itertools.pairwise(runs) if end_of(a) > b.start]
        row = rows.get(task)
        if row is not None and row.ended_at is not None:
            after_finish += [run for run in runs if run.start > row.ended_at.timestamp()]
    never_ran = sum(1 for task in rows if task not in by_task)
    more_than_once = Counter(len(runs) for runs in by_task.values() if len(runs) > 1)
    attempts = Counter(int(r.attempts) for r in rows.values())
    errors = Counter((r.error or "").split(":")[0] for r in rows.values() if r.status == TaskStatus.FAILED)
    final = status_counts(engine)
    try:
        depth = publisher.queue_depth(Queue.BOEFJES.value)
    except Exception as exc:
        depth = -1
        print(f"  queue depth unknown: {exc}")
    unacked = redis.Redis.from_url(broker.url).hlen("unacked")

    def at(t: float) -> str:
        return f"{t - started:6.1f} s"

    print("\n=== chaos run ===")
    print(
        f"rows by status: {dict(sorted(final.items()))} (of {args.tasks}); "
        f"left live (lost or stuck): {sum(final.get(s, 0) for s in LIVE)}"
    )
    print(
        f"elapsed: {elapsed:.1f} s (publish to no live row{', TIMED OUT' if any(counts.get(s) for s in LIVE) else ''})"
    )
    ends = sorted(r.ended_at.timestamp() for r in rows.values() if r.ended_at is not None)
    if ends:
        marks = {"50%": ends[len(ends) // 2], "99%": ends[int(len(ends) * 0.99) - 1], "100%": ends[-1]}
        print("rows finished by: " + ", ".join(f"{name} at {at(t).strip()}" for name, t in marks.items()))
    print(f"kills done: {len(figures.kills)}")
    for kill in figures.kills:
        print(f"  {at(kill.at)}: SIGKILL {kill.slot} {kill.kind:5} pids {kill.pids}; {recovery(kill, rows, by_task)}")
    for down, up in figures.redis_restarts:
        print(
            f"  {at(down)}: private redis killed (-9), back at {at(up)} "
            f"({'appendonly' if args.redis_persist else 'nothing kept'})"
        )
    repairs = ", ".join(
        f"{name} {figures.reaper[name]} "
        f"(first at {figures.first_repair[name]:.1f} s, last at {figures.last_repair[name]:.1f} s)"
        for name in sorted(figures.reaper)
    )
    names = [name for name in ReapReport().as_dict() if name != "pruned"]
    print(
        f"reaper: {figures.reap_passes} passes, {figures.reaper_exceptions} raised; repairs: "
        + ", ".join(f"{name} {figures.reaper[name]}" for name in names)
    )
    if repairs:
        print(f"  when: {repairs}")
    print(f"failed rows by error: {dict(errors)}")
    print(f"attempts per row: {dict(sorted(attempts.items()))}")
    print(
        f"runs recorded: {total_runs} for {len(by_task)} tasks; rows never run: {never_ran}; "
        f"runs cut short: {len(cut)}, of which by our kills: {len(cut_by_kill) - len(poisoned)}, "
        f"by poison: {len(poisoned)}"
    )
    for run in cut:
        if run not in cut_by_kill:
            print(f"  cut run not explained by a kill: task {run.task} pid {run.pid} started at {at(run.start)}")
    print(f"deliveries by outcome: {dict(outcomes)}")
    print(f"tasks that ran more than once: {sum(more_than_once.values())} {dict(more_than_once) or ''}")
    print(f"runs of the same task overlapping in time: {len(overlapping)} (must be 0)")
    for a, b in overlapping:
        print(f"  task {a.task}: pid {a.pid} {at(a.start)}–{at(end_of(a))}, pid {b.pid} from {at(b.start)}")
    print(f"runs started after their row had finished: {len(after_finish)} (must be 0)")
    for run in after_finish:
        print(f"  task {run.task}: pid {run.pid} at {at(run.start)}, row {rows[run.task].status}")
    print(f"left on the broker: {depth} queued, {unacked} unacked")
    print(f"worker logs: {log_counts(logs)}")
    return not (overlapping or after_finish)


if __name__ == "__main__":
    sys.exit(main())
