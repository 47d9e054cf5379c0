"""The closed loop against the simulated KAT, with real processes: the world's events go out on
RabbitMQ through the event bridge, a ``kat-scheduler listen`` process turns them into work, and a
``celery worker`` on the boefje and normalizer queues runs it with the simulated runner, whose
raw files and observations go back into the world."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kat_scheduler.queues import Queue
from kat_scheduler.sim import SimulatedKAT
from kat_scheduler.sim.bridge import EventBridge
from kat_scheduler.sim.world import World
from tests.workers import celery_worker, kat_env, start_listener, stop


def worker_env(kat: SimulatedKAT, postgres_uri: str, redis_url: str, **extra: str) -> dict[str, str]:
    """A worker's settings against the simulated KAT (with the simulated runner), and ``extra``."""
    return {**kat_env(kat, postgres_uri, redis_url, SCHEDULER_RUNNER="simulated"), **extra}


@dataclass(frozen=True)
class Loop:
    """A running loop: where its processes write their logs."""

    worker_log: Path
    listener_log: Path

    def logs(self) -> str:
        """The end of the worker's and the listener's logs, for a failure's message."""
        return self.worker_log.read_text()[-4000:] + self.listener_log.read_text()[-2000:]


@contextlib.contextmanager
def closed_loop(
    kat: SimulatedKAT,
    world: World,
    events_url: str,
    postgres_uri: str,
    redis_url: str,
    log_dir: Path,
    **worker_settings: str,
) -> Iterator[Loop]:
    """The world's events bridged onto ``events_url``, a listener and a worker (two processes on
    the boefje and normalizer queues, ``worker_settings`` added to its environment) running until
    the block ends; then both are stopped and the world's events no longer bridged. Logs go to
    ``log_dir`` (``worker.log``, ``listener.log``)."""
    loop = Loop(worker_log=log_dir / "worker.log", listener_log=log_dir / "listener.log")
    env = worker_env(kat, postgres_uri, redis_url, QUEUE_URI=events_url, **worker_settings)
    with EventBridge(events_url) as bridge:
        world.add_listener(bridge)
        try:
            with open(loop.listener_log, "wb") as log:
                listener = start_listener(kat, events_url, postgres_uri, redis_url, log)
                try:
                    with celery_worker(
                        "kat_scheduler",
                        [Queue.BOEFJES.value, Queue.NORMALIZERS.value],
                        env,
                        concurrency=2,
                        log_file=loop.worker_log,
                    ):
                        yield loop
                finally:
                    stop(listener)
        finally:
            world.remove_listener(bridge)
