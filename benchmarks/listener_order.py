"""Benchmark: what keeping per-object order across listener processes costs a storm of mutations.

    .venv/bin/python -m benchmarks.listener_order [--events 10000] [--batch 500] [--runs 3]

In this process: a fresh PostgreSQL database, the simulated KAT on loopback, a Redis database of
its own as the Celery broker, and the listener's :class:`~kat_scheduler.events.handlers.MutationHandler`
called directly with batches of ``--batch`` creates of new Hostnames at level 2 (no broker in
between: what is measured is the handler). Each run handles the storm in four passes, each from
an empty ``tasks`` table and broker:

* **off**: no ordering (``object_events`` untouched), as before it existed;
* **on**: with ordering, a listener that never saw these objects (one upsert per batch, its rows
  held while the batch writes, schedules written under ``FOR SHARE``);
* **on, contested, same event**: another listener handles the same storm right after: every
  object contested by the rule, but its last event is the one applied, so no look-up;
* **on, contested, other level**: a third listener handles the storm at level 3: every object
  contested, one ``GET /{org}/object`` each (8 at once); the objects are not in Octopoes, so each
  is withdrawn (this is the worst case: a storm re-mutating every object across listeners within
  a minute).

"off" and "on" alternate which goes first. Prints events/s per pass per run and the medians;
asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import redis
import sqlalchemy as sa

from benchmarks.common import drop_database, fresh_database, redis_database
from kat_scheduler.clients import clients_from_settings
from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.events.bookkeeping import Bookkeeper
from kat_scheduler.events.handlers import MutationHandler
from kat_scheduler.models import ScanProfileMutation
from kat_scheduler.settings import load_settings
from kat_scheduler.sim import SimulatedKAT, WorldConfig, generate_world
from kat_scheduler.storage import ScheduleStore, TaskStore
from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.object_events import ObjectEventStore

QUEUE = "scan_profile_mutations"


def storm(orgs: list[str], count: int, level: int) -> list[ScanProfileMutation]:
    events = []
    for n in range(count):
        ref = f"Hostname|internet|order-bench-{n}.example.nl"
        events.append(
            ScanProfileMutation.model_validate(
                {
                    "operation": "create",
                    "primary_key": ref,
                    "client_id": orgs[n % len(orgs)],
                    "value": {
                        "primary_key": ref,
                        "object_type": "Hostname",
                        "scan_profile": {"scan_profile_type": "declared", "reference": ref, "level": level},
                    },
                }
            )
        )
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    world = generate_world(WorldConfig(seed=1, organisations=10, oois_per_org=50, boefjes=10))
    uri, admin = fresh_database("kat_bench_order")
    broker_url = redis_database("BENCH_ORDER_REDIS")
    broker = redis.Redis.from_url(broker_url)
    try:
        with SimulatedKAT(world).start() as kat:
            settings = load_settings(
                octopoes_api=kat.octopoes_url,
                katalogus_api=kat.katalogus_url,
                bytes_api=kat.bytes_url,
                broker_url=broker_url,
                db_uri=uri,
            )
            engine = make_engine(uri, pool_size=settings.db_pool_size)
            clients = clients_from_settings(settings)
            publisher = make_publisher(settings)
            plugins = PluginCache(clients.katalogus, ttl=3600)
            tasks, schedules = TaskStore(engine), ScheduleStore(engine)
            orgs = list(world.organisation_ids)
            at_two, at_three = storm(orgs, args.events, 2), storm(orgs, args.events, 3)

            def empty(forget_order: bool) -> None:
                with engine.begin() as conn:
                    conn.execute(sa.text("TRUNCATE tasks, unpublished_tasks, schedules"))
                    if forget_order:
                        conn.execute(sa.text("TRUNCATE object_events"))
                broker.flushdb()

            def timed(listener: str | None, events: list[ScanProfileMutation]) -> tuple[float, int]:
                bookkeeper = Bookkeeper()
                order = None if listener is None else ObjectEventStore(engine, listener)
                handler = MutationHandler(
                    plugins,
                    tasks,
                    schedules,
                    publisher,
                    settings,
                    bookkeeper=bookkeeper,
                    octopoes=None if order is None else clients.octopoes,
                    order=order,
                )
                started = time.perf_counter()
                for i in range(0, len(events), args.batch):
                    handler(QUEUE, events[i : i + args.batch])
                bookkeeper.close()
                elapsed = time.perf_counter() - started
                return len(events) / elapsed, handler.stats.contested

            timed(None, at_two[: args.batch])  # warm the plugin cache and the connections
            results: dict[str, list[float]] = {}

            def record(name: str, run: Callable[[], tuple[float, int]]) -> None:
                rate, contested = run()
                results.setdefault(name, []).append(rate)
                print(f"  {name:<32} {rate:8.0f} events/s  ({contested} contested)", flush=True)

            for n in range(args.runs):
                print(f"run {n + 1} ({datetime.now(UTC):%H:%M:%S})", flush=True)
                first_off = n % 2 == 0
                for off in (first_off, not first_off):
                    empty(forget_order=True)
                    if off:
                        record("off", lambda: timed(None, at_two))
                    else:
                        record("on", lambda: timed("listener-a", at_two))
                # "on" left its rows: now others handle the same objects within the window.
                if first_off:
                    empty(forget_order=False)
                else:  # "off" ran last: handle the storm as listener A again first
                    empty(forget_order=True)
                    timed("listener-a", at_two)
                    empty(forget_order=False)
                record("on, contested, same event", lambda: timed("listener-b", at_two))
                empty(forget_order=False)
                record("on, contested, other level", lambda: timed("listener-c", at_three))
            print("medians (events/s):")
            for name, rates in results.items():
                print(f"  {name:<32} {statistics.median(rates):8.0f}  (runs: {', '.join(f'{r:.0f}' for r in rates)})")
            publisher.close()
            clients.close()
            engine.dispose()
    finally:
        drop_database(admin, uri)


if __name__ == "__main__":
    main()
