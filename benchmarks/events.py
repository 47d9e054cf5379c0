"""Benchmark: KAT's events through a real ``kat-scheduler listen`` (issue 4's targets).

    .venv/bin/python -m benchmarks.events [--samples 200] [--storm 10000] [--runs 3]

Per run: a fresh PostgreSQL database, an empty Redis db (7: the Celery broker), our event
queues emptied on a RabbitMQ vhost of our own (``kat_bench_events_<pid>``, created with
``rabbitmqctl`` when missing), the simulated KAT in this process (so its request counts are
exact), ``--listeners`` ``kat-scheduler listen`` subprocesses on those (one by default; several
consume the same queues, as an operator runs them), and the events published from this process
with :class:`~kat_scheduler.sim.bridge.EventBridge`, as Octopoes does.

1. **Latency** (mutation -> boefje started; issue 17: p95 <= 50 ms). A stock ``celery worker
   -Q boefjes -c 1`` runs :mod:`benchmarks.event_probe`, whose ``kat.boefje.run`` pushes
   ``time.time()`` at its start into Redis. One at a time, a
   ``create`` mutation of a new Hostname (level 4, organisations in turn) is published; the
   next one only once every boefje task of the previous one has started (the worker is idle).
   Latency = first task start - publish, on this machine's clock. The first ``--warmup`` events
   are not counted. The tasks table splits it: publish -> claim (``created_at``: broker delivery,
   batch window, the handler's queries) and claim -> first start (the claim's insert, the
   publish, the worker's pickup).
2. **Storm a.** ``--storm`` creates of new objects (Hostnames and IPv4 addresses at level 4,
   organisations in turn; each gets several boefjes) published at once with ``publish_many``;
   the boefje worker is stopped, so the broker only collects.
3. **Storm b.** The boefje planner ticks once in this process (everything in the world is
   planned and gets a schedule); its tasks are then marked completed (the workers ran them)
   and taken off the broker, and the tables ANALYZEd (as autovacuum would have in a steady
   state). Then ``--storm`` updates of existing world objects at their own level: the steady
   state, in which almost all fall within their schedule and queue nothing (boefjes with
   ``run_on: update`` have no schedule and do run).
4. **Storm c.** From the same state, ``--storm`` updates that raise world objects to level 4:
   pairs below clearance at the tick become eligible, and Bytes' history decides (runs that
   ended inside the grace period, runs still going or dead, cron), which the listener knows
   from ``bytes_runs`` (what the tick kept of Bytes' history), not from Bytes. The simulated
   Octopoes holds the raised levels from just before the storm is published (as Octopoes holds an
   object before it publishes its mutation; a listener asks it about an object another listener
   handled lately), and the oracle judges by a copy of the world as the tick found it.

Every storm's queued set (organisation, boefje, object) is compared with what the simulation's
oracle allows (``kat_scheduler.sim.oracle.allowed_event_tasks``, at the storm's start, with the
scheduler's stall age): precision (the share of queued tasks the rules allow) and recall (the
share of allowed tasks queued). The listener and the tick run with a stall age of
``--stall-age`` seconds (an hour), so the world's runs without an end are still partly running
and partly dead while a run of the benchmark lasts.

Each storm runs twice. **Live**: the listener consumes while the storm is published, and the
clock starts just before ``publish_many``, so the benchmark's own publishing (a pure-Python
kombu producer with confirms, sharing the two cores) is inside the figure. **Backlog**: the
listener is stopped, the whole storm is published onto the queue, a new listener is started,
and the clock starts once RabbitMQ counts its consumer: "published at once", then planned.
Storm a's backlog run uses other new objects; storm b's two runs start from the same state
(the first one's tasks and new schedules are deleted in between).

A storm is followed by one sentinel ``create``: a listener writes batches in order on one
thread, so with one listener, once the sentinel's task is claimed every storm event has been
handled. A storm's time runs from its clock's start to the sentinel's claim ("handled"); its rate
is ``--storm`` / that time. With several listeners the broker deals the events out among them, so
a sentinel says nothing about the others: each runs as :mod:`benchmarks.listen` (the stock
command, logging a line per handled batch), and a storm is handled once the listeners' logs count
every event of it and the sentinel; "handled" is the newest of those lines. "Last claim" is the
newest ``created_at`` of the storm's own rows. HTTP requests are the simulated services' counts
over the same time (a new listener fetches each organisation's plugins once). CPU seconds per
process group (``/proc``; "postgres" is this run's database's backends) show where the machine's
time went.

Prints figures per run and the median of ``--runs`` runs, then one line per target; asserts
nothing. ``--profile DIR`` runs the listener under cProfile and leaves ``listener-N.prof``
there. Logs go to a temporary folder, printed at the end.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis
import sqlalchemy as sa
from kombu.connection import Connection

from benchmarks.common import cpu_seconds, cpu_used, drop_database, fresh_database, redis_database
from benchmarks.event_probe import KEY as PROBE_KEY
from kat_scheduler.clients import clients_from_settings
from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.events.consumer import dead_letter_queue
from kat_scheduler.models.tasks import LIVE_STATUSES, TaskStatus
from kat_scheduler.producers import ProducerContext, TickProducer
from kat_scheduler.queues import RAW_FILE_RECEIVED, SCAN_PROFILE_MUTATIONS
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.settings import load_settings, load_settings_with
from kat_scheduler.sim import SimulatedKAT, WorldConfig, generate_world
from kat_scheduler.sim.bridge import EventBridge
from kat_scheduler.sim.events import scan_profile_mutation, world_mutations
from kat_scheduler.sim.oracle import allowed_event_tasks, raised_pairs
from kat_scheduler.sim.records import DECLARED, OOIRecord
from kat_scheduler.sim.world import World
from kat_scheduler.storage import ScheduleRow, ScheduleStore, TaskRow, TaskStore, UnpublishedTask
from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.tables import LIVE_STATUS_SQL
from tests.workers import ROOT, celery_worker, stop, wait_for

#: The Celery broker: ``$BENCH_EVENTS_REDIS_URL``, else a Redis database claimed for the run (set by ``main``).
REDIS = ""
AMQP = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
#: Our own vhost, named for this process so that two benchmark runs on one broker never share one.
VHOST = f"kat_bench_events_{os.getpid()}"
OUR_QUEUES = (
    SCAN_PROFILE_MUTATIONS,
    RAW_FILE_RECEIVED,
    dead_letter_queue(SCAN_PROFILE_MUTATIONS),
    dead_letter_queue(RAW_FILE_RECEIVED),
)
#: The Celery queue the listener publishes boefje tasks to (keys ``boefjes``, ``boefjes:1`` ... on Redis).
BOEFJE_QUEUE = "boefjes"
LEVEL = 4
NETWORK = "internet"
#: Pause after the last task of a latency sample started, so the worker is idle again.
IDLE_GAP = 0.01

TARGET_P50_MS = 50.0
#: Issue 17's floor for mutation -> boefje started (issue 4 asked for 200 ms).
TARGET_P95_MS = 50.0
TARGET_RATE = 5000.0
TARGET_HTTP = 0.1
#: The storms in the order they run, and what each is.
STORMS = {
    "a": "new objects, live",
    "a-backlog": "new objects, backlog",
    "b-backlog": "steady state, backlog",
    "b": "steady state, live",
    "c-backlog": "levels raised, backlog",
}


# --- the brokers ----------------------------------------------------------------------------


def with_vhost(url: str, vhost: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(vhost, safe="")))


def connect_error(url: str) -> Exception | None:
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.connect()
    except Exception as exc:
        return exc
    return None


def events_url() -> str:
    """RabbitMQ on our own vhost, created (with rabbitmqctl) when it is missing."""
    url = with_vhost(AMQP, VHOST)
    if connect_error(url) is None:
        return url
    if not shutil.which("rabbitmqctl"):
        raise SystemExit(f"cannot reach vhost {VHOST} at {AMQP} and rabbitmqctl is not there to create it")
    user = urlsplit(AMQP).username or "guest"
    for command in (["add_vhost", VHOST], ["set_permissions", "-p", VHOST, user, ".*", ".*", ".*"]):
        subprocess.run(["rabbitmqctl", *command], capture_output=True, timeout=60, check=False)
    atexit.register(
        subprocess.run, ["rabbitmqctl", "delete_vhost", VHOST], capture_output=True, timeout=60, check=False
    )
    error = connect_error(url)
    if error is not None:
        raise SystemExit(f"cannot reach vhost {VHOST}: {error}")
    return url


def drop_event_queues(url: str) -> None:
    """Delete our four event queues on our vhost (nothing else)."""
    with Connection(url, connect_timeout=3) as conn:
        for name in OUR_QUEUES:
            with conn.channel() as channel, contextlib.suppress(*conn.channel_errors):
                channel.queue_delete(name)


def boefje_keys(broker: redis.Redis) -> list[bytes]:
    """The Redis keys of the boefje queue (one per priority step)."""
    name = BOEFJE_QUEUE.encode()
    keys = [k if isinstance(k, bytes) else str(k).encode() for k in broker.keys(f"{BOEFJE_QUEUE}*")]
    return [k for k in keys if k == name or k.startswith(name + b":")]


def broker_depth(broker: redis.Redis) -> int:
    return sum(int(broker.llen(key)) for key in boefje_keys(broker))


def clear_boefje_queue(broker: redis.Redis) -> None:
    keys = boefje_keys(broker)
    if keys:
        broker.delete(*keys)


# --- events ----------------------------------------------------------------------------------


def consuming_boefjes(world: World, org: str, object_type: str, level: int, operation: str) -> tuple[str, ...]:
    """The boefjes a ``operation`` of an object of ``object_type`` at ``level`` queues in ``org`` (no history)."""
    return tuple(
        sorted(
            b.id
            for b in world.boefjes
            if world.is_enabled(org, b.id)
            and object_type in b.consumes
            and b.scan_level <= level
            and (not b.run_on or operation in b.run_on)
        )
    )


@dataclass(frozen=True)
class NewObject:
    """A new object to publish a ``create`` about, and the boefjes that should run on it."""

    organisation: str
    object_type: str
    primary_key: str
    boefjes: tuple[str, ...]

    def body(self) -> dict[str, Any]:
        ooi = OOIRecord(self.object_type, self.primary_key, DECLARED, LEVEL)
        return scan_profile_mutation("create", self.organisation, self.primary_key, ooi)

    def hashes(self) -> list[str]:
        return [boefje_task_hash(b, self.organisation, self.primary_key) for b in self.boefjes]


def primary_key(object_type: str, tag: str, n: int) -> str:
    """The ``n``-th new object of a type; addresses are numbered from ``n`` alone (pass distinct ``n``)."""
    if object_type == "Hostname":
        return f"Hostname|{NETWORK}|{tag}-{n}.bench.example"
    if object_type == "IPAddressV4":
        return f"IPAddressV4|{NETWORK}|10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
    raise ValueError(f"no primary keys for {object_type}")


def new_objects(world: World, tag: str, count: int, object_types: Sequence[str], first: int = 0) -> list[NewObject]:
    """``count`` new objects, in turn over (organisation, type) pairs that some enabled boefje consumes.

    Hostnames carry ``tag``; addresses are numbered from ``first``, so two sets of new addresses
    need ranges of their own.
    """
    combos = [
        (org, object_type, boefjes)
        for org in world.organisation_ids
        for object_type in object_types
        if (boefjes := consuming_boefjes(world, org, object_type, LEVEL, "create"))
    ]
    if not combos:
        raise SystemExit(f"no enabled boefje consumes {object_types} in any organisation")
    out = []
    for n in range(count):
        org, object_type, boefjes = combos[n % len(combos)]
        out.append(NewObject(org, object_type, primary_key(object_type, tag, first + n), boefjes))
    return out


def hold_in_octopoes(world: World, bodies: Sequence[dict[str, Any]], before: list[tuple[str, str, str, int]]) -> None:
    """Give the simulated Octopoes each ``update``'s scan profile, as Octopoes holds an object before
    it publishes its mutation (a listener may ask it: an object another listener handled lately is
    taken as Octopoes holds it); each object's profile before goes to ``before``, for
    :func:`restore_levels`."""
    for body in bodies:
        value = body.get("value")
        if body["operation"] != "update" or not value or not value.get("scan_profile"):
            continue
        org, key = body["client_id"], body["primary_key"]
        ooi = world.get_ooi(org, key)
        if ooi is None:
            continue
        before.append((org, key, ooi.scan_profile_type, ooi.level))
        profile = value["scan_profile"]
        world.set_scan_level(org, key, profile["level"], profile["scan_profile_type"])


def restore_levels(world: World, before: Sequence[tuple[str, str, str, int]]) -> None:
    """Put back the scan profiles :func:`hold_in_octopoes` changed, so the next run starts alike."""
    for org, key, profile_type, level in reversed(before):
        world.set_scan_level(org, key, level, profile_type)


# --- processes -------------------------------------------------------------------------------


def start_listener(
    kat: SimulatedKAT,
    queue_uri: str,
    db_uri: str,
    log: Path,
    profile: Path | None,
    extra_env: dict[str, str],
    listener_command: str | None = None,
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **kat.urls,
        "QUEUE_URI": queue_uri,
        "SCHEDULER_DB_URI": db_uri,
        "SCHEDULER_BROKER_URL": REDIS,
        "PYTHONPATH": str(ROOT),
        **extra_env,
    }
    env.pop("SCHEDULER_RESULT_BACKEND", None)
    profiler = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else [sys.executable]
    command = shlex.split(listener_command) if listener_command else [*profiler, "-m", "benchmarks.listen"]
    with open(log, "wb") as output:
        return subprocess.Popen(
            command,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )


def check_alive(process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    if process.poll() is not None:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(f"the {what} exited with {process.returncode}; its log ({log}) ends:\n{tail}")


# --- figures ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# --- 1. latency -------------------------------------------------------------------------------


@dataclass
class Sample:
    primary_key: str
    published: float
    confirmed: float
    first_start: float


def wait_for_starts(probe: redis.Redis, obj: NewObject, timeout: float) -> tuple[list[float], int]:
    """Block until every boefje of ``obj`` started (or ``timeout``); the start times and stray records."""
    deadline = time.monotonic() + timeout
    starts: list[float] = []
    strays = 0
    while len(starts) < len(obj.boefjes):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        item = probe.blpop([PROBE_KEY], timeout=min(remaining, 1.0))  # below the client's socket timeout
        if item is None:
            continue
        record = json.loads(item[1])
        if record["input_ooi"] == obj.primary_key:
            starts.append(float(record["started"]))
        else:
            strays += 1
    return starts, strays


def measure_latency(
    bridge: EventBridge,
    probe: redis.Redis,
    engine: sa.Engine,
    objects: Sequence[NewObject],
    warmup: int,
    alive: Callable[[], None],
) -> dict[str, Any]:
    probe.delete(PROBE_KEY)
    samples: list[Sample] = []
    missing = incomplete = strays = 0
    for n, obj in enumerate(objects):
        published = time.time()
        if not bridge.publish(SCAN_PROFILE_MUTATIONS, obj.body()):
            raise RuntimeError("RabbitMQ did not take an event")
        confirmed = time.time()
        starts, stray = wait_for_starts(probe, obj, timeout=90 if n == 0 else 15)
        strays += stray
        if len(starts) < len(obj.boefjes):
            alive()
            incomplete += bool(starts)
            missing += not starts
        if not starts:
            continue
        if n >= warmup:
            samples.append(Sample(obj.primary_key, published, confirmed, min(starts)))
        time.sleep(IDLE_GAP)
    latencies = [s.first_start - s.published for s in samples]

    # Where the time went, from the listener's own timestamps in the tasks table.
    keys = [s.primary_key for s in samples]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(TaskRow.input_ooi, sa.func.min(TaskRow.created_at))
            .where(TaskRow.input_ooi.in_(keys))
            .group_by(TaskRow.input_ooi)
        ).all()
    claimed = {pk: created.timestamp() for pk, created in rows}
    to_claim, claim_to_start, confirm = [], [], []
    for s in samples:
        if s.primary_key not in claimed:
            continue
        created = claimed[s.primary_key]
        to_claim.append(created - s.published)
        claim_to_start.append(s.first_start - created)
        confirm.append(s.confirmed - s.published)
    return {
        "n": len(latencies),
        "missing": missing,
        "incomplete": incomplete,
        "strays": strays,
        **spread(latencies),
        "parts": {
            "publish+confirm": statistics.median(confirm) if confirm else math.nan,
            "publish->claim": statistics.median(to_claim) if to_claim else math.nan,
            "claim->start": statistics.median(claim_to_start) if claim_to_start else math.nan,
        },
        "parts_p95": {
            "publish->claim": percentile(to_claim, 95),
            "claim->start": percentile(claim_to_start, 95),
        },
    }


# --- 2/3. storms -------------------------------------------------------------------------------


def sentinel_done(engine: sa.Engine, sentinel: NewObject) -> bool:
    with engine.connect() as conn:
        done = conn.execute(
            sa.select(sa.func.count())
            .select_from(TaskRow)
            .where(
                TaskRow.hash.in_(sentinel.hashes()),
                # Polled every 50 ms while the listener works: the live-hash index answers this in
                # 0.1 ms, where the hashes alone (no plain index) scanned every task: 5-37 ms each,
                # about a third of a core of PostgreSQL in a storm of 20,000 tasks.
                sa.text(LIVE_STATUS_SQL),
                TaskRow.id.not_in(sa.select(UnpublishedTask.task_id)),
            )
        ).scalar_one()
    return bool(done)


#: The consumer's line per handled batch (:mod:`benchmarks.listen`): its time, and how many events.
HANDLED_LINE = re.compile(
    rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) DEBUG kat_scheduler\.events\.consumer: "
    + re.escape(SCAN_PROFILE_MUTATIONS.encode())
    + rb": handled (\d+) events",
    re.MULTILINE,
)


def handled_in_log(log: Path) -> tuple[int, float]:
    """How many mutation events a listener's log says it handled, and when the last batch was (epoch s)."""
    try:
        text = log.read_bytes()
    except FileNotFoundError:
        return 0, math.nan
    count, last = 0, b""
    for match in HANDLED_LINE.finditer(text):
        count += int(match.group(2))
        last = match.group(1)
    if not count:
        return 0, math.nan
    return count, datetime.strptime(last.decode(), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # the listener's local time


@dataclass
class Listener:
    """The ``kat-scheduler listen`` subprocesses of a run (``count`` on the same queues), which a
    backlog storm stops and starts again."""

    start: Callable[[Path, str], subprocess.Popen[bytes]]
    logs: Path
    name: str
    count: int = 1
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_files: list[Path] = field(default_factory=list)
    starts: int = 0

    def begin(self) -> None:
        self.starts += 1
        self.processes, self.log_files = [], []
        for n in range(1, self.count + 1):
            suffix = ("" if self.count == 1 else f"-{n}") + ("" if self.starts == 1 else f".{self.starts}")
            log = self.logs / f"{self.name}{suffix}.log"
            self.log_files.append(log)
            self.processes.append(self.start(log, suffix))

    def alive(self) -> None:
        assert self.processes
        for process, log in zip(self.processes, self.log_files, strict=True):
            check_alive(process, "listener", log)

    def named(self) -> dict[int, str]:
        return {process.pid: "listener" for process in self.processes}

    def handled(self) -> tuple[int, float]:
        """Mutation events handled by the running listeners, and the time of the last batch."""
        counts = [handled_in_log(log) for log in self.log_files]
        times = [t for _, t in counts if not math.isnan(t)]
        return sum(n for n, _ in counts), max(times, default=math.nan)

    def stop(self) -> None:
        for process in self.processes:
            stop(process, timeout=30)


def consumers(url: str, queue: str) -> int:
    """How many consumers RabbitMQ has on ``queue``."""
    with Connection(url, connect_timeout=3) as conn, conn.channel() as channel:
        return int(channel.queue_declare(queue=queue, passive=True).consumer_count)


def storm(
    bridge: EventBridge,
    kat: SimulatedKAT,
    engine: sa.Engine,
    broker: redis.Redis,
    bodies: list[dict[str, Any]],
    sentinel: NewObject,
    listener: Listener,
    *,
    backlog: bool = False,
    timeout: float = 900,
    allowed: Callable[[datetime], set[tuple[str, str, str]]] | None = None,
    hold: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Publish ``bodies`` and a sentinel; figures once the sentinel's tasks are published.

    Live (default): the listener is consuming while the events are published, and the clock
    starts before the first publish. ``backlog``: the listener is stopped first, every event is
    published onto the queue, then a new listener starts, and the clock starts when it is
    attached to the queue (RabbitMQ counts its consumer), so only planning is timed. ``hold``
    makes the simulated Octopoes hold what the events say, before they are published.
    """
    database = engine.url.database
    depth_before = broker_depth(broker)
    if backlog:
        listener.stop()
    handled_before = 0 if backlog else listener.handled()[0]
    if hold is not None:
        hold()
    kat.reset_counts()
    cpu_start = cpu_seconds(listener.named(), database)
    t0 = time.time()
    taken = bridge.publish_many(SCAN_PROFILE_MUTATIONS, bodies)
    publish_seconds = time.time() - t0
    cpu_published = cpu_seconds(listener.named(), database)
    if taken != len(bodies) or not bridge.publish(SCAN_PROFILE_MUTATIONS, sentinel.body()):
        raise RuntimeError(f"RabbitMQ took {taken} of {len(bodies)} events (or not the sentinel)")
    if backlog:
        listener.begin()

        def attached() -> bool:
            listener.alive()
            return consumers(bridge.url, SCAN_PROFILE_MUTATIONS) > 0

        if not wait_for(attached, timeout=60, interval=0.002):
            raise RuntimeError("the listener did not attach to the queue within 60 s")
        t0 = time.time()
        kat.reset_counts()
        cpu_start = cpu_published = cpu_seconds(listener.named(), database)

    def done() -> bool:
        listener.alive()
        if listener.count > 1:
            # Several listeners: the storm is handled once their logs count it all (and the sentinel).
            return listener.handled()[0] - handled_before >= len(bodies) + 1
        return sentinel_done(engine, sentinel)

    expected = allowed(datetime.fromtimestamp(t0, UTC)) if allowed is not None else None
    if not wait_for(done, timeout=timeout, interval=0.05):
        raise RuntimeError(f"the storm was not handled within {timeout} s")
    cpu_end = cpu_seconds(listener.named(), database)
    requests = dict(kat.request_counts)
    since = datetime.fromtimestamp(t0, UTC)
    with engine.connect() as conn:
        queued, last = conn.execute(
            sa.select(sa.func.count(), sa.func.max(TaskRow.created_at)).where(
                TaskRow.created_at >= since,
                TaskRow.id.not_in(sa.select(UnpublishedTask.task_id)),
                TaskRow.input_ooi != sentinel.primary_key,
            )
        ).one()
        handled = conn.execute(
            sa.select(sa.func.min(TaskRow.created_at)).where(TaskRow.hash.in_(sentinel.hashes()))
        ).scalar_one()
        claims = conn.execute(
            sa.select(sa.func.count(sa.distinct(TaskRow.created_at))).where(
                TaskRow.created_at >= since, TaskRow.input_ooi != sentinel.primary_key
            )
        ).scalar_one()
        by_boefje = dict(
            conn.execute(
                sa.select(TaskRow.plugin_id, sa.func.count())
                .where(TaskRow.created_at >= since, TaskRow.input_ooi != sentinel.primary_key)
                .group_by(TaskRow.plugin_id)
                .order_by(sa.func.count().desc())
            ).all()
        )
        triples = {
            (str(o), str(p), str(i))
            for o, p, i in conn.execute(
                sa.select(TaskRow.organisation, TaskRow.plugin_id, TaskRow.input_ooi).where(
                    TaskRow.created_at >= since, TaskRow.input_ooi != sentinel.primary_key
                )
            )
        }
        unpublished = conn.execute(
            sa.select(sa.func.count()).where(
                TaskRow.created_at >= since, TaskRow.id.in_(sa.select(UnpublishedTask.task_id))
            )
        ).scalar_one()
    handled_s = handled.timestamp() - t0
    if listener.count > 1:
        handled_s = listener.handled()[1] - t0
    total_requests = sum(requests.values())
    return {
        "backlog": backlog,
        "mutations": len(bodies),
        "publish_s": publish_seconds,
        "handled_s": handled_s,
        "last_claim_s": (last.timestamp() - t0) if last is not None else math.nan,
        "rate": len(bodies) / handled_s,
        "queued": int(queued),
        "unpublished": int(unpublished),
        "claims": int(claims),
        "by_boefje": {str(k): int(v) for k, v in by_boefje.items()},
        "on_broker": broker_depth(broker) - depth_before - len(sentinel.boefjes),
        "requests": requests,
        "http_per_mutation": total_requests / len(bodies),
        "cpu_publish": cpu_used(cpu_start, cpu_published),
        "cpu_rest": cpu_used(cpu_published, cpu_end),
        **exactness(triples, expected),
    }


def exactness(queued: set[tuple[str, str, str]], expected: set[tuple[str, str, str]] | None) -> dict[str, Any]:
    """Precision and recall of ``queued`` against the oracle's ``expected`` (nothing when not compared)."""
    if expected is None:
        return {}
    right = len(queued & expected)
    return {
        "precision": right / len(queued) if queued else 1.0,
        "recall": right / len(expected) if expected else 1.0,
        "extra": len(queued - expected),
        "missing": len(expected - queued),
        "allowed": len(expected),
    }


def plan_and_complete(
    kat: SimulatedKAT, db_uri: str, engine: sa.Engine, broker: redis.Redis, stall_age: int
) -> dict[str, Any]:
    """One planning tick in this process, then its tasks completed (ran) and off the broker."""
    settings = load_settings(
        octopoes_api=kat.octopoes_url,
        katalogus_api=kat.katalogus_url,
        bytes_api=kat.bytes_url,
        broker_url=REDIS,
        result_backend=None,
        db_uri=db_uri,
        org_cap_per_tick=10_000_000,
        queue_depth_limit_boefjes=10_000_000,
        bytes_stall_age=stall_age,
    )
    clients = clients_from_settings(settings)
    publisher = make_publisher(settings)
    t = time.perf_counter()
    try:
        producers = ProducerContext(clients, TaskStore(engine), ScheduleStore(engine), settings, publisher)
        report = TickProducer(producers).run(datetime.now(UTC))
    finally:
        publisher.close()
        clients.close()
    seconds = time.perf_counter() - t
    now = datetime.now(UTC)
    with engine.begin() as conn:
        completed = conn.execute(
            sa.update(TaskRow)
            .where(TaskRow.status.in_(list(LIVE_STATUSES)))
            .values(status=TaskStatus.COMPLETED, started_at=now, ended_at=now, modified_at=now)
        ).rowcount
        schedules = conn.execute(sa.text("SELECT count(*) FROM schedules WHERE enabled")).scalar_one()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # Fresh statistics, as autovacuum keeps them in a steady state: right after the bulk update
        # above, stale ones make the planner read every completed row for each history look-up.
        conn.execute(sa.text("ANALYZE tasks"))
        conn.execute(sa.text("ANALYZE schedules"))
    clear_boefje_queue(broker)
    return {
        "queued": report.queued,
        "seconds": seconds,
        "errors": dict(report.errors),
        "completed": completed,
        "schedules": int(schedules),
        "bytes_runs": report.bytes_runs_recorded,
    }


# --- one run ---------------------------------------------------------------------------------


def run_once(
    world: World, tick_world: World, kat: SimulatedKAT, queue_uri: str, args: argparse.Namespace, n: int, logs: Path
) -> dict[str, Any]:
    """One run on ``world`` (what the simulated KAT serves); the oracle judges by ``tick_world``, the
    same world as the tick found it (storm c's raises change what the simulated Octopoes holds)."""
    db_uri, admin = fresh_database()
    engine = make_engine(db_uri, pool_size=2)
    broker = redis.Redis.from_url(REDIS)
    broker.flushdb()
    drop_event_queues(queue_uri)
    tag = f"r{n}-{uuid.uuid4().hex[:6]}"
    profiles = Path(args.profile).resolve() if args.profile else None

    def start(log: Path, suffix: str) -> subprocess.Popen[bytes]:
        profile = profiles / f"listener-{n}{suffix}.prof" if profiles else None
        return start_listener(kat, queue_uri, db_uri, log, profile, listener_env(args), args.listener_command)

    listener = Listener(start, logs, f"listener-{n}", count=args.listeners)

    def oracle(bodies: list[dict[str, Any]]) -> Callable[[datetime], set[tuple[str, str, str]]]:
        def allowed(now: datetime) -> set[tuple[str, str, str]]:
            cases[id(bodies)] = raised_pairs(tick_world, bodies, now=now, stall_age_seconds=args.stall_age)
            return allowed_event_tasks(tick_world, bodies, now=now, stall_age_seconds=args.stall_age)

        return allowed

    cases: dict[int, dict[str, int]] = {}

    listener.begin()
    figures: dict[str, Any] = {}
    try:
        with EventBridge(queue_uri) as bridge:
            # 1. latency, on an idle probe worker
            worker_env = {
                "SCHEDULER_BROKER_URL": REDIS,
                "SCHEDULER_DB_URI": db_uri,
                "EVENT_PROBE_REDIS_URL": REDIS,
            }
            with celery_worker(
                "benchmarks.event_probe",
                [BOEFJE_QUEUE],
                worker_env,
                concurrency=1,
                log_file=logs / f"worker-{n}.log",
                hostname=f"bench-events-{uuid.uuid4().hex[:6]}@%h",
            ):
                objects = new_objects(world, f"lat-{tag}", args.warmup + args.samples, ["Hostname"])
                figures["latency"] = measure_latency(bridge, broker, engine, objects, args.warmup, listener.alive)
            clear_boefje_queue(broker)

            # 2. storm a: creates of new objects, live and then as a backlog (other new objects)
            for first, (key, backlog) in enumerate((("a", False), ("a-backlog", True))):
                types = ["Hostname", "IPAddressV4"]
                creates = new_objects(world, f"storm-{key}-{tag}", args.storm, types, first=first * args.storm)
                sentinel = new_objects(world, f"sentinel-{key}-{tag}", 1, ["Hostname"])[0]
                bodies = [o.body() for o in creates]
                figures[key] = storm(
                    bridge, kat, engine, broker, bodies, sentinel, listener, backlog=backlog, allowed=oracle(bodies)
                )
                figures[key]["expected"] = sum(len(o.boefjes) for o in creates)
                clear_boefje_queue(broker)

            # 3. storm b: updates of planned objects, as a backlog and then live, from the same state
            figures["plan"] = plan_and_complete(kat, db_uri, engine, broker, args.stall_age)
            updates = world_mutations(world, args.storm, operation="update")
            raises = world_mutations(world, args.storm, operation="update", level=LEVEL)
            for key, backlog, bodies in (
                ("b-backlog", True, updates),
                ("b", False, updates),
                ("c-backlog", True, raises),
            ):
                sentinel = new_objects(world, f"sentinel-{key}-{tag}", 1, ["Hostname"])[0]
                since = datetime.now(UTC)
                held: list[tuple[str, str, str, int]] = []
                try:
                    figures[key] = storm(
                        bridge,
                        kat,
                        engine,
                        broker,
                        bodies,
                        sentinel,
                        listener,
                        backlog=backlog,
                        allowed=oracle(bodies),
                        hold=partial(hold_in_octopoes, world, bodies, held),
                    )
                finally:
                    restore_levels(world, held)
                figures[key]["raised"] = cases.get(id(bodies), {})
                forget(engine, broker, since)
        listener.alive()
        return figures
    finally:
        listener.stop()
        engine.dispose()
        drop_database(admin, db_uri)
        admin.dispose()
        broker.flushdb()
        broker.close()
        drop_event_queues(queue_uri)


def forget(engine: sa.Engine, broker: redis.Redis, since: datetime) -> None:
    """Undo a storm of updates: its tasks (rows and messages) and new schedules deleted, so the next starts alike.

    Its updates queue only pairs without a schedule in force, so deleting the schedules created
    since ``since`` puts the schedules back as they were.
    """
    with engine.begin() as conn:
        conn.execute(sa.delete(TaskRow).where(TaskRow.created_at >= since))
        conn.execute(sa.delete(ScheduleRow).where(ScheduleRow.created_at >= since))
    clear_boefje_queue(broker)


def listener_env(args: argparse.Namespace) -> dict[str, str]:
    env = {"SCHEDULER_BYTES_STALL_AGE": str(args.stall_age)}
    for item in args.listener_env:
        name, _, value = item.partition("=")
        env[name] = value
    return env


def print_run(n: int, f: dict[str, Any]) -> None:
    lat = f["latency"]
    parts = ", ".join(f"{k} {ms(v)}" for k, v in lat["parts"].items())
    parts95 = ", ".join(f"{k} {ms(v)}" for k, v in lat["parts_p95"].items())
    print(
        f"run {n}: latency p50 {ms(lat['p50'])} ms, p95 {ms(lat['p95'])} ms, p99 {ms(lat['p99'])} ms, "
        f"max {ms(lat['max'])} ms, n {lat['n']} "
        f"(missing {lat['missing']}, incomplete {lat['incomplete']}, strays {lat['strays']})"
    )
    print(f"  latency parts, median (ms): {parts}; p95: {parts95}")
    for name in STORMS:
        s = f[name]
        expected = f" of {s['expected']} expected" if "expected" in s else ""
        clock = "from the listener's attach" if s["backlog"] else "from the first publish"
        print(
            f"  storm {name}: {s['mutations']} mutations published in {s['publish_s']:.2f} s, handled in "
            f"{s['handled_s']:.2f} s {clock} = {s['rate']:,.0f} mutations/s; last claim at {s['last_claim_s']:.2f} s; "
            f"{s['queued']} tasks queued{expected} ({s['unpublished']} claimed, not published; "
            f"{s['on_broker']} on the broker); HTTP {s['requests']} = {s['http_per_mutation']:.4f}/mutation"
        )
        print(f"    claim statements (~ handler batches that queued work): {s['claims']}; by boefje {s['by_boefje']}")
        if s.get("raised"):
            print(f"    pairs made eligible that were not at the tick, by Bytes' newest run: {s['raised']}")
        if "precision" in s:
            print(
                f"    against the oracle: {s['allowed']} allowed; precision {s['precision']:.4f}, recall "
                f"{s['recall']:.4f} (extra {s['extra']}, missing {s['missing']})"
            )
        if s["backlog"]:
            print(f"    CPU s from the attach: {s['cpu_rest']}")
        else:
            print(f"    CPU s while publishing {s['cpu_publish']}; after {s['cpu_rest']}")
        if name == "a-backlog":
            p = f["plan"]
            print(
                f"  planning tick before storm b: {p['queued']} tasks queued in {p['seconds']:.1f} s, then "
                f"{p['completed']} marked completed; {p['schedules']} schedules; "
                f"{p['bytes_runs']} Bytes runs kept" + (f"; errors {p['errors']}" if p["errors"] else "")
            )


def median(runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], float]) -> float:
    return statistics.median(get(r) for r in runs)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200, help="latency samples per run")
    parser.add_argument("--warmup", type=int, default=10, help="latency events published first, not counted")
    parser.add_argument("--storm", type=int, default=10_000, help="mutations per storm")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--organisations", type=int, default=10)
    parser.add_argument("--oois", type=int, default=1000, help="objects per organisation (storm b updates them)")
    parser.add_argument("--boefjes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--listeners",
        type=int,
        default=1,
        help="listener processes on the same event queues (a storm is then timed from their logs)",
    )
    parser.add_argument(
        "--stall-age", type=int, default=3600, help="SCHEDULER_BYTES_STALL_AGE of the listener and the tick (s)"
    )
    parser.add_argument("--profile", metavar="DIR", help="run the listener under cProfile, writing DIR/listener-N.prof")
    parser.add_argument(
        "--listener-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the listener, e.g. SCHEDULER_EVENTS_BATCH_WINDOW=0.2 (repeatable)",
    )
    parser.add_argument(
        "--listener-command",
        metavar="COMMAND",
        help="run this instead of `python -m kat_scheduler listen` (to compare a changed listener)",
    )
    args = parser.parse_args()
    global REDIS
    REDIS = redis_database("BENCH_EVENTS_REDIS_URL")

    t = time.perf_counter()
    world = generate_world(
        WorldConfig(seed=args.seed, organisations=args.organisations, oois_per_org=args.oois, boefjes=args.boefjes)
    )
    tick_world = generate_world(world.config)  # the same world (its config holds its `now`), for the oracle
    objects = sum(len(world.oois(org)) for org in world.organisation_ids)
    print(
        f"world: {args.organisations} orgs x {args.oois} OOIs x {args.boefjes} boefjes ({objects} objects), "
        f"generated in {time.perf_counter() - t:.1f} s"
    )
    if args.storm > objects:
        print(f"note: storm b updates {args.storm} > {objects} objects, so some objects more than once")
    queue_uri = events_url()
    logs = Path(tempfile.mkdtemp(prefix="kat_bench_events_"))
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    listener_settings = load_settings_with(listener_env(args))
    print(
        f"events on {with_vhost(AMQP, VHOST)}, Celery broker {REDIS}; {args.listeners} listener process(es), "
        "batches of "
        f"{listener_settings.events_batch_size}, window {listener_settings.events_batch_window * 1000:.0f} ms, "
        f"Katalogus cache {listener_settings.katalogus_cache_ttl:.0f} s"
    )
    gc.freeze()
    runs: list[dict[str, Any]] = []
    with SimulatedKAT(world).start() as kat:
        for n in range(1, args.runs + 1):
            figures = run_once(world, tick_world, kat, queue_uri, args, n, logs)
            runs.append(figures)
            print_run(n, figures)
            sys.stdout.flush()

    p50 = median(runs, lambda r: r["latency"]["p50"])
    p95 = median(runs, lambda r: r["latency"]["p95"])
    p99 = median(runs, lambda r: r["latency"]["p99"])
    worst = median(runs, lambda r: r["latency"]["max"])
    count = median(runs, lambda r: r["latency"]["n"])
    print(
        f"median of {len(runs)} runs: latency p50 {ms(p50)} ms, p95 {ms(p95)} ms, p99 {ms(p99)} ms, "
        f"max {ms(worst)} ms, n {count:.0f}"
    )
    storms: dict[str, tuple[float, float]] = {}
    for name in STORMS:
        rate = statistics.median(r[name]["rate"] for r in runs)
        http = statistics.median(r[name]["http_per_mutation"] for r in runs)
        queued = statistics.median(r[name]["queued"] for r in runs)
        handled = statistics.median(r[name]["handled_s"] for r in runs)
        storms[name] = (rate, http)
        precision = statistics.median(r[name]["precision"] for r in runs)
        recall = statistics.median(r[name]["recall"] for r in runs)
        print(
            f"median of {len(runs)} runs: storm {name}: {rate:,.0f} mutations/s ({args.storm} handled in "
            f"{handled:.2f} s), {queued:.0f} tasks queued, {http:.4f} HTTP requests/mutation, "
            f"precision {precision:.4f}, recall {recall:.4f}"
        )
    print(f"latency p50 {ms(p50)} ms (target <= {TARGET_P50_MS:.0f} ms): {verdict(p50 * 1000 <= TARGET_P50_MS)}")
    print(f"latency p95 {ms(p95)} ms (target <= {TARGET_P95_MS:.0f} ms): {verdict(p95 * 1000 <= TARGET_P95_MS)}")
    for name, label in STORMS.items():
        rate, http = storms[name]
        what = f"storm {name} ({label})"
        print(f"{what} {rate:,.0f} mutations/s (target >= {TARGET_RATE:,.0f}): {verdict(rate >= TARGET_RATE)}")
        print(f"{what} {http:.4f} HTTP/mutation (target <= {TARGET_HTTP}): {verdict(http <= TARGET_HTTP)}")
    print(f"logs: {logs}")


if __name__ == "__main__":
    main()
