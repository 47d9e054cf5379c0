import random
from datetime import UTC, datetime, timedelta

import pytest

from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.timing import jitter_fraction, last_cron, next_cron, next_deadline
from tests.factories import BoefjeFactory

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HASH = boefje_task_hash("dns-records", "aa", "Hostname|internet|mispo.es")


def test_a_cron_boefje_is_due_at_its_next_cron_time() -> None:
    boefje = BoefjeFactory(cron="0 3 * * *", interval=60)
    assert next_deadline(boefje, NOW, hash_=HASH, default_seconds=86400, jitter=0.5) == datetime(
        2026, 6, 2, 3, 0, tzinfo=UTC
    )


def test_an_interval_boefje_is_due_after_its_interval_plus_bounded_jitter() -> None:
    boefje = BoefjeFactory(interval=60)
    deadline = next_deadline(boefje, NOW, hash_=HASH, default_seconds=86400, jitter=0.1)
    assert NOW + timedelta(minutes=60) <= deadline < NOW + timedelta(minutes=66)


def test_without_interval_the_default_grace_period_applies() -> None:
    deadline = next_deadline(BoefjeFactory(interval=None), NOW, hash_=HASH, default_seconds=86400, jitter=0)
    assert deadline == NOW + timedelta(days=1)


def test_jitter_is_stable_per_schedule_and_spreads_schedules() -> None:
    hashes = [boefje_task_hash("dns-records", "aa", f"Hostname|internet|h{n}.nl") for n in range(1000)]
    fractions = [jitter_fraction(h) for h in hashes]
    assert all(0 <= f < 1 for f in fractions)
    assert jitter_fraction(hashes[0]) == fractions[0]
    # Spread: every tenth of the range gets some schedules.
    assert len({int(f * 10) for f in fractions}) == 10


@pytest.mark.parametrize("expression", ["0 3 * * *", "*/15 * * * *", "30 2 * * 1", "0 0 1 * *", "17 */5 * * *"])
def test_a_cron_boefje_is_due_exactly_when_a_cron_time_passed_since_its_last_run(expression: str) -> None:
    now = datetime(2026, 11, 22, 10, 45, tzinfo=UTC)
    rng = random.Random(expression)
    last_runs = [now - timedelta(seconds=rng.randrange(0, 40 * 86400)) for _ in range(300)]
    # The fire times themselves, and a second either side of them, are the edge cases.
    fire = last_cron(expression, now)
    last_runs += [fire, fire - timedelta(seconds=1), fire + timedelta(seconds=1), now]
    for last_run in last_runs:
        assert (last_run < last_cron(expression, now)) == (next_cron(expression, last_run) <= now), last_run


def test_the_last_cron_time_may_be_the_moment_itself() -> None:
    on_the_hour = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    assert last_cron("0 3 * * *", on_the_hour) == on_the_hour
    assert last_cron("0 3 * * *", on_the_hour - timedelta(seconds=1)) == on_the_hour - timedelta(days=1)
