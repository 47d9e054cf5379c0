from datetime import UTC, datetime, timedelta

from kat_scheduler.hashing import boefje_task_hash
from kat_scheduler.timing import jitter_fraction, next_deadline
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
