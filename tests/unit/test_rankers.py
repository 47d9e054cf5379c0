"""Rankers: bands 0-9 (0 most urgent) and a fine score (lower sooner)."""

from datetime import UTC, datetime, timedelta

import pytest

from kat_scheduler.rules import Trigger
from kat_scheduler.rules.ranking import BoefjeCandidate, rank_boefje, rank_normalizer

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def candidate(trigger=Trigger.PLAN, level=2, interval=DAY, last=None, since=None) -> BoefjeCandidate:
    return BoefjeCandidate(trigger=trigger, scan_level=level, interval=interval, last_run_ended=last, since=since)


@pytest.mark.parametrize(
    ("cand", "band"),
    [
        (candidate(Trigger.MANUAL, last=NOW - timedelta(minutes=1)), 0),
        (candidate(Trigger.NEW_OBJECT), 1),
        (candidate(Trigger.PLAN), 2),
        (candidate(Trigger.SCHEDULE), 9),
        (candidate(Trigger.SCHEDULE, last=NOW - 5 * DAY), 3),
        (candidate(Trigger.SCHEDULE, last=NOW - 2 * DAY), 4),
        (candidate(Trigger.SCHEDULE, last=NOW - 1.5 * DAY), 5),
        (candidate(Trigger.SCHEDULE, last=NOW - 1.25 * DAY), 6),
        (candidate(Trigger.SCHEDULE, last=NOW - 1.1 * DAY), 7),
        (candidate(Trigger.SCHEDULE, last=NOW - 1.0 * DAY), 8),
        (candidate(Trigger.SCHEDULE, interval=timedelta(minutes=30), last=NOW - timedelta(hours=3)), 3),
    ],
)
def test_bands(cand: BoefjeCandidate, band: int) -> None:
    assert rank_boefje(cand, NOW).band == band


def test_manual_beats_new_beats_never_run_beats_routine_reruns() -> None:
    ranks = [
        rank_boefje(candidate(Trigger.MANUAL), NOW),
        rank_boefje(candidate(Trigger.NEW_OBJECT), NOW),
        rank_boefje(candidate(Trigger.PLAN), NOW),
        rank_boefje(candidate(Trigger.SCHEDULE, last=NOW - 1.01 * DAY), NOW),
    ]
    assert [r.band for r in ranks] == sorted(r.band for r in ranks)
    assert len({r.band for r in ranks}) == 4


def test_the_more_overdue_relative_to_its_interval_the_sooner() -> None:
    hourly_3h_ago = rank_boefje(
        candidate(Trigger.SCHEDULE, interval=timedelta(hours=1), last=NOW - timedelta(hours=3)), NOW
    )
    daily_30h_ago = rank_boefje(candidate(Trigger.SCHEDULE, last=NOW - timedelta(hours=30)), NOW)
    assert hourly_3h_ago.band < daily_30h_ago.band


def test_within_a_band_higher_clearance_then_longer_wait_comes_first() -> None:
    level4 = rank_boefje(candidate(Trigger.PLAN, level=4, since=NOW), NOW)
    level1_waited = rank_boefje(candidate(Trigger.PLAN, level=1, since=NOW - DAY), NOW)
    level1 = rank_boefje(candidate(Trigger.PLAN, level=1, since=NOW), NOW)
    assert level4.band == level1.band == level1_waited.band
    assert level4.score < level1_waited.score < level1.score


def test_scores_fit_a_signed_64_bit_column() -> None:
    ancient = rank_boefje(candidate(Trigger.SCHEDULE, level=0, last=datetime(1970, 1, 1, tzinfo=UTC)), NOW)
    assert -(2**63) <= ancient.score < 2**63


def test_rankers_are_deterministic() -> None:
    cand = candidate(Trigger.SCHEDULE, last=NOW - 2 * DAY)
    assert rank_boefje(cand, NOW) == rank_boefje(cand, NOW)


def test_older_raw_files_are_normalized_first() -> None:
    old = rank_normalizer(NOW - timedelta(hours=2), NOW)
    new = rank_normalizer(NOW - timedelta(minutes=1), NOW)
    assert old.band == new.band and old.score < new.score
    assert rank_normalizer(NOW, NOW, manual=True).band == 0
