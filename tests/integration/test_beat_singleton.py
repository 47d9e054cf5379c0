"""Two beats started side by side: only the lease holder sends; the standby takes over."""

from __future__ import annotations

from typing import Any

import pytest

from kat_scheduler.runtime.beat import LeasedScheduler
from kat_scheduler.runtime.celery_app import create_app
from kat_scheduler.settings import load_settings
from kat_scheduler.storage.leases import LeaseStore


class RecordingScheduler(LeasedScheduler):
    """Records what it would send instead of publishing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sent: list[str] = []
        super().__init__(*args, **kwargs)

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> None:
        self.sent.append(entry.task)


@pytest.fixture
def app(sqlite_uri: str):
    settings = load_settings(db_uri=sqlite_uri, beat_lease=30, plan_interval=0.01, schedules_interval=0.01)
    return create_app(settings, main="beat_test")


def tick_a_while(scheduler: RecordingScheduler, times: int = 5) -> None:
    import time

    for _ in range(times):
        scheduler.tick()
        time.sleep(0.02)


def test_only_the_beat_holding_the_lease_sends(app) -> None:
    first = RecordingScheduler(app, holder_id="beat-a", lazy=False)
    second = RecordingScheduler(app, holder_id="beat-b", lazy=False)
    for _ in range(3):
        tick_a_while(first, 2)
        tick_a_while(second, 2)
    assert first.sent, "the first beat took the lease and should have sent the planning ticks"
    assert "kat.scheduler.plan_boefjes" in first.sent
    assert second.sent == []
    assert not second.is_leader


def test_a_standby_beat_takes_over_when_the_leader_stops(app) -> None:
    first = RecordingScheduler(app, holder_id="beat-a", lazy=False)
    second = RecordingScheduler(app, holder_id="beat-b", lazy=False)
    tick_a_while(first, 2)
    tick_a_while(second, 2)
    assert second.sent == []
    first.close()  # a clean stop releases the lease; a crash lets it lapse after SCHEDULER_BEAT_LEASE
    tick_a_while(second, 3)
    assert second.is_leader and second.sent
    assert LeaseStore(second.leases.engine).holder("beat") == "beat-b"


def test_a_beat_that_takes_the_lease_ticks_every_producer_at_once(sqlite_uri: str) -> None:
    hour = 3600.0
    settings = load_settings(
        db_uri=sqlite_uri, beat_lease=30, plan_interval=hour, schedules_interval=hour, reap_interval=hour
    )
    scheduler = RecordingScheduler(create_app(settings, main="beat_first_tick"), holder_id="beat-a", lazy=False)
    tick_a_while(scheduler, 5)
    assert sorted(scheduler.sent) == [
        "kat.scheduler.plan_boefjes",
        "kat.scheduler.queue_due_schedules",
        "kat.scheduler.queue_report_schedules",
        "kat.scheduler.reap",
    ], "a new leader must not wait a whole interval for its first tick"
    tick_a_while(scheduler, 5)
    assert len(scheduler.sent) == 4, "after the first tick, each producer waits for its interval"


def test_leader_and_standby_both_keep_their_heartbeat(sqlite_uri: str, tmp_path) -> None:
    beats = {}
    for holder in ("beat-a", "beat-b"):
        alive = tmp_path / f"{holder}.alive"
        settings = load_settings(db_uri=sqlite_uri, beat_lease=30, heartbeat_file=str(alive))
        beats[holder] = (
            RecordingScheduler(create_app(settings, main=f"hb-{holder}"), holder_id=holder, lazy=False),
            alive,
        )
    for scheduler, _ in beats.values():
        tick_a_while(scheduler, 2)
    assert beats["beat-a"][0].is_leader and not beats["beat-b"][0].is_leader
    assert all(alive.exists() for _, alive in beats.values()), "a standby beat is alive too"
