"""The rules that decide whether a boefje may run on an object."""

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from kat_scheduler.models.events import MutationOperation
from kat_scheduler.planning.candidates import BoefjeIndex
from kat_scheduler.planning.reactions import hashes_without_clearance, mutation_pairs
from kat_scheduler.rules import SkipReason, clearance_skip, grace_period, grace_skip, static_skip
from tests.factories import BoefjeFactory, OOIFactory

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = 86400


def test_a_scan_level_1_boefje_never_runs_on_a_level_0_hostname() -> None:
    boefje = BoefjeFactory(scan_level=1, consumes=["Hostname"])
    hostname = OOIFactory(object_type="Hostname", level=0)
    assert static_skip(boefje, hostname, periodic=True) == SkipReason.CLEARANCE
    assert clearance_skip(boefje, hostname) == SkipReason.CLEARANCE


def test_an_object_without_a_scan_profile_is_level_zero() -> None:
    boefje = BoefjeFactory(scan_level=1)
    assert static_skip(boefje, OOIFactory(scan_profile=None), periodic=True) == SkipReason.CLEARANCE
    assert static_skip(BoefjeFactory(scan_level=0), OOIFactory(scan_profile=None), periodic=True) is None


@pytest.mark.parametrize(
    ("boefje", "ooi", "periodic", "reason"),
    [
        (dict(enabled=False), dict(), True, SkipReason.NOT_ENABLED),
        (dict(consumes=[]), dict(), True, SkipReason.NO_CONSUMES),
        (dict(consumes=["IPAddressV4"]), dict(object_type="Hostname"), True, SkipReason.TYPE_NOT_CONSUMED),
        (dict(scan_level=3), dict(level=2), True, SkipReason.CLEARANCE),
        (dict(scan_level=2), dict(level=2), True, None),
        (dict(scan_level=0), dict(level=4), True, None),
        (dict(run_on=["create"]), dict(), True, SkipReason.RUN_ON_ONLY),
        (dict(run_on=["create"]), dict(), False, None),
    ],
)
def test_static_rules(boefje, ooi, periodic, reason) -> None:
    assert static_skip(BoefjeFactory(**boefje), OOIFactory(**ooi), periodic=periodic) == reason


def test_the_plugin_interval_in_minutes_overrides_the_default_grace_period() -> None:
    assert grace_period(BoefjeFactory(interval=None), DAY) == timedelta(days=1)
    assert grace_period(BoefjeFactory(interval=90), DAY) == timedelta(minutes=90)


@pytest.mark.parametrize(
    ("interval", "ended_ago", "reason"),
    [
        (None, None, None),
        (None, timedelta(hours=23), SkipReason.GRACE),
        (None, timedelta(hours=24), None),
        (60, timedelta(minutes=59), SkipReason.GRACE),
        (60, timedelta(minutes=61), None),
    ],
)
def test_grace_period_since_the_last_run(interval, ended_ago, reason) -> None:
    last = None if ended_ago is None else NOW - ended_ago
    assert grace_skip(BoefjeFactory(interval=interval), last, NOW, DAY) == reason


def test_a_cron_boefje_is_due_by_its_cron_not_its_grace_period() -> None:
    daily_at_4 = BoefjeFactory(cron="0 4 * * *", interval=None)
    assert grace_skip(daily_at_4, NOW - timedelta(hours=10), NOW, DAY) is None  # 04:00 passed since
    assert grace_skip(daily_at_4, NOW - timedelta(hours=7), NOW, DAY) == SkipReason.CRON


@pytest.mark.parametrize(("need", "level"), [(n, lvl) for n in range(5) for lvl in range(5)])
def test_every_path_agrees_on_clearance(need: int, level: int) -> None:
    boefje = BoefjeFactory(id="b", scan_level=need, consumes=["Hostname"])
    ooi = OOIFactory(object_type="Hostname", level=level)
    cleared = clearance_skip(boefje, ooi) is None
    assert (static_skip(boefje, ooi, periodic=True) is None) == cleared
    index = BoefjeIndex([boefje])
    assert bool(mutation_pairs("org", index, ooi, MutationOperation.UPDATE, Counter())) == cleared
    assert (not hashes_without_clearance("org", index, ooi)) == cleared
