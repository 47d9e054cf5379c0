"""Fixtures for planning, dispatch and API tests.

A simulated KAT over HTTP and the producers' context on it (``producers``); the API served on the
test's database (``api``, with ``settings``, which a test module redefines when it needs others);
RabbitMQ on the run's own events vhost (``events_amqp_base``, and ``amqp_events`` without our event
queues; the helpers on events are in tests/events.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from kat_scheduler.clients import BytesClient, KatalogusClient, KATClients, OctopoesClient
from kat_scheduler.settings import Settings, load_settings
from kat_scheduler.sim import SimulatedKAT, WorldConfig, generate_world
from kat_scheduler.sim.world import World
from tests.api_server import ApiServer, serve_api
from tests.conftest import run_vhost
from tests.events import EVENTS_VHOST, drop_our_queues
from tests.push_kat import push_world, with_kat
from tests.vhosts import RunVhosts

#: The simulated world's "now"; history ages are relative to it.
WORLD_NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def world() -> World:
    return generate_world(WorldConfig(seed=11, organisations=3, oois_per_org=120, boefjes=12, now=WORLD_NOW))


@pytest.fixture
def kat(world: World) -> Iterator[SimulatedKAT]:
    with SimulatedKAT(world).start() as sim:
        yield sim


def make_clients(kat: SimulatedKAT) -> KATClients:
    return KATClients(
        octopoes=OctopoesClient(kat.octopoes_url, timeout=5.0, retries=1, backoff=0.0),
        katalogus=KatalogusClient(kat.katalogus_url, timeout=5.0, retries=1, backoff=0.0),
        bytes=BytesClient(kat.bytes_url, "bytes", "bytes", timeout=5.0, retries=1, backoff=0.0),
    )


@pytest.fixture
def clients(kat: SimulatedKAT) -> Iterator[KATClients]:
    kat_clients = make_clients(kat)
    yield kat_clients
    kat_clients.close()


@pytest.fixture
def planner_settings(kat: SimulatedKAT, redis_url: str, postgres_uri: str) -> Settings:
    return load_settings(
        octopoes_api=kat.octopoes_url,
        katalogus_api=kat.katalogus_url,
        bytes_api=kat.bytes_url,
        broker_url=redis_url,
        db_uri=postgres_uri,
        batch_size=100,
    )


@pytest.fixture
def producers(planner_settings: Settings, clients: KATClients, pg_engine: Engine):
    from kat_scheduler.dispatch.publishing import make_publisher
    from kat_scheduler.producers import ProducerContext
    from kat_scheduler.storage import ScheduleStore, TaskStore

    publisher = make_publisher(planner_settings)
    yield ProducerContext(clients, TaskStore(pg_engine), ScheduleStore(pg_engine), planner_settings, publisher)
    publisher.close()


@pytest.fixture(scope="session")
def push_kat() -> Iterator[SimulatedKAT]:
    """The KAT the API checks boefje pushes against (tests/push_kat.py); nothing changes it."""
    with SimulatedKAT(push_world()).start() as sim:
        yield sim


@pytest.fixture
def settings(redis_url: str, push_kat: SimulatedKAT) -> Settings:
    """The API's settings: the test's Redis as the broker, ``push_kat`` as Katalogus and Octopoes,
    the rest their defaults (only the report scheduler is pulled). A module that needs others
    defines a ``settings`` of its own."""
    return with_kat(Settings(broker_url=redis_url), push_kat)


@pytest.fixture
def api(engine: Engine, settings: Settings) -> Iterator[ApiServer]:
    """The API with ``settings`` on ``engine``: each test using it runs on SQLite and on PostgreSQL."""
    with serve_api(settings, engine=engine) as server:
        yield server


@pytest.fixture(scope="session")
def events_amqp_base(rabbitmq_vhosts: RunVhosts) -> str:
    """RabbitMQ on the run's own events vhost (created now, deleted at the end of the run)."""
    return run_vhost(EVENTS_VHOST)


@pytest.fixture
def amqp_events(events_amqp_base: str) -> Iterator[str]:
    """RabbitMQ with none of our event queues (ours only: other queues are never touched)."""
    drop_our_queues(events_amqp_base)
    yield events_amqp_base
    drop_our_queues(events_amqp_base)
