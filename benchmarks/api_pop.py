"""Benchmark: the HTTP API on a large ``tasks`` table, through the real uvicorn server.

    .venv/bin/python -m benchmarks.api_pop [--rows 1000000] [--clients 4] [--limit 1] [--workers 1]
        [--servers 1] [--samples 200] [--phases pop,pages,push] [--server-python PATH]
        [--keep | --database URI]

A fresh PostgreSQL database gets ``--rows`` task rows in one ``INSERT … SELECT generate_series``
(50 organisations, three boefje images, created and modified over the last 30 days, all
``completed`` but the queued ones). The API runs as a subprocess, uvicorn serving
``kat_scheduler.api.serve:app_from_environment`` with ``--workers`` processes on one port (what
``kat-scheduler api`` does with ``SCHEDULER_API_WORKERS``), with
``SCHEDULER_PULL_SCHEDULERS=report,boefje``; ``--servers`` of them on their own ports, as replicas
behind a load balancer would run (client i calls server i mod n). ``--server-python`` runs the
server with another interpreter (a virtualenv with other packages, say). Every client keeps its
HTTP/1.1 connection open (``http.client``, bodies through ``orjson``: a client as light as can be,
as the clients share the machine's cores with the API and PostgreSQL). Measured:

- **pop**: with 5,000, 50,000 and 500,000 ``boefje`` tasks queued, ``--clients`` concurrent
  clients pop with the boefje workers' image filter body (two of the three images) and
  ``limit=--limit`` until ``--pop`` tasks are taken; tasks per second, and whether any task came
  back twice.
- **Rocky's task list** (``GET /tasks?organisation=…&limit=50&allow_partial_count=true``), the
  **count** (``limit=0``) and **``/tasks/stats``** for one organisation: p50 and p95 of
  ``--samples`` sequential requests, organisations taken in turn.
- **push**: ``--clients`` concurrent clients push report tasks (a pull scheduler: claimed, not
  published); tasks per second.

With each rate, the CPU seconds each group of processes used (``api`` is the API's processes,
``postgres`` the backends of the benchmark's own database, not other people's), the API's CPU
per request, PostgreSQL's per task, the load average when the phase started, and the WAL
PostgreSQL wrote per task (``pg_stat_wal``: the whole server's) with the checkpoints begun
meanwhile: after a checkpoint every page's first change is written whole (full-page images),
so a phase that runs just after one writes several times the WAL.
Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import requests
import sqlalchemy as sa

from benchmarks.common import cpu_seconds, cpu_used, drop_database, fresh_database

ROOT = Path(__file__).resolve().parent.parent
ORGS = 50
IMAGES = (
    "ghcr.io/minvws/openkat/nmap:latest",
    "ghcr.io/minvws/openkat/dns:latest",
    "ghcr.io/minvws/openkat/web:latest",
)
#: The boefje workers' pop body (boefjes/boefjes/clients/scheduler_client.py, pop_items).
POP_BODY = {"filters": [{"column": "data", "field": "boefje__oci_image", "operator": "in", "value": list(IMAGES[:2])}]}

#: Row n: organisation n % 50, image n % 3, created n seconds * (30 days / rows) ago.
INSERT = """
INSERT INTO tasks (id, scheduler_id, type, organisation, plugin_id, input_ooi, hash, band, priority,
                   status, data, reason, created_at, modified_at, published_at, started_at, ended_at, attempts)
SELECT md5(n::text || 'id')::uuid, 'boefje', 'boefje', 'org' || lpad((n % 50)::text, 2, '0'),
       'boefje-' || (n % 30), 'Hostname|internet|host-' || n || '.example.nl', md5(n::text), 5, n,
       'completed',
       jsonb_build_object(
           'id', md5(n::text || 'id')::uuid::text,
           'boefje', jsonb_build_object('id', 'boefje-' || (n % 30), 'oci_image', (ARRAY[:i0, :i1, :i2])[n % 3 + 1]),
           'input_ooi', 'Hostname|internet|host-' || n || '.example.nl',
           'organization', 'org' || lpad((n % 50)::text, 2, '0')),
       'planned', at, at, at, at, at, 1
FROM (SELECT n, now() - make_interval(secs => n * 2592000.0 / :rows) AS at
      FROM generate_series(0, :rows - 1) AS n) AS numbered
"""


class Client:
    """One keep-alive HTTP/1.1 connection to the API."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)

    def call(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> tuple[int, Any]:
        """The status and the decoded JSON body of one request."""
        target = f"{path}?{urlencode(params, doseq=True)}" if params else path
        payload = None if body is None else orjson.dumps(body)
        headers = {} if payload is None else {"Content-Type": "application/json"}
        self.conn.request(method, target, body=payload, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        return response.status, orjson.loads(data) if data else None

    def close(self) -> None:
        self.conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


#: PostgreSQL's WAL so far (the whole server's): records, full-page images, bytes; and checkpoints begun.
WAL = """
SELECT wal_records, wal_fpi, wal_bytes, (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)
FROM pg_stat_wal
"""


class ApiProcesses:
    """The API's processes (the servers and their uvicorn workers), named ``api`` in CPU figures."""

    def __init__(self, pids: list[int], database: str | None = None, engine: sa.Engine | None = None) -> None:
        self.pids = pids
        #: The benchmark's database: only its backends count as ``postgres``.
        self.database = database
        #: Where to read PostgreSQL's WAL figures (none without it).
        self.engine = engine

    def wal(self) -> tuple[int, ...] | None:
        if self.engine is None:
            return None
        with self.engine.connect() as conn:
            return tuple(int(value) for value in conn.execute(sa.text(WAL)).one())

    def named(self) -> dict[int, str]:
        found = {pid: "api" for pid in self.pids}
        for pid in self.pids:
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            found.update({int(child): "api" for child in children})
        return found

    def measure(
        self, run: Callable[[], tuple[float, int, list[str]]], requests_made: Callable[[int], int]
    ) -> dict[str, Any]:
        """Run ``run`` (seconds, tasks, errors); the rate, and the CPU every group used meanwhile."""
        named = self.named()
        wal_before = self.wal()
        before = cpu_seconds(named, self.database)
        load = os.getloadavg()[0]
        seconds, total, errors = run()
        used = cpu_used(before, cpu_seconds(named, self.database))
        wal_after = self.wal()
        made = max(requests_made(total), 1)
        wal: dict[str, Any] = {}
        if wal_before is not None and wal_after is not None:
            records, fpi, size, checkpoints = (b - a for a, b in zip(wal_before, wal_after, strict=True))
            # The whole server's WAL: other databases' writes count too. Full-page images follow a
            # checkpoint (every page's first change after it is written whole).
            wal = {
                "wal_records_per_task": round(records / max(total, 1), 1),
                "wal_fpi_per_task": round(fpi / max(total, 1), 2),
                "wal_kb_per_task": round(size / 1024 / max(total, 1), 1),
                "checkpoints_begun": checkpoints,
            }
        return {
            "tasks": total,
            "seconds": round(seconds, 2),
            "tasks_per_s": round(total / seconds),
            "errors": errors[:3],
            "api_cpu_ms_per_request": round(used.get("api", 0.0) * 1000 / made, 2),
            "pg_cpu_ms_per_task": round(used.get("postgres", 0.0) * 1000 / max(total, 1), 2),
            "load_at_start": round(load, 1),
            **wal,
            "cpu_s": used,
        }


def queue(engine: sa.Engine, queued: int) -> None:
    """Exactly the ``queued`` newest-numbered rows (the lowest n) queued, every other completed."""
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE tasks SET status = 'completed' WHERE status <> 'completed'"))
        conn.execute(sa.text("UPDATE tasks SET status = 'queued' WHERE priority < :q"), {"q": queued})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE tasks"))
        # Rewriting up to 500,000 rows begins checkpoints that PostgreSQL spreads over minutes:
        # without this the next phase would share the disk with writing out the setup's pages.
        try:
            conn.execute(sa.text("CHECKPOINT"))
        except sa.exc.DBAPIError as error:  # needs superuser or pg_checkpoint
            print(f"no CHECKPOINT before the phase ({error.orig}); checkpoints may overlap it", flush=True)


def run_clients(urls: list[str], clients: int, work: Callable[[Client, int], int]) -> tuple[float, int, list[str]]:
    """``clients`` threads each running ``work(client, index)`` on a connection of its own to
    ``urls[index % len(urls)]``; seconds, total, errors."""
    totals = [0] * clients
    errors: list[str] = []

    def client(index: int) -> None:
        http = Client(urls[index % len(urls)])
        try:
            totals[index] = work(http, index)
        except Exception as exc:  # reported, not raised: the figures say what happened
            errors.append(repr(exc))
        finally:
            http.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, sum(totals), errors


def pop_rate(urls: list[str], args: argparse.Namespace, api: ApiProcesses) -> dict[str, Any]:
    seen: set[str] = set()
    twice = 0
    lock = threading.Lock()
    budget = [args.pop]

    def work(http: Client, _index: int) -> int:
        nonlocal twice
        taken = 0
        while True:
            with lock:
                if budget[0] <= 0:
                    return taken
                budget[0] -= args.limit
            status, answer = http.call("POST", "/schedulers/boefje/pop", {"limit": args.limit}, POP_BODY)
            if status != 200:
                raise RuntimeError(f"{status} {answer}")
            results = answer["results"]
            if not results:
                return taken
            with lock:
                for task in results:
                    twice += task["id"] in seen
                    seen.add(task["id"])
            taken += len(results)

    result = api.measure(lambda: run_clients(urls, args.clients, work), lambda total: -(-total // args.limit))
    return {**result, "popped_twice": twice}


def latencies(url: str, path: str, params: Callable[[int], dict[str, Any]], samples: int) -> dict[str, float]:
    times: list[float] = []
    http = Client(url)
    try:
        for i in range(samples):
            started = time.perf_counter()
            status, answer = http.call("GET", path, params(i))
            times.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise RuntimeError(f"{path}: {status} {answer}")
    finally:
        http.close()
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
        "max_ms": round(times[-1], 1),
    }


def push_rate(urls: list[str], args: argparse.Namespace, api: ApiProcesses) -> dict[str, Any]:
    per_client: int = args.pushes // args.clients

    def work(http: Client, _index: int) -> int:
        for _ in range(per_client):
            org = f"org{uuid.uuid4().int % ORGS:02d}"
            body = {"organisation": org, "data": {"organisation_id": org, "report_recipe_id": str(uuid.uuid4())}}
            status, answer = http.call("POST", "/schedulers/report/push", body=body)
            if status != 201:
                raise RuntimeError(f"{status} {answer}")
        return per_client

    return api.measure(lambda: run_clients(urls, args.clients, work), lambda total: total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--limit", type=int, default=1, help="tasks per pop request")
    parser.add_argument("--pop", type=int, default=4000, help="tasks popped per queue size")
    parser.add_argument("--queued", type=int, nargs="*", default=[50_000, 5_000, 500_000])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--pushes", type=int, default=2000)
    parser.add_argument("--servers", type=int, default=1, help="API servers on ports of their own (replicas)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes per server")
    parser.add_argument(
        "--phases",
        type=lambda text: set(text.split(",")),
        default={"pop", "pages", "push"},
        help="what to measure, comma-separated: pop, pages (list, count, stats), push",
    )
    parser.add_argument("--server-python", default=sys.executable, help="the interpreter that runs the API")
    parser.add_argument(
        "--database",
        help="the URI of a database a run with --keep left (its rows are used as they are, and it is kept): "
        "before/after comparisons without generating the table each time",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated database and print its URI")
    args = parser.parse_args()

    admin: sa.Engine | None = None
    if args.database:
        db_uri = args.database
    else:
        db_uri, admin = fresh_database("kat_bench_api")
    engine = sa.create_engine(db_uri.replace("postgresql://", "postgresql+psycopg2://", 1))
    servers: list[subprocess.Popen[bytes]] = []
    try:
        if not args.database:
            started = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(sa.text(INSERT), {"rows": args.rows, "i0": IMAGES[0], "i1": IMAGES[1], "i2": IMAGES[2]})
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("VACUUM ANALYZE tasks"))
            print(f"{args.rows:,} rows in {time.perf_counter() - started:.1f} s", flush=True)
            if args.keep:
                print(f"kept: --database {db_uri}", flush=True)

        env = {
            **os.environ,
            "SCHEDULER_DB_URI": db_uri,
            "SCHEDULER_PULL_SCHEDULERS": "report,boefje",
            "SCHEDULER_LOG_LEVEL": "WARNING",
        }
        urls = []
        for _ in range(args.servers):
            port = free_port()
            command = [
                args.server_python,
                "-m",
                "uvicorn",
                "--factory",
                "kat_scheduler.api.serve:app_from_environment",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--workers={args.workers}",
                "--log-level=warning",
            ]
            servers.append(subprocess.Popen(command, env=env, cwd=ROOT))
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        for url, server in zip(urls, servers, strict=True):
            while True:
                try:
                    if requests.get(url + "/health", timeout=1).ok:
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the API did not start")
                time.sleep(0.1)
        if args.workers > 1:  # every worker answers (each imports the application on its own)
            time.sleep(3)
        api = ApiProcesses([server.pid for server in servers], sa.engine.make_url(db_uri).database, engine)
        url = urls[0]

        orgs = [f"org{i:02d}" for i in range(ORGS)]
        shape = f"{args.clients} clients, {args.servers} servers x {args.workers} workers"
        if "pop" in args.phases:
            for queued in args.queued:
                wal_before = api.wal()
                queue(engine, queued)
                wal_after = api.wal()
                if wal_before is not None and wal_after is not None:  # a checkpoint it caused spreads into the phase
                    print(f"queueing {queued:,}: {wal_after[3] - wal_before[3]} checkpoint(s) begun", flush=True)
                result = pop_rate(urls, args, api)
                print(f"pop, {queued:,} queued, {shape}, limit={args.limit}: {result}", flush=True)

        if "pages" in args.phases:
            queue(engine, 50_000)
            listing = latencies(
                url,
                "/tasks",
                lambda i: {"organisation": orgs[i % ORGS], "limit": 50, "allow_partial_count": "true"},
                args.samples,
            )
            print(f"task list (organisation, limit=50, allow_partial_count): {listing}", flush=True)
            count = latencies(url, "/tasks", lambda i: {"organisation": orgs[i % ORGS], "limit": 0}, args.samples)
            print(f"count (organisation, limit=0): {count}", flush=True)
            stats = latencies(url, "/tasks/stats", lambda i: {"organisation_id": orgs[i % ORGS]}, args.samples)
            print(f"/tasks/stats (one organisation): {stats}", flush=True)
        if "push" in args.phases:
            pushed = push_rate(urls, args, api)
            print(f"push (report, pull: claimed only), {shape}: {pushed}", flush=True)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(15)
        engine.dispose()
        if admin is not None:
            if not args.keep:
                drop_database(admin, db_uri)
            admin.dispose()


if __name__ == "__main__":
    main()
