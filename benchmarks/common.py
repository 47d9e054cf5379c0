"""What the benchmarks share: a fresh, migrated PostgreSQL database per run."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from kat_scheduler.storage import migrate
from kat_scheduler.storage.db import normalise_url

POSTGRES = os.environ.get("BENCH_POSTGRES_URI", "postgresql://127.0.0.1:5432/test")


def fresh_database(prefix: str = "kat_bench") -> tuple[str, sa.Engine]:
    """A new database named ``<prefix>_<random>``, migrated; and the admin engine to drop it with."""
    admin = sa.create_engine(normalise_url(POSTGRES), isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    uri = normalise_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(uri)
    return uri, admin


def drop_database(admin: sa.Engine, uri: str) -> None:
    name = sa.engine.make_url(uri).database
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- CPU by process ---------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def _process_name(pid: str, me: int, named: dict[int, str], database: str | None = None) -> str:
    """A short group name for a process: the named pids first, then by executable."""
    if int(pid) in named:
        return named[int(pid)]
    if int(pid) == me:
        return "benchmark"
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
    if comm.startswith("postgres"):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            return "postgres"
        if "autovacuum" in title:
            return "postgres autovacuum"
        if any(word in title for word in ("checkpointer", "walwriter", "background writer")):
            return "postgres writers"
        if database is not None:
            # A backend's title names its database: "postgres: 15/main: user dbname host(port) state".
            return "postgres" if f" {database} " in title.replace("\0", " ") else "postgres (other databases)"
        return "postgres"
    if comm in ("beam.smp", "erl_child_setup", "epmd", "inet_gethost"):
        return "rabbitmq"
    if comm.startswith("redis-server"):
        return "redis"
    if comm.startswith("kworker/"):
        # A kernel worker renames itself after the work it is doing ("kworker/u8:1-flush-254:0"):
        # grouped by that name, one that changed its work between two snapshots counted all the
        # CPU of its life as used in between (1.3 s in 3 idle seconds here).
        return "kworker"
    return comm


def cpu_seconds(named: dict[int, str] | None = None, database: str | None = None) -> dict[str, float]:
    """CPU seconds (user + system) used so far by every live process, summed per group.

    ``named`` maps pids to group names (a listener subprocess, say); this process is
    "benchmark", PostgreSQL's backends "postgres" (its autovacuum and its
    checkpointer, WAL and background writers apart), RabbitMQ's Erlang VM "rabbitmq". Differences
    of two snapshots show where a phase's CPU went (processes that ended in between are lost).
    With ``database``, only that database's backends are "postgres"; the others (other people's
    tests on a shared server) are "postgres (other databases)".
    """
    named = named or {}
    me = os.getpid()
    totals: dict[str, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        used = (int(fields[11]) + int(fields[12])) / _TICKS
        if used:
            name = _process_name(entry, me, named, database)
            totals[name] = totals.get(name, 0.0) + used
    return totals


def cpu_used(before: dict[str, float], after: dict[str, float], floor: float = 0.05) -> dict[str, float]:
    """Per group, the CPU seconds used between two :func:`cpu_seconds` snapshots (``floor`` and up)."""
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    return dict(sorted(((n, round(s, 2)) for n, s in used.items() if s >= floor), key=lambda i: -i[1]))


# --- a Redis database of the run's own ---------------------------------------------------------

#: The test runs' claims on the shared Redis server's databases (see tests/conftest.py), in database 0.
REDIS_CLAIM_PREFIX = "kat_scheduler_test:redis-db:"
REDIS_CLAIM_TTL = 3 * 3600
_RELEASE_IF_OURS = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def redis_database(variable: str, server: str = "redis://127.0.0.1:6379") -> str:
    """The Redis URL of a benchmark: ``$variable`` when set, else a free database claimed as a test run
    claims one (``SET kat_scheduler_test:redis-db:<n> <owner> NX EX`` in database 0), flushed, and
    flushed and given back when this process exits. A benchmark flushes its database; a fixed
    number would flush a test run's (or another benchmark's) in the middle of it.
    """
    given = os.environ.get(variable)
    if given:
        return given
    import atexit

    import redis

    owner = f"benchmark-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(f"{server}/0", socket_connect_timeout=2)
    try:
        count = int(admin.config_get("databases").get("databases") or 16)
    except (redis.RedisError, ValueError):  # CONFIG may be disabled: Redis's default
        count = 16

    def release(url: str, key: str) -> None:
        redis.Redis.from_url(url).flushdb()
        admin.register_script(_RELEASE_IF_OURS)(keys=[key], args=[owner])

    for number in range(1, count):
        key = f"{REDIS_CLAIM_PREFIX}{number}"
        if admin.set(key, owner, nx=True, ex=REDIS_CLAIM_TTL):
            url = f"{server}/{number}"
            redis.Redis.from_url(url).flushdb()
            atexit.register(release, url, key)
            return url
    raise SystemExit(f"no free Redis database at {server} (all claimed: keys {REDIS_CLAIM_PREFIX}<n> in database 0)")


@contextlib.contextmanager
def workdir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary folder for a run's logs; removed afterwards unless ``keep`` (then its path is printed)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"logs: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)
