"""``explain``'s decision per boefje (pure: facts and now) and how it is shown, table-tested."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kat_scheduler.explain import (
    DECISIONS,
    BadRequest,
    Decision,
    LiveTask,
    ObjectFacts,
    PairFacts,
    Policy,
    ScheduleFacts,
    check_request,
    explain,
)
from kat_scheduler.explain.render import render, render_json, render_table
from kat_scheduler.models import OOI, Boefje, TaskStatus
from kat_scheduler.rules import BytesRun
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.timing import next_cron, next_deadline
from tests.factories import BoefjeFactory, OOIFactory

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
POLICY = Policy(default_grace_seconds=86400, stall_age=timedelta(hours=1), jitter=0.1)
ORG = "aa"
TASK_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")
SCHEDULE_ID = uuid.UUID("00000000-0000-4000-8000-000000000002")


@dataclass(frozen=True)
class Case:
    """A boefje on an object, what is known about the pair, and what explain must say."""

    boefje: dict[str, Any]
    decision: Decision
    level: int = 2
    facts: dict[str, Any] = field(default_factory=dict)
    until: Any = None  # a datetime, or a function of (boefje, hash) giving one
    band: int | None = None
    detail: tuple[str, ...] = ()
    #: When the last run shown ended: our own last run's end unless said otherwise.
    last_run: datetime | None = None

    @property
    def shown_last_run(self) -> datetime | None:
        return self.last_run or self.facts.get("last_ended")


def deadline(after: datetime):
    def of(boefje: Boefje, hash_: str) -> datetime:
        return next_deadline(boefje, after, hash_=hash_, default_seconds=86400, jitter=POLICY.jitter)

    return of


CASES: dict[str, Case] = {
    "not enabled": Case({"enabled": False}, Decision.NOT_ENABLED, detail=("not enabled for organisation aa",)),
    "clearance": Case({"scan_level": 3}, Decision.CLEARANCE, level=1, detail=("needs L3, object has L1",)),
    "clearance before a live task": Case(
        {"scan_level": 3},
        Decision.CLEARANCE,
        level=1,
        facts={"live": LiveTask(TASK_ID, TaskStatus.QUEUED, NOW, 2)},
    ),
    "a live task": Case(
        {},
        Decision.LIVE,
        facts={"live": LiveTask(TASK_ID, TaskStatus.RUNNING, NOW - timedelta(minutes=3), 2)},
        band=2,
        detail=(f"task {TASK_ID} running since 2026-06-01T11:57:00Z",),
    ),
    "events only (run_on)": Case(
        {"run_on": ["create", "update"]}, Decision.NOT_ENABLED, detail=("scan-profile events only",)
    ),
    "never run": Case({}, Decision.QUEUE, band=2, detail=("would queue on the next tick: band 2, never run",)),
    "in the default grace period": Case(
        {},
        Decision.GRACE,
        facts={"last_ended": NOW - timedelta(hours=1), "last_outcome": "completed"},
        until=deadline(NOW - timedelta(hours=1)),
        detail=(
            "within the default grace period 1 day since the last run (until 2026-06-02T11:00:00Z)",
            "last run: completed",
        ),
        last_run=NOW - timedelta(hours=1),
    ),
    "within its interval": Case(
        {"interval": 120},
        Decision.GRACE,
        facts={"last_ended": NOW - timedelta(minutes=30), "last_outcome": "failed"},
        until=deadline(NOW - timedelta(minutes=30)),
        detail=("interval 2 h", "last run: failed"),
        last_run=NOW - timedelta(minutes=30),
    ),
    "grace over, 5 days since a daily run": Case(
        {}, Decision.QUEUE, facts={"last_ended": NOW - timedelta(days=5)}, band=3, detail=("re-run, 5.0x interval",)
    ),
    "before its next cron time": Case(
        {"cron": "0 4 * * *"},
        Decision.CRON,
        facts={"last_ended": datetime(2026, 6, 1, 5, 0, tzinfo=UTC)},
        until=datetime(2026, 6, 2, 4, 0, tzinfo=UTC),
        detail=("cron '0 4 * * *': next at 2026-06-02T04:00:00Z",),
    ),
    "a cron time passed inside the grace": Case(
        {"cron": "0 4 * * *"},
        Decision.QUEUE,
        facts={"last_ended": datetime(2026, 6, 1, 3, 0, tzinfo=UTC)},
        band=8,
        detail=("cron time passed",),
    ),
    "running in Bytes": Case(
        {},
        Decision.RUNNING,
        facts={"bytes_run": BytesRun(NOW - timedelta(minutes=2), None)},
        until=NOW + timedelta(minutes=58),
        detail=("running in Bytes since 2026-06-01T11:58:00Z", "taken for dead at 2026-06-01T12:58:00Z"),
    ),
    "stalled in Bytes": Case(
        {},
        Decision.STALLED,
        facts={"bytes_run": BytesRun(NOW - timedelta(hours=2), None)},
        band=2,
        detail=("no end after the stall age (1 h)", "band 2"),
    ),
    "ended in Bytes inside the grace": Case(
        {},
        Decision.GRACE,
        facts={"bytes_run": BytesRun(NOW - timedelta(hours=3), NOW - timedelta(hours=2))},
        until=deadline(NOW - timedelta(hours=2)),
        detail=("last run: seen in Bytes",),
        last_run=NOW - timedelta(hours=2),
    ),
    "our own history wins over Bytes'": Case(
        {},
        Decision.QUEUE,
        facts={"last_ended": NOW - timedelta(days=2), "bytes_run": BytesRun(NOW - timedelta(minutes=1), None)},
        band=4,
        last_run=NOW - timedelta(days=2),
    ),
    "a schedule not yet due": Case(
        {"interval": 60},
        Decision.GRACE,
        facts={"schedule": ScheduleFacts(SCHEDULE_ID, True, NOW + timedelta(minutes=20))},
        until=NOW + timedelta(minutes=20),
        detail=(f"schedule {SCHEDULE_ID} is due at 2026-06-01T12:20:00Z (interval 1 h)",),
    ),
    "a cron boefje's schedule not yet due": Case(
        {"cron": "0 4 * * *"},
        Decision.CRON,
        facts={"schedule": ScheduleFacts(SCHEDULE_ID, True, datetime(2026, 6, 2, 4, 0, tzinfo=UTC))},
        until=datetime(2026, 6, 2, 4, 0, tzinfo=UTC),
    ),
    "a due schedule": Case(
        {},
        Decision.QUEUE,
        facts={
            "schedule": ScheduleFacts(SCHEDULE_ID, True, NOW - timedelta(hours=1)),
            "last_ended": NOW - timedelta(days=3),
        },
        band=4,
        detail=(f"would queue from schedule {SCHEDULE_ID}", "next due-schedules run"),
    ),
    "a due schedule from Bytes' history (estimated last run)": Case(
        {}, Decision.QUEUE, facts={"schedule": ScheduleFacts(SCHEDULE_ID, True, NOW - timedelta(hours=1))}, band=8
    ),
    "a due schedule whose pair ran since": Case(
        {},
        Decision.GRACE,
        facts={
            "schedule": ScheduleFacts(SCHEDULE_ID, True, NOW - timedelta(hours=1)),
            "last_ended": NOW - timedelta(minutes=30),
        },
        until=deadline(NOW - timedelta(minutes=30)),
        detail=("the pair ran since",),
    ),
    "a due schedule whose pair runs in Bytes": Case(
        {},
        Decision.RUNNING,
        facts={
            "schedule": ScheduleFacts(SCHEDULE_ID, True, NOW - timedelta(hours=1)),
            "bytes_run": BytesRun(NOW - timedelta(minutes=2), None),
        },
        until=NOW + timedelta(minutes=58),
        detail=("Bytes shows a run since 2026-06-01T11:58:00Z",),
    ),
    "a due schedule whose run in Bytes stalled": Case(
        {},
        Decision.STALLED,
        facts={
            "schedule": ScheduleFacts(SCHEDULE_ID, True, NOW - timedelta(hours=1)),
            "bytes_run": BytesRun(NOW - timedelta(days=1), None),
        },
        band=8,
        detail=("next due-schedules run",),
    ),
    "a disabled schedule leaves the pair to the tick": Case(
        {},
        Decision.QUEUE,
        facts={"schedule": ScheduleFacts(SCHEDULE_ID, False, NOW + timedelta(days=1), "not enabled")},
        band=2,
        detail=("its schedule was disabled (not enabled)",),
    ),
    "Bytes did not answer": Case(
        {},
        Decision.RUNNING,
        facts={"bytes_run": BytesRun(NOW - timedelta(minutes=2), None), "bytes_note": "as a tick last saw it"},
        until=NOW + timedelta(minutes=58),
        detail=("as a tick last saw it",),
    ),
}


def ooi_at(level: int) -> OOI:
    return OOIFactory(primary_key="Hostname|internet|example.nl", level=level)


def explain_case(case: Case) -> tuple[Boefje, str, Any]:
    boefje = BoefjeFactory(id="dns-records", **case.boefje)
    ooi = ooi_at(case.level)
    hash_ = boefje_task_hash(boefje.id, ORG, ooi.primary_key)
    (answer,) = explain(ObjectFacts(ORG, ooi, [PairFacts(boefje, hash_, **case.facts)]), NOW, POLICY)
    return boefje, hash_, answer


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_case_gets_the_rule_that_decides_now(case: Case) -> None:
    boefje, hash_, answer = explain_case(case)
    assert answer.boefje_id == "dns-records"
    assert answer.decision == case.decision
    until = case.until(boefje, hash_) if callable(case.until) else case.until
    assert answer.until == until
    assert answer.band == case.band
    for words in case.detail:
        assert words in answer.detail
    assert (answer.last_run.ended_at if answer.last_run else None) == case.shown_last_run


def test_a_grace_deadline_carries_the_jitter_the_schedule_will_get() -> None:
    answer = explain_case(CASES["in the default grace period"])[2]
    grace_end = NOW - timedelta(hours=1) + timedelta(days=1)
    assert grace_end <= answer.until <= grace_end + timedelta(days=1) * POLICY.jitter


def test_a_cron_deadline_is_the_next_cron_time_after_the_last_run() -> None:
    _, _, answer = explain_case(CASES["before its next cron time"])
    assert answer.until == next_cron("0 4 * * *", datetime(2026, 6, 1, 5, 0, tzinfo=UTC))


def test_every_boefje_is_answered_sorted_by_id_and_a_plugin_that_does_not_validate_is_named() -> None:
    ooi = ooi_at(1)
    pairs = [
        PairFacts(BoefjeFactory(id=name, scan_level=level), boefje_task_hash(name, ORG, ooi.primary_key))
        for name, level in (("zz-late", 1), ("aa-early", 4))
    ]
    answers = explain(ObjectFacts(ORG, ooi, pairs, invalid={"mm-broken": "cron: invalid cron expression"}), NOW, POLICY)
    assert [(a.boefje_id, a.decision) for a in answers] == [
        ("aa-early", Decision.CLEARANCE),
        ("mm-broken", Decision.NOT_ENABLED),
        ("zz-late", Decision.QUEUE),
    ]
    assert "does not validate (cron: invalid cron expression)" in answers[1].detail


def test_the_json_keeps_the_issues_keys_and_vocabulary() -> None:
    assert DECISIONS == (
        "queue",
        "not_enabled",
        "clearance",
        "grace",
        "cron",
        "live",
        "running",
        "stalled",
        "rate_limited",
        "deduplicated",
        "descheduled",
    )
    answers = [explain_case(case)[2] for case in CASES.values()]
    for line, answer in zip(render_json(answers), answers, strict=True):
        body = json.loads(line)
        assert list(body) == ["boefje_id", "decision", "until", "band", "last_run", "detail"]
        assert body["decision"] in DECISIONS and body["decision"] == answer.decision.value
        assert body["band"] is None or isinstance(body["band"], int)
        for key in ("until", "last_run"):
            assert body[key] is None or datetime.fromisoformat(body[key]).tzinfo is not None
    grace = json.loads(next(render_json([explain_case(CASES["within its interval"])[2]])))
    assert grace["last_run"] == "2026-06-01T11:30:00+00:00"
    assert datetime.fromisoformat(grace["until"]) > NOW


def test_the_table_names_the_object_and_aligns_its_columns() -> None:
    ooi = ooi_at(1)
    pairs = [
        PairFacts(BoefjeFactory(id="dns-records"), boefje_task_hash("dns-records", ORG, ooi.primary_key)),
        PairFacts(BoefjeFactory(id="fierce", scan_level=3), boefje_task_hash("fierce", ORG, ooi.primary_key)),
    ]
    facts = ObjectFacts(ORG, ooi, pairs, now=NOW)
    lines = list(render_table(facts, explain(facts, NOW, POLICY)))
    assert (
        lines[0] == "Hostname|internet|example.nl in aa: Hostname, L1 (declared scan profile), at 2026-06-01T12:00:00Z"
    )
    header, *rows = lines[1:]
    assert header.split() == ["BOEFJE", "DECISION", "UNTIL", "BAND", "LAST", "RUN", "DETAIL"]
    assert rows[0].split()[:5] == ["dns-records", "queue", "-", "2", "-"]
    assert rows[1].split()[:5] == ["fierce", "clearance", "-", "-", "-"]
    detail_at = header.index("DETAIL")
    assert rows[0][detail_at:].startswith("would queue") and rows[1][detail_at:].startswith("needs L3, object has L1")


def test_an_object_no_boefje_consumes_says_so() -> None:
    facts = ObjectFacts(ORG, ooi_at(2), [])
    assert list(render(facts, [], "table"))[-1] == "no boefje of aa consumes Hostname"
    assert list(render(facts, [], "json")) == []


@pytest.mark.parametrize(
    ("organisation", "reference", "refused"),
    [
        ("aa", "Hostname|internet|a\x00b.nl", "the object key contains a NUL character"),
        ("aa", "Hostname|internet|" + "a" * 1100, "the object key is 1118 characters long; at most 1024 can be one"),
        ("aa", "Hostname|internet|\udcff.nl", "the object key is not valid UTF-8 text"),
        ("a" * 129, "Hostname|internet|example.nl", "the organisation is 129 characters long; at most 128"),
        ("", "Hostname|internet|example.nl", "the organisation is empty"),
    ],
)
def test_what_no_object_can_be_called_is_refused_before_any_io(organisation: str, reference: str, refused: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(refused)):
        check_request(organisation, reference)


def test_a_key_any_object_may_have_passes() -> None:
    check_request("aa", "Hostname|internet|" + "a" * 1000)
