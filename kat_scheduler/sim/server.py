"""Octopoes, Katalogus and Bytes over real HTTP on loopback, serving one :class:`World`.

>>> world = generate_world(WorldConfig(seed=1))
>>> with SimulatedKAT(world, event_sink=print).start() as kat:
...     requests.get(f"{kat.octopoes_url}/org01/objects", params={"limit": 10})

Each service runs a ``ThreadingHTTPServer`` (HTTP/1.1 keep-alive) in a daemon thread; port 0
picks a free port. Events (``scan_profile_mutations`` from observations and world changes,
``raw_file_received`` from raw uploads) go to ``event_sink(queue_name, body)`` while running.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Any, Self

from kat_scheduler.sim import bytes as bytes_service
from kat_scheduler.sim import katalogus, octopoes
from kat_scheduler.sim.events import EventSink
from kat_scheduler.sim.http import Fault, FaultInjector, RequestStats, ServiceApp, ServiceServer
from kat_scheduler.sim.world import World

logger = logging.getLogger(__name__)

#: Seconds :meth:`SimulatedKAT.stop` waits for its servers; a stop never waits for ever.
STOP_TIMEOUT = 10.0

SERVICES: tuple[str, ...] = ("octopoes", "katalogus", "bytes")


class SimulatedKAT:
    """The three simulated KAT services around one world."""

    def __init__(
        self,
        world: World,
        host: str = "127.0.0.1",
        octopoes_port: int = 0,
        katalogus_port: int = 0,
        bytes_port: int = 0,
        bytes_username: str = "bytes",
        bytes_password: str = "bytes",
        token_ttl: float = 900.0,
        event_sink: EventSink | None = None,
    ) -> None:
        self.world = world
        self.host = host
        #: Called as ``event_sink(queue_name, body)`` for every event; may be replaced any time.
        self.event_sink = event_sink
        self.tokens = bytes_service.TokenStore(bytes_username, bytes_password, token_ttl)
        self._stats = RequestStats(SERVICES)
        self._faults = FaultInjector()
        routers = {
            "octopoes": octopoes.build_router(world),
            "katalogus": katalogus.build_router(world),
            "bytes": bytes_service.build_router(world, self.tokens),
        }
        ports = {"octopoes": octopoes_port, "katalogus": katalogus_port, "bytes": bytes_port}
        self._servers: dict[str, ServiceServer] = {
            name: ServiceServer(ServiceApp(name, routers[name], self._stats, self._faults), host, ports[name])
            for name in SERVICES
        }
        self._listening = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start all three servers (a no-op when running); returns ``self``."""
        if self._listening:
            return self
        try:
            for server in self._servers.values():
                server.start()
        except BaseException:
            for server in self._servers.values():
                server.stop()
            raise
        self.world.add_listener(self._forward_event)
        self._listening = True
        return self

    def stop(self) -> None:
        """Stop the servers and cut their open connections; idempotent."""
        if self._listening:
            self.world.remove_listener(self._forward_event)
            self._listening = False
        stoppers = [threading.Thread(target=server.stop, daemon=True) for server in self._servers.values()]
        for stopper in stoppers:
            stopper.start()
        deadline = time.monotonic() + STOP_TIMEOUT
        for stopper in stoppers:
            stopper.join(max(0.0, deadline - time.monotonic()))
        stuck = sum(stopper.is_alive() for stopper in stoppers)
        if stuck:  # the servers' threads are daemons: the process can still exit
            logger.warning("%d simulated service(s) did not stop within %.0fs", stuck, STOP_TIMEOUT)

    @property
    def running(self) -> bool:
        return self._listening

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _forward_event(self, queue: str, body: dict[str, Any]) -> None:
        sink = self.event_sink
        if sink is None:
            return
        try:
            sink(queue, body)
        except Exception:
            logger.exception("event sink failed on a %s event", queue)

    # -- addresses -------------------------------------------------------------------------

    @property
    def octopoes_url(self) -> str:
        return self._servers["octopoes"].url

    @property
    def katalogus_url(self) -> str:
        return self._servers["katalogus"].url

    @property
    def bytes_url(self) -> str:
        return self._servers["bytes"].url

    @property
    def urls(self) -> dict[str, str]:
        """``{"OCTOPOES_API": ..., "KATALOGUS_API": ..., "BYTES_API": ...}``."""
        return {
            "OCTOPOES_API": self.octopoes_url,
            "KATALOGUS_API": self.katalogus_url,
            "BYTES_API": self.bytes_url,
        }

    # -- observation and fault injection ---------------------------------------------------

    @property
    def request_counts(self) -> dict[str, int]:
        """Requests received per service (``octopoes``, ``katalogus``, ``bytes``)."""
        return self._stats.counts()

    @property
    def path_counts(self) -> dict[tuple[str, str, str], int]:
        """Requests received per ``(service, method, path)`` (path without query)."""
        return self._stats.paths()

    def reset_counts(self) -> None:
        self._stats.reset()

    def inject_fault(
        self,
        service: str,
        status: int | None = 503,
        body: bytes | None = None,
        times: int | None = 1,
        path_prefix: str = "",
        *,
        method: str | None = None,
        content_type: str = "application/json",
        delay: float = 0.0,
        drop: bool = False,
    ) -> Fault:
        """Answer the next ``times`` matching requests to ``service`` with ``status``/``body``.

        ``body`` defaults to ``{"detail": "injected fault (<status>)"}``. ``status=None`` with
        ``delay`` only slows requests down; ``drop=True`` closes the connection unanswered;
        ``times=None`` keeps the fault until :meth:`clear_faults`. Thread-safe.
        """
        if service not in SERVICES:
            raise ValueError(f"service must be one of {SERVICES}, not {service!r}")
        fault = Fault(
            service=service,
            status=status,
            body=body,
            times=times,
            path_prefix=path_prefix,
            method=method,
            content_type=content_type,
            delay=delay,
            drop=drop,
        )
        self._faults.add(fault)
        return fault

    def clear_faults(self, service: str | None = None) -> None:
        self._faults.clear(service)

    def expire_tokens(self) -> None:
        """Every Bytes token issued so far is invalid from now on (the next call gets a 401)."""
        self.tokens.expire_all()
