"""Checks made before a process starts its work, so that a broker or event bus that cannot be
reached fails the command within seconds, in one line, instead of leaving it retrying unseen.

Used by ``kat-scheduler run`` (the broker and the event bus, before any child starts) and
``kat-scheduler listen`` (the same, at start; once connected, the listener reconnects by itself).
"""

from __future__ import annotations

from kombu.connection import Connection

from kat_scheduler.queues import transport_of
from kat_scheduler.settings import Settings, env_name, masked_url

#: Seconds one connection attempt may take (TCP connect and the broker's handshake each).
CONNECT_TIMEOUT = 5.0


class Unreachable(RuntimeError):
    """A broker could not be reached; the message names it (password masked) and the reason."""


def require_reachable(url: str, what: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect to the kombu broker at ``url`` once, without retries, and disconnect.

    Raises :class:`Unreachable` (``what`` names the setting) when that fails or takes longer
    than ``timeout`` seconds.
    """
    options = {"socket_connect_timeout": timeout, "socket_timeout": timeout} if transport_of(url) == "redis" else {}
    try:
        with Connection(url, connect_timeout=timeout, transport_options=options) as connection:
            connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
    except Exception as exc:
        reason = " ".join(str(exc).split())
        reason = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        raise Unreachable(f"cannot reach the {what} at {masked_url(url)}: {reason}") from None


def require_brokers(settings: Settings, timeout: float = CONNECT_TIMEOUT) -> None:
    """The Celery broker and the event bus both answer (:class:`Unreachable` for the first that does not)."""
    require_reachable(settings.broker_url, f"broker ({env_name('broker_url')})", timeout)
    require_reachable(settings.queue_uri, f"event bus ({env_name('queue_uri')})", timeout)
