"""The KAT clients against the simulated KAT services, over real HTTP on loopback."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from kat_scheduler.clients import BytesClient, HTTPOptions, KatalogusClient, OctopoesClient
from kat_scheduler.sim import SimulatedKAT, World, WorldConfig, generate_world

#: Every test client retries twice without backoff; fault tests read ``client.retries``.
FAST = HTTPOptions(timeout=5.0, retries=2, backoff=0.0)
USERNAME, PASSWORD = "bytes", "s3cret-bytes-password"


@pytest.fixture(scope="session")
def world() -> World:
    return generate_world(WorldConfig(seed=1, organisations=3, oois_per_org=100, boefjes=10, history_fraction=0.3))


@pytest.fixture(scope="session")
def kat_server(world: World) -> Iterator[SimulatedKAT]:
    with SimulatedKAT(world, bytes_username=USERNAME, bytes_password=PASSWORD).start() as kat:
        yield kat


@pytest.fixture
def kat(kat_server: SimulatedKAT) -> Iterator[SimulatedKAT]:
    """The shared simulated KAT with clean request counts and no faults left from another test."""
    kat_server.clear_faults()
    kat_server.reset_counts()
    yield kat_server
    kat_server.clear_faults()


@pytest.fixture
def octopoes(kat: SimulatedKAT) -> Iterator[OctopoesClient]:
    with OctopoesClient(kat.octopoes_url, **FAST) as client:
        yield client


@pytest.fixture
def katalogus(kat: SimulatedKAT) -> Iterator[KatalogusClient]:
    with KatalogusClient(kat.katalogus_url, **FAST) as client:
        yield client


@pytest.fixture
def bytes_client(kat: SimulatedKAT) -> Iterator[BytesClient]:
    with BytesClient(kat.bytes_url, USERNAME, PASSWORD, **FAST) as client:
        yield client


@pytest.fixture
def closed_url() -> str:
    """A loopback URL nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def credentials() -> tuple[str, str]:
    """The simulated Bytes' user name and password."""
    return USERNAME, PASSWORD


@pytest.fixture
def client_options() -> HTTPOptions:
    """Options for clients a test builds itself: the same as the fixtures'."""
    return FAST.copy()


@pytest.fixture
def seen(kat: SimulatedKAT) -> Callable[[str, str, str], int]:
    """``seen(service, method, path)``: requests the simulated service received for it in this test."""

    def count(service: str, method: str, path: str) -> int:
        return kat.path_counts.get((service, method, path), 0)

    return count
