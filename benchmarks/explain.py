"""Benchmark: ``explain`` latency on a large simulated world (issue #20: ≤ 100 ms p95 on 10 × 10,000).

    .venv/bin/python -m benchmarks.explain [--organisations 10 --oois 10000 --boefjes 10 --samples 1000]

The simulated KAT serves the world from a process of its own (forked after the world is
generated, so both hold the same world). The world has the boefje that deschedules (``internetdb``,
one more boefje) unless ``--no-deschedule``. A fresh PostgreSQL database is filled as a tick leaves
it: every task the rules allow now is claimed (a dry-run tick's candidates), then about half of them
end ``completed`` a few minutes ago, and those get their schedule for the next run; the rest stay
queued (live). Of the completed pairs, those the deschedule boefje deschedules get a descheduled
schedule (as the listener leaves them); of the queued ones, one in ten waits for its rate limit's
window (as a worker leaves it), so every read of ``explain`` is exercised. Then ``explain`` is
timed on random objects of every consumed type, spread over the organisations: in process
(``explain_object``, what the command runs after start-up) and over HTTP (``GET /explain``, the
router mounted on the API app, served by uvicorn on loopback). Prints the latency percentiles,
the decisions seen and the requests to KAT per explain; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing
import random
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

import requests
import sqlalchemy as sa
import uvicorn

from benchmarks.common import drop_database, fresh_database
from kat_scheduler.api import create_app
from kat_scheduler.api import explain as explain_route
from kat_scheduler.clients import clients_from_settings
from kat_scheduler.explain import Policy, Sources, explain_object
from kat_scheduler.planning.candidates import new_boefje_schedule, new_boefje_task
from kat_scheduler.producers import ProducerContext, TickProducer
from kat_scheduler.settings import Settings, load_settings
from kat_scheduler.sim import SimulatedKAT, WorldConfig, generate_world
from kat_scheduler.sim.deschedule import deschedules
from kat_scheduler.sim.world import World
from kat_scheduler.storage import ScheduleStore, TaskStore
from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.waiting import WaitingStore


def serve(world: World, conn: Connection) -> None:
    """The child process: serve ``world`` until the parent says stop."""
    with SimulatedKAT(world).start() as kat:
        conn.send((kat.octopoes_url, kat.katalogus_url, kat.bytes_url))
        conn.recv()
        conn.send(dict(kat.request_counts))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def fill(settings: Settings, engine: sa.Engine, now: datetime, seed: int) -> dict[str, int]:
    """The database as a tick leaves it: the allowed tasks claimed, about half since completed;
    the deschedule boefje's completed pairs it deschedules descheduled, one in ten queued waiting."""
    with clients_from_settings(settings) as clients:
        tasks, schedules = TaskStore(engine), ScheduleStore(engine)
        report = TickProducer(ProducerContext(clients, tasks, schedules, settings)).run(now, dry_run=True)
    candidates = report.planned
    pick = random.Random(seed)
    done = [c for c in candidates if pick.random() < 0.5]
    done_hashes = {c.hash for c in done}
    for start in range(0, len(candidates), 2000):
        claimed = tasks.claim([new_boefje_task(c) for c in candidates[start : start + 2000]], now=now)
        tasks.mark_published([t.id for t in claimed])
    ended = now - timedelta(minutes=5)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE tasks SET status = 'completed', started_at = :started, ended_at = :ended, modified_at = :ended "
                "WHERE hash = ANY(:hashes)"
            ),
            {"started": ended - timedelta(minutes=1), "ended": ended, "hashes": sorted(done_hashes)},
        )
    schedules.add_many(
        [new_boefje_schedule(c.organisation, c.boefje, c.input_ooi, c.hash, ended, settings) for c in done], now=now
    )
    gone = [
        (new_boefje_schedule(c.organisation, c.boefje, c.input_ooi, c.hash, ended, settings), "descheduled (benchmark)")
        for c in done
        if deschedules(c.boefje.id, c.input_ooi)
    ]
    schedules.deschedule(gone, now=ended)
    queued = [c for c in candidates if c.hash not in done_hashes]
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT hash, id FROM tasks WHERE status = 'queued'")).all()
    live: dict[str, uuid.UUID] = {hash_: task_id for hash_, task_id in rows}
    waiting = WaitingStore(engine)
    waits = [c for c in queued if pick.random() < 0.1]
    for c in waits:
        waiting.put_back(live[c.hash], limit="5/second", group=c.boefje.id, until=now + timedelta(minutes=10), now=now)
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))
    return {
        "tasks": len(candidates),
        "completed": len(done),
        "queued": len(queued),
        "descheduled": len(gone),
        "rate_limited": len(waits),
    }


def sample_objects(world: World, count: int, seed: int) -> list[tuple[str, str]]:
    types = {t for b in world.boefjes for t in b.consumes}
    population = [
        (org, pk) for org in world.organisation_ids for pk, ooi in world.oois(org).items() if ooi.object_type in types
    ]
    return random.Random(seed).sample(population, min(count, len(population)))


@contextlib.contextmanager
def served_api(settings: Settings, engine: sa.Engine) -> Iterator[str]:
    app = create_app(settings, engine=engine)
    app.include_router(explain_route.router)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)


def figures(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{name}: {len(ms)} explains, p50 {percentile(ms, 0.5):.1f} ms, p95 {percentile(ms, 0.95):.1f} ms, "
        f"p99 {percentile(ms, 0.99):.1f} ms, max {max(ms):.1f} ms, mean {statistics.fmean(ms):.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organisations", type=int, default=10)
    parser.add_argument("--oois", type=int, default=10_000)
    parser.add_argument("--boefjes", type=int, default=10)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--http-samples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-deschedule", action="store_true", help="leave out the boefje that deschedules")
    args = parser.parse_args()

    started = time.perf_counter()
    world = generate_world(
        WorldConfig(
            seed=args.seed,
            organisations=args.organisations,
            oois_per_org=args.oois,
            boefjes=args.boefjes,
            deschedule_boefje=not args.no_deschedule,
        )
    )
    print(
        f"world: {args.organisations} orgs x {args.oois} OOIs x {len(world.boefjes)} boefjes, "
        f"generated in {time.perf_counter() - started:.1f} s"
    )
    gc.freeze()
    ours, theirs = multiprocessing.get_context("fork").Pipe()
    child = multiprocessing.get_context("fork").Process(target=serve, args=(world, theirs), daemon=True)
    child.start()
    octopoes, katalogus, bytes_ = ours.recv()
    db_uri, admin = fresh_database("kat_bench_explain")
    settings = load_settings(octopoes_api=octopoes, katalogus_api=katalogus, bytes_api=bytes_, db_uri=db_uri)
    engine = make_engine(db_uri, pool_size=10)
    try:
        now = datetime.now(UTC)
        started = time.perf_counter()
        rows = fill(settings, engine, now, args.seed)
        print(f"database: {rows} in {time.perf_counter() - started:.1f} s")
        objects = sample_objects(world, args.samples, args.seed)
        policy = Policy.of(settings)
        decisions: Counter[str] = Counter()
        boefjes_per_object: list[int] = []
        with clients_from_settings(settings) as clients:
            sources = Sources.on(engine, clients)
            for org, pk in objects[:20]:  # warm-up: connections, caches
                explain_object(sources, policy, org, pk, now=datetime.now(UTC))
            before = clients.request_counts()
            seconds: list[float] = []
            for org, pk in objects:
                t0 = time.perf_counter()
                answer = explain_object(sources, policy, org, pk, now=datetime.now(UTC))
                seconds.append(time.perf_counter() - t0)
                decisions.update(e.decision.value for e in answer.explanations)
                boefjes_per_object.append(len(answer.explanations))
            after = clients.request_counts()
        requests_made = {k: after[k] - before.get(k, 0) for k in after}
        print(figures("in process (explain_object)", seconds))
        print(
            f"  boefjes per object: mean {statistics.fmean(boefjes_per_object):.1f}, max {max(boefjes_per_object)}; "
            f"requests to KAT per explain: "
            + ", ".join(f"{k} {v / len(objects):.2f}" for k, v in sorted(requests_made.items()))
        )
        print(f"  decisions: {dict(decisions.most_common())}")
        http_seconds: list[float] = []
        statuses: Counter[int] = Counter()
        with served_api(settings, engine) as url, requests.Session() as http:
            for org, pk in objects[: args.http_samples]:
                t0 = time.perf_counter()
                response = http.get(f"{url}/explain", params={"organisation": org, "input_ooi": pk}, timeout=30)
                http_seconds.append(time.perf_counter() - t0)
                statuses[response.status_code] += 1
        print(figures("over HTTP (GET /explain)", http_seconds) + f"; statuses {dict(statuses)}")
        ours.send("stop")
        counts: dict[str, Any] = ours.recv()
        print(f"simulated KAT served: {counts}")
    finally:
        engine.dispose()
        drop_database(admin, db_uri)
        admin.dispose()
        child.terminate()
        child.join(10)


if __name__ == "__main__":
    main()
