"""The HTTP API served by a real uvicorn on a free loopback port, in a thread of the test process."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import requests
import uvicorn
from sqlalchemy import Engine

from kat_scheduler.api import create_app
from kat_scheduler.settings import Settings
from tests.workers import wait_for


class ApiServer:
    """A running API: ``url`` and a ``requests`` session (``http``) to call it with."""

    def __init__(self, url: str, http: requests.Session) -> None:
        self.url = url
        self.http = http

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return self.http.get(self.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, **kwargs: object) -> requests.Response:
        return self.http.post(self.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]

    def patch(self, path: str, **kwargs: object) -> requests.Response:
        return self.http.patch(self.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]


class PromptServer(uvicorn.Server):
    """uvicorn's server, stopped as soon as it is asked (:meth:`stop`), where uvicorn notices
    ``should_exit`` at its next tick and then pauses a fixed tenth of a second for connections to
    finish: a test's API is started and stopped for every test, and its requests are all answered
    before it stops (the test's session is closed first). Connections and tasks still open are
    waited for, and the application's lifespan shutdown runs, as in uvicorn's own shutdown."""

    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def stop(self) -> None:
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: it stopped by itself
                loop.call_soon_threadsafe(wake.set)

    async def main_loop(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        counter = 0
        while not await self.on_tick(counter):  # on_tick also keeps the Date header current
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (self.server_state.connections or self.server_state.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.005)
        for server in self.servers:
            await server.wait_closed()
        if not self.force_exit:
            await self.lifespan.shutdown()


@contextlib.contextmanager
def serve_api(settings: Settings, engine: Engine | None = None) -> Iterator[ApiServer]:
    """uvicorn serving :func:`create_app` on 127.0.0.1 (a port the OS picks) until the block ends."""
    config = uvicorn.Config(create_app(settings, engine=engine), host="127.0.0.1", port=0, log_level="warning")
    server = PromptServer(config)
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    try:
        started = wait_for(lambda: server.started or not thread.is_alive(), timeout=15, interval=0.005)
        assert started, "uvicorn did not start"
        assert server.started, "uvicorn stopped while starting"
        port = server.servers[0].sockets[0].getsockname()[1]
        with requests.Session() as http:
            yield ApiServer(f"http://127.0.0.1:{port}", http)
    finally:
        server.stop()
        thread.join(15)
