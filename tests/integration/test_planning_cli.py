"""``kat-scheduler plan --dry-run`` and ``kat-scheduler push boefje`` as an operator runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from kat_scheduler.sim.oracle import allowed_boefje_tasks
from kat_scheduler.storage.tasks import TaskStore
from kat_scheduler.storage.waiting import WaitingStore
from tests.factories import NewTaskFactory
from tests.tasks import queued_rows
from tests.workers import probe_env


def kat_scheduler(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "kat_scheduler", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plan_dry_run_prints_one_json_line_per_would_be_task_and_queues_nothing(
    kat, world, pg_engine, postgres_uri, redis_url
) -> None:
    env = probe_env(kat, postgres_uri, redis_url)
    result = kat_scheduler(env, "plan", "--dry-run", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(set(line) == {"organisation", "boefje_id", "input_ooi", "band", "reason"} for line in lines)
    assert {(x["organisation"], x["boefje_id"], x["input_ooi"]) for x in lines} == allowed_boefje_tasks(
        world, datetime.now(UTC)
    )
    assert queued_rows(pg_engine) == []


def test_plan_dry_run_table_explains_what_was_skipped_for_one_organisation(kat, world, postgres_uri, redis_url) -> None:
    org = world.organisation_ids[0]
    result = kat_scheduler(probe_env(kat, postgres_uri, redis_url), "plan", "--dry-run", "--org", org)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0].split()[:4] == ["ORGANISATION", "BOEFJE", "BAND", "REASON"]
    assert "would queue:" in out and "for 1 organisation(s)" in out
    assert "scan level too low:" in out and "not enabled:" in out
    assert "queue depth (boefjes): 0" in out
    other = world.organisation_ids[1]
    assert other not in out


def test_plan_dry_run_lists_the_tasks_waiting_for_a_rate_limit_per_group_with_when_the_next_may_run(
    kat, world, pg_engine: Engine, postgres_uri, redis_url
) -> None:
    """Workers put back 3 tasks of ``shodan.io`` (the first may run in a minute) and one of
    ``host:a.example`` (in 30 min); an operator's limit on dns-records lets one start per tick."""
    now = datetime.now(UTC).replace(microsecond=0)
    shodan = [NewTaskFactory(plugin_id="shodan") for _ in range(3)]
    nmap = NewTaskFactory(plugin_id="nmap", input_ooi="Hostname|internet|a.example")
    waiting = WaitingStore(pg_engine)
    assert len(TaskStore(pg_engine).claim([*shodan, nmap])) == 4
    for n, task in enumerate(shodan):
        assert waiting.put_back(task.id, limit="5/second", group="shodan.io", until=now + timedelta(seconds=60 + n))
    assert waiting.put_back(nmap.id, limit="1/hour", group="host:a.example", until=now + timedelta(minutes=30))
    dns_records = sum(1 for _, boefje, _ in allowed_boefje_tasks(world, now) if boefje == "dns-records")
    assert dns_records > 1

    env = probe_env(kat, postgres_uri, redis_url, SCHEDULER_RATE_LIMITS="dns-records=1/hour@dns")
    result = kat_scheduler(env, "plan", "--dry-run")

    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    at = out.index("rate limits:")
    assert out[at + 1] == (
        f"  this run would hold back {dns_records - 1} task(s): more than their groups may start before the next run"
    )
    assert out[at + 2].split() == ["GROUP", "LIMIT", "HELD", "BACK"]  # what it held back, per group
    assert out[at + 3].split() == ["dns", "1/hour", str(dns_records - 1)]
    assert out[at + 4] == "  waiting for their window: 4 task(s) in 2 group(s)"
    assert out[at + 5].split() == ["GROUP", "LIMIT", "WAITING", "NEXT", "MAY", "RUN"]
    first, second = out[at + 6].split(), out[at + 7].split()
    assert first[:6] == ["shodan.io", "5/second", "3", *f"{now + timedelta(seconds=60):%Y-%m-%d %H:%M:%SZ (in}".split()]
    assert second[:6] == [
        "host:a.example",
        "1/hour",
        "1",
        *f"{now + timedelta(minutes=30):%Y-%m-%d %H:%M:%SZ (in}".split(),
    ]
    assert second[6].startswith("29m")
    assert queued_rows(pg_engine) == []


def test_push_queues_at_band_0_and_prints_the_task_id(kat, world, pg_engine, postgres_uri, redis_url) -> None:
    org, boefje, ooi = sorted(
        t for t in allowed_boefje_tasks(world, datetime.now(UTC)) if t[0] == world.organisation_ids[0]
    )[0]
    env = probe_env(kat, postgres_uri, redis_url)
    result = kat_scheduler(env, "push", "boefje", "--org", org, "--boefje", boefje, "--ooi", ooi)
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.strip()
    rows = queued_rows(pg_engine)
    assert [(o, b, i, band, tid) for o, b, i, band, tid in rows] == [(org, boefje, ooi, 0, task_id)]
    again = kat_scheduler(env, "push", "boefje", "--org", org, "--boefje", boefje, "--ooi", ooi)
    assert again.returncode == 3 and "already queued" in again.stderr


def test_push_never_bypasses_clearance(kat, world, postgres_uri, redis_url) -> None:
    org = world.organisation_ids[0]
    level0 = next(o for o in world.oois(org).values() if o.object_type == "Hostname" and o.scan_level == 0)
    result = kat_scheduler(
        probe_env(kat, postgres_uri, redis_url),
        "push",
        "boefje",
        "--org",
        org,
        "--boefje",
        "dns-records",
        "--ooi",
        level0.primary_key,
    )
    assert result.returncode == 1
    assert "clearance is never bypassed" in result.stderr


def test_push_of_an_unknown_boefje_says_so(kat, world, postgres_uri, redis_url) -> None:
    result = kat_scheduler(
        probe_env(kat, postgres_uri, redis_url),
        "push",
        "boefje",
        "--org",
        world.organisation_ids[0],
        "--boefje",
        "no-such-boefje",
        "--ooi",
        "Hostname|internet|x",
    )
    assert result.returncode == 1 and "no boefje 'no-such-boefje'" in result.stderr


def test_push_for_an_organisation_katalogus_does_not_know_names_katalogus(kat, world, postgres_uri, redis_url) -> None:
    result = kat_scheduler(
        probe_env(kat, postgres_uri, redis_url),
        "push",
        "boefje",
        "--org",
        "orgXX",
        "--boefje",
        "dns-records",
        "--ooi",
        "Hostname|internet|x",
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"kat-scheduler: not queued: organisation 'orgXX' is not known to Katalogus at {kat.katalogus_url}"
    ]
    assert "orgXX" not in world.organisation_ids


def test_plan_with_katalogus_out_of_reach_says_so_in_one_line(postgres_uri, redis_url) -> None:
    from kat_scheduler.run.embedded import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    env = {
        "OCTOPOES_API": closed,
        "KATALOGUS_API": closed,
        "BYTES_API": closed,
        "SCHEDULER_DB_URI": postgres_uri,
        "SCHEDULER_BROKER_URL": redis_url,
        "SCHEDULER_HTTP_RETRIES": "0",
    }
    result = kat_scheduler(env, "plan", "--dry-run")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("kat-scheduler: not planned: katalogus: GET /v1/organisations: connection failed: ")


def test_plan_dry_run_with_the_broker_down_holds_the_low_bands_back_and_says_why(
    kat, world, postgres_uri, redis_url
) -> None:
    from kat_scheduler.run.embedded import free_port

    down = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    env = probe_env(kat, postgres_uri, redis_url, SCHEDULER_BROKER_URL=down, SCHEDULER_BACKPRESSURE_BAND="2")
    result = kat_scheduler(env, "plan", "--dry-run", "--org", world.organisation_ids[0])
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    [depth] = [line for line in out if line.startswith("queue depth (boefjes):")]
    assert depth.startswith("queue depth (boefjes): unknown, could not be read (BrokerError: ")
    assert depth.endswith("BACKPRESSURE: only bands <= 2 added")
    assert any(line.startswith("  queue full (backpressure): ") for line in out)
    bands = [int(line.split()[2]) for line in out[1:] if line and line.split()[0] == world.organisation_ids[0]]
    assert bands and max(bands) <= 2
    assert "backpressure: the depth of queue boefjes could not be read" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
