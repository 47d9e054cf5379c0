"""A manual push ("scan now") on both its paths, the CLI's producer and the API's HTTP push: it
bypasses grace, never a run Bytes shows going (until that run counts as stalled), never clearance.

Bytes' newest run of a pair is what a tick (or the listener) last saw of it: ``bytes_runs``."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select

from kat_scheduler.producers import ManualPush, ProducerContext, PushRefused
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.settings import Settings
from kat_scheduler.sim.oracle import allowed_boefje_tasks
from kat_scheduler.sim.world import World
from kat_scheduler.storage import TaskRow
from kat_scheduler.storage.bytes_runs import BytesRunStore, SeenRun
from tests.integration.conftest import WORLD_NOW
from tests.push_kat import BELOW_CLEARANCE
from tests.tasks import broker_messages
from tests.workers import probe_env

NOW = WORLD_NOW + timedelta(minutes=5)


@pytest.fixture
def context(producers: ProducerContext) -> ProducerContext:
    """The shared producers' context (tests/integration/conftest.py), under this module's name."""
    return producers


def task_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(TaskRow)).scalar_one())


def seen_in_bytes(
    engine: Engine, org: str, boefje: str, ooi: str | None, started: datetime, ended: datetime | None
) -> None:
    """Bytes' newest run of the pair, as a tick saw it a moment ago."""
    hash_ = boefje_task_hash(boefje, org, ooi)
    BytesRunStore(engine).record([SeenRun(hash_, org, boefje, ooi or "", started, ended)], started)


def stall_age(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.effective_bytes_stall_age)


# -- the CLI's push (ManualPush, what ``kat-scheduler push boefje`` runs) -------------------------


def allowed_pair(world: World) -> tuple[str, str, str]:
    return sorted(allowed_boefje_tasks(world, NOW))[0]


def test_a_manual_push_is_refused_while_bytes_shows_the_boefje_running_and_nothing_is_stored(
    context: ProducerContext, world: World, pg_engine: Engine, redis_url: str
) -> None:
    org, boefje, ooi = allowed_pair(world)
    started = NOW - timedelta(minutes=2)
    seen_in_bytes(pg_engine, org, boefje, ooi, started, None)

    with pytest.raises(PushRefused) as refused:
        ManualPush(context, org, boefje, ooi).run(NOW)

    stalled_after = started + stall_age(context.settings)
    assert str(refused.value).startswith(
        f"running in Bytes since {started.isoformat()}; it counts as stalled after {stalled_after.isoformat()}"
    )
    assert task_count(pg_engine) == 0 and broker_messages(redis_url) == []


def test_the_push_command_is_refused_with_exit_1_while_bytes_shows_the_boefje_running(
    kat, world: World, pg_engine: Engine, postgres_uri: str, redis_url: str
) -> None:
    org, boefje, ooi = sorted(allowed_boefje_tasks(world, datetime.now(UTC)))[0]
    started = datetime.now(UTC) - timedelta(minutes=2)
    seen_in_bytes(pg_engine, org, boefje, ooi, started, None)

    result = subprocess.run(
        [sys.executable, "-m", "kat_scheduler", "push", "boefje", "--org", org, "--boefje", boefje, "--ooi", ooi],
        env={**os.environ, **probe_env(kat, postgres_uri, redis_url)},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1, result.stderr
    assert f"kat-scheduler: not queued: running in Bytes since {started.isoformat()}" in result.stderr
    assert task_count(pg_engine) == 0 and broker_messages(redis_url) == []


def test_a_manual_push_of_a_run_stalled_in_bytes_is_queued(
    context: ProducerContext, world: World, pg_engine: Engine, redis_url: str
) -> None:
    org, boefje, ooi = allowed_pair(world)
    seen_in_bytes(pg_engine, org, boefje, ooi, NOW - stall_age(context.settings) - timedelta(seconds=1), None)

    pushed = ManualPush(context, org, boefje, ooi).run(NOW)

    assert pushed.task_id is not None and task_count(pg_engine) == 1
    assert [m["headers"]["id"] for m in broker_messages(redis_url)] == [str(pushed.task_id)]


def test_a_manual_push_inside_the_grace_period_is_queued(
    context: ProducerContext, world: World, pg_engine: Engine, redis_url: str
) -> None:
    org, boefje, ooi = allowed_pair(world)
    seen_in_bytes(pg_engine, org, boefje, ooi, NOW - timedelta(hours=1, minutes=1), NOW - timedelta(hours=1))

    pushed = ManualPush(context, org, boefje, ooi).run(NOW)

    assert pushed.task_id is not None and task_count(pg_engine) == 1 and len(broker_messages(redis_url)) == 1


def test_a_manual_push_below_clearance_is_refused(
    context: ProducerContext, world: World, pg_engine: Engine, redis_url: str
) -> None:
    org = world.organisation_ids[0]
    level0 = next(o for o in world.oois(org).values() if o.object_type == "Hostname" and o.scan_level == 0)

    with pytest.raises(PushRefused, match="clearance is never bypassed"):
        ManualPush(context, org, "dns-records", level0.primary_key).run(NOW)

    assert task_count(pg_engine) == 0 and broker_messages(redis_url) == []


# -- the API's push (Rocky's "scan now"), over real HTTP --------------------------------------------

ORG, BOEFJE, OOI = "aa", "dns-records", "Hostname|internet|mispo.es"


def rocky_push() -> dict[str, object]:
    task_id = str(uuid.uuid4())
    data = {"id": task_id, "boefje": {"id": BOEFJE, "name": "DNS records"}, "organization": ORG, "input_ooi": OOI}
    return {"id": task_id, "scheduler_id": "boefje", "organisation": ORG, "priority": 1, "data": data}


def test_an_api_push_is_refused_with_409_while_bytes_shows_the_boefje_running(api, engine, settings, redis_url):
    started = datetime.now(UTC) - timedelta(minutes=2)
    seen_in_bytes(engine, ORG, BOEFJE, OOI, started, None)

    response = api.post("/schedulers/boefje/push", json=rocky_push())

    assert response.status_code == 409, response.text
    assert response.headers["Retry-After"] == "60"
    stalled_after = started + stall_age(settings)
    assert response.json()["detail"].startswith(
        f"not queued: running in Bytes since {started.isoformat()}; "
        f"it counts as stalled after {stalled_after.isoformat()}"
    )
    assert task_count(engine) == 0 and broker_messages(redis_url) == []


def test_an_api_push_of_a_run_stalled_in_bytes_is_queued(api, engine, settings, redis_url):
    seen_in_bytes(engine, ORG, BOEFJE, OOI, datetime.now(UTC) - stall_age(settings) - timedelta(seconds=5), None)

    response = api.post("/schedulers/boefje/push", json=rocky_push())

    assert response.status_code == 201, response.text
    assert task_count(engine) == 1 and len(broker_messages(redis_url)) == 1


def test_an_api_push_inside_the_grace_period_is_queued(api, engine, redis_url):
    now = datetime.now(UTC)
    seen_in_bytes(engine, ORG, BOEFJE, OOI, now - timedelta(minutes=30), now - timedelta(minutes=29))

    response = api.post("/schedulers/boefje/push", json=rocky_push())

    assert response.status_code == 201, response.text
    assert task_count(engine) == 1 and len(broker_messages(redis_url)) == 1


def test_a_run_seen_going_in_bytes_before_our_own_run_ended_does_not_refuse_an_api_push(api, engine):
    """What the tick saw going was our own run, or an older one: our record says a run ended since."""
    started = datetime.now(UTC) - timedelta(minutes=3)
    ours = api.post("/schedulers/boefje/push", json=rocky_push()).json()
    api.patch(f"/tasks/{ours['id']}", json={"status": "running"})
    api.patch(f"/tasks/{ours['id']}", json={"status": "completed"})
    seen_in_bytes(engine, ORG, BOEFJE, OOI, started, None)

    again = api.post("/schedulers/boefje/push", json=rocky_push())

    assert again.status_code == 201, again.text
    assert task_count(engine) == 2


def test_an_api_push_below_clearance_is_refused_with_400_and_nothing_is_stored(api, engine, redis_url):
    body = rocky_push()
    body["data"]["input_ooi"] = BELOW_CLEARANCE  # type: ignore[index]

    response = api.post("/schedulers/boefje/push", json=body)

    assert response.status_code == 400, response.text
    detail = f"not queued: boefje {BOEFJE} needs scan level 1, {BELOW_CLEARANCE} has 0: clearance is never bypassed"
    assert response.json() == {"detail": detail}
    assert task_count(engine) == 0 and broker_messages(redis_url) == []


def test_an_api_push_of_an_object_octopoes_does_not_know_is_refused_with_400(api, engine):
    body = rocky_push()
    body["data"]["input_ooi"] = "Hostname|internet|nowhere.example"  # type: ignore[index]

    response = api.post("/schedulers/boefje/push", json=body)

    assert response.status_code == 400, response.text
    assert "no object 'Hostname|internet|nowhere.example'" in response.json()["detail"]
    assert task_count(engine) == 0
