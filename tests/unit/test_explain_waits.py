"""``explain`` on a descheduled pair and on a task waiting for its rate limit (pure: facts and now)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from kat_scheduler.explain import (
    Decision,
    LiveTask,
    ObjectFacts,
    PairFacts,
    Policy,
    RateLimitWait,
    ScheduleFacts,
    explain,
)
from kat_scheduler.models import TaskStatus
from kat_scheduler.rules.identity import boefje_task_hash
from tests.factories import BoefjeFactory, OOIFactory

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
POLICY = Policy(default_grace_seconds=86400, stall_age=timedelta(hours=1), jitter=0.0)
ORG = "aa"
PK = "Hostname|internet|waits.example.nl"
TASK = uuid.UUID("00000000-0000-4000-8000-000000000001")
SCHEDULE = uuid.UUID("00000000-0000-4000-8000-000000000002")


def answer(**facts: object):
    boefje = BoefjeFactory(id="dns-records", scan_level=1, consumes=["Hostname"])
    pair = PairFacts(boefje, boefje_task_hash(boefje.id, ORG, PK), **facts)  # type: ignore[arg-type]
    (found,) = explain(ObjectFacts(ORG, OOIFactory(primary_key=PK, level=2), [pair]), NOW, POLICY)
    return found


def test_a_descheduled_pair_says_so_before_its_running_task_and_names_the_way_back() -> None:
    schedule = ScheduleFacts(
        SCHEDULE,
        False,
        NOW + timedelta(days=1),
        "descheduled by boefje dns-records: raw file r",
        NOW - timedelta(hours=2),
    )
    running = LiveTask(TASK, TaskStatus.RUNNING, NOW - timedelta(minutes=1), 3)
    found = answer(schedule=schedule, live=running)
    assert found.decision == Decision.DESCHEDULED and found.until is None and found.band is None
    assert f"schedule {SCHEDULE} descheduled at 2026-06-01T10:00:00Z" in found.detail
    assert "(descheduled by boefje dns-records: raw file r)" in found.detail
    assert f"PATCH /schedules/{SCHEDULE} with enabled: true" in found.detail
    assert f"task {TASK} is running since 2026-06-01T11:59:00Z" in found.detail


def test_a_disabled_schedule_that_was_not_descheduled_is_no_deschedule() -> None:
    schedule = ScheduleFacts(SCHEDULE, False, NOW - timedelta(days=1), "object deleted or scan level too low")
    assert answer(schedule=schedule).decision == Decision.QUEUE


def test_a_task_waiting_for_its_window_is_rate_limited_until_it_opens_at_its_band() -> None:
    opens = NOW + timedelta(seconds=30)
    waiting = LiveTask(
        TASK, TaskStatus.QUEUED, NOW - timedelta(minutes=1), 4, rate_limit=RateLimitWait(opens, "1/second", "shodan.io")
    )
    found = answer(live=waiting)
    assert (found.decision, found.until, found.band) == (Decision.RATE_LIMITED, opens, 4)
    assert (
        f"task {TASK} waits for its rate limit (1/second, group shodan.io) until 2026-06-01T12:00:30Z" in found.detail
    )
