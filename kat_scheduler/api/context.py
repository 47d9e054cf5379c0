"""What the routes share: the settings, one engine per application, the stores, the KAT clients."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from fastapi import Request
from sqlalchemy import Engine

from kat_scheduler.clients import KATClients, clients_from_settings
from kat_scheduler.dispatch import Dispatchable, Dispatcher, DispatchResult
from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.publisher import Publisher, make_publisher
from kat_scheduler.settings import Settings
from kat_scheduler.storage.task_views import TaskViews
from kat_scheduler.storage.tasks import NewTask, TaskStore


@dataclass
class ApiContext:
    settings: Settings
    engine: Engine
    tasks: TaskViews
    #: Schedulers delivered through Celery that a runner tried to pop from (logged once each).
    warned_pops: set[SchedulerId] = field(default_factory=set, repr=False)
    _clients: KATClients | None = field(default=None, repr=False)
    _publisher: Publisher | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: One dispatch at a time over the one broker connection.
    _dispatch_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def clients(self) -> KATClients:
        """Octopoes, Katalogus and Bytes, created on first use (only health with externals needs them)."""
        with self._lock:
            if self._clients is None:
                self._clients = clients_from_settings(self.settings)
            return self._clients

    def dispatch(self, item: Dispatchable) -> DispatchResult:
        """Claim ``item``'s row, then publish its message: the producers' own path (``dispatch.py``)."""
        with self._dispatch_lock:
            if self._publisher is None:
                self._publisher = make_publisher(self.settings)
            return Dispatcher(TaskStore(self.engine), self._publisher).dispatch([item])

    def claim_for_pull(self, task: NewTask, now: datetime | None = None) -> bool:
        """Claim ``task``'s row for a pull scheduler: queued for a pop, never published (whether
        its hash was free). The claim's listing in ``unpublished_tasks`` is dropped at once: there
        is no message to wait for."""
        store = TaskStore(self.engine)
        if not store.claim([task], now=now):
            return False
        store.mark_published([task.id])
        return True

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
