"""Which sibling organisations one boefje run serves: the producers' rules on the sibling's own facts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kat_scheduler.rules import BytesRun
from kat_scheduler.workers.dedup import NotServed, SiblingFacts, why_not_served
from tests.factories import BoefjeFactory, OOIFactory

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def sibling(boefje: dict[str, Any] | None = None, *, level: int = 2, **facts: Any) -> SiblingFacts:
    theirs = None if boefje is None else BoefjeFactory(**{"id": "dns-records", "deduplicate": True, **boefje})
    values: dict[str, Any] = {"schedule_enabled": None, "last_ended": None, "bytes_run": None, **facts}
    return SiblingFacts(theirs, OOIFactory(level=level), **values)


OURS = BoefjeFactory(id="dns-records", deduplicate=True, scan_level=1)


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        (sibling({}), None),
        (sibling({}, schedule_enabled=True, last_ended=NOW - 25 * HOUR), None),
        (sibling(None), NotServed.UNKNOWN_BOEFJE),
        (sibling({"deduplicate": False}), NotServed.NO_DEDUPLICATE),
        (sibling({"enabled": False}), NotServed.NOT_ENABLED),
        (sibling({"scan_level": 3}, level=2), NotServed.CLEARANCE),
        (sibling({}, level=0), NotServed.CLEARANCE),
        (sibling({"consumes": ["IPAddressV4"]}), NotServed.NOT_CONSUMED),
        (sibling({"run_on": ["create"]}), NotServed.RUN_ON_ONLY),
        (sibling({"version": "2"}), NotServed.OTHER_VERSION),
        (sibling({}, schedule_enabled=False), NotServed.SCHEDULE_DISABLED),
        (sibling({}, schedule_enabled=True, schedule_deadline=NOW + HOUR), NotServed.SCHEDULED),
        (sibling({}, schedule_enabled=True, schedule_deadline=NOW - HOUR), None),
        (sibling({}, last_ended=NOW - HOUR), NotServed.GRACE),
        (sibling({"interval": 30}, last_ended=NOW - HOUR), None),
        (sibling({"cron": "0 0 * * *"}, last_ended=NOW - HOUR), NotServed.CRON),
        (sibling({}, bytes_run=BytesRun(NOW - timedelta(minutes=1), None)), NotServed.RUNNING),
        (sibling({}, bytes_run=BytesRun(NOW - 2 * HOUR, None)), None),  # stalled: due again
        (sibling({}, bytes_run=BytesRun(NOW - 2 * HOUR, NOW - HOUR)), NotServed.GRACE),
    ],
)
def test_a_sibling_is_served_only_when_the_rules_say_it_may_run_now(facts: SiblingFacts, reason: NotServed) -> None:
    assert why_not_served(OURS, facts, now=NOW, default_grace=24 * HOUR, stall_age=timedelta(minutes=10)) == reason


def test_a_run_whose_own_plugin_says_no_deduplication_serves_no_one() -> None:
    ours = BoefjeFactory(id="dns-records", deduplicate=False)
    assert why_not_served(ours, sibling({}), now=NOW, default_grace=HOUR, stall_age=HOUR) == NotServed.NO_DEDUPLICATE
