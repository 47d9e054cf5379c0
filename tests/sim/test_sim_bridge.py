"""The simulation's events as real broker messages: the bridge, ``sim serve --events-url``, ``sim publish-*``.

Every message is checked as a consumer of KAT's events sees it: a plain JSON body (not a Celery
message) on a durable queue, in exactly KAT's shape. RabbitMQ tests run in a vhost of the
run's own (``kat_test_<run id>_sim``, see tests/conftest.py) and only ever
touch the two event queues (and their ``.dead`` variants); Redis tests only their keys.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from amqp.exceptions import PreconditionFailed
from click.testing import CliRunner
from kombu.connection import Connection
from kombu.entity import Queue as KombuQueue
from kombu.message import Message

from kat_scheduler.models import RawFileReceived, ScanProfileMutation
from kat_scheduler.sim import (
    RAW_FILE_RECEIVED,
    SCAN_PROFILE_MUTATIONS,
    SimulatedKAT,
    World,
    WorldConfig,
    generate_world,
)
from kat_scheduler.sim.bridge import EventBridge
from kat_scheduler.sim.cli import sim
from kat_scheduler.sim.events import world_mutations, world_raw_files
from tests.conftest import run_vhost, service_missing, vhost_name
from tests.vhosts import RunVhosts, shown

VHOST = vhost_name("sim")
EVENT_QUEUES = (SCAN_PROFILE_MUTATIONS, RAW_FILE_RECEIVED)
OUR_QUEUES = (*EVENT_QUEUES, *(f"{name}.dead" for name in EVENT_QUEUES))
MUTATION_KEYS = {"operation", "primary_key", "client_id", "value"}
RAW_EVENT_KEYS = {"event_id", "created_at", "organization", "raw_data"}
RAW_DATA_KEYS = {"id", "boefje_meta", "mime_types", "secure_hash", "hash_retrieval_link"}
SMALL_WORLD = ["--seed=3", "--organisations=2", "--oois-per-org=40", "--boefjes=6"]


# -- brokers --------------------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> bool:
    command = shutil.which("rabbitmqctl")
    if command is None:
        return False
    try:
        return subprocess.run([command, *args], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="session")
def vhost_url(rabbitmq_vhosts: RunVhosts) -> str:
    """``TEST_AMQP_URL`` on the run's own ``kat_test_<run id>_sim`` vhost."""
    return run_vhost(VHOST)


def _drop_amqp_queues(url: str) -> None:
    with Connection(url, connect_timeout=3) as conn:
        for name in OUR_QUEUES:
            channel = conn.channel()
            try:
                channel.queue_delete(name)
            finally:
                channel.close()


def _drop_redis_queues(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        for name in EVENT_QUEUES:  # the list, its priority lists and the .dead variants
            keys = list(client.scan_iter(match=f"{name}*"))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def amqp_events_url(vhost_url: str) -> Iterator[str]:
    """RabbitMQ, with the event queues deleted before and after the test."""
    try:
        _drop_amqp_queues(vhost_url)
    except Exception as exc:
        service_missing(f"RabbitMQ at {shown(vhost_url)}", exc)
    yield vhost_url
    _drop_amqp_queues(vhost_url)


@pytest.fixture
def redis_events_url(run_redis_url: str) -> Iterator[str]:
    """The run's Redis database, with the event queues' keys deleted before and after the test."""
    _drop_redis_queues(run_redis_url)
    yield run_redis_url
    _drop_redis_queues(run_redis_url)


@pytest.fixture(params=["amqp", "redis"])
def events_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_events_url")  # type: ignore[no-any-return]


@pytest.fixture
def bridge(amqp_events_url: str) -> Iterator[EventBridge]:
    with EventBridge(amqp_events_url) as opened:
        yield opened


def depth(url: str, queue: str) -> int:
    with Connection(url, connect_timeout=3) as conn:
        return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)


def take(url: str, queue: str, count: int, timeout: float = 10.0) -> list[Message]:
    """Exactly ``count`` messages off ``queue`` (acknowledged); fails when fewer or more are there."""
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    with Connection(url, connect_timeout=3) as conn:
        source = KombuQueue(queue, channel=conn.default_channel, no_declare=True)
        while len(messages) < count and time.monotonic() < deadline:
            message = source.get(no_ack=True)
            if message is None:
                time.sleep(0.05)
            else:
                messages.append(message)
        assert source.get(no_ack=True) is None, f"more than {count} messages on {queue}"
    assert len(messages) == count, f"{len(messages)} of {count} messages arrived on {queue}"
    return messages


def event_of(message: Message) -> dict[str, Any]:
    """The body of a message, after checking it is a plain persistent JSON message as KAT sends."""
    assert message.content_type == "application/json"
    assert message.content_encoding == "utf-8"
    assert message.properties["delivery_mode"] == 2
    assert "task" not in (message.headers or {}), "a Celery message, not a plain event"
    assert message.delivery_info["exchange"] == ""
    body = json.loads(message.body)
    assert isinstance(body, dict)
    assert body == message.payload
    return body


def mutation_of(message: Message) -> dict[str, Any]:
    body = event_of(message)
    assert set(body) == MUTATION_KEYS
    ScanProfileMutation.model_validate(body)
    if body["value"] is not None:
        assert set(body["value"]) == {"primary_key", "object_type", "scan_profile"}
        assert set(body["value"]["scan_profile"]) == {"scan_profile_type", "reference", "level"}
    return body


def raw_event_of(message: Message) -> RawFileReceived:
    body = event_of(message)
    assert set(body) == RAW_EVENT_KEYS
    assert set(body["raw_data"]) == RAW_DATA_KEYS
    assert body["raw_data"]["secure_hash"] is None and body["raw_data"]["hash_retrieval_link"] is None
    return RawFileReceived.model_validate(body)


# -- the simulated services ---------------------------------------------------------------

Login = Callable[[SimulatedKAT], dict[str, str]]


def upload_raw(bytes_url: str, http: requests.Session, headers: dict[str, str], org: str = "org01") -> str:
    """Post a boefje run and one raw file of it to Bytes; returns the raw file's id."""
    meta = {
        "id": str(uuid.uuid4()),
        "started_at": "2025-05-27T09:00:15.5+00:00",
        "ended_at": "2025-05-27T09:00:16.4+00:00",
        "boefje": {"id": "dns-records", "version": None},
        "input_ooi": "Hostname|internet|mispo.es",
        "arguments": {"input": {"object_type": "Hostname", "primary_key": "Hostname|internet|mispo.es"}},
        "organization": org,
        "runnable_hash": None,
        "environment": {},
    }
    posted = http.post(f"{bytes_url}/bytes/boefje_meta", json=meta, headers=headers)
    assert posted.status_code == 201
    files = [
        {"name": "0", "content": base64.b64encode(b"mispo.es. A 192.0.2.1").decode(), "tags": ["boefje/dns-records"]}
    ]
    response = http.post(
        f"{bytes_url}/bytes/raw",
        params={"boefje_meta_id": meta["id"]},
        json={"status": "COMPLETED", "files": files},
        headers=headers,
    )
    assert response.status_code == 200
    return str(response.json()["0"])


def some_mutations(count: int) -> list[dict[str, Any]]:
    return world_mutations(generate_world(WorldConfig(seed=3, organisations=2, oois_per_org=10)), count)


def change_the_world(world: World) -> str:
    """add_ooi, set_scan_level, delete_ooi on org01; returns the primary key used."""
    primary_key = "Hostname|internet|bridge.example"
    world.add_ooi("org01", "Hostname", primary_key, level=1)
    world.set_scan_level("org01", primary_key, 3)
    world.delete_ooi("org01", primary_key)
    return primary_key


def check_mutations(messages: list[Message], primary_key: str) -> None:
    create, update, delete = (mutation_of(message) for message in messages)
    for body, operation in ((create, "create"), (update, "update"), (delete, "delete")):
        assert body["operation"] == operation
        assert body["primary_key"] == primary_key and body["client_id"] == "org01"
    assert delete["value"] is None
    assert create["value"] == {
        "primary_key": primary_key,
        "object_type": "Hostname",
        "scan_profile": {"scan_profile_type": "declared", "reference": primary_key, "level": 1},
    }
    assert update["value"]["scan_profile"]["level"] == 3


# -- the bridge on RabbitMQ ---------------------------------------------------------------


def test_world_mutations_arrive_on_rabbitmq_as_plain_json(
    world: World, bridge: EventBridge, amqp_events_url: str
) -> None:
    world.add_listener(bridge)
    primary_key = change_the_world(world)
    check_mutations(take(amqp_events_url, SCAN_PROFILE_MUTATIONS, 3), primary_key)
    assert (bridge.published, bridge.failed) == (3, 0)


def test_the_event_queues_are_durable_without_arguments(bridge: EventBridge, amqp_events_url: str) -> None:
    for queue in EVENT_QUEUES:
        assert bridge.publish(queue, {"probe": queue})
    with Connection(amqp_events_url, connect_timeout=3) as conn:
        for queue in EVENT_QUEUES:
            # Declaring again succeeds only with the very same settings: durable, not auto-delete, no arguments.
            conn.channel().queue_declare(queue=queue, durable=True, auto_delete=False, arguments=None)
            with pytest.raises(PreconditionFailed):
                conn.channel().queue_declare(queue=queue, durable=False, auto_delete=False)


def test_raw_uploads_and_observations_over_http_publish_events(
    world: World, bridge: EventBridge, amqp_events_url: str, http: requests.Session, login: Login
) -> None:
    with SimulatedKAT(world, event_sink=bridge).start() as kat:
        raw_id = upload_raw(kat.bytes_url, http, login(kat))
        (message,) = take(amqp_events_url, RAW_FILE_RECEIVED, 1)
        event = raw_event_of(message)
        assert str(event.raw_data.id) == raw_id
        assert event.organization == "org01"
        assert event.raw_data.mime_type_values == ["boefje/dns-records"]
        assert event.raw_data.boefje_meta.boefje.id == "dns-records"

        source = next(o for o in world.oois("org01").values() if o.scan_level >= 2)
        new = {"object_type": "IPAddressV4", "primary_key": "IPAddressV4|internet|192.0.2.77", "address": "192.0.2.77"}
        observation = {"method": "kat_dns_normalize", "source": source.primary_key, "result": [new]}
        http.post(f"{kat.octopoes_url}/org01/observations", json=observation).raise_for_status()
        (message,) = take(amqp_events_url, SCAN_PROFILE_MUTATIONS, 1)
        created = mutation_of(message)
        assert created["operation"] == "create" and created["primary_key"] == new["primary_key"]
        assert created["value"]["scan_profile"] == {
            "scan_profile_type": "inherited",
            "reference": new["primary_key"],
            "level": source.scan_level,
        }


def test_a_queue_declared_with_other_arguments_is_used_as_it_is(bridge: EventBridge, amqp_events_url: str) -> None:
    """A consumer that declared the queue first (say with a dead-letter exchange) does not stop the bridge."""
    with Connection(amqp_events_url, connect_timeout=3) as conn:
        conn.default_channel.queue_declare(
            queue=SCAN_PROFILE_MUTATIONS,
            durable=True,
            auto_delete=False,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{SCAN_PROFILE_MUTATIONS}.dead"},
        )
    bodies = some_mutations(5)
    assert bridge.publish_many(SCAN_PROFILE_MUTATIONS, bodies) == 5
    assert [mutation_of(m) for m in take(amqp_events_url, SCAN_PROFILE_MUTATIONS, 5)] == bodies
    assert bridge.failed == 0


def test_the_bridge_reconnects_after_the_broker_drops_its_connection(
    bridge: EventBridge, amqp_events_url: str, vhost_url: str
) -> None:
    if urlsplit(vhost_url).path != f"/{VHOST}":
        pytest.skip("needs rabbitmqctl and a vhost of our own to drop connections in")
    first, second = some_mutations(2)
    assert bridge.publish(SCAN_PROFILE_MUTATIONS, first)
    assert _rabbitmqctl("close_all_connections", "-p", VHOST, "test: dropped on purpose")
    time.sleep(0.2)
    assert bridge.publish(SCAN_PROFILE_MUTATIONS, second)
    assert [mutation_of(m) for m in take(amqp_events_url, SCAN_PROFILE_MUTATIONS, 2)] == [first, second]
    assert (bridge.published, bridge.failed) == (2, 0)


def test_a_broker_that_is_down_does_not_break_the_simulated_services(
    world: World, http: requests.Session, login: Login, caplog: pytest.LogCaptureFixture
) -> None:
    down = EventBridge("amqp://guest:guest@127.0.0.1:1//", retries=1, backoff=0.01, pause=0.0)
    with SimulatedKAT(world, event_sink=down).start() as kat:
        upload_raw(kat.bytes_url, http, login(kat))  # asserts 201 for the boefje meta, 200 for the raw file
        source = next(iter(world.oois("org01")))
        new = {"object_type": "Network", "primary_key": "Network|elsewhere", "name": "elsewhere"}
        observed = http.post(
            f"{kat.octopoes_url}/org01/observations", json={"method": "m", "source": source, "result": [new]}
        )
        assert observed.status_code == 200
    world.add_listener(down)  # straight on the world, without the server's safety net
    world.add_ooi("org01", "Hostname", "Hostname|internet|down.example", level=2)
    assert (down.published, down.failed) == (0, 3)
    assert "could not publish" in caplog.text


def test_after_a_failure_events_are_dropped_without_trying_for_a_pause() -> None:
    down = EventBridge("redis://127.0.0.1:1/0", retries=0, pause=60.0)
    down(SCAN_PROFILE_MUTATIONS, {"n": 1})
    started = time.perf_counter()
    assert down.publish_many(SCAN_PROFILE_MUTATIONS, [{"n": 2}, {"n": 3}]) == 0
    assert time.perf_counter() - started < 0.05
    assert down.failed == 3


# -- the same on Redis --------------------------------------------------------------------


def test_events_on_the_redis_transport(
    world: World, redis_events_url: str, http: requests.Session, login: Login
) -> None:
    with EventBridge(redis_events_url) as bridge, SimulatedKAT(world, event_sink=bridge).start() as kat:
        primary_key = change_the_world(world)
        raw_id = upload_raw(kat.bytes_url, http, login(kat))
        assert (bridge.published, bridge.failed) == (4, 0)
    check_mutations(take(redis_events_url, SCAN_PROFILE_MUTATIONS, 3), primary_key)
    (message,) = take(redis_events_url, RAW_FILE_RECEIVED, 1)
    assert str(raw_event_of(message).raw_data.id) == raw_id


# -- sim publish-mutations / publish-raw --------------------------------------------------


def test_publish_mutations_puts_1000_messages_on_the_queue(events_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = CliRunner().invoke(sim, ["publish-mutations", f"--url={events_url}", *SMALL_WORLD, "--count=1000"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("published 1000 scan_profile_mutations events")
    with capsys.disabled():
        print(f"\n[{events_url.split(':', 1)[0]}] {result.output.strip()}")
    assert depth(events_url, SCAN_PROFILE_MUTATIONS) == 1000
    bodies = [mutation_of(message) for message in take(events_url, SCAN_PROFILE_MUTATIONS, 1000)]
    assert {body["client_id"] for body in bodies} == {"org01", "org02"}
    assert {body["operation"] for body in bodies} == {"create"}
    assert len({(body["client_id"], body["primary_key"]) for body in bodies}) == 80  # cycling through 2 x 40


def test_publish_mutations_of_one_organisation_deletes_and_levels(amqp_events_url: str) -> None:
    url = f"--url={amqp_events_url}"
    runner = CliRunner()
    deleted = runner.invoke(sim, ["publish-mutations", url, *SMALL_WORLD, "--org=org02", "--operation=delete"])
    assert deleted.exit_code == 0, deleted.output
    bodies = [mutation_of(message) for message in take(amqp_events_url, SCAN_PROFILE_MUTATIONS, 40)]
    assert {(body["client_id"], body["operation"], body["value"]) for body in bodies} == {("org02", "delete", None)}

    levelled = runner.invoke(
        sim, ["publish-mutations", url, *SMALL_WORLD, "--count=7", "--operation=update", "--level=4"]
    )
    assert levelled.exit_code == 0, levelled.output
    for body in (mutation_of(message) for message in take(amqp_events_url, SCAN_PROFILE_MUTATIONS, 7)):
        assert body["operation"] == "update"
        assert body["value"]["scan_profile"]["level"] == 4
        assert body["value"]["scan_profile"]["scan_profile_type"] in ("declared", "inherited")

    unknown = runner.invoke(sim, ["publish-mutations", url, *SMALL_WORLD, "--org=nope"])
    assert unknown.exit_code == 1 and "unknown organisation 'nope'" in unknown.output


def test_publish_raw_tags_the_error_fraction_with_error_boefje(amqp_events_url: str) -> None:
    args = ["publish-raw", f"--url={amqp_events_url}", *SMALL_WORLD, "--count=200", "--error-fraction=0.5"]
    result = CliRunner().invoke(sim, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("published 200 raw_file_received events")
    events = [raw_event_of(message) for message in take(amqp_events_url, RAW_FILE_RECEIVED, 200)]
    errors = [event for event in events if event.raw_data.is_error]
    assert len(errors) == 100  # evenly spread, so exactly half
    for event in events:
        boefje_id = event.raw_data.boefje_meta.boefje.id
        expected = [f"boefje/{boefje_id}", "error/boefje"] if event.raw_data.is_error else [f"boefje/{boefje_id}"]
        assert event.raw_data.mime_type_values == expected
        assert event.organization == event.raw_data.boefje_meta.organization
    assert len({event.raw_data.id for event in events}) == 200


def test_publishing_to_a_broker_that_is_down_fails_the_command() -> None:
    result = CliRunner().invoke(sim, ["publish-mutations", "--url=redis://127.0.0.1:1/0", *SMALL_WORLD, "--count=3"])
    assert result.exit_code == 1
    assert "published 0" in result.output and "3 of 3 events could not be published" in result.output


def test_serve_with_events_url_publishes_the_worlds_events(redis_events_url: str, http: requests.Session) -> None:
    """``sim serve --events-url`` in a subprocess: a raw upload over HTTP lands on the broker."""
    command = [sys.executable, "-m", "kat_scheduler.sim.cli", "serve", *SMALL_WORLD, f"--events-url={redis_events_url}"]
    command += ["--octopoes-port=0", "--katalogus-port=0", "--bytes-port=0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        urls: dict[str, str] = {}
        for line in process.stdout:
            if "=" in line and not line.startswith("#"):
                name, _, value = line.strip().partition("=")
                urls[name] = value
            if line.startswith("# serving"):
                break
        token = http.post(f"{urls['BYTES_API']}/token", data={"username": "bytes", "password": "bytes"}, timeout=5)
        raw_id = upload_raw(urls["BYTES_API"], http, {"Authorization": f"bearer {token.json()['access_token']}"})
        (message,) = take(redis_events_url, RAW_FILE_RECEIVED, 1)
        assert str(raw_event_of(message).raw_data.id) == raw_id
        process.send_signal(signal.SIGTERM)
        remaining, _ = process.communicate(timeout=10)
        assert process.returncode == 0
        assert "# events: 1 published, 0 failed" in remaining
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- the bodies, in-process ---------------------------------------------------------------


def test_world_mutations_cycle_round_robin_over_the_organisations(world: World) -> None:
    bodies = world_mutations(world, 7, level=0)
    assert [body["client_id"] for body in bodies] == ["org01", "org02", "org03"] * 2 + ["org01"]
    assert all(body["value"]["scan_profile"]["level"] == 0 for body in bodies)
    everything = world_mutations(world)
    assert len(everything) == sum(len(world.oois(org)) for org in world.organisation_ids)
    with pytest.raises(ValueError, match="operation"):
        world_mutations(world, 1, operation="upsert")


def test_world_raw_files_build_valid_events(world: World) -> None:
    bodies = world_raw_files(world, 10, organisation="org02", error_fraction=0.3)
    events = [RawFileReceived.model_validate(body) for body in bodies]
    assert {event.organization for event in events} == {"org02"}
    assert sum(event.raw_data.is_error for event in events) == 3
    assert all(world.boefje_meta(event.raw_data.boefje_meta.id) is not None for event in events)
