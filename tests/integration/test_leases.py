from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from kat_scheduler.storage.leases import LeaseStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_only_one_beat_holds_the_lease(engine: Engine) -> None:
    leases = LeaseStore(engine)
    assert leases.acquire("beat", "host-a:1", ttl=30, now=NOW)
    assert not leases.acquire("beat", "host-b:2", ttl=30, now=NOW + timedelta(seconds=10))
    assert leases.holder("beat", now=NOW + timedelta(seconds=10)) == "host-a:1"


def test_the_holder_renews_and_keeps_the_lease(engine: Engine) -> None:
    leases = LeaseStore(engine)
    assert leases.acquire("beat", "host-a:1", ttl=30, now=NOW)
    assert leases.acquire("beat", "host-a:1", ttl=30, now=NOW + timedelta(seconds=25))
    assert not leases.acquire("beat", "host-b:2", ttl=30, now=NOW + timedelta(seconds=40))


def test_a_standby_takes_over_once_the_lease_lapses(engine: Engine) -> None:
    leases = LeaseStore(engine)
    assert leases.acquire("beat", "host-a:1", ttl=30, now=NOW)
    assert leases.acquire("beat", "host-b:2", ttl=30, now=NOW + timedelta(seconds=31))
    assert not leases.acquire("beat", "host-a:1", ttl=30, now=NOW + timedelta(seconds=32))
    assert leases.holder("beat", now=NOW + timedelta(seconds=32)) == "host-b:2"


def test_a_released_lease_is_free_at_once(engine: Engine) -> None:
    leases = LeaseStore(engine)
    leases.acquire("beat", "host-a:1", ttl=30, now=NOW)
    leases.release("beat", "host-a:1")
    assert leases.holder("beat", now=NOW) is None
    assert leases.acquire("beat", "host-b:2", ttl=30, now=NOW + timedelta(seconds=1))
