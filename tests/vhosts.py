"""RabbitMQ vhosts of a test run's own, so concurrent runs never share queues or connections.

The run's vhosts are named from its run id (``tests.conftest.vhost_name``), created with
``rabbitmqctl import_definitions`` (the vhost and the user's permissions on it) when first
needed and deleted at the end of the run (see ``tests/conftest.py``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from urllib.parse import quote, urlsplit, urlunsplit

from kombu.connection import Connection


class VhostError(Exception):
    """A vhost of the run's own could not be created."""


def with_vhost(url: str, vhost: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(vhost, safe="")))


def shown(url: str) -> str:
    """``url`` with its password masked, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def connect_error(url: str) -> Exception | None:
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.connect()
    except Exception as exc:
        return exc
    return None


class RunVhosts:
    """The vhosts one test run created on the RabbitMQ server of ``server_url``."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.user = urlsplit(server_url).username or "guest"
        self.created: list[str] = []
        self.failed: dict[str, str] = {}

    def reachable(self) -> bool:
        """Whether the server accepts TCP connections (its vhosts aside)."""
        parts = urlsplit(self.server_url)
        try:
            socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=3).close()
        except OSError:
            return False
        return True

    def url(self, name: str) -> str:
        """The server's URL on vhost ``name``, which is created (with the URL user's
        permissions) the first time; raises :class:`VhostError` when that fails."""
        if name in self.failed:
            raise VhostError(self.failed[name])
        if name not in self.created:
            try:
                self.create(name)
            except VhostError as exc:
                self.failed[name] = str(exc)
                raise
        return with_vhost(self.server_url, name)

    def create(self, name: str) -> None:
        if not self.reachable():
            raise VhostError(f"no TCP connection to {shown(self.server_url)}")
        if shutil.which("rabbitmqctl") is None:
            raise VhostError(f"rabbitmqctl is not on PATH, so the vhost {name} cannot be created")
        self.created.append(name)  # deleted at the end even if only half made
        # The vhost and the user's permissions on it in one rabbitmqctl (definitions that name
        # nothing else): each rabbitmqctl starts a VM of its own, which is most of its time.
        definitions = {
            "vhosts": [{"name": name}],
            "permissions": [{"user": self.user, "vhost": name, "configure": ".*", "write": ".*", "read": ".*"}],
        }
        done = subprocess.run(
            ["rabbitmqctl", "import_definitions"],  # from standard input
            input=json.dumps(definitions),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            raise VhostError(f"rabbitmqctl import_definitions {name} failed: {said[-1] if said else done.returncode}")
        # rabbitmqctl calls the import asynchronous: the vhost may take a moment to take connections.
        deadline = time.monotonic() + 10
        while (error := connect_error(with_vhost(self.server_url, name))) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if error is not None:
            raise VhostError(
                f"the vhost {name} was created but {self.user} cannot connect to it at "
                f"{shown(self.server_url)} ({type(error).__name__}: {error}); "
                "rabbitmqctl must manage the broker TEST_AMQP_URL names"
            )

    def delete_all(self) -> None:
        """Delete every vhost this run created (RabbitMQ closes the connections on them).

        One ``rabbitmqctl`` each, all at once: each starts a VM of its own, which is most of its time.
        """
        names, self.created = self.created, []
        deleting = {
            name: subprocess.Popen(
                ["rabbitmqctl", "delete_vhost", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for name in names
        }
        left = []
        for name, process in deleting.items():
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            if code != 0 and name not in self.failed:
                left.append(name)
        if left:
            raise VhostError(f"could not delete this run's vhosts {left}; delete them with rabbitmqctl delete_vhost")


def own_vhost(base_url: str, vhost: str) -> str:
    """``base_url`` on ``vhost``, a vhost of the run's own (named with ``vhost_name``), created
    if need be and deleted at the end of the run; fails (in CI) or skips when it cannot be made.

    ``base_url`` must come from a fixture that depends on ``rabbitmq_vhosts`` (as
    ``events_amqp_base`` does), so the vhost is deleted at the end of the run.
    """
    from tests.conftest import run_vhost  # tests.conftest imports this module

    run_vhost(vhost)
    return with_vhost(base_url, vhost)
