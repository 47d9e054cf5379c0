"""One worker node releases waiting tasks at a time (the release lease, in real PostgreSQL): the
others stand by and take over when it stops or hangs."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest
from sqlalchemy import Engine

from kat_scheduler.limiting.limiter import RateLimiter
from kat_scheduler.limiting.release import ReleaseThread
from kat_scheduler.rules.rate_limits import parse_overrides
from tests.workers import wait_for


class CountingReleaser:
    """Stands in for a node's Releaser: counts its passes; a pass may be held (a hung node)."""

    def __init__(self, engine: Engine, limiter: RateLimiter) -> None:
        self.engine = engine
        self.limiter = limiter
        self.passes = 0
        self.go = threading.Event()
        self.go.set()

    def release(self) -> int:
        self.passes += 1
        self.go.wait()
        return 0

    def next_at(self) -> datetime | None:
        return None


@pytest.fixture
def nodes(pg_engine: Engine, redis_url: str) -> Iterator[tuple[CountingReleaser, CountingReleaser]]:
    prefix = f"test-{uuid.uuid4().hex}"  # one cluster: one database, the same windows
    yield tuple(  # type: ignore[misc]
        CountingReleaser(pg_engine, RateLimiter(redis_url, parse_overrides("nmap=5/second"), key_prefix=prefix))
        for _ in "ab"
    )


def node(releaser: CountingReleaser, lease: float = 5.0) -> ReleaseThread:
    return ReleaseThread(releaser, poll=0.02, lease=lease)  # type: ignore[arg-type]


def test_of_two_nodes_only_the_lease_holder_releases_and_the_other_takes_over_when_it_stops(
    nodes: tuple[CountingReleaser, CountingReleaser],
) -> None:
    a, b = nodes
    first, second = node(a), node(b)
    first.start()
    try:
        assert wait_for(lambda: a.passes >= 3, timeout=5)
        second.start()
        since = a.passes
        assert wait_for(lambda: a.passes >= since + 20, timeout=5)  # the other has polled meanwhile
        assert b.passes == 0 and first.leading and not second.leading

        first.stop()  # gives the lease back: the other takes over at its next poll
        assert wait_for(lambda: b.passes > 0, timeout=1)
        stopped = a.passes
        assert wait_for(lambda: b.passes >= 20, timeout=5)
        assert a.passes == stopped
    finally:
        first.stop()
        second.stop()


def test_a_node_that_hangs_loses_the_lease_when_it_lapses_and_stands_by_once_it_wakes(
    nodes: tuple[CountingReleaser, CountingReleaser],
) -> None:
    a, b = nodes
    first, second = node(a, lease=0.5), node(b, lease=0.5)
    first.start()
    try:
        assert wait_for(lambda: a.passes >= 3, timeout=5)
        a.go.clear()  # its next pass hangs: the lease is not renewed
        second.start()
        assert wait_for(lambda: b.passes > 0, timeout=3)  # taken over once it lapsed

        a.go.set()  # the hung pass ends; the lease is the other's now
        hung = a.passes
        assert wait_for(lambda: b.passes >= 30, timeout=5)
        assert a.passes == hung, "the node that hung does not release beside the one that took over"
        assert not first.leading and second.leading
    finally:
        a.go.set()
        first.stop()
        second.stop()
