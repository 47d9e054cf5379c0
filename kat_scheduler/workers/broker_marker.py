"""A marker key the reaper keeps in a Redis broker's database, to notice that the broker lost its data.

Redis restarted without persistence, or a ``FLUSHDB``, drops every message and the marker with
them; the reaper remembers the marker's token in the database, so a marker that is gone while
the database remembers one means the backlog is gone too. Only a Redis broker (``redis://``,
``rediss://``, ``redis+socket://``) has one; RabbitMQ keeps its messages on disk and is not watched.
"""

from __future__ import annotations

import logging
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import redis

from kat_scheduler.queues import transport_of

logger = logging.getLogger(__name__)

#: The key, in the broker's Redis database (next to kombu's queues, named unlike any of them).
MARKER_KEY = "kat-scheduler:broker-marker"
#: Seconds to wait for Redis: the reaper must not hang on a broker that drops packets.
TIMEOUT = 5.0


class BrokerMarker(Protocol):
    def get(self) -> str | None:
        """The marker's token; ``None`` when the broker does not hold it."""

    def set(self, token: str) -> None:
        """Leave ``token`` in the broker."""


class RedisMarker:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def get(self) -> str | None:
        value = self.client.get(MARKER_KEY)
        if value is None:
            return None
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    def set(self, token: str) -> None:
        self.client.set(MARKER_KEY, token)


def redis_client_url(broker_url: str) -> str | None:
    """The redis-py URL of a Redis broker URL (``None``: one redis-py cannot open from a URL)."""
    parts = urlsplit(broker_url)
    if parts.scheme in ("redis", "rediss"):
        return broker_url
    if parts.scheme == "redis+socket":  # kombu's Unix socket form
        return urlunsplit(("unix", "", parts.path, parts.query, ""))
    return None


#: One client per broker URL in each process (redis-py's pool starts afresh after a fork).
_markers: dict[str, RedisMarker] = {}
_unwatched: set[str] = set()


def broker_marker(broker_url: str) -> BrokerMarker | None:
    """The marker of the broker at ``broker_url``; ``None`` for a broker that is not Redis, or a
    Redis one reached through Sentinel (not watched)."""
    if transport_of(broker_url) != "redis":
        return None
    url = redis_client_url(broker_url)
    if url is None:
        scheme = urlsplit(broker_url).scheme
        if scheme not in _unwatched:
            _unwatched.add(scheme)
            logger.info("the reaper does not watch a Redis broker reached through %s for lost data", scheme)
        return None
    if url not in _markers:
        _markers[url] = RedisMarker(redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT))
    return _markers[url]
