"""Tasks in the test's stores and on its broker: a boefje task queued on a hostname of the
simulated world, its message published, and what the database and the broker hold."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any, cast

import redis
from sqlalchemy import Engine, delete, select

from kat_scheduler.clients import KATClients
from kat_scheduler.dispatch.publishing import OutgoingMessage, make_publisher
from kat_scheduler.models import Boefje, SchedulerId, TaskStatus
from kat_scheduler.queues import Queue, TaskName
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.payloads import boefje_payload
from kat_scheduler.settings import Settings, load_settings
from kat_scheduler.sim.world import World
from kat_scheduler.storage import TaskRow, TaskStore, UnpublishedTask
from kat_scheduler.storage.tables import BrokerMarkerRow, WorkerNodeRow
from kat_scheduler.storage.tasks import NewTask
from kat_scheduler.workers.reaper import Reaper


def hostname_with_dns(world: World) -> tuple[str, str]:
    """An organisation with dns-records enabled and one of its hostnames at scan level 1 or more."""
    for org in world.organisation_ids:
        if world.is_enabled(org, "dns-records"):
            for ooi in world.oois(org).values():
                if ooi.object_type == "Hostname" and ooi.scan_level >= 1:
                    return org, ooi.primary_key
    raise AssertionError("no hostname for dns-records in the world")


def queued_boefje_task(store: TaskStore, org: str, boefje_id: str, ref: str, clients: KATClients) -> uuid.UUID:
    """A queued task row of ``boefje_id`` on ``ref`` (its plugin as Katalogus has it); no message."""
    boefje = clients.katalogus.plugin(org, boefje_id)
    assert isinstance(boefje, Boefje), f"Katalogus has no boefje {boefje_id!r} in {org}"
    task_id = uuid.uuid4()
    store.claim(
        [
            NewTask(
                id=task_id,
                scheduler_id=SchedulerId.BOEFJE,
                type="boefje",
                organisation=org,
                plugin_id=boefje_id,
                input_ooi=ref,
                hash=boefje_task_hash(boefje_id, org, ref),
                band=2,
                priority=0,
                data=boefje_payload(task_id, boefje, org, ref),
            )
        ]
    )
    return task_id


def publish_boefje(task_id: uuid.UUID, org: str, ref: str, postgres_uri: str, redis_url: str) -> None:
    """The message of a dns-records task on ``ref``, published on the Redis broker ``redis_url``."""
    publisher = make_publisher(load_settings(broker_url=redis_url, db_uri=postgres_uri))
    message = OutgoingMessage(
        task_id=task_id,
        task_name=TaskName.BOEFJE_RUN.value,
        queue=Queue.BOEFJES.value,
        band=2,
        kwargs={"organisation": org, "boefje_id": "dns-records", "input_ooi": ref},
    )
    publisher.publish([message])
    publisher.close()


def queued_rows(engine: Engine) -> list[tuple[str, str, str | None, int, str]]:
    """(organisation, plugin, input object, band, id) of each queued task whose message was published."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(TaskRow.organisation, TaskRow.plugin_id, TaskRow.input_ooi, TaskRow.band, TaskRow.id).where(
                TaskRow.status == TaskStatus.QUEUED, TaskRow.id.not_in(select(UnpublishedTask.task_id))
            )
        ).all()
    return [(r[0], r[1], r[2], r[3], str(r[4])) for r in rows]


def broker_messages(redis_url: str) -> list[dict[str, Any]]:
    """Every message waiting on the boefje queues of the Redis broker ``redis_url``."""
    client = redis.Redis.from_url(redis_url)
    keys = [k for k in cast(list[bytes], client.keys("boefjes*")) if not k.startswith(b"_kombu")]
    return [json.loads(raw) for key in keys for raw in client.lrange(key, 0, -1)]


def forget_nodes_and_markers(engine: Engine) -> None:
    """Empty the tables of worker nodes and broker markers (a broker of an earlier test is gone)."""
    with engine.begin() as conn:
        conn.execute(delete(WorkerNodeRow))
        conn.execute(delete(BrokerMarkerRow))


@contextlib.contextmanager
def reaper_on(engine: Engine, settings: Settings) -> Iterator[Reaper]:
    """A reaper on ``engine`` publishing with ``settings``, with no worker node or broker marker
    of an earlier test before or after it."""
    forget_nodes_and_markers(engine)
    publisher = make_publisher(settings)
    try:
        yield Reaper(TaskStore(engine), publisher, settings)
    finally:
        publisher.close()
        forget_nodes_and_markers(engine)
