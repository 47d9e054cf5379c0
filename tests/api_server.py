"""The HTTP API served by a real uvicorn on a free loopback port, in a thread of the test process."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def serve_api(settings: Settings, engine: Engine | None = None) -> Iterator[ApiServer]:
    """uvicorn serving :func:`create_app` on 127.0.0.1 (a port the OS picks) until the block ends."""
    config = uvicorn.Config(create_app(settings, engine=engine), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started or not thread.is_alive(), timeout=15), "uvicorn did not start"
        assert server.started, "uvicorn stopped while starting"
        port = server.servers[0].sockets[0].getsockname()[1]
        with requests.Session() as http:
            yield ApiServer(f"http://127.0.0.1:{port}", http)
    finally:
        server.should_exit = True
        thread.join(15)
