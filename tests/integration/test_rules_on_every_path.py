"""One table, every path: each reason the rules core gives for a pair, as the planning tick, its
dry run, a due schedule, a scan-profile raise and ``explain`` see it (issue 16: "tests show each
rule on each path"). Every case is a fresh object of the simulated KAT with Bytes' history of the
pair; a path that decided on its own would part from the others here.

The manual push decides differently by design (it skips grace, interval and cron); its cases are
in the push tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select, text

from kat_scheduler.clients import KATClients
from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.events.handlers import MutationHandler
from kat_scheduler.explain.decide import Policy, explain
from kat_scheduler.explain.facts import Sources, gather_facts
from kat_scheduler.models import TaskStatus
from kat_scheduler.planning.candidates import new_boefje_schedule
from kat_scheduler.producers import DueSchedulesProducer, ProducerContext, TickProducer
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.sim.world import World
from kat_scheduler.storage import TaskRow
from tests.events import profile_mutation
from tests.factories import BoefjeMetaFactory

#: A Monday; dns-zone's cron is 04:00 daily, fierce's 02:30 on Mondays.
NOW = datetime(2026, 6, 1, 12, 5, tzinfo=UTC)
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Case:
    """A boefje on a new object of ``object_type``; Bytes' newest run (``None``: never ran; an
    end of ``None``: still going); what the rules say."""

    name: str
    boefje: str
    object_type: str
    started: timedelta | None  # before NOW
    ended: timedelta | None  # before NOW; None: no end
    decision: str  # explain's word
    level: int = 4  # the object's level where it is cleared

    @property
    def due(self) -> bool:
        return self.decision in ("queue", "stalled")


#: Seconds past the stall age for a run that died (the stall age itself comes from the settings).
STALLED = "stalled"

CASES = [
    Case("never ran", "dns-records", "Hostname", None, None, "queue"),
    Case(
        "default grace: ended 14 h ago",
        "dns-records",
        "Hostname",
        14 * HOUR + timedelta(seconds=30),
        14 * HOUR,
        "grace",
    ),
    Case("default grace passed: ended 30 h ago", "dns-records", "Hostname", 30 * HOUR, 29 * HOUR, "queue"),
    Case("weekly interval: ended 3 days ago", "shodan", "IPAddressV4", 72 * HOUR, 71 * HOUR, "grace"),
    Case("12-hour interval passed: ended 14 h ago", "ssl-certificates", "Website", 14 * HOUR, 14 * HOUR, "queue"),
    # dns-zone: 04:00 daily; NOW is 12:05.
    Case("cron: ended after today's 04:00", "dns-zone", "DNSZone", 8 * HOUR, 7 * HOUR + timedelta(minutes=55), "cron"),
    Case(
        "cron passed: ended before today's 04:00",
        "dns-zone",
        "DNSZone",
        8 * HOUR + timedelta(minutes=20),
        8 * HOUR + timedelta(minutes=15),
        "queue",
    ),
    Case("running in Bytes", "dns-records", "Hostname", timedelta(minutes=2), None, "running"),
    Case("stalled in Bytes", "dns-records", "Hostname", None, None, STALLED),  # started: past the stall age
    Case("clearance: level 0, needs 1", "dns-records", "Hostname", None, None, "clearance", level=0),
]


def reference(case: Case, index: int) -> str:
    name = f"table-{index}.example.nl"
    return {
        "Hostname": f"Hostname|internet|{name}",
        "DNSZone": f"DNSZone|internet|{name}",
        "IPAddressV4": f"IPAddressV4|internet|198.51.100.{100 + index}",
        "Website": f"Website|internet|198.51.100.{100 + index}|tcp|443|https|internet|{name}",
    }[case.object_type]


@pytest.fixture(autouse=True)
def no_bytes_runs(pg_engine: Engine) -> None:
    """Bytes' runs kept by an earlier test's tick (same world, same hashes) are not this test's."""
    with pg_engine.begin() as conn:
        conn.execute(text("DELETE FROM bytes_runs"))
        conn.execute(text("DELETE FROM bytes_histories"))


@pytest.fixture
def table(world: World, planner_settings) -> dict[str, tuple[Case, str, str]]:
    """Each case's object (at level 0: the raise brings it to its level) and Bytes' history, in an
    organisation where every boefje of the table is enabled: case name -> (case, org, reference)."""
    org = next(o for o in world.organisation_ids if all(world.is_enabled(o, c.boefje) for c in CASES))
    stall_age = timedelta(seconds=planner_settings.effective_bytes_stall_age)
    out = {}
    for index, case in enumerate(CASES):
        pk = reference(case, index)
        world.add_ooi(org, case.object_type, pk, level=0)
        started, ended = case.started, case.ended
        if case.decision == STALLED:
            started = stall_age + HOUR
        if started is not None:
            world.add_boefje_meta(
                BoefjeMetaFactory(
                    organization=org,
                    boefje={"id": case.boefje, "version": None},
                    input_ooi=pk,
                    started_at=NOW - started,
                    ended_at=None if ended is None else NOW - ended,
                )
            )
        out[case.name] = (case, org, pk)
    return out


def set_levels(world: World, table: dict[str, tuple[Case, str, str]]) -> None:
    for case, org, pk in table.values():
        world.set_scan_level(org, pk, case.level)


def queued(engine: Engine, table: dict[str, tuple[Case, str, str]]) -> dict[str, bool]:
    with engine.connect() as conn:
        rows = {
            (p, o)
            for p, o in conn.execute(
                select(TaskRow.plugin_id, TaskRow.input_ooi).where(TaskRow.status == TaskStatus.QUEUED)
            )
        }
    return {name: (case.boefje, pk) in rows for name, (case, _, pk) in table.items()}


def expected(table: dict[str, tuple[Case, str, str]]) -> dict[str, bool]:
    return {name: case.due for name, (case, _, _) in table.items()}


def test_the_planning_tick(producers: ProducerContext, world: World, table, pg_engine: Engine) -> None:
    set_levels(world, table)
    TickProducer(producers).run(NOW)
    assert queued(pg_engine, table) == expected(table)


def test_the_dry_run(producers: ProducerContext, world: World, table, pg_engine: Engine) -> None:
    set_levels(world, table)
    report = TickProducer(producers).run(NOW, dry_run=True)
    planned = {(c.boefje.id, c.input_ooi) for c in report.planned}
    assert {name: (case.boefje, pk) in planned for name, (case, _, pk) in table.items()} == expected(table)
    assert not any(queued(pg_engine, table).values())


def test_a_due_schedule(producers: ProducerContext, world: World, table, pg_engine: Engine) -> None:
    """Every pair has a schedule that fell due a minute ago; the tick (which leaves scheduled pairs
    to the due producer) only lists Bytes' history, as it does between two due runs."""
    set_levels(world, table)
    schedules = []
    for case, org, pk in table.values():
        boefje = next(b for b in producers.clients.katalogus.boefjes(org) if b.id == case.boefje)
        schedules.append(
            new_boefje_schedule(
                org, boefje, pk, boefje_task_hash(case.boefje, org, pk), NOW - timedelta(days=30), producers.settings
            )
        )
    producers.schedules.add_many(schedules, now=NOW - timedelta(days=30))
    with pg_engine.begin() as conn:
        conn.execute(text("UPDATE schedules SET deadline_at = :due"), {"due": NOW - timedelta(minutes=1)})
    TickProducer(producers).run(NOW)
    assert not any(queued(pg_engine, table).values()), "the tick took pairs that have a schedule"

    DueSchedulesProducer(producers).run(NOW)

    assert queued(pg_engine, table) == expected(table)


def test_a_scan_profile_raise(producers: ProducerContext, clients: KATClients, table, pg_engine: Engine) -> None:
    """The objects are below clearance at the tick (which lists Bytes' history for them), then raised."""
    TickProducer(producers).run(NOW)
    assert not any(queued(pg_engine, table).values())
    assert producers.publisher is not None
    mutations = MutationHandler(
        PluginCache(clients.katalogus, ttl=60),
        producers.tasks,
        producers.schedules,
        producers.publisher,
        producers.settings,
        clock=lambda: NOW,
    )

    mutations(
        "scan_profile_mutations", [profile_mutation(org, pk, case.level, "update") for case, org, pk in table.values()]
    )

    assert queued(pg_engine, table) == expected(table)


def test_explain(world: World, table, clients: KATClients, planner_settings, pg_engine: Engine) -> None:
    set_levels(world, table)
    sources = Sources.on(pg_engine, clients)
    decisions = {}
    for name, (case, org, pk) in table.items():
        answers = explain(gather_facts(sources, org, pk, now=NOW), NOW, Policy.of(planner_settings))
        decisions[name] = next(a.decision.value for a in answers if a.boefje_id == case.boefje)
    assert decisions == {name: case.decision for name, (case, _, _) in table.items()}
