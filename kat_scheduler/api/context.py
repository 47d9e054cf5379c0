"""What the routes share: the settings, one engine per application, the stores, the KAT clients."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

from fastapi import Request
from sqlalchemy import Engine

from kat_scheduler.clients import KATClients, clients_from_settings
from kat_scheduler.dispatch.dispatcher import Dispatchable, Dispatcher, DispatchResult
from kat_scheduler.dispatch.publishing import Publisher, make_publisher
from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.settings import Settings
from kat_scheduler.storage.filters import FilterRequest, conditions
from kat_scheduler.storage.task_views import PopStatement, TaskViews
from kat_scheduler.storage.tasks import NewTask, TaskStore

#: Pop statements kept per application: one per scheduler, ``limit`` and filter body in use.
POP_STATEMENTS = 256


@dataclass
class ApiContext:
    settings: Settings
    engine: Engine
    tasks: TaskViews
    #: ``SCHEDULER_PULL_SCHEDULERS``: the schedulers whose tasks are popped, not published.
    pull_schedulers: frozenset[SchedulerId] = field(init=False)
    #: Schedulers delivered through Celery that a runner tried to pop from (logged once each).
    warned_pops: set[SchedulerId] = field(default_factory=set, repr=False)
    _clients: KATClients | None = field(default=None, repr=False)
    _publisher: Publisher | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pops: OrderedDict[tuple[SchedulerId, int, str | None], PopStatement] = field(
        default_factory=OrderedDict, repr=False
    )
    #: One dispatch at a time over the one broker connection.
    _dispatch_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.pull_schedulers = self.settings.pull_scheduler_ids

    @property
    def clients(self) -> KATClients:
        """Octopoes, Katalogus and Bytes, created on first use (only health with externals needs them)."""
        with self._lock:
            if self._clients is None:
                self._clients = clients_from_settings(self.settings)
            return self._clients

    def pop_statement(self, scheduler_id: SchedulerId, limit: int, filters: FilterRequest | None) -> PopStatement:
        """The statement of a pop with these filters: built (and the filters checked, raising
        :class:`~kat_scheduler.storage.filters.FilterError`) the first time, then kept. A runner
        pops with the same body all its life, so the pops after its first build nothing."""
        key = (scheduler_id, limit, None if filters is None else filters.model_dump_json())
        with self._lock:
            found = self._pops.get(key)
            if found is not None:
                self._pops.move_to_end(key)
                return found
        where = conditions(filters, self.engine.dialect.name)
        built = self.tasks.pop_statement(scheduler_id, limit=limit, where=where)
        with self._lock:
            self._pops[key] = built
            if len(self._pops) > POP_STATEMENTS:
                self._pops.popitem(last=False)
        return built

    def dispatch(self, item: Dispatchable) -> DispatchResult:
        """Claim ``item``'s row, then publish its message: the producers' own path (``dispatch.py``)."""
        with self._dispatch_lock:
            if self._publisher is None:
                self._publisher = make_publisher(self.settings)
            dispatcher = Dispatcher(TaskStore(self.engine), self._publisher, pull=self.settings.pull_scheduler_ids)
            return dispatcher.dispatch([item])

    def claim_for_pull(self, task: NewTask, now: datetime | None = None) -> bool:
        """Claim ``task``'s row for a pull scheduler through the producers' own path
        (:meth:`Dispatcher.hold`): queued for a pop, never published; whether its hash was free."""
        dispatcher = Dispatcher(TaskStore(self.engine), None, pull=self.settings.pull_scheduler_ids)
        return dispatcher.hold([task], now=now).claimed == 1

    def close(self) -> None:
        with self._lock:
            if self._clients is not None:
                self._clients.close()
                self._clients = None
        with self._dispatch_lock:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None


async def context(request: Request) -> ApiContext:
    """The application's context (a FastAPI dependency; ``async`` because it does no I/O: FastAPI
    runs a plain ``def`` dependency on its thread pool, one more thread hop per request)."""
    found = request.app.state.context
    assert isinstance(found, ApiContext)
    return found
