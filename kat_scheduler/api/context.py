"""What the routes share: the settings, one engine per application, the stores, the KAT clients."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from fastapi import Request
from sqlalchemy import Engine

from kat_scheduler.clients import KATClients, clients_from_settings
from kat_scheduler.settings import Settings
from kat_scheduler.storage.task_views import TaskViews


@dataclass
class ApiContext:
    settings: Settings
    engine: Engine
    tasks: TaskViews
    _clients: KATClients | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def clients(self) -> KATClients:
        """Octopoes, Katalogus and Bytes, created on first use (only health with externals needs them)."""
        with self._lock:
            if self._clients is None:
                self._clients = clients_from_settings(self.settings)
            return self._clients

    def close(self) -> None:
        with self._lock:
            if self._clients is not None:
                self._clients.close()
                self._clients = None


def context(request: Request) -> ApiContext:
    """The application's context (a FastAPI dependency)."""
    found = request.app.state.context
    assert isinstance(found, ApiContext)
    return found
