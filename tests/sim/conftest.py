"""Fixtures for the simulated KAT: small deterministic worlds and running services."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
import requests

from kat_scheduler.sim import EventRecorder, SimulatedKAT, World, WorldConfig, generate_world

NOW = datetime(2025, 5, 27, 9, 0, 0, tzinfo=UTC)
SMALL = WorldConfig(seed=7, organisations=3, oois_per_org=300, boefjes=12, history_fraction=0.4, now=NOW)


@pytest.fixture(scope="session")
def config() -> WorldConfig:
    """The small world's config (``config.now`` is fixed)."""
    return SMALL


@pytest.fixture(scope="session")
def shared_world() -> World:
    """A world for tests that only read (never mutate it)."""
    return generate_world(SMALL)


@pytest.fixture(scope="session")
def shared_kat(shared_world: World) -> Iterator[SimulatedKAT]:
    with SimulatedKAT(shared_world).start() as kat:
        yield kat


@pytest.fixture
def world() -> World:
    """A fresh world per test, free to mutate."""
    return generate_world(SMALL)


@pytest.fixture
def events() -> EventRecorder:
    return EventRecorder()


@pytest.fixture
def kat(world: World, events: EventRecorder) -> Iterator[SimulatedKAT]:
    with SimulatedKAT(world, event_sink=events).start() as running:
        yield running


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def login(http: requests.Session) -> Callable[[SimulatedKAT], dict[str, str]]:
    """Log in to a simulated Bytes; returns the Authorization header to send."""

    def log_in(kat: SimulatedKAT) -> dict[str, str]:
        response = http.post(f"{kat.bytes_url}/token", data={"username": "bytes", "password": "bytes"})
        response.raise_for_status()
        return {"Authorization": f"bearer {response.json()['access_token']}"}

    return log_in
