"""Per-process resources: database engine, KAT clients, publisher, created on first use.

Celery's prefork pool forks workers from a parent; a pooled connection must never cross a fork,
so nothing here is created at import time and :func:`reset_runtime` runs in every new child
(``worker_process_init``).
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING

from kat_scheduler.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from kat_scheduler.clients import KATClients
    from kat_scheduler.dispatch.publishing import Publisher
    from kat_scheduler.producers import ProducerContext
    from kat_scheduler.storage import ScheduleStore, TaskStore
    from kat_scheduler.workers.lifecycle import BoefjeJob, NormalizerJob
    from kat_scheduler.workers.runners import Runner


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def engine(self) -> Engine:
        from kat_scheduler.storage.db import make_engine

        return make_engine(self.settings.db_uri, pool_size=self.settings.db_pool_size)

    @cached_property
    def clients(self) -> KATClients:
        from kat_scheduler.clients import clients_from_settings

        return clients_from_settings(self.settings)

    @cached_property
    def publisher(self) -> Publisher:
        from kat_scheduler.dispatch.publishing import make_publisher

        return make_publisher(self.settings)

    @cached_property
    def tasks(self) -> TaskStore:
        from kat_scheduler.storage import TaskStore

        return TaskStore(self.engine)

    @cached_property
    def schedules(self) -> ScheduleStore:
        from kat_scheduler.storage import ScheduleStore

        return ScheduleStore(self.engine)

    @cached_property
    def runner(self) -> Runner:
        if self.settings.runner == "simulated":
            from kat_scheduler.workers.simulated import SimulatedRunner

            return SimulatedRunner()
        from kat_scheduler.workers.local import LocalPluginRunner

        return LocalPluginRunner(self.settings.plugins_path)

    def boefje_job(self) -> BoefjeJob:
        from kat_scheduler.workers.lifecycle import BoefjeJob

        return BoefjeJob(
            self.tasks,
            self.clients,
            self.runner,
            max_attempts=self.settings.max_retries + 1,
            max_kept_output=self.settings.kept_output_max_bytes,
        )

    def normalizer_job(self) -> NormalizerJob:
        from kat_scheduler.workers.lifecycle import NormalizerJob

        return NormalizerJob(
            self.tasks,
            self.clients,
            self.runner,
            max_attempts=self.settings.max_retries + 1,
            max_kept_output=self.settings.kept_output_max_bytes,
        )

    def producers(self) -> ProducerContext:
        """What the boefje producers (:mod:`kat_scheduler.producers`) run with in this process."""
        from kat_scheduler.producers import ProducerContext

        return ProducerContext(self.clients, self.tasks, self.schedules, self.settings, self.publisher)

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
        if "clients" in self.__dict__:
            self.clients.close()
        if "publisher" in self.__dict__:
            self.publisher.close()


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(get_settings())
        return _runtime


def reset_runtime() -> None:
    """Forget this process's resources after a fork, without closing what the parent still uses.

    psycopg2 sends a termination message when a connection is closed, even from a child holding a
    copy of the parent's socket, so inherited pool connections are discarded, never closed.
    """
    global _runtime
    with _lock:
        if _runtime is not None and "engine" in _runtime.__dict__:
            _runtime.engine.dispose(close=False)
        _runtime = None
