"""Publishing waiting tasks again when their window opens: a thread in each worker node's main
process (started at ``worker_init``, like the node's heartbeat); one node's passes at a time, the
holder of the release lease (:class:`ReleaseThread`).

Each pass takes the waiting tasks whose time came, most urgent first (band, then priority, then
age), and per group publishes as many as the group has room for now and were not sent for
already: every node's releases count in a window of their own
(:meth:`RateLimiter.take_releases`), since a task published a moment ago has not started yet and
the starts' window still shows its room free. The others wait on: a window's worth each until its
own room in the group's next window opens (:meth:`RateLimiter.openings`, the most urgent in the
first), the rest for the windows after (the k-th of a group at ``capacity`` starts per window
``k // capacity`` windows later); but when tasks of the group already wait past this pass's
horizon (an earlier pass or the listener gave them those windows), the rest wait behind the last
of them (first filling the room the last one has left: a window left part empty is a room never
used, since no task is due before its time), so a pass gives no window after the next one more
than it can start (else each would find more due than it can start, and every pass would move
them all again). So a group's backlog is on the broker only as far as it can start; among the
tasks whose time came the more urgent go first (a task put back later can take a room from one
that waited), and beyond the next window's worth those a window has no room for wait behind the
group's queue. Between passes the thread sleeps until the earliest waiting time it knows (at most
``SCHEDULER_RATE_LIMIT_POLL`` seconds).

**The lead.** A group's next tasks go out ``SCHEDULER_RATE_LIMIT_LEAD`` seconds before their room
opens, so the time between release and start (a database transaction, the broker, a busy machine)
is not lost from every window. Each carries the moment its room opens (the Redis server's clock,
:meth:`RateLimiter.openings`) as the ``eta`` of Celery's message protocol 2: a worker's consumer
keeps a message with a future ``eta`` in its own timer, not in a pool process, and raises its
prefetch count by one meanwhile, so the worker keeps taking other messages (an unlimited task
starts in a free pool process at once) and hands the task to a pool process at that moment. The
message stays unacknowledged while it waits (``task_acks_late``): a worker that dies with it is
like a worker that dies with any reserved message (Redis restores it after the visibility
timeout, far longer than any lead; a warm shutdown restores it at once). In the pool process
:meth:`RateLimiter.admit` then waits only a few hundredths of a second at most
(:data:`~kat_scheduler.limiting.limiter.CLOCK_WAIT`: the worker machine's clock against the Redis
server's); a task whose room another node took first is put back by that worker, with the exact
time. Two nodes never release one task twice (the rows are locked, others skip them).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Engine

from kat_scheduler.dispatch.dispatcher import message_for
from kat_scheduler.dispatch.publishing import Publisher, PublishError
from kat_scheduler.limiting.limiter import LEAD_SLACK, RateLimiter
from kat_scheduler.rules.rate_limits import RateLimit, rate_limit
from kat_scheduler.storage.leases import LeaseStore
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.storage.waiting import Release, Waiting, WaitingStore

logger = logging.getLogger(__name__)

#: Waiting tasks read per pass.
BATCH = 1000
#: The shortest sleep between passes (when waiting tasks are due but another node holds them).
MIN_SLEEP = 0.01
#: Seconds the release lease lasts without renewal: how long the node that releases may hang or
#: be gone before another takes over (far more than a pass and a poll take).
LEASE = 6.0
#: The name of the release lease.
RELEASE_LEASE = "rate-limit-release"


class Releaser:
    """One node's release of waiting tasks (:meth:`release`: one pass)."""

    def __init__(self, engine: Engine, publisher: Publisher, limiter: RateLimiter) -> None:
        self.store = WaitingStore(engine)
        self.engine = engine
        self.publisher = publisher
        self.limiter = limiter

    def release(self, now: datetime | None = None) -> int:
        """Publish the waiting tasks whose time came and whose group has room; how many."""
        now = now or utcnow()
        # A room about to open (within the limiter's lead) counts as open: its tasks are
        # published now, with that moment as their eta (held by the worker's consumer until then).
        horizon = now + timedelta(seconds=self.limiter.lead)
        with self.store.releasing(horizon, BATCH) as release:
            # The listings stay locked until the end: a worker that puts a released task back
            # before then waits for this transaction (it locks the task first, and nothing here
            # waits for a task's lock), and no other node releases them.
            if not release.due:
                return 0
            publish, wait = self._split(release, horizon)
            sent: list[uuid.UUID] = []
            if publish:
                # The one message factory and the publisher contract, as the reaper republishes;
                # not Dispatcher.publish: it un-claims (deletes) rows certainly not sent and marks
                # the sent ones in a transaction of its own, where a waiting row must stay listed
                # and its listing is locked by this one.
                messages = [message_for(w.row, eta) for w, eta in publish]
                try:
                    self.publisher.publish(messages)
                    sent = [m.task_id for m in messages]
                except PublishError as exc:  # the rest stay listed: the next pass tries again
                    logger.error("rate limits: could not publish %d released tasks: %s", len(messages), exc)
                    sent = list(exc.published)
            release.released(sent)
            release.wait_more(wait)
        return len(sent)

    def _split(
        self, release: Release, horizon: datetime
    ) -> tuple[list[tuple[Waiting, datetime | None]], dict[uuid.UUID, datetime]]:
        """What to publish now (each with its ``eta``, ``None``: at once) and the new times of the
        rest."""
        groups: dict[tuple[str, str], list[Waiting]] = defaultdict(list)
        publish: list[tuple[Waiting, datetime | None]] = []
        for waiting in release.due:
            if waiting.limit is None or waiting.group is None:
                publish.append((waiting, None))
            else:
                groups[(waiting.limit, waiting.group)].append(waiting)
        wait: dict[uuid.UUID, datetime] = {}
        for (text, group), members in groups.items():
            limit = _parsed(text)
            if limit is None:
                publish.extend((waiting, None) for waiting in members)
                continue
            window = timedelta(seconds=min(limit.items, key=lambda item: item.amount).get_expiry())
            # The group's next rooms (a window's worth at most), earliest first, on the Redis
            # server's clock: the most urgent task takes the first. A room open by the horizon is
            # sent for now, with the moment it opens as the eta (held by the worker's consumer,
            # not a pool process, until then; none when it is open already); a task whose room
            # opens later waits for exactly that moment, and the others for the windows after.
            # (A start whose room is taken when it comes is put back by its worker, with the time.)
            openings, clock = self.limiter.openings(limit, group, min(limit.capacity, len(members)))
            ready = [at for at in openings if at <= max(horizon, clock)]  # the two clocks may differ
            etas = [None if at <= clock else at + timedelta(seconds=LEAD_SLACK) for at in ready]
            # What the passes before this one published may not have started yet (a start counts
            # only then): the release's own window says how much of the room is still to send.
            # Room not sent for now is sent by the first pass that window lets send it.
            wanted = len(ready)
            taken = self.limiter.take_releases(limit, group, wanted)
            publish.extend(zip(members[:taken], etas, strict=False))
            if taken < wanted:
                _, retry = self.limiter.release_room(limit, group)
                resend = retry + timedelta(seconds=self.limiter.lead)  # a pass reads to now + lead
                wait.update((waiting.row.id, resend) for waiting in members[taken:wanted])
            wait.update((waiting.row.id, at) for waiting, at in zip(members[wanted:], openings[wanted:], strict=False))
            # Beyond that window's worth, the rest wait for the windows after it, or behind the
            # group's tasks already given those (by a pass before this one, or the listener).
            later = members[len(openings) :]
            tail = release.tail(text, group, horizon, limit.capacity) if later else []
            times = _waiting_times(
                len(later), opens=openings[0] + window, capacity=limit.capacity, window=window, tail=tail
            )
            wait.update((waiting.row.id, at) for waiting, at in zip(later, times, strict=True))
        return publish, wait

    def next_at(self) -> datetime | None:
        return self.store.next_at()


def _waiting_times(
    count: int, *, opens: datetime, capacity: int, window: timedelta, tail: Sequence[datetime]
) -> list[datetime]:
    """The times of ``count`` tasks of a group beyond the window's worth that waits for its next
    rooms: the windows from ``opens`` (the one after those rooms) on, or, when ``tail`` (the latest
    times the group's tasks already wait until, latest first) reaches ``opens``, behind that queue,
    first filling the room its last window has left.

    Behind the queue, since else every window would find more due than it can start and each pass
    would move them all again; filling, since a window left part empty is a room never used (no
    task is due before its time), so a burst appended a few at a time (put back by workers, read by
    passes of several nodes) would leave the group starting fewer than its limit allows."""
    if not tail or tail[0] < opens:
        return [opens + (k // capacity) * window for k in range(count)]
    last = tail[0]
    filled = sum(1 for at in tail if at > last - window)
    times = [last] * min(max(capacity - filled, 0), count)
    times += [last + (1 + k // capacity) * window for k in range(count - len(times))]
    return times


def _parsed(text: str) -> RateLimit | None:
    try:
        return rate_limit(text)
    except ValueError:
        return None


class ReleaseThread:
    """Runs :class:`Releaser` passes from a daemon thread until :meth:`stop`, while this node holds
    the release lease.

    One node releases at a time: every node's thread starts, but only the holder of the lease
    ``rate-limit-release`` (:class:`~kat_scheduler.storage.leases.LeaseStore`, as beat's) passes;
    the others try to take it every ``poll`` seconds. The holder renews it every third of its
    ``lease`` seconds and gives it back when it stops (a warm shutdown), so another node takes over
    within a poll; a holder that dies or hangs loses it ``lease`` seconds after its last renewal.
    Several nodes passing at once would not release a task twice (the rows are locked), but each
    would wake for every room that opens and find the rows another holds: work for nothing in every
    worker node's main process, beside the consumer that feeds its pool.
    """

    def __init__(self, releaser: Releaser, poll: float, lease: float = LEASE) -> None:
        self.releaser = releaser
        self.poll = poll
        self.lease = lease
        self.leases = LeaseStore(releaser.engine)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: When this node last took or renewed the lease (monotonic seconds), None: not held.
        self.renewed: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Held during a pass; a fork of this process waits for it (no child inherits a pass midway).
        self._lock = threading.Lock()
        os.register_at_fork(before=self._lock.acquire, after_in_parent=self._lock.release, after_in_child=self._forked)

    @property
    def leading(self) -> bool:
        """Whether this node held the lease at its last look."""
        return self.renewed is not None

    def _forked(self) -> None:
        self._lock.release()
        self._stop.set()  # the thread does not exist in the child
        self.renewed = None  # nor does the lease: the parent holds it
        self.releaser.engine.dispose(close=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kat-scheduler-rate-limit-release", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.renewed is not None:
            self.renewed = None
            try:
                self.leases.release(RELEASE_LEASE, self.holder)
            except Exception as exc:  # the database is gone: the lease lapses
                logger.warning("rate limits: could not give back the release lease: %s", exc)

    def _lead(self) -> bool:
        """Renew the lease when a third of it has gone, or take it when free; whether this node
        holds it now."""
        now = time.monotonic()
        if self.renewed is not None and now - self.renewed < self.lease / 3:
            return True
        held = self.leases.acquire(RELEASE_LEASE, self.holder, ttl=self.lease)
        if not held and self.renewed is not None:
            logger.warning("rate limits: node %s lost the release lease (it lapsed); standing by", self.holder)
        self.renewed = now if held else None
        return held

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.wait(delay):
            try:
                with self._lock:
                    if not self._lead():
                        delay = self.poll
                        continue
                    self.releaser.release()
                    upcoming = self.releaser.next_at()
            except Exception:
                logger.exception("rate limits: releasing waiting tasks failed; trying again")
                delay = self.poll
                continue
            if upcoming is None:
                delay = self.poll
            else:
                lead = self.releaser.limiter.lead
                delay = min(max((upcoming - utcnow()).total_seconds() - lead, MIN_SLEEP), self.poll)
