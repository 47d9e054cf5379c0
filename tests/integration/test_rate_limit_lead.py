"""The rate limit's lead (``SCHEDULER_RATE_LIMIT_LEAD``), against real Redis and PostgreSQL: a
group's next tasks are released just before their room opens, each with that moment as its Celery
``eta``, so the time from release to start is not lost from every window while no worker's pool
process waits for the window (the worker's consumer holds the message until then); the limit
itself holds."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery.worker.request import Request
from kombu.connection import Connection
from sqlalchemy import Engine

from kat_scheduler.dispatch.dispatcher import message_for
from kat_scheduler.dispatch.publishing import OutgoingMessage, make_publisher
from kat_scheduler.dispatch.publishing.envelope import RedisEnvelopes, origin
from kat_scheduler.limiting import release as release_module
from kat_scheduler.limiting.limiter import CLOCK_WAIT, Admission, RateLimiter
from kat_scheduler.limiting.release import Releaser
from kat_scheduler.rules.rate_limits import parse_overrides
from kat_scheduler.runtime.celery_app import create_app
from kat_scheduler.settings import load_settings
from kat_scheduler.storage import TaskStore
from kat_scheduler.storage.tasks import NewTask
from kat_scheduler.storage.waiting import WaitingStore
from tests.factories import NewTaskFactory
from tests.workers import wait_for


def limiter(redis_url: str, limits: str, lead: float) -> RateLimiter:
    return RateLimiter(redis_url, parse_overrides(limits), key_prefix=f"test-{uuid.uuid4().hex}", lead=lead)


def full_group(
    engine: Engine, redis_url: str, limit: str, *, lead: float, tasks: int
) -> tuple[RateLimiter, list[NewTask], list[Admission]]:
    """A limiter whose group ``scan`` (nmap at ``limit``, two starts a window) is full now, its two
    starts, and ``tasks`` claimed nmap tasks."""
    gate = limiter(redis_url, f"nmap={limit}@scan", lead=lead)
    claimed: list[NewTask] = [
        NewTaskFactory(plugin_id="nmap", input_ooi=f"Hostname|internet|{n}.example") for n in range(tasks)
    ]
    assert len(TaskStore(engine).claim(claimed)) == tasks
    starts = [gate.admit("nmap", None, "org", "Hostname|internet|x") for _ in range(2)]
    assert all(a.allowed and a.at is not None for a in starts)
    return gate, claimed, starts


def windows_of(times: Iterable[datetime], first: datetime, window: timedelta) -> Counter[int]:
    """How many of ``times`` fall in each window from ``first`` on (0: the one ``first`` opens)."""
    return Counter((at - first) // window for at in times)


class Recorded:
    """A publisher that keeps what it is given (the messages the release builds)."""

    def __init__(self) -> None:
        self.messages: list[OutgoingMessage] = []

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        self.messages.extend(messages)

    def prepare(self, messages: Sequence[OutgoingMessage]) -> list[OutgoingMessage]:
        return list(messages)

    def queue_depth(self, queue: str) -> int:
        return 0

    def close(self) -> None:
        pass


def test_a_start_whose_window_opens_within_the_clock_wait_waits_for_it_and_is_counted_then(redis_url: str) -> None:
    gate = limiter(redis_url, "nmap=2/second@scan", lead=0.5)
    assert gate.wait == CLOCK_WAIT < 0.5  # the lead no longer holds a pool process
    first = [gate.admit("nmap", None, "org", f"Hostname|internet|{n}") for n in range(2)]
    assert all(a.allowed for a in first)

    refused = gate.admit("nmap", None, "org", "Hostname|internet|3")  # the window opens in ~1 s: too far
    assert not refused.allowed and refused.until is not None
    until = refused.until

    # Closer than the clock wait to the window's opening: the start waits here, then counts.
    assert wait_for(lambda: (until - datetime.now(UTC)).total_seconds() < CLOCK_WAIT * 0.6, timeout=2, interval=0.001)
    asked = time.monotonic()
    admitted = gate.admit("nmap", None, "org", "Hostname|internet|3")
    waited = time.monotonic() - asked
    assert admitted.allowed and admitted.at is not None
    assert admitted.at >= until
    assert admitted.at - min(a.at for a in first if a.at) >= timedelta(seconds=1)  # never inside the window
    assert waited <= CLOCK_WAIT + 0.1


def test_a_start_whose_window_opens_within_the_lead_but_after_the_clock_wait_is_refused_at_once(
    redis_url: str,
) -> None:
    gate = limiter(redis_url, "nmap=1/2second@scan", lead=1.5)
    assert gate.admit("nmap", None, "org", "Hostname|internet|a").allowed
    refused = gate.admit("nmap", None, "org", "Hostname|internet|b")
    assert not refused.allowed and refused.until is not None
    until = refused.until

    assert wait_for(lambda: (until - datetime.now(UTC)).total_seconds() < 1.0, timeout=3, interval=0.005)
    asked = time.monotonic()
    again = gate.admit("nmap", None, "org", "Hostname|internet|b")
    assert not again.allowed and again.until == until  # put back with the exact time
    assert time.monotonic() - asked < CLOCK_WAIT + 0.1


def test_a_start_whose_window_opens_after_the_lead_is_refused_at_once(redis_url: str) -> None:
    gate = limiter(redis_url, "nmap=1/2second@scan", lead=0.25)
    assert gate.admit("nmap", None, "org", "Hostname|internet|a").allowed

    asked = time.monotonic()
    refused = gate.admit("nmap", None, "org", "Hostname|internet|b")
    assert not refused.allowed and refused.until is not None
    assert time.monotonic() - asked < 0.2  # no worker slot is held for a window 2 s away
    assert refused.until - datetime.now(UTC) > timedelta(seconds=1.5)


def test_without_a_lead_a_start_is_never_held(redis_url: str) -> None:
    gate = limiter(redis_url, "nmap=1/second@scan", lead=0.0)
    assert gate.admit("nmap", None, "org", "Hostname|internet|a").allowed
    asked = time.monotonic()
    assert not gate.admit("nmap", None, "org", "Hostname|internet|b").allowed
    assert time.monotonic() - asked < 0.2


def test_the_release_publishes_a_full_groups_next_window_when_it_opens_within_the_lead_with_its_eta(
    pg_engine: Engine, redis_url: str
) -> None:
    gate, tasks, starts = full_group(pg_engine, redis_url, "2/second", lead=0.5, tasks=5)
    _, opens = gate.room(gate.limit_of("nmap", None), "scan")  # type: ignore[arg-type]
    waiting = WaitingStore(pg_engine)
    for task in tasks:
        assert waiting.put_back(task.id, limit="2/second", group="scan", until=opens)
    publisher = Recorded()
    releaser = Releaser(pg_engine, publisher, gate)
    too_early = opens - timedelta(seconds=0.8)  # the window opens after the lead: nothing goes
    assert releaser.release(now=too_early) == 0
    within_lead = opens - timedelta(seconds=0.3)
    assert releaser.release(now=within_lead) == 2  # one window's worth, not the whole backlog
    # Each goes with the moment its own room opens (a start's moment + 1 s) as its eta: held by
    # the worker's consumer until then, not by a pool process.
    etas = sorted(m.eta for m in publisher.messages if m.eta is not None)
    rooms = sorted(a.at + timedelta(seconds=1) for a in starts if a.at is not None)
    assert len(etas) == 2
    for eta, room in zip(etas, rooms, strict=True):
        assert room <= eta < room + timedelta(seconds=0.01)
    # The window's worth sent takes the room that opens: the rest are not sent into it too.
    assert releaser.release(now=within_lead + timedelta(seconds=0.1)) == 0
    still = waiting.waiting_until([t.id for t in tasks])
    assert len(still) == 3
    assert min(still.values()) >= opens + timedelta(seconds=1)  # the rest wait for the windows after


def test_a_released_task_goes_with_an_eta_a_stock_worker_reads_and_other_messages_without(tmp_path: Path) -> None:
    app = create_app(load_settings(broker_url="memory://", db_uri=f"sqlite:///{tmp_path / 'db'}"), main="eta")
    app.loader.import_default_modules()  # our own kat.boefje.run, as a worker loads it
    row = NewTaskFactory()
    eta = datetime.now(UTC).replace(microsecond=123456) + timedelta(seconds=0.25)
    channel = Connection("memory://").default_channel
    envelopes = RedisEnvelopes(origin())

    sent = json.loads(envelopes(message_for(row, eta), 5))
    request = Request(channel.Message(sent, channel=channel), app=app)
    assert sent["headers"]["eta"] == eta.isoformat()
    assert request.eta == eta

    plain = json.loads(envelopes(message_for(row), 5))
    assert plain["headers"]["eta"] is None
    assert Request(channel.Message(plain, channel=channel), app=app).eta is None
    del sent["headers"]["eta"], plain["headers"]["eta"]
    del sent["properties"]["delivery_tag"], plain["properties"]["delivery_tag"]  # unique per send
    assert sent == plain  # nothing else differs


def test_two_nodes_releasing_before_any_start_is_counted_send_one_windows_worth_between_them(
    pg_engine: Engine, redis_url: str
) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    node_a, node_b = (RateLimiter(redis_url, parse_overrides("nmap=2/second@scan"), key_prefix=prefix) for _ in "ab")
    tasks = [NewTaskFactory(plugin_id="nmap", input_ooi=f"Hostname|internet|{n}.example") for n in range(4)]
    assert len(TaskStore(pg_engine).claim(tasks)) == 4
    waiting = WaitingStore(pg_engine)
    due = datetime.now(UTC) - timedelta(seconds=1)
    publisher = make_publisher(load_settings(broker_url=redis_url))
    try:
        for task in tasks[:2]:
            assert waiting.put_back(task.id, limit="2/second", group="scan", until=due)
        assert Releaser(pg_engine, publisher, node_a).release() == 2
        sent_at = time.monotonic()
        # Two more are put back, due at once: no start was counted yet, so the starts' window
        # still shows the room of the two just sent; the other node must not send into it again.
        for task in tasks[2:]:
            assert waiting.put_back(task.id, limit="2/second", group="scan", until=due)
        releaser_b = Releaser(pg_engine, publisher, node_b)
        assert releaser_b.release() == 0
        assert set(waiting.waiting_until([t.id for t in tasks[2:]])) == {t.id for t in tasks[2:]}
        sent = 0

        def the_next_window_goes() -> bool:
            nonlocal sent
            sent += releaser_b.release()
            return sent == 2

        assert wait_for(the_next_window_goes, timeout=5, interval=0.05)
        assert time.monotonic() - sent_at >= 0.95  # a window after the first two went
    finally:
        publisher.close()


def test_tasks_a_pass_cannot_send_wait_behind_their_groups_waiting_tasks_so_no_window_holds_more_than_it_can_start(
    pg_engine: Engine, redis_url: str
) -> None:
    # Two bursts of one group, each due at once, released by two passes: without looking at the
    # windows the first gave out, the second would put its tasks into the same ones, and every
    # window would find more due than it can start and move them all again.
    gate, tasks, _ = full_group(pg_engine, redis_url, "2/hour", lead=0.0, tasks=10)  # full for an hour
    waiting = WaitingStore(pg_engine)
    releaser = Releaser(pg_engine, Recorded(), gate)
    now = datetime.now(UTC)

    for task in tasks[:6]:
        assert waiting.put_back(task.id, limit="2/hour", group="scan", until=now)
    assert releaser.release(now=now) == 0
    first = waiting.waiting_until([t.id for t in tasks[:6]])
    for task in tasks[6:]:
        assert waiting.put_back(task.id, limit="2/hour", group="scan", until=now)
    assert releaser.release(now=now) == 0
    second = waiting.waiting_until([t.id for t in tasks[6:]])

    nearest = min(first.values())
    per_window = windows_of(waiting.waiting_until([t.id for t in tasks]).values(), nearest, timedelta(hours=1))
    assert len(first) == 6 and len(second) == 4
    assert nearest > now + timedelta(minutes=59)  # the group's room opens in an hour
    assert per_window[0] == 4, "one window's worth of the second burst waits for the next window"
    assert max(n for k, n in per_window.items() if k) == 2, "no other window gets more than it can start"
    behind = sorted(second.values())[2:]
    assert min(behind) > max(first.values()), "the rest of the second burst waits behind the first"


def test_the_release_wakes_for_the_earliest_task_still_waiting_and_not_at_all_when_none_waits(
    pg_engine: Engine,
) -> None:
    store, waiting = TaskStore(pg_engine), WaitingStore(pg_engine)
    tasks = [NewTaskFactory(plugin_id="nmap", input_ooi=f"Hostname|internet|{n}.example") for n in range(3)]
    assert waiting.next_at() is None
    assert len(store.claim(tasks)) == 3
    soon = datetime.now(UTC) + timedelta(seconds=5)
    for k, task in enumerate(tasks):
        assert waiting.put_back(task.id, limit="2/second", group="scan", until=soon + timedelta(seconds=k))

    first = waiting.next_at()
    store.cancel([tasks[0].id])  # its listing stays until the reaper prunes it
    after_cancel = waiting.next_at()
    store.cancel([t.id for t in tasks[1:]])

    assert first == soon
    assert after_cancel == soon + timedelta(seconds=1)
    assert waiting.next_at() is None


def test_a_burst_drained_by_two_nodes_passes_leaves_no_window_before_the_groups_last_one_part_empty(
    pg_engine: Engine, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A held burst read a few at a time by two nodes' passes, with single tasks put back between
    # them (a worker whose room another node took): what a pass appends behind the group's queue
    # first fills the last window given out. A window left part empty is a room never used: its
    # tasks are not due before their time, so the group would start fewer than its limit allows.
    monkeypatch.setattr(release_module, "BATCH", 7)
    gate, tasks, _ = full_group(pg_engine, redis_url, "2/hour", lead=0.0, tasks=30)  # full for an hour
    waiting = WaitingStore(pg_engine)
    nodes = [Releaser(pg_engine, Recorded(), gate) for _ in "ab"]
    now = datetime.now(UTC)
    for task in tasks[:23]:
        assert waiting.put_back(task.id, limit="2/hour", group="scan", until=now)
    for n, task in enumerate(tasks[23:]):
        assert nodes[n % 2].release(now=now) == 0
        assert waiting.put_back(task.id, limit="2/hour", group="scan", until=now)
    while any(at <= now for at in waiting.waiting_until([t.id for t in tasks]).values()):
        assert nodes[0].release(now=now) == 0

    times = waiting.waiting_until([t.id for t in tasks]).values()
    assert len(times) == 30
    nearest = min(times)
    assert nearest > now + timedelta(minutes=59)
    # Window 0 (the group's next) holds a window's worth from every pass; behind it, every
    # window up to the group's last is full.
    per_window = windows_of(times, nearest, timedelta(hours=1))
    last = max(per_window)
    assert all(per_window[k] == 2 for k in range(1, last)), sorted(per_window.items())
    assert 1 <= per_window[last] <= 2
