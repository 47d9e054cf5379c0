"""The rate limits' moving windows against real Redis: the moments a limiter answers are the ones
its window counted, read from the Redis server's clock, and the starts recorded at those moments
never exceed a limit in any window, however many workers admit at once."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta

import pytest
import redis

from kat_scheduler.limiting.limiter import CLOCK_WAIT, RateLimiter
from kat_scheduler.limiting.window import MovingWindows, Part, moment
from kat_scheduler.rules.rate_limits import RateLimit, parse_overrides
from tests.workers import wait_for


def limiter(redis_url: str, limits: str, prefix: str, lead: float = 0.0) -> RateLimiter:
    return RateLimiter(redis_url, parse_overrides(limits), key_prefix=prefix, lead=lead)


def limit_of(gate: RateLimiter, boefje_id: str = "nmap") -> RateLimit:
    limit = gate.limit_of(boefje_id, None)
    assert limit is not None
    return limit


def most_in_any(times: list[datetime], window: timedelta) -> int:
    """The most of ``times`` in any window ``(t - window, t]``."""
    ordered = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(ordered):
        while ordered[first] <= t - window:
            first += 1
        most = max(most, last - first + 1)
    return most


def server_clock(client: redis.Redis) -> datetime:
    seconds, microseconds = client.time()
    return moment(seconds * 1_000_000 + microseconds)


def test_starts_admitted_by_many_workers_at_once_never_exceed_the_limit_in_any_window(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    wanted = 20  # five windows' worth at 4/second: every window's edge is raced for by every thread
    admitted: list[datetime] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        # Each its own limiter and connection, waiting for the window's room as a worker does.
        gate = limiter(redis_url, "nmap=4/second@scan", prefix, lead=1.0)
        try:
            while True:
                with lock:
                    if len(admitted) >= wanted:
                        return
                admission = gate.admit("nmap", None, f"org{n}", f"Hostname|internet|{n}.example")
                if admission.allowed:
                    assert admission.at is not None
                    with lock:
                        admitted.append(admission.at)
        finally:
            gate.windows.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)

    assert len(admitted) >= wanted
    assert most_in_any(admitted, timedelta(seconds=1)) == 4  # full windows, never one more
    assert len(set(admitted)) == len(admitted)  # each start its own moment, to the microsecond


def test_the_moment_admitted_is_the_redis_servers_clock_when_it_counted(redis_url: str) -> None:
    gate = limiter(redis_url, "nmap=5/second@scan", f"test-{uuid.uuid4().hex}")
    with redis.Redis.from_url(redis_url) as client:
        before = server_clock(client)
        admission = gate.admit("nmap", None, "org", "Hostname|internet|a.example")
        after = server_clock(client)
    assert admission.allowed and admission.at is not None
    assert before <= admission.at <= after


def test_a_refused_start_is_told_the_moment_its_room_opens_and_is_admitted_from_then(redis_url: str) -> None:
    gate = limiter(redis_url, "nmap=2/second@scan", f"test-{uuid.uuid4().hex}")
    first, second = (gate.admit("nmap", None, "org", f"Hostname|internet|{n}") for n in range(2))
    assert first.at is not None and second.at is not None

    refused = gate.admit("nmap", None, "org", "Hostname|internet|3")
    assert not refused.allowed
    assert refused.until == first.at + timedelta(seconds=1)  # the oldest of the two leaves the window
    assert gate.room(limit_of(gate), "scan") == (0, refused.until)

    # A start that comes a moment before its room opens (closer than the clock wait) waits for it.
    waiting = limiter(redis_url, "nmap=2/second@scan", gate.windows.prefix, lead=0.5)
    until = refused.until
    with redis.Redis.from_url(redis_url) as client:
        assert wait_for(lambda: (until - server_clock(client)).total_seconds() < CLOCK_WAIT / 2, timeout=3)
    admitted = waiting.admit("nmap", None, "org", "Hostname|internet|3")
    assert admitted.allowed and admitted.at is not None
    assert admitted.at >= refused.until
    assert most_in_any([first.at, second.at, admitted.at], timedelta(seconds=1)) == 2


def test_a_part_that_refuses_leaves_the_other_parts_of_the_limit_untouched(redis_url: str) -> None:
    gate = limiter(redis_url, "nmap=3/minute;1/second@scan", f"test-{uuid.uuid4().hex}")
    limit = limit_of(gate)
    assert gate.admit("nmap", None, "org", "Hostname|internet|a").allowed

    for n in range(3):  # the second's part is full: the minute's is not charged for the refusals
        refused = gate.admit("nmap", None, "org", f"Hostname|internet|{n}")
        assert not refused.allowed
    rooms, _ = gate.windows.room([Part(3, 60), Part(1, 1)], "starts:scan")
    assert [r.remaining for r in rooms] == [2, 0]  # the minute's two left, the second's none
    assert gate.room(limit, "scan")[0] == 0

    assert gate.take_releases(limit, "scan", 5) == 1  # the releases' window: the tightest part's room
    released, _ = gate.windows.room([Part(3, 60), Part(1, 1)], "released:scan")
    assert [r.remaining for r in released] == [2, 0]


def test_the_release_takes_exactly_the_room_there_is_in_one_go(redis_url: str) -> None:
    gate = limiter(redis_url, "nmap=5/second@scan", f"test-{uuid.uuid4().hex}")
    limit = limit_of(gate)
    assert gate.take_releases(limit, "scan", 3) == 3
    assert gate.take_releases(limit, "scan", 5) == 2
    assert gate.take_releases(limit, "scan", 5) == 0
    with redis.Redis.from_url(redis_url) as client:
        now = server_clock(client)
    room, opens = gate.release_room(limit, "scan")
    assert room == 0 and now < opens <= now + timedelta(seconds=1)  # when the first three leave
    assert gate.room(limit, "scan")[0] == 5  # the starts' window is another


def test_a_moment_never_precedes_one_its_window_holds(redis_url: str) -> None:
    windows = MovingWindows(redis_url, f"test-{uuid.uuid4().hex}")
    part = Part(10, 60)
    with redis.Redis.from_url(redis_url) as client:
        ahead = server_clock(client) + timedelta(seconds=5)  # as if the server's clock stepped back
        micros = (ahead - moment(0)) // timedelta(microseconds=1)
        client.zadd(windows.key(part, "starts:g"), {f"{micros}:1": micros})
    try:
        taken = windows.take([part], "starts:g", 2)
        assert taken.count == 2
        assert taken.at == ahead + timedelta(microseconds=1)
    finally:
        windows.close()


def test_a_windows_keys_are_its_own_and_expire_with_their_newest_moment(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    gate = limiter(redis_url, "nmap=5/second;100/hour@host:{input_ooi}", prefix)
    assert gate.admit("nmap", None, "org", "Hostname|internet|a.example").allowed
    assert gate.take_releases(limit_of(gate), "host:Hostname|internet|b.example", 1) == 1
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        keys = set(client.scan_iter(f"{prefix}:*"))
        assert keys == {
            f"{prefix}:5/1s:starts:host:Hostname|internet|a.example",
            f"{prefix}:100/3600s:starts:host:Hostname|internet|a.example",
            f"{prefix}:5/1s:released:host:Hostname|internet|b.example",
            f"{prefix}:100/3600s:released:host:Hostname|internet|b.example",
        }
        for key in keys:
            ttl = client.pttl(key)
            if key.startswith(f"{prefix}:5/1s:"):
                assert 0 < ttl <= 1001
            else:
                assert 3_599_000 < ttl <= 3_600_001


def test_a_worker_whose_clock_is_behind_counts_in_the_same_window_as_the_others(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    behind, on_time = (limiter(redis_url, "nmap=2/second@scan", prefix) for _ in range(2))
    real = time.time
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: real() - 5)  # this machine's clock is 5 s behind
        first = [behind.admit("nmap", None, "org", f"Hostname|internet|{n}") for n in range(2)]
    assert all(a.allowed for a in first)

    refused = on_time.admit("nmap", None, "org", "Hostname|internet|3")
    assert not refused.allowed  # the window is the one the other machine filled
    with redis.Redis.from_url(redis_url) as client:
        now = server_clock(client)
    assert all(a.at is not None and now - timedelta(seconds=1) < a.at <= now for a in first)


def test_the_next_rooms_open_one_window_after_the_moments_that_hold_them(redis_url: str) -> None:
    gate = limiter(redis_url, "nmap=3/second;5/minute@scan", f"test-{uuid.uuid4().hex}")
    limit = limit_of(gate)
    first, second = (gate.admit("nmap", None, "org", f"Hostname|internet|{n}") for n in range(2))
    assert first.at is not None and second.at is not None

    openings, now = gate.openings(limit, "scan", 5)
    assert len(openings) == limit.capacity == 3  # never more than the tightest window holds
    assert openings[0] == now  # one room is free now
    assert openings[1:] == [first.at + timedelta(seconds=1), second.at + timedelta(seconds=1)]

    third = gate.admit("nmap", None, "org", "Hostname|internet|2")
    assert third.at is not None
    openings, _ = gate.openings(limit, "scan", 3)
    # Three more need three rooms in every part: the minute's (5, three held) has two, so the
    # third opens when the first start leaves the minute's window.
    assert openings == [
        first.at + timedelta(seconds=1),
        second.at + timedelta(seconds=1),
        first.at + timedelta(minutes=1),
    ]
    assert not gate.admit("nmap", None, "org", "Hostname|internet|3").allowed  # a hint: nothing was counted
