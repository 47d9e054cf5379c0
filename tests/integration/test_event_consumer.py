"""The event consumer against real brokers: batches, dead letters, retries, crashes, reconnects.

Events are published as KAT publishes them (plain JSON on the default exchange, routing key =
queue name, durable queue) and consumed by :class:`EventConsumer` with a fake handler.

RabbitMQ tests run on the run's own vhost ``kat_test_<run id>_events`` (see tests/conftest.py),
and only our four queues are deleted before and after each test. Redis tests use the run's
``redis_url`` database, flushed around each test.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from kat_scheduler.events.consumer import (
    EventConsumer,
    Rejected,
    TransientError,
    dead_letter_queue,
    run_listener,
)
from kat_scheduler.queues import RAW_FILE_RECEIVED, SCAN_PROFILE_MUTATIONS
from kat_scheduler.settings import load_settings
from tests.consumer_script import DONE, STARTED, event_key
from tests.events import (
    EVENTS_VHOST,
    FakeHandler,
    assert_nothing_left,
    consuming,
    counted,
    depth,
    key,
    mutation,
    publish,
    raw_file,
    take_all,
)
from tests.workers import ROOT, stop, wait_for


@pytest.fixture(params=["amqp", "redis"])
def broker(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("amqp_events" if request.param == "amqp" else "redis_url")  # type: ignore[no-any-return]


# --- tests ----------------------------------------------------------------------------------


def test_handlers_only_for_the_event_queues() -> None:
    with pytest.raises(ValueError, match="octopoes"):
        EventConsumer("memory://", {"octopoes": FakeHandler()})
    with pytest.raises(ValueError):
        EventConsumer("memory://", {})


def test_a_burst_reaches_the_handler_in_batches(broker: str) -> None:
    # How the first batch is cut depends on how fast messages come in (a batch goes once quiet for
    # its window or at its maximum age: tests/unit/test_event_batches.py). What waits behind a
    # busy handler does not: the first batch is held until a whole batch has come in behind it,
    # which must then go as one full batch.
    publish(broker, SCAN_PROFILE_MUTATIONS, [mutation(n) for n in range(1000)])
    release = threading.Event()
    handler = FakeHandler(before=lambda number: release.wait(60) if number == 1 else None)
    consumer = EventConsumer(broker, {SCAN_PROFILE_MUTATIONS: handler, RAW_FILE_RECEIVED: handler}, batch_size=200)

    with consuming(consumer):
        assert wait_for(lambda: len(handler.calls) == 1, 20), consumer.stats()
        first = len(handler.calls[0].keys)
        assert wait_for(lambda: consumer.stats()["received"] >= first + 200, 20), consumer.stats()
        release.set()
        # kombu's Redis transport takes a few round trips per message: on a busy machine, 1000 can
        # take well over 10 s
        assert wait_for(counted(consumer, acked=1000), 60), consumer.stats()

    assert sorted(handler.handled()) == sorted(key(n) for n in range(1000))  # each exactly once
    sizes = [len(call.keys) for call in handler.calls]
    assert sizes[1] == 200 and max(sizes) <= 200, sizes  # what waited went as a full batch, none larger
    assert consumer.stats() == {
        "received": 1000,
        "acked": 1000,
        "dead_lettered": 0,
        "requeued": 0,
        "batches": len(handler.calls),
        "reconnects": 0,
    }
    assert_nothing_left(broker, SCAN_PROFILE_MUTATIONS)


def test_the_next_batch_is_received_while_one_is_handled_and_batches_never_overlap(broker: str) -> None:
    publish(broker, SCAN_PROFILE_MUTATIONS, [mutation(n) for n in range(600)])
    running = threading.Lock()
    overlapped: list[int] = []
    received_meanwhile: list[int] = []
    consumer: EventConsumer

    def slow(number: int) -> None:
        if not running.acquire(blocking=False):
            overlapped.append(number)
            return
        try:
            before = consumer.stats()["received"]
            time.sleep(0.3)
            received_meanwhile.append(consumer.stats()["received"] - before)
        finally:
            running.release()

    handler = FakeHandler(before=slow)
    consumer = EventConsumer(broker, {SCAN_PROFILE_MUTATIONS: handler}, batch_size=100)
    with consuming(consumer):
        assert wait_for(counted(consumer, acked=600), 30), consumer.stats()

    assert overlapped == []
    assert handler.handled() == [key(n) for n in range(600)]  # one batch after another, in order
    assert any(count > 0 for count in received_meanwhile[:-1]), received_meanwhile


class StagedFake:
    """A staged handler that logs when each batch's plan, writes and send start and end."""

    def __init__(self, stage_seconds: float = 0.15, fail_plan: set[int] | None = None) -> None:
        self.stage_seconds = stage_seconds
        self.fail_plan = fail_plan or set()
        self.log: list[tuple[str, int, float]] = []  # (what, batch number, monotonic time)
        self.written: list[str] = []
        self.sent: list[str] = []
        self.batches = 0

    def __call__(self, queue: str, events: list[Any]) -> list[Rejected]:
        return self.plan(queue, events)()()

    def plan(self, queue: str, events: list[Any]) -> Callable[[], Callable[[], list[Rejected]]]:
        self.batches += 1
        number = self.batches
        self.log.append(("plan", number, time.monotonic()))
        time.sleep(0.05)
        if number in self.fail_plan:
            raise TransientError(f"plan {number} failed")
        keys = [event_key(event) for event in events]
        self.log.append(("planned", number, time.monotonic()))

        def write() -> Callable[[], list[Rejected]]:
            self.log.append(("write", number, time.monotonic()))
            time.sleep(self.stage_seconds)
            self.written.extend(keys)
            self.log.append(("written", number, time.monotonic()))
            return send

        def send() -> list[Rejected]:
            self.log.append(("send", number, time.monotonic()))
            time.sleep(self.stage_seconds)
            self.sent.extend(keys)
            self.log.append(("sent", number, time.monotonic()))
            return []

        return write

    def at(self, what: str, number: int) -> float:
        return next(t for w, n, t in self.log if (w, n) == (what, number))


def test_a_staged_handler_is_called_whole_one_batch_at_a_time_in_order(broker: str) -> None:
    publish(broker, SCAN_PROFILE_MUTATIONS, [mutation(n) for n in range(600)])
    handler = StagedFake(stage_seconds=0.05)
    consumer = EventConsumer(broker, {SCAN_PROFILE_MUTATIONS: handler}, batch_size=100)
    with consuming(consumer):
        assert wait_for(counted(consumer, acked=600), 30), consumer.stats()

    in_order = [key(n) for n in range(600)]
    assert handler.written == in_order and handler.sent == in_order  # each stage in order, each once
    batches = range(1, handler.batches + 1)
    # a batch is planned only once the batch before it is sent: never two in the handler at once
    assert all(handler.at("plan", n + 1) >= handler.at("sent", n) for n in batches[:-1]), handler.log
    assert consumer.prefetch == 2 * 100  # the batch in the handler and the next one


def test_a_staged_batch_is_acked_only_once_it_is_sent(broker: str) -> None:
    # The 50 events may come as one batch or, on a busy machine, as more: each batch is held
    # between its writes and its send, and none of it may be acked before it is sent.
    publish(broker, SCAN_PROFILE_MUTATIONS, [mutation(n) for n in range(50)])
    may_send = threading.Event()
    holding = threading.Event()
    at_send: list[tuple[int, int]] = []  # per batch: (events sent before it, events acked then)
    handler = StagedFake(stage_seconds=0.0)
    plan = handler.plan
    consumer: EventConsumer

    def held_send(queue: str, events: list[Any]) -> Callable[[], Callable[[], list[Rejected]]]:
        write = plan(queue, events)

        def held_write() -> Callable[[], list[Rejected]]:
            send = write()

            def held() -> list[Rejected]:
                holding.set()
                assert may_send.wait(10)
                at_send.append((len(handler.sent), consumer.stats()["acked"]))
                return send()

            return held

        return held_write

    handler.plan = held_send  # type: ignore[method-assign]
    consumer = EventConsumer(broker, {SCAN_PROFILE_MUTATIONS: handler}, batch_size=100)
    with consuming(consumer):
        assert wait_for(holding.is_set, 10), consumer.stats()
        assert handler.written and handler.sent == []
        # written, not sent: nothing is acked however long the send waits
        assert not wait_for(lambda: consumer.stats()["acked"] > 0, 0.3), consumer.stats()
        may_send.set()
        assert wait_for(counted(consumer, acked=50), 10), consumer.stats()
    assert handler.sent == [key(n) for n in range(50)]
    # when each batch was about to be sent, exactly the batches sent before it were acked
    assert at_send and all(sent == acked for sent, acked in at_send), at_send


def test_a_batch_whose_plan_fails_comes_back_and_the_batches_after_it_are_still_handled(broker: str) -> None:
    publish(broker, SCAN_PROFILE_MUTATIONS, [mutation(n) for n in range(300)])
    handler = StagedFake(stage_seconds=0.01, fail_plan={2})
    consumer = EventConsumer(broker, {SCAN_PROFILE_MUTATIONS: handler}, batch_size=100, min_backoff=0.05)
    with consuming(consumer):
        assert wait_for(counted(consumer, acked=300), 30), consumer.stats()

    assert sorted(handler.written) == sorted(key(n) for n in range(300))  # every event, once
    assert 0 < consumer.stats()["requeued"] <= 100  # batch 2 (the broker may cut it short), once


def test_poison_messages_are_dead_lettered_and_the_next_event_is_handled(
    broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    not_json = b"\xff\xfe{ not json"
    bad_operation = {"operation": "explode", "primary_key": "Hostname|internet|x", "client_id": "aa"}
    no_raw_data = {"event_id": "raw_file_received", "organization": "aa"}
    publish(broker, SCAN_PROFILE_MUTATIONS, [mutation(1), not_json, bad_operation, mutation(2)])
    publish(broker, RAW_FILE_RECEIVED, [no_raw_data, raw_file(1)])
    handler = FakeHandler()
    consumer = EventConsumer(broker, {SCAN_PROFILE_MUTATIONS: handler, RAW_FILE_RECEIVED: handler})

    with caplog.at_level(logging.ERROR, logger="kat_scheduler.events.consumer"), consuming(consumer):
        assert wait_for(counted(consumer, acked=3, dead_lettered=3), 10), consumer.stats()

    assert sorted(handler.handled()) == sorted([key(1), key(2), str(raw_file(1)["raw_data"]["id"])])
    [(first, first_headers), (second, second_headers)] = take_all(broker, dead_letter_queue(SCAN_PROFILE_MUTATIONS))
    assert first == not_json and json.loads(second) == bad_operation  # bodies as they came, in order
    assert first_headers["x-death-reason"].startswith("not JSON")
    assert second_headers["x-death-reason"].startswith("not a valid scan_profile_mutations event: operation")
    assert first_headers["x-original-queue"] == second_headers["x-original-queue"] == SCAN_PROFILE_MUTATIONS
    [(body, headers)] = take_all(broker, dead_letter_queue(RAW_FILE_RECEIVED))
    assert json.loads(body) == no_raw_data
    assert "raw_data" in headers["x-death-reason"] and headers["x-original-queue"] == RAW_FILE_RECEIVED
    logged = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(logged) == 3 and any("not JSON" in message for message in logged)
    assert_nothing_left(broker, SCAN_PROFILE_MUTATIONS, RAW_FILE_RECEIVED)


def test_rejected_events_are_dead_lettered_and_the_rest_acked(amqp_events: str) -> None:
    publish(amqp_events, SCAN_PROFILE_MUTATIONS, [mutation(n) for n in range(10)])
    refused = {key(3), key(7)}
    handler = FakeHandler(reject=lambda event: "organisation gone" if event.primary_key in refused else None)
    consumer = EventConsumer(amqp_events, {SCAN_PROFILE_MUTATIONS: handler})

    with consuming(consumer):
        assert wait_for(counted(consumer, acked=8, dead_lettered=2), 10), consumer.stats()

    assert sorted(handler.handled()) == sorted(key(n) for n in range(10))
    dead = take_all(amqp_events, dead_letter_queue(SCAN_PROFILE_MUTATIONS))
    assert {json.loads(body)["primary_key"] for body, _ in dead} == refused
    assert {headers["x-death-reason"] for _, headers in dead} == {"organisation gone"}
    assert_nothing_left(amqp_events, SCAN_PROFILE_MUTATIONS)


def test_acking_a_batch_at_once_never_acks_the_other_queue_or_what_failed(broker: str) -> None:
    # On RabbitMQ a handled batch is acked with one ``multiple`` ack. The raw files' first batch
    # fails while mutations with poison and a rejection around them are acked: had that ack
    # covered the raw files' deliveries too, they would be gone instead of handled on the retry.
    for n in range(20):
        publish(broker, SCAN_PROFILE_MUTATIONS, [b"not json" if n == 5 else mutation(n)])
        publish(broker, RAW_FILE_RECEIVED, [raw_file(n)])
    mutations = FakeHandler(reject=lambda event: "gone" if event.primary_key == key(9) else None)
    raws = FakeHandler(fail={1: TransientError("Katalogus is down")})
    consumer = EventConsumer(
        broker, {SCAN_PROFILE_MUTATIONS: mutations, RAW_FILE_RECEIVED: raws}, batch_size=8, min_backoff=0.1
    )

    with consuming(consumer):
        assert wait_for(counted(consumer, acked=18 + 20, dead_lettered=2), 15), consumer.stats()

    assert sorted(mutations.handled()) == sorted(key(n) for n in range(20) if n != 5)
    assert sorted(raws.handled()) == sorted(str(raw_file(n)["raw_data"]["id"]) for n in range(20))
    assert raws.calls[0].failed and consumer.stats()["requeued"] >= 1
    assert len(take_all(broker, dead_letter_queue(SCAN_PROFILE_MUTATIONS))) == 2
    assert_nothing_left(broker, SCAN_PROFILE_MUTATIONS, RAW_FILE_RECEIVED)


def test_failed_batches_come_back_after_a_growing_backoff(amqp_events: str, caplog: pytest.LogCaptureFixture) -> None:
    publish(amqp_events, SCAN_PROFILE_MUTATIONS, [mutation(n) for n in range(20)])
    handler = FakeHandler(
        fail={1: TransientError("octopoes is down"), 2: RuntimeError("a bug"), 4: TransientError("down again")}
    )
    consumer = EventConsumer(amqp_events, {SCAN_PROFILE_MUTATIONS: handler}, min_backoff=0.2, max_backoff=5)

    with caplog.at_level(logging.WARNING, logger="kat_scheduler.events.consumer"), consuming(consumer):
        assert wait_for(counted(consumer, acked=20), 10), consumer.stats()
        # after a success the backoff starts over
        publish(amqp_events, SCAN_PROFILE_MUTATIONS, [mutation(n) for n in range(20, 25)])
        assert wait_for(counted(consumer, acked=25), 10), consumer.stats()

    calls = handler.calls
    assert [call.failed for call in calls[:2]] == [True, True] and not calls[2].failed
    assert sorted(handler.handled()) == sorted(key(n) for n in range(25))  # nothing lost, none twice
    failed_keys = {k for call in calls[:2] for k in call.keys}
    assert failed_keys <= set(handler.handled())  # the failed events came back
    assert consumer.stats()["requeued"] == sum(len(call.keys) for call in calls if call.failed)
    assert calls[1].at - calls[0].at >= 0.2
    assert calls[2].at - calls[1].at >= 0.4  # doubled
    assert calls[3].failed and 0.2 <= calls[4].at - calls[3].at < 0.7  # reset to 0.2, not 0.8
    assert any("octopoes is down" in record.getMessage() for record in caplog.records)
    [bug] = [record for record in caplog.records if record.exc_info]  # unexpected: with traceback
    assert "a bug" in str(bug.exc_info[1])  # type: ignore[index]
    assert_nothing_left(amqp_events, SCAN_PROFILE_MUTATIONS)


@contextlib.contextmanager
def script(log: Path, queue_uri: str, record_url: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``tests/consumer_script.py`` in a process of its own, its output in ``log``."""
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.consumer_script", queue_uri, record_url, *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            stop(process)


def test_a_killed_consumer_loses_nothing(amqp_events: str, redis_url: str, tmp_path: Path) -> None:
    publish(amqp_events, SCAN_PROFILE_MUTATIONS, [mutation(n) for n in range(300)])
    record = redis.Redis.from_url(redis_url, decode_responses=True)
    log = tmp_path / "consumer.log"
    with script(log, amqp_events, redis_url, "--batch-size", "50", "--sleep", "1.5") as process:
        # the first batch is acked once the second one is in the handler: kill it there
        assert wait_for(lambda: record.llen(STARTED) >= 100, 20), log.read_text()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
    done_first = set(record.lrange(DONE, 0, -1))
    in_flight = set(record.lrange(STARTED, 0, -1)) - done_first
    assert len(done_first) == 50 and len(in_flight) == 50

    # the broker takes back everything the dead consumer had not acked
    assert wait_for(lambda: depth(amqp_events, SCAN_PROFILE_MUTATIONS) == 250, 5)
    handler = FakeHandler()
    consumer = EventConsumer(amqp_events, {SCAN_PROFILE_MUTATIONS: handler})
    with consuming(consumer):
        assert wait_for(counted(consumer, acked=250), 10), consumer.stats()

    second = handler.handled()
    assert done_first | set(second) == {key(n) for n in range(300)}  # every event handled at least once
    assert in_flight <= set(second)  # the batch cut off in the handler was handled again
    assert not done_first & set(second) and len(second) == len(set(second))  # acked means gone
    assert_nothing_left(amqp_events, SCAN_PROFILE_MUTATIONS)


def test_the_listener_leaves_the_process_switch_interval_alone(amqp_events: str) -> None:
    seen: list[float] = []
    stop_event = threading.Event()

    def handler(queue: str, events: list[Any]) -> list[Rejected]:
        seen.append(sys.getswitchinterval())
        stop_event.set()
        return []

    before = sys.getswitchinterval()
    publish(amqp_events, SCAN_PROFILE_MUTATIONS, [mutation(1)])
    thread = threading.Thread(
        target=run_listener, args=(load_settings(queue_uri=amqp_events), {SCAN_PROFILE_MUTATIONS: handler}, stop_event)
    )
    thread.start()
    thread.join(30)

    assert not thread.is_alive() and seen == [before]
    assert sys.getswitchinterval() == before


def test_sigterm_finishes_the_current_batch_and_leaves_the_rest(
    amqp_events: str, redis_url: str, tmp_path: Path
) -> None:
    publish(amqp_events, SCAN_PROFILE_MUTATIONS, [mutation(n) for n in range(300)])
    record = redis.Redis.from_url(redis_url, decode_responses=True)
    log = tmp_path / "listener.log"
    with script(log, amqp_events, redis_url, "--listener", "--sleep", "1.5") as process:  # run_listener
        assert wait_for(lambda: record.llen(STARTED) > 0, 20), log.read_text()
        publish(amqp_events, SCAN_PROFILE_MUTATIONS, [mutation(n) for n in range(300, 400)])  # arrive mid-batch
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(10) == 0, log.read_text()
    assert "SIGTERM: stopping after the current batch" in log.read_text()

    started, done = record.lrange(STARTED, 0, -1), record.lrange(DONE, 0, -1)
    assert started == done and len(done) > 0  # the batch in the handler was finished, not abandoned
    assert depth(amqp_events, SCAN_PROFILE_MUTATIONS) == 400 - len(done)  # the rest is back on the queue


def test_a_second_sigterm_exits_at_once_and_the_batch_in_the_handler_comes_back(
    amqp_events: str, redis_url: str, tmp_path: Path
) -> None:
    publish(amqp_events, SCAN_PROFILE_MUTATIONS, [mutation(n) for n in range(100)])
    record = redis.Redis.from_url(redis_url, decode_responses=True)
    log = tmp_path / "listener.log"
    with script(log, amqp_events, redis_url, "--listener", "--sleep", "30") as process:
        assert wait_for(lambda: record.llen(STARTED) > 0, 20), log.read_text()
        os.killpg(process.pid, signal.SIGTERM)
        time.sleep(0.3)
        started = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
        assert time.monotonic() - started < 5, log.read_text()  # not after the 30 s batch
    assert record.llen(DONE) == 0
    assert wait_for(lambda: depth(amqp_events, SCAN_PROFILE_MUTATIONS) == 100, 10)  # nothing acked, all back


def close_our_connections() -> None:
    """Have RabbitMQ close every connection on our vhost, as a broker restart would."""
    listed = subprocess.run(
        ["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "pid", "vhost"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    for line in listed.stdout.splitlines():
        pid, _, vhost = line.partition("\t")
        if vhost.strip() == EVENTS_VHOST:
            subprocess.run(["rabbitmqctl", "close_connection", pid, "test: connection lost"], timeout=30, check=False)


def test_a_lost_connection_is_reopened_and_the_batch_handled_again(amqp_events: str) -> None:
    if urlsplit(amqp_events).path != f"/{EVENTS_VHOST}" or not shutil.which("rabbitmqctl"):
        pytest.skip("needs rabbitmqctl and the kat_test_events vhost, to close only our own connection")
    publish(amqp_events, SCAN_PROFILE_MUTATIONS, [mutation(n) for n in range(50)])
    handler = FakeHandler(before=lambda number: close_our_connections() if number == 1 else None)
    consumer = EventConsumer(amqp_events, {SCAN_PROFILE_MUTATIONS: handler}, min_backoff=0.1)
    everything = {key(n) for n in range(50)}

    def handled_after_the_first_batch() -> set[str]:
        return {k for call in handler.calls[1:] for k in call.keys}

    with consuming(consumer):
        # the first batch's acks went to a closed connection: the broker gives it all back
        assert wait_for(lambda: handled_after_the_first_batch() == everything, 15), consumer.stats()

    assert consumer.stats()["reconnects"] >= 1
    assert set(handler.calls[0].keys) <= handled_after_the_first_batch()
    assert_nothing_left(amqp_events, SCAN_PROFILE_MUTATIONS)


@pytest.mark.parametrize("url", ["amqp://guest:guest@127.0.0.1:1//", "redis://127.0.0.1:1/0"])
def test_an_unreachable_broker_is_retried_until_stopped(url: str) -> None:
    consumer = EventConsumer(url, {SCAN_PROFILE_MUTATIONS: FakeHandler()}, min_backoff=0.05, max_backoff=0.1)
    with consuming(consumer):
        assert wait_for(lambda: consumer.stats()["reconnects"] >= 3, 5), consumer.stats()


def test_an_idle_connected_listener_keeps_its_heartbeat_fresh(broker: str, tmp_path: Path) -> None:
    from kat_scheduler.runtime.heartbeat import Heartbeat, age

    alive = tmp_path / "alive"
    consumer = EventConsumer(broker, {SCAN_PROFILE_MUTATIONS: FakeHandler()}, heartbeat=Heartbeat(alive, every=0.2))
    with consuming(consumer):
        assert wait_for(alive.exists, 10), "the heartbeat file was never touched"
        first = alive.stat().st_mtime_ns
        assert wait_for(lambda: alive.stat().st_mtime_ns > first, 5), "an idle listener stopped beating"
    seconds = age(alive)
    assert seconds is not None and seconds < 5


def test_a_listener_stuck_in_its_handler_stops_beating_and_beats_again_after(
    amqp_events: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kat_scheduler.events import consumer as consumer_module
    from kat_scheduler.runtime.heartbeat import Heartbeat

    monkeypatch.setattr(consumer_module, "STALLED_AFTER", 0.5)
    alive = tmp_path / "alive"
    hanging = threading.Event()  # the first batch's handler hangs until the test lets it go
    handler = FakeHandler(before=lambda number: hanging.wait(30) if number == 1 else None)
    consumer = EventConsumer(amqp_events, {SCAN_PROFILE_MUTATIONS: handler}, heartbeat=Heartbeat(alive, every=0.1))
    with consuming(consumer):
        assert wait_for(alive.exists, 10)
        publish(amqp_events, SCAN_PROFILE_MUTATIONS, [mutation(1)])
        assert wait_for(lambda: len(handler.calls) == 1, 10)
        time.sleep(1.0)  # past STALLED_AFTER: the beats stop while the handler hangs
        stuck_at = alive.stat().st_mtime_ns
        time.sleep(1.0)
        assert alive.stat().st_mtime_ns == stuck_at
        hanging.set()
        assert wait_for(counted(consumer, acked=1), 10)
        assert wait_for(lambda: alive.stat().st_mtime_ns > stuck_at, 5), "no beat after the batch was done"


def test_a_listener_that_cannot_reach_its_broker_does_not_beat(tmp_path: Path) -> None:
    from kat_scheduler.runtime.heartbeat import Heartbeat

    alive = tmp_path / "alive"
    consumer = EventConsumer(
        "redis://127.0.0.1:1/0",
        {SCAN_PROFILE_MUTATIONS: FakeHandler()},
        min_backoff=0.05,
        max_backoff=0.1,
        heartbeat=Heartbeat(alive, every=0.1),
    )
    with consuming(consumer):
        assert wait_for(lambda: consumer.stats()["reconnects"] >= 3, 5)
    assert not alive.exists(), "a heartbeat must mean connected and consuming"
