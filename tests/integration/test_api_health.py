"""``GET /health`` of the HTTP API, over real HTTP, with KAT's services simulated on loopback."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from kat_scheduler.settings import Settings
from kat_scheduler.sim import SimulatedKAT, WorldConfig, generate_world
from kat_scheduler.version import __version__
from tests.api_server import serve_api

USERNAME, PASSWORD = "bytes", "s3cret-bytes-password"


@pytest.fixture(scope="module")
def kat() -> Iterator[SimulatedKAT]:
    world = generate_world(WorldConfig(seed=1, organisations=1, oois_per_org=10, boefjes=2))
    with SimulatedKAT(world, bytes_username=USERNAME, bytes_password=PASSWORD).start() as running:
        yield running


@pytest.fixture
def closed_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_health_without_externals_is_mulas_report_and_asks_no_one(kat, sqlite_engine):
    kat.reset_counts()
    settings = Settings(octopoes_api=kat.octopoes_url, katalogus_api=kat.katalogus_url, bytes_api=kat.bytes_url)
    with serve_api(settings, engine=sqlite_engine) as api:
        response = api.get("/health")

    assert response.status_code == 200
    assert response.json() == {
        "service": "scheduler",
        "healthy": True,
        "version": __version__,
        "additional": None,
        "results": [],
        "externals": {},
    }
    assert sum(kat.request_counts.values()) == 0


def test_health_with_externals_asks_octopoes_katalogus_and_bytes(kat, sqlite_engine, closed_url):
    settings = Settings(
        octopoes_api=kat.octopoes_url,
        katalogus_api=kat.katalogus_url,
        bytes_api=closed_url,
        bytes_username=USERNAME,
        bytes_password=PASSWORD,
        http_retries=0,
    )
    with serve_api(settings, engine=sqlite_engine) as api:
        response = api.get("/health", params={"externals": "true"})

    assert response.status_code == 200
    assert response.json()["externals"] == {"octopoes": True, "katalogus": True, "bytes": False}
    assert response.json()["healthy"] is True
