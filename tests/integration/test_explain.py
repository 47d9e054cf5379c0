"""``explain`` against the simulated KAT over HTTP and real stores (SQLite and PostgreSQL): each
decision, an object that does not exist, the command (in process and as a subprocess) and the
API route (served by uvicorn on loopback)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import requests
import uvicorn
from click.testing import CliRunner
from fastapi import FastAPI
from sqlalchemy import Engine

from kat_scheduler.api import explain as explain_route
from kat_scheduler.api.context import ApiContext
from kat_scheduler.clients import BytesClient, KATClients, OrganisationNotFound
from kat_scheduler.explain import DECISIONS, Decision, ObjectNotFound, Policy, Sources, explain_object
from kat_scheduler.explain.command import explain_cmd
from kat_scheduler.models import TaskStatus
from kat_scheduler.producers import TickProducer
from kat_scheduler.rules.timing import last_cron, next_cron
from kat_scheduler.settings import Settings, load_settings
from kat_scheduler.sim import SimulatedKAT
from kat_scheduler.sim.world import World
from kat_scheduler.storage import ScheduleStore, TaskStore
from kat_scheduler.storage.bytes_runs import BytesRunStore, SeenRun
from kat_scheduler.storage.task_views import TaskViews
from tests.explain_place import Place
from tests.factories import NewScheduleFactory, NewTaskFactory
from tests.integration.conftest import WORLD_NOW, make_clients
from tests.workers import wait_for

#: Seconds after its start a run Bytes shows without an end counts as dead, in these tests.
STALL_AGE = 3600


@pytest.fixture
def settings(kat: SimulatedKAT, engine: Engine) -> Settings:
    return load_settings(
        octopoes_api=kat.octopoes_url,
        katalogus_api=kat.katalogus_url,
        bytes_api=kat.bytes_url,
        db_uri=engine.url.render_as_string(hide_password=False),
        bytes_stall_age=STALL_AGE,
    )


@pytest.fixture
def sources(engine: Engine, clients: KATClients) -> Sources:
    return Sources.on(engine, clients)


@dataclass(frozen=True)
class Scenario:
    boefje: str
    object_type: str
    level: int
    decision: Decision
    setup: Callable[[Place], object] = lambda place: None
    detail: tuple[str, ...] = ()
    band: int | None = None
    #: When the decision holds until, from the place (``None``: no end).
    until: Callable[[Place], datetime | None] = lambda place: None


def _cron_run(place: Place) -> None:
    """A run of the cron boefje just after its last cron time: not due before the next one."""
    place.run(last_cron("30 2 * * 1", place.now) + timedelta(minutes=5))


def _failed_for_a_service(place: Place) -> None:
    task = NewTaskFactory(organisation=place.org, plugin_id=place.boefje, input_ooi=place.pk)
    place.tasks.claim([task], now=place.now - timedelta(hours=1))
    assert place.tasks.fail_for_service(task.id, "bytes", "Bytes is down", now=place.now - timedelta(minutes=30))


#: The task of another organisation whose run serves the pair in "deduplicated".
SERVING = uuid.UUID("5e2b1d4c-0000-4000-8000-000000000001")


def _served(place: Place) -> uuid.UUID | None:
    """Another organisation's run (``SERVING``) serves the pair: its row runs under that run."""
    task = NewTaskFactory(organisation=place.org, plugin_id=place.boefje, input_ooi=place.pk, band=4)
    claimed = place.tasks.claim_served(task, SERVING, "worker@test", place.now - timedelta(seconds=30))
    return None if claimed is None else claimed[0]


SCENARIOS: dict[str, Scenario] = {
    "never run: would queue": Scenario(
        "dns-records", "Hostname", 1, Decision.QUEUE, band=2, detail=("band 2, never run",)
    ),
    "not enabled": Scenario(
        "dns-sec",
        "Hostname",
        1,
        Decision.NOT_ENABLED,
        setup=lambda p: p.world.set_plugin_enabled(p.org, "dns-sec", False),
        detail=("not enabled for organisation",),
    ),
    "clearance": Scenario("fierce", "Hostname", 1, Decision.CLEARANCE, detail=("needs L3, object has L1",)),
    "events only": Scenario("crt-sh", "Hostname", 1, Decision.NOT_ENABLED, detail=("run_on: create, update",)),
    "in grace after our own run": Scenario(
        "dns-records",
        "Hostname",
        1,
        Decision.GRACE,
        setup=lambda p: p.run(p.now - timedelta(hours=1)),
        detail=("default grace period 1 day", "last run: completed"),
    ),
    "within the plugin's interval": Scenario(
        "nmap",
        "IPAddressV4",
        2,
        Decision.GRACE,
        setup=lambda p: p.run(p.now - timedelta(hours=2), TaskStatus.FAILED),
        detail=("interval 1 day", "last run: failed"),
    ),
    "before the next cron time": Scenario(
        "fierce",
        "Hostname",
        3,
        Decision.CRON,
        setup=_cron_run,
        detail=("cron '30 2 * * 1'",),
        until=lambda p: next_cron("30 2 * * 1", last_cron("30 2 * * 1", p.now) + timedelta(minutes=5)),
    ),
    "a live task": Scenario("dns-records", "Hostname", 1, Decision.LIVE, setup=Place.queued, band=5),
    "deduplicated into another organisation's run": Scenario(
        "dns-records",
        "Hostname",
        1,
        Decision.DEDUPLICATED,
        setup=_served,
        band=4,
        detail=(f"deduplicated into task {SERVING}", "running since"),
    ),
    "running in Bytes": Scenario(
        "dns-records",
        "Hostname",
        1,
        Decision.RUNNING,
        setup=lambda p: p.bytes_run(p.now - timedelta(minutes=2), None),
        until=lambda p: p.now - timedelta(minutes=2) + timedelta(seconds=STALL_AGE),
        detail=("running in Bytes since",),
    ),
    "stalled in Bytes": Scenario(
        "dns-records",
        "Hostname",
        1,
        Decision.STALLED,
        setup=lambda p: p.bytes_run(p.now - timedelta(hours=2), None),
        band=2,
        detail=("taken for dead",),
    ),
    "in grace after a run in Bytes": Scenario(
        "dns-records",
        "Hostname",
        1,
        Decision.GRACE,
        setup=lambda p: p.bytes_run(p.now - timedelta(hours=3), p.now - timedelta(hours=3, seconds=-20)),
        detail=("last run: seen in Bytes",),
    ),
    "a schedule not yet due": Scenario(
        "dns-records",
        "Hostname",
        1,
        Decision.GRACE,
        setup=lambda p: p.schedules.add_many(
            [
                NewScheduleFactory(
                    organisation=p.org, plugin_id=p.boefje, input_ooi=p.pk, deadline_at=p.now + timedelta(minutes=20)
                )
            ],
            now=p.now,
        ),
        until=lambda p: p.now + timedelta(minutes=20),
        detail=("is due at",),
    ),
    "a run given up on because a service failed is no run": Scenario(
        "dns-records", "Hostname", 1, Decision.QUEUE, setup=_failed_for_a_service, band=2, detail=("never run",)
    ),
}

PRIMARY_KEYS = {
    "Hostname": "Hostname|internet|explain-{n}.example.nl",
    "IPAddressV4": "IPAddressV4|internet|10.20.30.{n}",
}


def new_place(world: World, engine: Engine, scenario: Scenario, n: int) -> Place:
    org = world.organisation_ids[0]
    pk = PRIMARY_KEYS[scenario.object_type].format(n=n)
    world.add_ooi(org, scenario.object_type, pk, level=scenario.level)
    world.set_plugin_enabled(org, scenario.boefje, True)
    # Seconds dropped: the sim serves times as given, the database keeps microseconds on PostgreSQL only.
    now = datetime.now(UTC).replace(microsecond=0)
    return Place(world, org, pk, scenario.boefje, TaskStore(engine), ScheduleStore(engine), now)


@pytest.mark.parametrize("name", SCENARIOS)
def test_each_decision_is_the_rule_that_decides_now(name: str, world, engine, sources, settings) -> None:
    scenario = SCENARIOS[name]
    place = new_place(world, engine, scenario, list(SCENARIOS).index(name) + 1)
    setup_result = scenario.setup(place)

    answer = explain_object(sources, Policy.of(settings), place.org, place.pk, now=place.now)

    by_boefje = {e.boefje_id: e for e in answer.explanations}
    found = by_boefje[scenario.boefje]
    assert found.decision == scenario.decision, found.detail
    assert found.band == scenario.band
    for words in scenario.detail:
        assert words in found.detail
    expected_until = scenario.until(place)
    if expected_until is not None:
        assert found.until == expected_until
    if scenario.decision == Decision.LIVE:
        assert f"task {setup_result} queued since" in found.detail
    if scenario.decision in (Decision.GRACE, Decision.CRON):
        assert found.until is not None and found.until > place.now
    # Every boefje of the organisation consuming the type is answered, enabled or not.
    consumers = {b.id for b in world.boefjes if scenario.object_type in b.consumes}
    assert set(by_boefje) == consumers


def test_the_last_run_shown_is_our_own_with_its_outcome(world, engine, sources, settings) -> None:
    scenario = SCENARIOS["within the plugin's interval"]
    place = new_place(world, engine, scenario, 200)
    ended = place.now - timedelta(hours=2)
    place.run(ended - timedelta(days=3))
    place.run(ended, TaskStatus.FAILED)

    answer = explain_object(sources, Policy.of(settings), place.org, place.pk, now=place.now)
    (nmap,) = [e for e in answer.explanations if e.boefje_id == "nmap"]
    assert nmap.last_run is not None and nmap.last_run.ended_at == ended and nmap.last_run.outcome == "failed"
    assert nmap.as_json()["last_run"] == ended.isoformat()


def test_an_object_that_does_not_exist_is_said_so(world, sources, settings) -> None:
    org = world.organisation_ids[0]
    with pytest.raises(
        ObjectNotFound, match=re.escape("no object 'Hostname|internet|nowhere.example' in organisation")
    ):
        explain_object(sources, Policy.of(settings), org, "Hostname|internet|nowhere.example", now=datetime.now(UTC))
    pk = next(iter(world.oois(org)))
    with pytest.raises(OrganisationNotFound):
        explain_object(sources, Policy.of(settings), "no-such-org", pk, now=datetime.now(UTC))


def test_when_bytes_does_not_answer_its_runs_as_a_tick_saw_them_stand_in(world, engine, kat, settings) -> None:
    scenario = SCENARIOS["running in Bytes"]
    place = new_place(world, engine, scenario, 300)
    started = place.now - timedelta(minutes=2)
    BytesRunStore(engine).record(
        [SeenRun(place.hash, place.org, place.boefje, place.pk, started, None)], place.now - timedelta(minutes=1)
    )
    broken = make_clients(kat)
    broken.bytes.close()
    broken.bytes = BytesClient("http://127.0.0.1:9", "bytes", "bytes", timeout=1.0, retries=0, backoff=0.0)
    try:
        answer = explain_object(Sources.on(engine, broken), Policy.of(settings), place.org, place.pk, now=place.now)
    finally:
        broken.close()
    (found,) = [e for e in answer.explanations if e.boefje_id == "dns-records"]
    assert found.decision == Decision.RUNNING
    assert "Bytes did not answer" in found.detail and "as a planning tick last saw it" in found.detail


def test_explain_says_queue_exactly_for_what_a_dry_run_tick_would_queue_at_the_same_band(
    producers, world, pg_engine, clients
) -> None:
    org = world.organisation_ids[1]
    now = WORLD_NOW + timedelta(minutes=5)  # the generated history's time: runs in grace, going and dead in Bytes
    planned = {
        (c.boefje.id, c.input_ooi): c.rank.band for c in TickProducer(producers, [org]).run(now, dry_run=True).planned
    }
    sources = Sources.on(pg_engine, clients)
    policy = Policy.of(producers.settings)
    would_queue: dict[tuple[str, str], int | None] = {}
    seen: set[Decision] = set()
    types = {t for b in world.boefjes for t in b.consumes}
    for ooi in world.oois(org).values():
        if ooi.object_type not in types:
            continue
        for e in explain_object(sources, policy, org, ooi.primary_key, now=now).explanations:
            seen.add(e.decision)
            if e.decision in (Decision.QUEUE, Decision.STALLED):
                would_queue[(e.boefje_id, ooi.primary_key)] = e.band
    assert planned and would_queue == planned
    # The world's history at that time makes most decisions, not only the easy ones.
    assert {Decision.QUEUE, Decision.GRACE, Decision.CRON, Decision.RUNNING, Decision.CLEARANCE} <= seen


def test_after_a_tick_what_would_queue_is_live_at_that_band_and_what_waits_keeps_its_until(
    producers, world, pg_engine, clients
) -> None:
    org = world.organisation_ids[2]
    now = WORLD_NOW + timedelta(minutes=5)  # the generated history's time: runs inside their grace, in Bytes
    sources = Sources.on(pg_engine, clients)
    policy = Policy.of(producers.settings)
    types = {t for b in world.boefjes for t in b.consumes}
    objects = [pk for pk, ooi in world.oois(org).items() if ooi.object_type in types]

    def answers() -> dict[tuple[str, str], tuple[Decision, int | None, datetime | None]]:
        return {
            (e.boefje_id, pk): (e.decision, e.band, e.until)
            for pk in objects
            for e in explain_object(sources, policy, org, pk, now=now).explanations
        }

    before = answers()
    TickProducer(producers, [org]).run(now)
    after = answers()

    queued = {pair for pair, (decision, _, _) in before.items() if decision == Decision.QUEUE}
    assert queued
    for pair in queued:
        assert after[pair][:2] == (Decision.LIVE, before[pair][1]), pair
    waiting = {pair for pair, (decision, _, _) in before.items() if decision in (Decision.GRACE, Decision.CRON)}
    assert waiting
    for pair in waiting:  # now the schedule the tick wrote decides, at the time explain named
        assert after[pair] == before[pair], pair
    unchanged = {Decision.NOT_ENABLED, Decision.CLEARANCE}
    assert {p: a for p, a in before.items() if a[0] in unchanged} == {
        p: a for p, a in after.items() if a[0] in unchanged
    }


# --- the command --------------------------------------------------------------------------------


def test_the_command_prints_a_table_and_json_lines(world, engine, settings) -> None:
    scenario = SCENARIOS["clearance"]
    place = new_place(world, engine, scenario, 400)
    runner = CliRunner()

    table = runner.invoke(explain_cmd, ["--org", place.org, "--ooi", place.pk], obj=settings)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].startswith(f"{place.pk} in {place.org}: Hostname, L1")
    assert lines[1].split()[:4] == ["BOEFJE", "DECISION", "UNTIL", "BAND"]
    fierce = next(line for line in lines if line.startswith("fierce "))
    assert fierce.split()[1] == "clearance" and "needs L3, object has L1" in fierce

    as_json = runner.invoke(explain_cmd, ["--org", place.org, "--ooi", place.pk, "--format", "json"], obj=settings)
    assert as_json.exit_code == 0, as_json.output
    bodies = [json.loads(line) for line in as_json.output.splitlines()]
    assert {b["boefje_id"] for b in bodies} == {b.id for b in world.boefjes if "Hostname" in b.consumes}
    for body in bodies:
        assert list(body) == ["boefje_id", "decision", "until", "band", "last_run", "detail"]
        assert body["decision"] in DECISIONS


def test_the_command_refuses_an_object_that_does_not_exist_in_one_line(world, settings) -> None:
    org = world.organisation_ids[0]
    result = CliRunner().invoke(explain_cmd, ["--org", org, "--ooi", "Hostname|internet|nowhere.example"], obj=settings)
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"kat-scheduler: no object 'Hostname|internet|nowhere.example' in organisation '{org}'")


def test_the_command_refuses_a_key_no_object_can_have_before_asking_anyone(world, settings) -> None:
    too_long = "Hostname|internet|" + "a" * 1100
    result = CliRunner().invoke(explain_cmd, ["--org", world.organisation_ids[0], "--ooi", too_long], obj=settings)
    assert result.exit_code == 2
    assert "the object key is 1118 characters long; at most 1024 can be one" in result.output


def subprocess_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "OCTOPOES_API": str(settings.octopoes_api),
        "KATALOGUS_API": str(settings.katalogus_api),
        "BYTES_API": str(settings.bytes_api),
        "SCHEDULER_DB_URI": settings.db_uri,
        "SCHEDULER_BYTES_STALL_AGE": str(STALL_AGE),
    }


def test_the_command_runs_on_its_own_as_a_process(world, engine, settings) -> None:
    scenario = SCENARIOS["never run: would queue"]
    place = new_place(world, engine, scenario, 500)
    command = [sys.executable, "-m", "kat_scheduler.explain", "--org", place.org]
    env = subprocess_env(settings)

    found = subprocess.run(
        [*command, "--ooi", place.pk, "--format", "json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert found.returncode == 0, found.stderr
    bodies = {b["boefje_id"]: b for b in map(json.loads, found.stdout.splitlines())}
    assert bodies["dns-records"]["decision"] == "queue" and bodies["dns-records"]["band"] == 2

    missing = subprocess.run(
        [*command, "--ooi", "Hostname|internet|nowhere.example"], env=env, capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 1 and missing.stdout == ""
    assert len(missing.stderr.strip().splitlines()) == 1 and "no object" in missing.stderr


# --- the API route ------------------------------------------------------------------------------


@contextlib.contextmanager
def serve_router(settings: Settings, engine: Engine) -> Iterator[str]:
    """``api/explain.py``'s router mounted on an app of the test's own, served by uvicorn on loopback."""
    app = FastAPI()
    ctx = ApiContext(settings=settings, engine=engine, tasks=TaskViews(engine))
    app.state.context = ctx
    app.include_router(explain_route.router)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="explain-api", daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started or not thread.is_alive(), timeout=15), "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        ctx.close()


def test_the_route_returns_the_same_objects_as_a_list_and_404_for_what_does_not_exist(
    world, engine, settings, sources
) -> None:
    scenario = SCENARIOS["in grace after our own run"]
    place = new_place(world, engine, scenario, 600)
    scenario.setup(place)
    with serve_router(settings, engine) as url, requests.Session() as http:
        found = http.get(f"{url}/explain", params={"organisation": place.org, "input_ooi": place.pk}, timeout=10)
        assert found.status_code == 200, found.text
        local = explain_object(sources, Policy.of(settings), place.org, place.pk, now=datetime.now(UTC))
        assert found.json() == [e.as_json() for e in local.explanations]
        assert {b["boefje_id"]: b["decision"] for b in found.json()}["dns-records"] == "grace"

        missing = http.get(
            f"{url}/explain",
            params={"organisation": place.org, "input_ooi": "Hostname|internet|nowhere.example"},
            timeout=10,
        )
        assert missing.status_code == 404 and "no object" in missing.json()["detail"]
        no_org = http.get(f"{url}/explain", params={"organisation": "no-such-org", "input_ooi": place.pk}, timeout=10)
        assert no_org.status_code == 404
        no_params = http.get(f"{url}/explain", timeout=10)
        assert no_params.status_code == 422
        nul = http.get(f"{url}/explain", params={"organisation": place.org, "input_ooi": "Hostname|a\x00b"}, timeout=10)
        assert nul.status_code == 400 and nul.json()["detail"] == "the object key contains a NUL character"


# --- as registered: the command in kat_scheduler/cli.py, the route in kat_scheduler/api/app.py -------


def test_kat_scheduler_explain_runs_as_an_operator_types_it(world, engine, settings) -> None:
    place = new_place(world, engine, SCENARIOS["clearance"], 700)
    result = subprocess.run(
        [sys.executable, "-m", "kat_scheduler", "explain", "--org", place.org, "--ooi", place.pk],
        env=subprocess_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("fierce ") and "needs L3, object has L1" in line for line in result.stdout.splitlines())


def test_the_api_serves_explain_beside_the_mula_routes(world, engine, settings) -> None:
    from tests.api_server import serve_api

    place = new_place(world, engine, SCENARIOS["never run: would queue"], 800)
    with serve_api(settings, engine) as api:
        found = api.get("/explain", params={"organisation": place.org, "input_ooi": place.pk})
    assert found.status_code == 200, found.text
    assert {b["boefje_id"]: b["decision"] for b in found.json()}["dns-records"] == "queue"
