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
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from pydantic import ValidationError

from kat_scheduler import ids
from kat_scheduler.clients import OrganisationNotFound, ServiceError
from kat_scheduler.dispatch import Claim, Dispatchable, Dispatcher
from kat_scheduler.events.bookkeeping import Bookkeeper
from kat_scheduler.events.consumer import Rejected, Send, TransientError, Write
from kat_scheduler.events.recording import RecordingHandler
from kat_scheduler.models.events import MutationOperation, RawFileReceived, ScanProfileMutation
from kat_scheduler.models.producers import ProducerName
from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.planning.candidates import (
    BoefjeIndex,
    Candidate,
    Pair,
    boefje_dispatchable,
    interleave,
    new_boefje_schedule,
    rank_pair,
)
from kat_scheduler.planning.reactions import (
    hashes_of_object,
    hashes_without_clearance,
    mutation_pairs,
    normalizers_for_raw,
)
from kat_scheduler.plugin_cache import PluginCache
from kat_scheduler.publisher import OutgoingMessage, Publisher
from kat_scheduler.queues import Queue, TaskName
from kat_scheduler.recording import LISTENER_RECORD_INTERVAL, ThrottledRecorder
from kat_scheduler.rules import (
    NOT_DUE_SKIP,
    BytesRun,
    NotDueReason,
    SkipReason,
    Trigger,
    boefje_facts,
    counted_from,
    is_due,
)
from kat_scheduler.rules.identity import normalizer_task_hash
from kat_scheduler.rules.payloads import normalizer_message_kwargs, normalizer_payload
from kat_scheduler.rules.ranking import Rank, rank_normalizer
from kat_scheduler.settings import Settings
from kat_scheduler.storage.bytes_runs import BytesRunStore
from kat_scheduler.storage.producers import ProducerRunStore
from kat_scheduler.storage.schedules import NewSchedule, ScheduleState, ScheduleStore
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.storage.tasks import NewTask, TaskStore
from kat_scheduler.timing import period

logger = logging.getLogger(__name__)

SCAN_PROFILE_MUTATIONS = "scan_profile_mutations"
RAW_FILE_RECEIVED = "raw_file_received"


@dataclass
class HandlerStats:
    events: int = 0
    queued: int = 0
    cancelled: int = 0
    schedules_disabled: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, eq=False)  # compared by identity: each batch removes its own
class _Unwritten:
    """A planned batch whose writes have not finished: the hashes it queues and those it cancels."""

    queues: frozenset[str]
    cancels: frozenset[str]


def _ahead(batches: list[_Unwritten]) -> tuple[set[str], set[str]]:
    """What the writes of ``batches`` (in order) will leave: hashes live, and hashes cancelled."""
    live: set[str] = set()
    cancelled: set[str] = set()
    for batch in batches:
        live = (live - batch.cancels) | batch.queues
        cancelled = (cancelled | batch.cancels) - batch.queues
    return live, cancelled


def _in_force(state: ScheduleState | None, now: datetime) -> bool:
    """Whether a pair's schedule keeps it from running now (enabled, its deadline still ahead)."""
    return state is not None and state.enabled and state.deadline_at is not None and state.deadline_at > now


def _spans(count: int, size: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans of about ``size`` covering ``count`` items; a short tail joins the last.

    A batch of events makes a little more than one claim's worth of tasks as often as not (500
    events, 1,025 tasks): a tail of 25 would cost a claim, a commit and a publish of its own.
    So a tail under half of ``size`` goes with the span before it (spans stay under 1.5 ``size``).
    """
    starts = list(range(0, count, size))
    if len(starts) > 1 and count - starts[-1] < size / 2:
        starts.pop()
    return [(start, starts[i + 1] if i + 1 < len(starts) else count) for i, start in enumerate(starts)]


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
        #: The plan and the writes of different batches run on different threads.
        self._lock = threading.Lock()
        self._unwritten: list[_Unwritten] = []
        #: Batches written and not yet sent (the send of one overlaps the writes of the next).
        self._sends = threading.Condition()
        self._unsent = 0

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
            for start, end in _spans(len(items), self.settings.batch_size):
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
        ids_ = [task.id for claim in claims for task in claim.tasks]
        if not ids_:
            return
        try:
            self.tasks.unclaim(ids_)
        except Exception:
            logger.exception(
                "un-claiming %d tasks that were never sent failed; the reaper will publish them", len(ids_)
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


class MutationHandler(_Base):
    """``scan_profile_mutations`` → boefje tasks for the object, or cancellations.

    The plan reads (plugins; live tasks, then schedules and history) and decides; the writes
    (cancellations, claims) come after, in batch order, so a delete in one batch is never
    overtaken by a create of the batch before, and the send (publishes, then the bookkeeping)
    last. A batch's cancellations may be written before the batch before it is sent: a worker
    skips a message whose row is cancelled. A plan may run before the writes of the
    batches before it are done, so it reads the database as those writes will leave it: a hash
    an earlier batch queues counts as live, one it cancels as not live with its schedule
    disabled. Live tasks are read before history, as the planner does: a task that finishes
    after the plan read it as live is skipped, not queued again inside its grace period.
    """

    def plan(self, queue: str, events: list[ScanProfileMutation]) -> Write:
        now = self.clock()
        rejected: list[Rejected] = []
        by_org: dict[str, list[int]] = defaultdict(list)
        for i, event in enumerate(events):
            by_org[event.client_id].append(i)
        self.plugins.prefetch("boefje", by_org)  # the uncached ones at once, not one after another
        # 1. Pure: per organisation, the pairs the mutations may run and the hashes they make wrong.
        pairs_by_org: dict[str, list[Pair]] = {}
        cancel: list[str] = []
        skipped: Counter[str] = Counter()
        for org, indices in by_org.items():
            boefjes = self._plugins_or_reject(org, self.plugins.boefjes, indices, rejected)
            if boefjes is None:
                continue
            # The last event per object wins: a burst of updates plans once, on the final level.
            latest: dict[str, ScanProfileMutation] = {}
            for i in indices:
                latest[events[i].primary_key] = events[i]
            pairs_by_org[org] = self._pairs(org, BoefjeIndex(boefjes), list(latest.values()), cancel, skipped)
        # 2. One statement each for the whole batch (hashes include the organisation), live tasks
        # first; then as the writes of the batches still ahead of this one will leave things.
        hashes = [p.hash for pairs in pairs_by_org.values() for p in pairs]
        with self._lock:
            live_ahead, cancelled_ahead = _ahead(self._unwritten)
        live = (self.tasks.live_hashes(hashes) - cancelled_ahead) | live_ahead if hashes else set()
        states = self.schedules.states(hashes) if hashes else {}
        for hash_ in cancelled_ahead & states.keys():
            states[hash_] = replace(states[hash_], enabled=False)
        history = self.tasks.last_runs(hashes) if hashes else {}
        # Bytes' newest run (as the last tick saw it) of the pairs our own record does not cover.
        uncovered = [h for h in hashes if h not in live and h not in history and not _in_force(states.get(h), now)]
        bytes_runs = self.bytes_runs.newest(uncovered) if uncovered else {}
        schedules: list[NewSchedule] = []
        ranks: dict[tuple[str, Trigger, datetime | None], Rank] = {}
        per_org = [
            self._decide(org, pairs, live, states, history, bytes_runs, schedules, ranks, now, skipped)
            for org, pairs in pairs_by_org.items()
        ]
        candidates = list(interleave(per_org))
        items = [boefje_dispatchable(c) for c in candidates]
        messages = self.dispatcher.prepare(items)
        self._count(skipped, events=len(events))
        unwritten = _Unwritten(frozenset(c.hash for c in candidates), frozenset(cancel))
        with self._lock:
            self._unwritten.append(unwritten)

        def write() -> Send:
            try:
                if cancel:
                    # An earlier batch's schedule writes go first: they are submitted when it is
                    # sent, and once they are all submitted, written.
                    self._wait_for_sends()
                    self.bookkeeper.flush()
                    cancelled = len(self.tasks.cancel_hashes(cancel, now=now))
                    disabled = self.schedules.disable_hashes(cancel, "object deleted or scan level too low", now=now)
                    self._count(cancelled=cancelled, schedules_disabled=disabled)
                claims = self._claim(items, messages)
                sent = self._sending()
            finally:
                with self._lock:
                    self._unwritten.remove(unwritten)
            return partial(send, claims, sent)

        def send(claims: list[Claim], sent: Callable[[], None]) -> list[Rejected]:
            try:
                queued = {t.hash for t in self._send(claims)}
                # A pair that has a schedule gets its next deadline now that it is queued. A new
                # pair gets none: once its task has run, the next planning tick writes its schedule
                # from that run (as it does for any pair with history and no schedule), and until
                # then its live task, then its history, keep it from running twice. So a storm of
                # new objects writes no schedules.
                schedules.extend(
                    new_boefje_schedule(c.organisation, c.boefje, c.input_ooi, c.hash, now, self.settings)
                    for c in candidates
                    if c.hash in states and c.hash in queued
                )
                if schedules:
                    self.bookkeeper.submit("schedules", lambda: self.schedules.upsert(schedules, now=now))
                return rejected
            finally:
                sent()  # only now: a later batch's disables wait for this batch's schedule writes

        return write

    def _pairs(
        self,
        org: str,
        index: BoefjeIndex,
        mutations: list[ScanProfileMutation],
        cancel: list[str],
        skipped: Counter[str],
    ) -> list[Pair]:
        pairs: list[Pair] = []
        for mutation in mutations:
            if mutation.operation == MutationOperation.DELETE or mutation.value is None:
                cancel.extend(hashes_of_object(org, index, mutation.primary_key))
                continue
            cancel.extend(hashes_without_clearance(org, index, mutation.value))
            reasons: Counter[SkipReason] = Counter()
            pairs.extend(mutation_pairs(org, index, mutation.value, mutation.operation, reasons))
            skipped.update({str(k): v for k, v in reasons.items()})
        return pairs

    def _decide(
        self,
        org: str,
        pairs: list[Pair],
        live: set[str],
        states: dict[str, ScheduleState],
        history: dict[str, datetime],
        bytes_runs: dict[str, BytesRun],
        schedules: list[NewSchedule],
        ranks: dict[tuple[str, Trigger, datetime | None], Rank],
        now: datetime,
        skipped: Counter[str],
    ) -> list[Candidate]:
        out: list[Candidate] = []
        default_grace = timedelta(seconds=self.settings.grace_period)
        stall_age = timedelta(seconds=self.settings.effective_bytes_stall_age)
        for pair in pairs:
            if pair.hash in live:
                skipped[str(SkipReason.LIVE)] += 1
                continue
            state = states.get(pair.hash)
            if _in_force(state, now):
                # The schedule's deadline is when the rules make the pair due (written from what
                # the planner knew, Bytes' history included).
                skipped[str(SkipReason.CRON if pair.boefje.cron else SkipReason.GRACE)] += 1
                continue
            last = history.get(pair.hash)
            # Our own last run, else Bytes' newest run as the last tick saw it (as the tick does).
            run = bytes_runs.get(pair.hash) if last is None else None
            if last is not None or run is not None:
                decision = is_due(
                    boefje_facts(
                        pair.boefje,
                        now=now,
                        last_ended=last,
                        bytes_run=run,
                        default_grace=default_grace,
                        stall_age=stall_age,
                    )
                )
                if not decision.due:
                    skipped[str(NOT_DUE_SKIP[NotDueReason(decision.reason)])] += 1
                    schedules.append(
                        new_boefje_schedule(
                            org,
                            pair.boefje,
                            pair.ooi.primary_key,
                            pair.hash,
                            counted_from(decision, run),
                            self.settings,
                        )
                    )
                    continue
                last = decision.last_ended
            if last is None and state is not None and state.enabled and state.deadline_at is not None:
                last = state.deadline_at - period(pair.boefje, self.settings.grace_period)
            trigger = Trigger.NEW_OBJECT if last is None else Trigger.SCHEDULE
            # A rank depends on the pair only through its boefje: a storm of new objects ranks
            # each boefje once per batch (the ranker is pure, so this changes nothing).
            key = (pair.boefje.id, trigger, last)
            rank = ranks.get(key)
            if rank is None:
                rank = ranks[key] = rank_pair(pair, trigger, last, now, self.settings.grace_period)
            out.append(
                Candidate(
                    organisation=org,
                    boefje=pair.boefje,
                    input_ooi=pair.ooi.primary_key,
                    hash=pair.hash,
                    rank=rank,
                    trigger=trigger,
                )
            )
        return sorted(out, key=lambda c: c.sort_key)


class RawFileHandler(_Base):
    """``raw_file_received`` → one normalizer task per enabled normalizer consuming the file's types."""

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
        items.sort(key=lambda item: item[0])
        dispatchables = [d for _, d in items]
        messages = self.dispatcher.prepare(dispatchables)

        def write() -> Send:
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
            task_id = ids.uuid4()
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
            kwargs = normalizer_message_kwargs(org, normalizer.id, str(raw.id))
            dispatchable = Dispatchable(task, TaskName.NORMALIZER_RUN.value, Queue.NORMALIZERS.value, kwargs)
            out.append(((rank.band, rank.score, task.hash), dispatchable))
        return out


def listener_summary(handlers: Mapping[str, _Base], since: datetime) -> dict[str, Any]:
    """What the listener's handlers did since ``since`` (this process's start), for ``producer_runs``."""
    stats = [handler.stats for handler in handlers.values()]
    return {
        "since": since.isoformat(),
        "events": {queue: handler.stats.events for queue, handler in handlers.items()},
        "queued": sum(s.queued for s in stats),
        "cancelled": sum(s.cancelled for s in stats),
        "schedules_disabled": sum(s.schedules_disabled for s in stats),
    }


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
) -> dict[str, Any]:
    """The handler per event queue, for :class:`~kat_scheduler.events.consumer.EventConsumer`.

    With ``record_runs``, each handler records the listener's run in ``producer_runs`` after a
    batch, at most once per ``record_interval`` seconds (shared by both queues); recording never
    fails a batch.
    """
    handlers: dict[str, MutationHandler | RawFileHandler] = {
        SCAN_PROFILE_MUTATIONS: MutationHandler(plugins, tasks, schedules, publisher, settings, bookkeeper=bookkeeper),
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
