"""What KAT's events turn into: boefje tasks, cancellations, normalizer tasks.

Called by :class:`~kat_scheduler.events.consumer.EventConsumer` with a batch of validated events
of one queue; the work a batch causes (claims, publishes, cancellations, schedules disabled) is
done before the handler returns, and only then are the messages acked. Recording it (rows marked
published, new schedules) is the :class:`~kat_scheduler.events.bookkeeping.Bookkeeper`'s, which
the listener runs on a thread of its own, so the next batch starts meanwhile.

Events consult our own record only (schedules, live tasks, our history, and ``bytes_runs``: Bytes'
newest run per pair as the last planning tick saw it), never Bytes itself: the planner turned
Bytes' history into schedules for the pairs eligible then, and keeps the newest run of every other
object of that history in ``bytes_runs``, so a mutation storm costs no Bytes calls; the plugin
lists come from a short-lived cache, so it costs almost no Katalogus calls either. Whether a pair
is due is :func:`kat_scheduler.rules.is_due`'s, from our own last run or, for a pair without one,
Bytes' newest run (running, stalled, grace, interval, cron), as on every other path.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError

from kat_scheduler.clients import OctopoesClient, OrganisationNotFound, ServiceError
from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.dispatch.dispatcher import Claim, Dispatchable, Dispatcher
from kat_scheduler.dispatch.messages import dispatchable as normalizer_dispatchable
from kat_scheduler.dispatch.publishing import OutgoingMessage, Publisher
from kat_scheduler.events.bookkeeping import Bookkeeper
from kat_scheduler.events.consumer import Rejected, Send, TransientError, Write
from kat_scheduler.events.deschedule import Descheduler
from kat_scheduler.events.recording_handler import RecordingHandler
from kat_scheduler.limiting.capacity import ListenerBudget
from kat_scheduler.models.events import MutationOperation, RawFileReceived, ScanProfileMutation
from kat_scheduler.models.ooi import OOI
from kat_scheduler.models.producers import ProducerName
from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.planning.candidates import (
    BoefjeIndex,
    Candidate,
    boefje_dispatchable,
    interleave,
    rank_pair,
)
from kat_scheduler.planning.reactions import (
    NOTHING_KNOWN,
    Folded,
    Known,
    Queued,
    Step,
    claim_spans,
    fold_pair,
    in_force,
    mutation_steps,
    normalizers_for_raw,
)
from kat_scheduler.producers.recording import LISTENER_RECORD_INTERVAL, ThrottledRecorder
from kat_scheduler.queues import RAW_FILE_RECEIVED, SCAN_PROFILE_MUTATIONS
from kat_scheduler.rules import (
    SkipReason,
    Trigger,
)
from kat_scheduler.rules.identity import boefje_task_hash, normalizer_task_hash
from kat_scheduler.rules.payloads import normalizer_payload
from kat_scheduler.rules.ranking import Rank, rank_normalizer
from kat_scheduler.settings import Settings
from kat_scheduler.storage.bytes_runs import BytesRunStore, SeenRun
from kat_scheduler.storage.object_events import Fence, ObjectEventStore, ObjectKey, event_key
from kat_scheduler.storage.producers import ProducerRunStore
from kat_scheduler.storage.schedules import NewSchedule, ScheduleStore
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.storage.tasks import NewTask, TaskStore
from kat_scheduler.storage.waiting import WaitingStore

logger = logging.getLogger(__name__)


@dataclass
class HandlerStats:
    events: int = 0
    queued: int = 0
    cancelled: int = 0
    #: Objects another listener process had handled lately: their state was read from Octopoes.
    contested: int = 0
    schedules_disabled: int = 0
    #: Of ``queued``, the tasks of rate-limited groups left waiting for their window (not published).
    rate_limited: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


class _Base:
    def __init__(
        self,
        plugins: PluginCache,
        tasks: TaskStore,
        schedules: ScheduleStore,
        publisher: Publisher,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        bookkeeper: Bookkeeper | None = None,
    ) -> None:
        self.plugins = plugins
        self.bookkeeper = bookkeeper or Bookkeeper(threaded=False)
        self.tasks = tasks
        self.schedules = schedules
        self.bytes_runs = BytesRunStore(tasks.engine)
        self.dispatcher = Dispatcher(tasks, publisher)
        self.settings = settings
        self.clock = clock
        self.stats = HandlerStats()
        #: The stats and ``_unrecorded`` are shared with the bookkeeper's thread (schedule writes).
        self._lock = threading.Lock()
        #: Batches written and not yet sent. The listener runs a batch's stages in one go, so this is
        #: 0 when a batch writes; a caller of the stages (:class:`StagedHandler`) may overlap one
        #: batch's send with the next one's writes, which then wait here.
        self._sends = threading.Condition()
        self._unsent = 0
        #: Hashes whose schedule writes a written batch has not finished yet (the bookkeeper's).
        self._unrecorded: Counter[str] = Counter()

    def _count(self, skipped: Counter[str] | None = None, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self.stats, name, getattr(self.stats, name) + n)
            if skipped:
                self.stats.skipped.update(skipped)

    def _plugins_or_reject(
        self, org: str, fetch: Callable[[str], Any], indices: Sequence[int], rejected: list[Rejected]
    ) -> Any:
        """The organisation's plugins; ``None`` (events dead-lettered) when Katalogus does not know it."""
        try:
            return fetch(org)
        except OrganisationNotFound:
            reason = f"organisation {org!r} is unknown to Katalogus"
            logger.error("%s: %d event(s) dead-lettered", reason, len(indices))
            rejected.extend(Rejected(i, reason) for i in indices)
            return None
        except (ServiceError, ValidationError) as exc:
            raise TransientError(f"Katalogus: {exc}") from exc

    def __call__(self, queue: str, events: list[Any]) -> list[Rejected]:
        """Handle one batch: :meth:`plan` it, write it, send it."""
        return self.plan(queue, events)()()

    def plan(self, queue: str, events: list[Any]) -> Write:
        """Read and decide (may raise :class:`TransientError`); returns the batch's writes."""
        raise NotImplementedError

    def _claim(self, items: list[Dispatchable], messages: list[OutgoingMessage]) -> list[Claim]:
        """Claim ``items`` (``messages`` are theirs, prepared), a span at a time; what each span won.

        A task whose hash is live already loses its claim and is counted as skipped ``live``.
        Should a span's claim fail, the spans claimed before it are un-claimed.
        """
        claims: list[Claim] = []
        try:
            for start, end in claim_spans(len(items), self.settings.batch_size):
                claim = self.dispatcher.claim(items[start:end], messages=messages[start:end])
                claims.append(claim)
                if claim.offered > len(claim.tasks):
                    self._count(Counter({str(SkipReason.LIVE): claim.offered - len(claim.tasks)}))
        except Exception:
            self._unclaim(claims)
            raise
        return claims

    def _send(self, claims: list[Claim]) -> list[NewTask]:
        """Publish what ``claims`` won, in order; the tasks published.

        Marking them published is left to the bookkeeper. When a publish fails, the rows certainly
        not sent are un-claimed (those of the claims after it too) and :class:`TransientError`
        is raised; what may have been sent stays listed for the reaper.
        """
        published: list[NewTask] = []
        for n, claim in enumerate(claims):
            result = self.dispatcher.publish(claim, mark=False)
            if result.published_tasks:
                self.bookkeeper.submit(
                    "mark published", partial(self.tasks.mark_published, [t.id for t in result.published_tasks])
                )
            if result.errors:
                self._unclaim(claims[n + 1 :])
                raise TransientError(f"publishing failed: {result.errors[0]}")
            published.extend(result.published_tasks)
        self._count(queued=len(published))
        return published

    def _unclaim(self, claims: list[Claim]) -> None:
        """Free the rows of ``claims`` (never sent); when that fails too, they are left for the reaper."""
        try:
            self.dispatcher.unclaim(claims)
        except Exception:
            logger.exception(
                "un-claiming %d tasks that were never sent failed; the reaper will publish them",
                sum(len(claim.tasks) for claim in claims),
            )

    def _sending(self) -> Callable[[], None]:
        """Count a batch as written and not yet sent; returns what its send calls when it ends."""
        with self._sends:
            self._unsent += 1

        def done() -> None:
            with self._sends:
                self._unsent -= 1
                self._sends.notify_all()

        return done

    def _wait_for_sends(self) -> None:
        """Wait until every batch written before this one is sent (its bookkeeping submitted)."""
        with self._sends:
            self._sends.wait_for(lambda: self._unsent == 0)


#: Octopoes look-ups of contested objects at once.
CONTESTED_LOOKUPS = 8
#: Seconds between prunes of ``object_events`` by one listener.
PRUNE_INTERVAL = 60.0


@dataclass
class _Objects:
    """The objects of a batch of mutations: each one's pair hashes and last operation; the boefjes per organisation."""

    hashes: dict[ObjectKey, set[str]] = field(default_factory=dict)
    operations: dict[ObjectKey, MutationOperation] = field(default_factory=dict)
    #: Each object's last event, as ``object_events`` keeps it (:func:`event_key`).
    last_events: dict[ObjectKey, str] = field(default_factory=dict)
    indexes: dict[str, BoefjeIndex] = field(default_factory=dict)
    #: Objects with an event the broker delivered before (it may come after later ones).
    redelivered: set[ObjectKey] = field(default_factory=set)

    def add(self, organisation: str, event: ScanProfileMutation) -> set[str]:
        """Count ``event`` as its object's last word; the set of its object's pair hashes."""
        key = (organisation, event.primary_key)
        self.operations[key] = event.operation
        level = None if event.value is None else event.value.scan_level
        self.last_events[key] = event_key(event.operation.value, level)
        if event.redelivered:
            self.redelivered.add(key)
        return self.hashes.setdefault(key, set())

    def object_of(self) -> dict[str, ObjectKey]:
        return {hash_: key for key, hashes in self.hashes.items() for hash_ in hashes}


class MutationHandler(_Base):
    """``scan_profile_mutations`` → boefje tasks for the object, or cancellations.

    A batch means what its events one at a time in order would: per pair (boefje, object,
    organisation) its events are steps (:func:`~kat_scheduler.planning.reactions.mutation_steps`),
    folded from what the database holds (:func:`~kat_scheduler.planning.reactions.fold_pair`), so
    the last word wins and every word before it counts (a level drop cancels what it no longer
    clears, even when a raise follows in the same batch).

    The plan is pure (the plugin lists aside): the events as steps per pair. The writes read
    and decide and then write, in batch order and only once the batches before are written, so
    they read what those left: live tasks, then schedules and history (a task that finishes
    after its hash was read as live is skipped, not queued again inside its grace period); a
    pair whose schedule an earlier batch still has to record waits for that. Then cancellations,
    disabled schedules and claims. The send (publishes, then the bookkeeping: rows marked
    published, schedules) comes last; the listener calls the three in one go, batch after batch.

    Rate limits: every task a batch decides to queue is claimed (an event is not replayed by a next
    run), but of a rate-limited group only what it may start now is published; its other tasks
    wait for their window as a worker's put-back leaves them, and the worker nodes' release sends
    them as room opens (:class:`~kat_scheduler.limiting.capacity.ListenerBudget`).

    With ``order`` (and ``octopoes``), several listener processes may consume the queue at once
    (:mod:`kat_scheduler.storage.object_events`): the writes of a batch hold its objects, so the
    batches of one object are written one after another, and an object another listener handled
    within the reorder window is taken as Octopoes holds it now, not as this batch's events (which
    may be older than that listener's) say; so is one this listener handled within the window when
    the broker delivered its event before (``redelivered``: a killed listener's or a failed batch's
    events, which may come after later ones), or after a failed batch of this listener's. Its
    schedule writes after the ack are kept only for the objects no other listener has handled since.
    """

    def __init__(
        self,
        plugins: PluginCache,
        tasks: TaskStore,
        schedules: ScheduleStore,
        publisher: Publisher,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        bookkeeper: Bookkeeper | None = None,
        *,
        octopoes: OctopoesClient | None = None,
        order: ObjectEventStore | None = None,
    ) -> None:
        super().__init__(plugins, tasks, schedules, publisher, settings, clock, bookkeeper)
        if (octopoes is None) != (order is None):
            raise ValueError("ordering objects across listener processes needs both octopoes and order")
        self.octopoes = octopoes
        self.order = order
        self._pruned_at = time.monotonic()
        #: What a rate-limited group cannot start now waits for its window (claimed, not published);
        #: tasks held for a pop are never published, so never held back.
        self.budget = (
            ListenerBudget(None, {}) if SchedulerId.BOEFJE in self.dispatcher.pull else ListenerBudget.of(settings)
        )
        self.waiting = WaitingStore(tasks.engine)

    def plan(self, queue: str, events: list[ScanProfileMutation]) -> Write:
        try:
            return self._plan(events)
        except BaseException:
            self._failed()
            raise

    def _failed(self) -> None:
        """A batch failed (it goes back on the queue): its objects may be handled out of order."""
        if self.order is not None:
            self.order.after_failure()

    def _plan(self, events: list[ScanProfileMutation]) -> Write:
        now = self.clock()
        rejected: list[Rejected] = []
        by_org: dict[str, list[int]] = defaultdict(list)
        for i, event in enumerate(events):
            by_org[event.client_id].append(i)
        self.plugins.prefetch("boefje", by_org)  # the uncached ones at once, not one after another
        steps: dict[str, list[Step]] = {}
        org_of: dict[str, str] = {}
        objects = _Objects()
        reasons: Counter[SkipReason] = Counter()
        for org, indices in by_org.items():
            boefjes = self._plugins_or_reject(org, self.plugins.boefjes, indices, rejected)
            if boefjes is None:
                continue
            index = objects.indexes[org] = BoefjeIndex(boefjes)
            for i in indices:  # in batch order within each organisation (hashes include it)
                hashes = objects.add(org, events[i])
                for hash_, step in mutation_steps(org, index, events[i], reasons):
                    hashes.add(hash_)
                    pair_steps = steps.get(hash_)
                    if pair_steps is None:
                        steps[hash_] = [step]
                        org_of[hash_] = org
                    else:
                        pair_steps.append(step)
        self._count(Counter({str(k): v for k, v in reasons.items()}), events=len(events))
        return partial(self._write, steps, org_of, objects, rejected, now)

    def _write(
        self,
        steps: dict[str, list[Step]],
        org_of: dict[str, str],
        objects: _Objects,
        rejected: list[Rejected],
        now: datetime,
    ) -> Send:
        with self._lock:
            unrecorded = not self._unrecorded.keys().isdisjoint(steps)
        if unrecorded:
            # An earlier batch's schedule writes for these pairs go first: they are submitted when
            # it is sent, and once they are all submitted, written.
            self._wait_for_sends()
            self.bookkeeper.flush()
        fence = self.order.enter(objects.last_events, objects.redelivered) if self.order is not None else Fence()
        try:
            if fence.contested:
                fence.applied(self._settle_contested(fence.contested, steps, org_of, objects, now))
            send = self._write_held(steps, org_of, objects, rejected, now)
        except BaseException:
            self._failed()
            fence.release(written=False)
            raise
        fence.release()
        self._prune_now_and_then()
        return send

    def _settle_contested(
        self,
        contested: set[ObjectKey],
        steps: dict[str, list[Step]],
        org_of: dict[str, str],
        objects: _Objects,
        now: datetime,
    ) -> dict[ObjectKey, str]:
        """The steps of each contested object: one event that says what Octopoes holds now.

        Another listener handled the object within the window, maybe a newer event of it than this
        batch's, so this batch's events may be stale; Octopoes' state now is what the newest event
        said (or something newer still, whose event follows). An object Octopoes no longer holds is
        withdrawn as by a delete; one it holds is weighed as an update at its level now (a create
        when this batch's last word was a create), so a ``run_on`` boefje keeps its operation.
        Returns that event of each (:func:`event_key`).
        """
        octopoes = self.octopoes
        assert octopoes is not None  # set with order (see __init__)
        keys = sorted(contested)

        def lookup(key: ObjectKey) -> OOI | None:
            return octopoes.get_object(key[0], key[1], valid_time=now)

        try:
            with ThreadPoolExecutor(max_workers=min(CONTESTED_LOOKUPS, len(keys))) as pool:
                found = list(pool.map(lookup, keys))
        except (ServiceError, ValidationError) as exc:
            raise TransientError(f"Octopoes: {exc}") from exc
        counted_already: Counter[SkipReason] = Counter()  # the plan counted this batch's skips
        applied: dict[ObjectKey, str] = {}
        for key, ooi in zip(keys, found, strict=True):
            org, primary_key = key
            for hash_ in objects.hashes[key]:
                steps.pop(hash_, None)
            if ooi is None:
                now_held = ScanProfileMutation(
                    operation=MutationOperation.DELETE, primary_key=primary_key, client_id=org
                )
            else:
                last = objects.operations[key]
                operation = MutationOperation.CREATE if last == MutationOperation.CREATE else MutationOperation.UPDATE
                now_held = ScanProfileMutation(operation=operation, primary_key=primary_key, client_id=org, value=ooi)
            applied[key] = event_key(now_held.operation.value, None if ooi is None else ooi.scan_level)
            hashes = objects.hashes[key] = set()
            for hash_, step in mutation_steps(org, objects.indexes[org], now_held, counted_already):
                hashes.add(hash_)
                steps.setdefault(hash_, []).append(step)
                org_of[hash_] = org
        self._count(contested=len(keys))
        return applied

    def _prune_now_and_then(self) -> None:
        """Now and then, on the bookkeeping thread: forget ``object_events`` rows too old to contest."""
        if self.order is None or time.monotonic() - self._pruned_at < PRUNE_INTERVAL:
            return
        self._pruned_at = time.monotonic()
        self.bookkeeper.submit("prune object_events", self.order.prune)

    def _write_held(
        self,
        steps: dict[str, list[Step]],
        org_of: dict[str, str],
        objects: _Objects,
        rejected: list[Rejected],
        now: datetime,
    ) -> Send:
        """The batch's writes, its objects held: cancellations, disabled schedules, claims."""
        known = self._known(steps, now)
        reasons: Counter[SkipReason] = Counter()
        folded = {
            h: fold_pair(org_of[h], pair_steps, known[h], now=now, settings=self.settings, skipped=reasons)
            for h, pair_steps in steps.items()
        }
        self._count(Counter({str(k): v for k, v in reasons.items()}))
        per_org: dict[str, list[Candidate]] = defaultdict(list)
        ranks: dict[tuple[str, Trigger, datetime | None], Rank] = {}
        disable: list[str] = []
        for hash_, out in folded.items():
            if out.disable and out.schedule is None:
                disable.append(hash_)
            if out.queue is not None:
                per_org[org_of[hash_]].append(self._candidate(org_of[hash_], out.queue, ranks, now))
        if disable:
            disabled = self.schedules.disable_hashes(disable, "object deleted or scan level too low", now=now)
            self._count(schedules_disabled=disabled)
        candidates = list(interleave([sorted(c, key=lambda c: c.sort_key) for c in per_org.values()]))
        items = [boefje_dispatchable(c) for c in candidates]
        claims = self._claim(items, self.dispatcher.prepare(items))
        claims, waiting = self._hold_back(claims, candidates)
        recording = [h for h, out in folded.items() if out.schedule is not None]
        with self._lock:
            self._unrecorded.update(recording)
        sent = self._sending()
        return partial(self._send_mutations, claims, waiting, folded, recording, objects, sent, rejected, now)

    def _hold_back(self, claims: list[Claim], candidates: list[Candidate]) -> tuple[list[Claim], set[str]]:
        """Of the claimed tasks of rate-limited groups, those a group cannot start now wait for its
        window (:class:`~kat_scheduler.limiting.capacity.ListenerBudget`): an event is not replayed,
        so they stay claimed, and the worker nodes' release sends them as room opens. The claims
        less them, and their hashes. Should that fail, the claims are un-claimed (the batch is
        handled again)."""
        if self.budget.limiter is None or not self.budget.any_limited(candidates):
            return claims, set()
        by_hash = {c.hash: c for c in candidates}
        try:
            holds = self.budget.hold_back([(t.id, by_hash[t.hash]) for claim in claims for t in claim.tasks])
            if not holds:
                return claims, set()
            self.waiting.hold({task_id: (h.limit, h.group, h.until) for task_id, h in holds.items()})
        except BaseException as exc:
            self._unclaim(claims)
            if isinstance(exc, RedisError):
                raise TransientError(f"rate limits: {exc}") from exc
            raise
        self._count(queued=len(holds), rate_limited=len(holds))
        waiting = {t.hash for claim in claims for t in claim.tasks if t.id in holds}
        return [claim.without(holds.keys()) for claim in claims], waiting

    def _known(self, steps: dict[str, list[Step]], now: datetime) -> dict[str, Known]:
        """What the database holds for each pair of ``steps``; cancels the live tasks the steps withdraw.

        Live tasks are read first, then schedules and history. A cancelled task's pair weighed
        again after its withdrawal is read again: a running task stays live, and one that ended
        meanwhile is history.
        """
        hashes = list(steps)
        live = self.tasks.live_hashes(hashes)
        withdrawn: set[str] = set()
        weighed: list[str] = []
        for h, pair_steps in steps.items():
            nones = sum(step is None for step in pair_steps) if len(pair_steps) > 1 else int(pair_steps[0] is None)
            if nones < len(pair_steps):
                weighed.append(h)
            if nones:
                withdrawn.add(h)
        states = self.schedules.states(hashes)
        history = self.tasks.last_runs(weighed) if weighed else {}
        cancel = [h for h in hashes if h in live and h in withdrawn]
        running: set[str] = set()
        if cancel:
            self._count(cancelled=len(self.tasks.cancel_hashes(cancel, now=now)))
            again = [h for h in cancel if _weighed_after_withdrawal(steps[h])]
            if again:
                running = self.tasks.live_hashes(again)
                history.update(self.tasks.last_runs(again))

        # Bytes' newest run is read for a weighed pair our own record does not cover: no history
        # of ours, and (unless withdrawn first) not live nor within its schedule.
        uncovered = [
            h
            for h in weighed
            if h not in history and (h in withdrawn or not (h in live or in_force(states.get(h), now)))
        ]
        bytes_runs = self.bytes_runs.newest(uncovered) if uncovered else {}
        known: dict[str, Known] = {}
        for h in hashes:
            if h in live or h in states or h in history or h in bytes_runs:
                known[h] = Known(h in live, h in running, states.get(h), history.get(h), bytes_runs.get(h))
            else:
                known[h] = NOTHING_KNOWN  # a new object's pairs, most of a storm of creates
        return known

    def _candidate(
        self, org: str, queue: Queued, ranks: dict[tuple[str, Trigger, datetime | None], Rank], now: datetime
    ) -> Candidate:
        pair = queue.pair
        # A rank depends on the pair only through its boefje: a storm of new objects ranks each
        # boefje once per batch (the ranker is pure, so this changes nothing).
        key = (pair.boefje.id, queue.trigger, queue.last_ended)
        rank = ranks.get(key)
        if rank is None:
            rank = ranks[key] = rank_pair(pair, queue.trigger, queue.last_ended, now, self.settings.grace_period)
        return Candidate(
            organisation=org,
            boefje=pair.boefje,
            input_ooi=pair.ooi.primary_key,
            hash=pair.hash,
            rank=rank,
            trigger=queue.trigger,
        )

    def _send_mutations(
        self,
        claims: list[Claim],
        waiting: set[str],
        folded: dict[str, Folded],
        recording: list[str],
        objects: _Objects,
        sent: Callable[[], None],
        rejected: list[Rejected],
        now: datetime,
    ) -> list[Rejected]:
        submitted = False
        try:
            queued = {t.hash for t in self._send(claims)} | waiting
            # A schedule written by the step that queued a task is written once that task is sent.
            schedules = [
                out.schedule
                for h, out in folded.items()
                if out.schedule is not None and (not out.schedule_if_queued or h in queued)
            ]
            disable = [h for h, out in folded.items() if out.schedule is not None and out.disable]
            if schedules or disable:
                record = partial(self._record_schedules, schedules, disable, recording, objects, now)
                self.bookkeeper.submit("schedules", record)
                submitted = True
            return rejected
        except BaseException:
            self._failed()
            raise
        finally:
            if not submitted:
                self._recorded(recording)
            sent()  # only now: a later batch's writes on these pairs wait for this batch's schedule writes

    def _record_schedules(
        self, schedules: list[NewSchedule], disable: list[str], recording: list[str], objects: _Objects, now: datetime
    ) -> None:
        """Write the schedules of a sent batch, then disable those its last word withdrew.

        With ``order``, only for the objects no other listener has handled since this batch did
        (that listener's batch decided them after this one), held until they are written.
        """
        try:
            if self.order is None:
                self._write_schedules(schedules, disable, now)
                return
            object_of = objects.object_of()
            keys = {object_of[h] for h in [s.hash for s in schedules] + disable if h in object_of}
            with self.order.held(keys) as held:

                def kept(hash_: str) -> bool:
                    return hash_ not in object_of or object_of[hash_] in held

                self._write_schedules([s for s in schedules if kept(s.hash)], [h for h in disable if kept(h)], now)
        finally:
            self._recorded(recording)

    def _write_schedules(self, schedules: list[NewSchedule], disable: list[str], now: datetime) -> None:
        self.schedules.upsert(schedules, now=now)
        if disable:
            disabled = self.schedules.disable_hashes(disable, "object deleted or scan level too low", now=now)
            self._count(schedules_disabled=disabled)

    def _recorded(self, hashes: list[str]) -> None:
        with self._lock:
            self._unrecorded.subtract(hashes)
            for hash_ in hashes:
                if self._unrecorded[hash_] <= 0:
                    del self._unrecorded[hash_]


def _weighed_after_withdrawal(steps: list[Step]) -> bool:
    """Whether a pair's steps weigh it after the first step that withdraws it."""
    first = next(i for i, step in enumerate(steps) if step is None)
    return any(step is not None for step in steps[first + 1 :])


class RawFileHandler(_Base):
    """``raw_file_received`` → one normalizer task per enabled normalizer consuming the file's types;
    a file tagged ``openkat/deschedule`` also deschedules its pair (:mod:`kat_scheduler.events.deschedule`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.descheduler = Descheduler(self.plugins, self.tasks, self.schedules, self.settings)

    def plan(self, queue: str, events: list[RawFileReceived]) -> Write:
        now = self.clock()
        rejected: list[Rejected] = []
        by_org: dict[str, list[int]] = defaultdict(list)
        for i, event in enumerate(events):
            by_org[event.organization].append(i)
        self.plugins.prefetch("normalizer", by_org)
        items: list[tuple[tuple[int, int, str], Dispatchable]] = []
        for org, indices in by_org.items():
            normalizers = self._plugins_or_reject(org, self.plugins.normalizers, indices, rejected)
            if normalizers is None:
                continue
            for i in indices:
                items.extend(self._tasks_for(org, events[i], normalizers, now))
        self._count(events=len(events))
        deschedule = self.descheduler.plan(events, skip={r.index for r in rejected})
        runs = reported_runs(events, skip={r.index for r in rejected})
        items.sort(key=lambda item: item[0])
        dispatchables = [d for _, d in items]
        messages = self.dispatcher.prepare(dispatchables)

        def write() -> Send:
            self.bytes_runs.record_reported(runs, now)
            done = deschedule(now)
            self._count(done.skipped, cancelled=done.cancelled, schedules_disabled=done.descheduled)
            claims = self._claim(dispatchables, messages)

            def send() -> list[Rejected]:
                self._send(claims)
                return rejected

            return send

        return write

    def _tasks_for(
        self, org: str, event: RawFileReceived, normalizers: Any, now: datetime
    ) -> list[tuple[tuple[int, int, str], Dispatchable]]:
        raw = event.raw_data
        if raw.is_error:
            self._count(Counter({"error raw file": 1}))
            return []
        chosen = normalizers_for_raw(normalizers, raw)
        if not chosen:
            self._count(Counter({"no normalizer": 1}))
            return []
        raw_json = raw.model_dump(mode="json")
        rank = rank_normalizer(event.created_at, now)
        out = []
        for normalizer in chosen:
            task_id = uuid.uuid4()
            task = NewTask(
                id=task_id,
                scheduler_id=SchedulerId.NORMALIZER,
                type="normalizer",
                organisation=org,
                plugin_id=normalizer.id,
                input_ooi=raw.boefje_meta.input_ooi,
                hash=normalizer_task_hash(normalizer.id, str(raw.boefje_meta.id), org),
                band=rank.band,
                priority=rank.score,
                data=normalizer_payload(task_id, normalizer, raw_json),
                reason=rank.reason,
            )
            dispatchable = normalizer_dispatchable(task, raw_id=str(raw.id))
            out.append(((rank.band, rank.score, task.hash), dispatchable))
        return out


def reported_runs(events: Sequence[RawFileReceived], skip: Collection[int] = ()) -> list[SeenRun]:
    """The boefje runs that ``events``' raw files come from, as Bytes holds them (a BoefjeMeta has
    its start and, once the run ended, its end): Bytes' history of those pairs changed since a tick
    listed it, whoever ran them, and the mutation handler and due schedules read it from there."""
    runs = []
    for index, event in enumerate(events):
        meta = event.raw_data.boefje_meta
        if index in skip or meta.started_at is None:
            continue
        org = event.organization
        runs.append(
            SeenRun(
                boefje_task_hash(meta.boefje.id, org, meta.input_ooi),
                org,
                meta.boefje.id,
                meta.input_ooi or "",
                meta.started_at,
                meta.ended_at,
            )
        )
    return runs


def listener_summary(handlers: Mapping[str, _Base], since: datetime) -> dict[str, Any]:
    """What the listener's handlers did since ``since`` (this process's start), for ``producer_runs``."""
    stats = [handler.stats for handler in handlers.values()]
    return {
        "since": since.isoformat(),
        "events": {queue: handler.stats.events for queue, handler in handlers.items()},
        "queued": sum(s.queued for s in stats),
        "cancelled": sum(s.cancelled for s in stats),
        "contested": sum(s.contested for s in stats),
        "schedules_disabled": sum(s.schedules_disabled for s in stats),
        "rate_limited": sum(s.rate_limited for s in stats),
    }


def listener_name() -> str:
    """This listener process among others: host, process id and a part drawn once per process."""
    global _listener_name
    if _listener_name is None or _listener_name[0] != os.getpid():
        _listener_name = (os.getpid(), f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    return _listener_name[1]


_listener_name: tuple[int, str] | None = None


def make_handlers(
    plugins: PluginCache,
    tasks: TaskStore,
    schedules: ScheduleStore,
    publisher: Publisher,
    settings: Settings,
    *,
    record_runs: bool = True,
    record_interval: float = LISTENER_RECORD_INTERVAL,
    bookkeeper: Bookkeeper | None = None,
    octopoes: OctopoesClient | None = None,
) -> dict[str, Any]:
    """The handler per event queue, for :class:`~kat_scheduler.events.consumer.EventConsumer`.

    With ``record_runs``, each handler records the listener's run in ``producer_runs`` after a
    batch, at most once per ``record_interval`` seconds (shared by both queues); recording never
    fails a batch. With ``octopoes``, the mutation handler keeps per-object order with other
    listener processes on the same database (``object_events``, under :func:`listener_name`).
    """
    order = None if octopoes is None else ObjectEventStore(tasks.engine, listener_name())
    mutations = MutationHandler(
        plugins, tasks, schedules, publisher, settings, bookkeeper=bookkeeper, octopoes=octopoes, order=order
    )
    handlers: dict[str, MutationHandler | RawFileHandler] = {
        SCAN_PROFILE_MUTATIONS: mutations,
        RAW_FILE_RECEIVED: RawFileHandler(plugins, tasks, schedules, publisher, settings, bookkeeper=bookkeeper),
    }
    if not record_runs:
        return dict(handlers)
    runs = ProducerRunStore(tasks.engine)
    recorder = ThrottledRecorder(ProducerName.LISTENER, lambda: runs, min_interval=record_interval)
    since = utcnow()

    def summary() -> dict[str, Any]:
        return listener_summary(handlers, since)

    return {queue: RecordingHandler(handler, recorder, summary) for queue, handler in handlers.items()}
