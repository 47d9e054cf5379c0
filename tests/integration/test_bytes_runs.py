"""Bytes' newest run per pair as the scheduler keeps it: listings and runs reported by raw files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from kat_scheduler.storage.bytes_runs import BytesRunStore, SeenRun

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def run(started: datetime, ended: datetime | None) -> SeenRun:
    return SeenRun("h1", "org", "dns-records", "Hostname|internet|a.example.nl", started, ended)


def test_a_reported_run_replaces_an_older_one_and_a_late_report_of_an_older_run_changes_nothing(engine: Engine) -> None:
    store = BytesRunStore(engine)
    store.record([run(NOW - timedelta(days=2), NOW - timedelta(days=2))], seen_at=NOW - timedelta(days=1))

    store.record_reported([run(NOW - timedelta(hours=2), None)], seen_at=NOW - timedelta(hours=2))
    assert store.newest(["h1"])["h1"].started_at == NOW - timedelta(hours=2)
    assert store.newest(["h1"])["h1"].ended_at is None

    store.record_reported([run(NOW - timedelta(hours=2), NOW - timedelta(hours=1))], seen_at=NOW)  # it ended
    store.record_reported([run(NOW - timedelta(days=5), NOW - timedelta(days=5))], seen_at=NOW)  # late, older

    newest = store.newest(["h1"])["h1"]
    assert (newest.started_at, newest.ended_at) == (NOW - timedelta(hours=2), NOW - timedelta(hours=1))


def test_a_listing_seen_later_wins_whatever_its_runs_start(engine: Engine) -> None:
    store = BytesRunStore(engine)
    store.record([run(NOW - timedelta(hours=2), NOW - timedelta(hours=1))], seen_at=NOW - timedelta(hours=1))
    store.record([run(NOW - timedelta(days=3), NOW - timedelta(days=3))], seen_at=NOW)  # a later listing
    assert store.newest(["h1"])["h1"].started_at == NOW - timedelta(days=3)
