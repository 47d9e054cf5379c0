"""The boefje producer: what to queue now, for which organisations, and the due schedules.

Per organisation and tick: one Katalogus call (its boefjes), one paged Octopoes listing of
every type those boefjes consume (scan levels from the lowest clearance any of them needs),
then per page of objects: the static rules (pure), one query for pairs that already have a
schedule, one for live tasks, one for our own history, and, only for pairs our history does not
cover, Bytes' history of that boefje in bulk (once per organisation and boefje, newest first,
only as far back as the grace period or the stall age; the newest run per object, ended or not).
Whether a pair is due is :func:`kat_scheduler.rules.is_due`'s, here as on every other path (due
schedules, events). Candidates are ranked and capped per organisation. The newest run of every
object of each history listed, eligible or not, is kept in ``bytes_runs`` after the publish, for
the event handlers (an object raised later); a boefje whose history no tick has listed yet is
listed once even when none of its pairs needs it.

``plan_threads`` organisations are planned at once, so one computes while others wait for a KAT
service or the database; each organisation's candidates are claimed on a background thread as
soon as it is planned (:class:`ClaimsAhead`). When all are planned, the claimed tasks are
published in batches, most urgent band first with organisations taking turns. The worker's
garbage collector is tuned at start (:mod:`kat_scheduler.collector`).

Every pair that is planned gets a schedule; re-runs then come from due schedules
(:meth:`BoefjePlanner.queue_due`), so a second tick queues nothing new and a restart causes no
rescan storm.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import ValidationError

from kat_scheduler.clients import KATClients, ServiceError
from kat_scheduler.dispatch import Claim, Dispatcher, DispatchResult
from kat_scheduler.models.ooi import OOI
from kat_scheduler.models.plugins import Boefje
from kat_scheduler.planning.candidates import (
    BOEFJE_QUEUE,
    BoefjeIndex,
    Candidate,
    Pair,
    TopK,
    boefje_dispatchable,
    interleave,
    new_boefje_schedule,
    pairs_for_page,
    rank_pair,
)
from kat_scheduler.producers.backpressure import read_backpressure
from kat_scheduler.rules import (
    NOT_DUE_SKIP,
    BytesRun,
    Decision,
    DueReason,
    NotDueReason,
    SkipReason,
    Trigger,
    boefje_facts,
    clearance_skip,
    counted_from,
    grace_period,
    is_due,
    static_skip,
)
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.ranking import BoefjeCandidate, Rank, rank_boefje
from kat_scheduler.settings import Settings
from kat_scheduler.storage.bytes_runs import BytesRunStore, SeenRun
from kat_scheduler.storage.schedules import NewSchedule, ScheduleStore
from kat_scheduler.storage.tables import ScheduleRow, utcnow
from kat_scheduler.storage.tasks import NewTask, TaskStore
from kat_scheduler.timing import next_cron, next_deadline, period

if TYPE_CHECKING:
    from kat_scheduler.publisher import OutgoingMessage, Publisher

logger = logging.getLogger(__name__)

#: Due schedules of one organisation up to this many are checked object by object; more, by listing.
PER_OBJECT_LOOKUP_LIMIT = 20


@dataclass
class OrgPlan:
    organisation: str
    candidates: list[Candidate] = field(default_factory=list)
    skipped: Counter[SkipReason] = field(default_factory=Counter)
    grace_schedules: list[NewSchedule] = field(default_factory=list)
    #: Bytes' newest run per object, by boefje, of every history this tick listed (kept in ``bytes_runs``).
    bytes_history: dict[str, dict[str, BytesRun]] = field(default_factory=dict)
    #: Katalogus plugins that do not validate (id → reason): skipped, the organisation planned.
    invalid_plugins: dict[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass
class PlanReport:
    """What a tick did (or, dry, would do)."""

    now: datetime
    dry_run: bool
    organisations: list[str] = field(default_factory=list)
    planned: list[Candidate] = field(default_factory=list)
    skipped: Counter[SkipReason] = field(default_factory=Counter)
    errors: dict[str, str] = field(default_factory=dict)
    #: Per organisation, the plugins that do not validate (id → reason).
    invalid_plugins: dict[str, dict[str, str]] = field(default_factory=dict)
    queue_depth: int | None = None
    #: Why the depth of the boefje queue could not be read (the low bands are then held back).
    queue_depth_error: str | None = None
    #: Backpressure held back the bands above :attr:`max_band` (a deep or unreadable queue).
    backpressure: bool = False
    max_band: int | None = None
    dispatch: DispatchResult = field(default_factory=DispatchResult)
    schedules_created: int = 0
    schedules_disabled: int = 0
    schedules_advanced: int = 0
    #: Bytes' newest runs kept in ``bytes_runs`` (every object of every history listed).
    bytes_runs_recorded: int = 0
    #: Wall-clock time the last message of this tick was handed to the broker.
    last_published_at: datetime | None = None
    #: Seconds spent per phase: planning, dispatch (claim + publish), bookkeeping.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def queued(self) -> int:
        return self.dispatch.published


def shown_reason(rank: Rank, decision: Decision) -> Rank:
    """The rank, saying "stalled run in Bytes" when that is why the pair is due (``plan --dry-run``)."""
    if decision.reason == DueReason.STALLED:
        return Rank(rank.band, rank.score, str(DueReason.STALLED))
    return rank


class ClaimsAhead:
    """Claims boefje candidates on a background thread while the caller goes on planning.

    The database does the work of a claim on a core of its own, so claiming one organisation's
    candidates overlaps with planning the next. :meth:`won` waits for the claims submitted since
    it was last called and says which candidates won their hash, with the task and message to
    publish. With no dispatcher (a dry run) nothing is claimed. A claim that fails re-raises from
    :meth:`won`; the planner then publishes what the other claims won before it gives up, and
    whatever is left unpublished is the reaper's, as any claim whose publish did not happen.
    """

    def __init__(self, dispatcher: Dispatcher | None, batch_size: int) -> None:
        self.dispatcher = dispatcher
        self.batch_size = batch_size
        self.offered = 0
        self._futures: list[Future[Claim]] = []
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="claim") if dispatcher is not None else None
        )

    def submit(self, candidates: Sequence[Candidate]) -> None:
        if self._executor is None or not candidates:
            return
        self.offered += len(candidates)
        for start in range(0, len(candidates), self.batch_size):
            self._futures.append(self._executor.submit(self._claim, candidates[start : start + self.batch_size]))

    def _claim(self, candidates: Sequence[Candidate]) -> Claim:
        assert self.dispatcher is not None
        claim = self.dispatcher.claim([boefje_dispatchable(c) for c in candidates])
        # The payloads are in the database now; only ids and hashes are needed until the publish,
        # which waits for every organisation: let them go now (a tenth of a cold tick's memory).
        return Claim(claim.offered, [replace(task, data={}) for task in claim.tasks], claim.messages)

    def won(self, *, strict: bool = True) -> tuple[dict[str, tuple[NewTask, OutgoingMessage]], int]:
        """Every task claimed since the last call and its message, by hash; and how many were offered.

        Waits for those claims. A claim that failed re-raises, or with ``strict=False`` is logged
        and skipped (to publish what the others won before giving up).
        """
        won: dict[str, tuple[NewTask, OutgoingMessage]] = {}
        futures, self._futures = self._futures, []
        offered, self.offered = self.offered, 0
        for future in futures:
            try:
                claim = future.result()
            except Exception as exc:
                if strict:
                    raise
                logger.error("a claim of this tick failed: %s", exc)
                continue
            won.update((task.hash, (task, message)) for task, message in zip(claim.tasks, claim.messages, strict=True))
        return won, offered

    def __enter__(self) -> ClaimsAhead:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def _interleaved(plans: Sequence[OrgPlan]) -> list[Candidate]:
    return list(interleave([plan.candidates for plan in plans]))


class BoefjePlanner:
    def __init__(
        self,
        clients: KATClients,
        tasks: TaskStore,
        schedules: ScheduleStore,
        settings: Settings,
        publisher: Publisher | None = None,
    ) -> None:
        self.clients = clients
        self.tasks = tasks
        self.schedules = schedules
        self.settings = settings
        self.publisher = publisher
        self.bytes_runs = BytesRunStore(tasks.engine)

    # --- the tick --------------------------------------------------------------------------

    def organisations(self) -> list[str]:
        return list(self.clients.katalogus.organisations())

    def plan(self, organisations: Sequence[str] | None, *, now: datetime, dry_run: bool = False) -> PlanReport:
        """Plan ``organisations`` (all of Katalogus' if ``None``) and, unless dry, queue the result."""
        return self._plan(organisations, now=now, dry_run=dry_run)

    def _plan(self, organisations: Sequence[str] | None, *, now: datetime, dry_run: bool) -> PlanReport:
        report = PlanReport(now=now, dry_run=dry_run)
        started = time.perf_counter()
        orgs = list(organisations) if organisations is not None else self.organisations()
        report.organisations = orgs
        max_band = self._backpressure(report)
        plans: list[OrgPlan] = []
        # Each organisation's candidates are final once it is planned (the cap is per organisation,
        # backpressure per band), so they are claimed in the background, by the database on another
        # core, while the next organisation is planned. Publishing waits for all: it interleaves.
        # Claimed rows wait unpublished only so long: a long tick publishes in rounds (each
        # interleaved), well before the reaper would take unpublished rows for lost.
        round_budget = self.settings.unpublished_after / 3
        with ClaimsAhead(None if dry_run else self._dispatcher(), self.settings.batch_size) as claims:
            pending: list[OrgPlan] = []  # planned and claimed, not yet published
            round_started: float | None = None
            try:
                for plan in self._plan_orgs(orgs, now):
                    if plan.error:
                        report.errors[plan.organisation] = plan.error
                    if plan.invalid_plugins:
                        report.invalid_plugins[plan.organisation] = plan.invalid_plugins
                    report.skipped.update(plan.skipped)
                    plan.candidates = self._keep_bands(plan.candidates, max_band, report)
                    plans.append(plan)
                    if dry_run:
                        continue
                    claims.submit(plan.candidates)
                    pending.append(plan)
                    round_started = round_started or time.monotonic()
                    if time.monotonic() - round_started >= round_budget:
                        self._publish(_interleaved(pending), claims, report, now)
                        pending, round_started = [], None
            except Exception:
                if pending:  # publish what was claimed, so no row waits for the reaper
                    try:
                        self._publish(_interleaved(pending), claims, report, now, strict=False)
                    except Exception:
                        logger.exception("could not publish what this tick claimed before it failed; the reaper will")
                raise
            report.planned = _interleaved(plans)
            report.timings["planning"] = time.perf_counter() - started
            if dry_run:
                return report
            self._publish(_interleaved(pending), claims, report, now)
        grace = [s for p in plans for s in p.grace_schedules]
        started = time.perf_counter()
        report.schedules_created += self.schedules.add_many(grace, now=now)
        report.bytes_runs_recorded = self._record_bytes_history(plans, now)
        report.timings["bookkeeping"] = report.timings.get("bookkeeping", 0.0) + time.perf_counter() - started
        return report

    def _plan_orgs(self, orgs: Sequence[str], now: datetime) -> Iterator[OrgPlan]:
        """The plans of ``orgs``, in their order, ``plan_threads`` organisations planned at once."""
        threads = min(self.settings.plan_threads, len(orgs))
        if threads <= 1:
            yield from (self.plan_org(org, now) for org in orgs)
            return
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="plan") as pool:
            yield from pool.map(lambda org: self.plan_org(org, now), orgs)

    def plan_org(self, organisation: str, now: datetime) -> OrgPlan:
        """The candidates of one organisation; a broken service answer is logged, not raised."""
        plan = OrgPlan(organisation)
        try:
            self._plan_org(plan, now)
        except (ServiceError, ValidationError) as exc:
            plan.error = f"{type(exc).__name__}: {exc}"
            plan.candidates = []
            plan.grace_schedules = []
            plan.bytes_history = {}
            logger.error("planning organisation %s failed, skipped this tick: %s", organisation, plan.error)
        return plan

    def _boefje_index(self, org: str) -> BoefjeIndex:
        """``org``'s boefjes; those Katalogus lists but that do not validate are named, not planned."""
        boefjes = self.clients.katalogus.boefjes(org)
        return BoefjeIndex(boefjes, {p.plugin_id: p.reason for p in boefjes.invalid})

    def _plan_org(self, plan: OrgPlan, now: datetime) -> None:
        org = plan.organisation
        index = self._boefje_index(org)
        plan.invalid_plugins = index.invalid
        plan.skipped[SkipReason.INVALID_PLUGIN] += len(index.invalid)
        if not index.any_enabled:
            return
        top = TopK(self.settings.org_cap_per_tick)
        bytes_history = plan.bytes_history
        pages = self.clients.octopoes.iter_objects(
            org,
            types=index.types,
            scan_levels=range(index.min_scan_level, 5),
            page_size=self.settings.batch_size,
            valid_time=now,
            on_invalid=lambda keys: plan.skipped.update({SkipReason.INVALID_OBJECT: len(keys)}),
        )
        for page in pages:
            pairs = pairs_for_page(org, index, page, plan.skipped, periodic=True)
            for candidate in self._filter_pairs(org, pairs, plan, bytes_history, now):
                top.push(candidate)
        # Histories this tick did not need are listed anyway (for bytes_runs, which events read) when
        # no tick has listed them yet (none of their pairs needed it), or when they held a run that
        # was going when seen and has passed the stall age since: did it end, or die?
        unlisted = [
            b for b in index.boefjes.values() if b.enabled and b.consumes and not b.run_on and b.id not in bytes_history
        ]
        if unlisted:
            stall_age = timedelta(seconds=self.settings.effective_bytes_stall_age)
            listed, overdue = self.bytes_runs.listing_state(org, now=now, stall_age=stall_age)
            for boefje in unlisted:
                if boefje.id not in listed or boefje.id in overdue:
                    self._bytes_run(org, boefje, "", bytes_history, now)
        plan.skipped[SkipReason.ORG_CAP] += top.dropped
        plan.candidates = top.sorted()

    def _filter_pairs(
        self,
        org: str,
        pairs: list[Pair],
        plan: OrgPlan,
        bytes_history: dict[str, dict[str, BytesRun]],
        now: datetime,
    ) -> Iterable[Candidate]:
        if not pairs:
            return []
        hashes = [p.hash for p in pairs]
        # Enabled schedules are the due-schedule producer's; a disabled one is open again, so a
        # boefje enabled again in Katalogus (no event says so) is found by the next tick.
        scheduled = self.schedules.existing_hashes(hashes, enabled_only=True)
        open_pairs = [p for p in pairs if p.hash not in scheduled]
        plan.skipped[SkipReason.SCHEDULED] += len(pairs) - len(open_pairs)
        live = self.tasks.live_hashes([p.hash for p in open_pairs])
        plan.skipped[SkipReason.LIVE] += len(live)
        open_pairs = [p for p in open_pairs if p.hash not in live]
        ours = self.tasks.last_runs([p.hash for p in open_pairs])
        grace = self.settings.grace_period
        default_grace = timedelta(seconds=grace)
        stall_age = timedelta(seconds=self.settings.effective_bytes_stall_age)
        out: list[Candidate] = []
        for pair in open_pairs:
            last = ours.get(pair.hash)
            # Bytes only for pairs our own history does not cover (fetched in bulk per boefje).
            run = (
                None
                if last is not None
                else self._bytes_run(org, pair.boefje, pair.ooi.primary_key, bytes_history, now)
            )
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
                plan.skipped[NOT_DUE_SKIP[NotDueReason(decision.reason)]] += 1
                plan.grace_schedules.append(
                    new_boefje_schedule(
                        org, pair.boefje, pair.ooi.primary_key, pair.hash, counted_from(decision, run), self.settings
                    )
                )
                continue
            out.append(
                Candidate(
                    organisation=org,
                    boefje=pair.boefje,
                    input_ooi=pair.ooi.primary_key,
                    hash=pair.hash,
                    rank=shown_reason(rank_pair(pair, Trigger.PLAN, decision.last_ended, now, grace), decision),
                    trigger=Trigger.PLAN,
                )
            )
        return out

    def _bytes_run(
        self, org: str, boefje: Boefje, input_ooi: str, cache: dict[str, dict[str, BytesRun]], now: datetime
    ) -> BytesRun | None:
        """Bytes' newest run of the pair, from its history fetched in bulk once per (organisation, boefje)."""
        if boefje.id not in cache:
            cache[boefje.id] = self._fetch_bytes_history(org, boefje, self._history_horizon(boefje, now))
        return cache[boefje.id].get(input_ooi)

    def _fetch_bytes_history(self, org: str, boefje: Boefje, horizon: datetime) -> dict[str, BytesRun]:
        """Bytes' newest run (by start, ended or not) per object of ``boefje``, back to ``horizon``."""
        newest: dict[str, BytesRun] = {}
        for page in self.clients.bytes.iter_run_times(org, boefje.id, page_size=self.settings.batch_size):
            oldest: datetime | None = None
            for meta in page:
                started = meta.started_at
                if meta.input_ooi and (started is not None or meta.ended_at is not None):
                    known = newest.get(meta.input_ooi)
                    # Newest first, so the first run seen is kept; a run stored while paging may
                    # shift a page and show an older one again, which loses this comparison.
                    if known is None or (
                        started is not None and (known.started_at is None or known.started_at < started)
                    ):
                        newest[meta.input_ooi] = BytesRun(started, meta.ended_at)
                if started is not None and (oldest is None or started < oldest):
                    oldest = started
            if oldest is not None and oldest < horizon:
                break  # newest first: older runs cannot change any decision
        return newest

    def _record_bytes_history(self, plans: Sequence[OrgPlan], now: datetime) -> int:
        """Keep Bytes' newest run of every object in the histories this tick listed (``bytes_runs``).

        Every object, not only those eligible now: an event that raises an object's level later
        reads it there (:class:`~kat_scheduler.events.handlers.MutationHandler`). Written after the
        publish, off the tick's critical path; the hashes are computed here for the same reason.
        """
        runs = [
            SeenRun(
                boefje_task_hash(boefje_id, plan.organisation, ooi),
                plan.organisation,
                boefje_id,
                ooi,
                run.started_at,
                run.ended_at,
            )
            for plan in plans
            for boefje_id, newest in plan.bytes_history.items()
            for ooi, run in newest.items()
        ]
        for start in range(0, len(runs), 20 * self.settings.batch_size):
            self.bytes_runs.record(runs[start : start + 20 * self.settings.batch_size], now)
        self.bytes_runs.record_listed([(p.organisation, b) for p in plans for b in p.bytes_history], now)
        return len(runs)

    def _history_horizon(self, boefje: Boefje, now: datetime) -> datetime:
        """How far back Bytes' history can still change a decision at ``now``.

        An object whose newest run started before it is due whatever that run was: it ended
        before the grace period (a day of margin: a run that started before the grace period may
        have ended inside it), or it has no end and is older than the stall age.
        """
        if boefje.cron:
            # A cron boefje is due once a cron time passed since its last run; a year covers any cron.
            return now - timedelta(days=366)
        grace = grace_period(boefje, self.settings.grace_period) + timedelta(days=1)
        return now - max(grace, timedelta(seconds=self.settings.effective_bytes_stall_age))

    # --- backpressure, dispatch, schedules -------------------------------------------------

    def _backpressure(self, report: PlanReport) -> int | None:
        """The highest band this tick may add (``None``: any), from the depth of the boefje queue.

        A depth that cannot be read holds the low bands back, as a deep queue does."""
        if self.publisher is None:
            return None
        decision = read_backpressure(
            self.publisher,
            BOEFJE_QUEUE,
            limit=self.settings.queue_depth_limit_boefjes,
            band=self.settings.backpressure_band,
        )
        report.queue_depth = decision.depth
        report.queue_depth_error = decision.error if decision.depth is None else None
        report.backpressure = decision.on
        report.max_band = decision.max_band
        return decision.max_band

    @staticmethod
    def _keep_bands(candidates: list[Candidate], max_band: int | None, report: PlanReport) -> list[Candidate]:
        if max_band is None:
            return candidates
        kept = [c for c in candidates if c.rank.band <= max_band]
        report.skipped[SkipReason.BACKPRESSURE] += len(candidates) - len(kept)
        return kept

    def _dispatcher(self) -> Dispatcher:
        if self.publisher is None:
            raise RuntimeError("a planner that queues needs a publisher")
        return Dispatcher(self.tasks, self.publisher)

    def _dispatch(self, candidates: Sequence[Candidate], report: PlanReport, now: datetime) -> None:
        """Claim ``candidates`` and publish the winners in the order given."""
        with ClaimsAhead(self._dispatcher(), self.settings.batch_size) as claims:
            claims.submit(candidates)
            self._publish(candidates, claims, report, now)

    def _publish(
        self,
        candidates: Sequence[Candidate],
        claims: ClaimsAhead,
        report: PlanReport,
        now: datetime,
        *,
        strict: bool = True,
    ) -> None:
        """Publish what ``claims`` won, in the order of ``candidates``; then, off the critical path,
        mark the rows published and give each new pair its schedule."""
        started = time.perf_counter()
        dispatcher = self._dispatcher()
        won, offered = claims.won(strict=strict)
        report.dispatch.offered += offered
        size = self.settings.batch_size
        order: list[Candidate] = []
        sent: dict[str, tuple[NewTask, OutgoingMessage]] = {}
        for candidate in candidates:
            # Once per hash: Octopoes' paging may list an object twice, which makes two candidates
            # of one pair, of which one claim won.
            claimed = won.pop(candidate.hash, None)
            if claimed is not None:
                sent[candidate.hash] = claimed
                order.append(candidate)
        published: list[Candidate] = []
        published_ids: list[uuid.UUID] = []
        by_hash = {c.hash: c for c in order}
        for start in range(0, len(order), size):
            chunk = [sent[c.hash] for c in order[start : start + size]]
            claim = Claim(offered=0, tasks=[task for task, _ in chunk], messages=[message for _, message in chunk])
            result = dispatcher.publish(claim, mark=False)
            published.extend(by_hash[t.hash] for t in result.published_tasks)
            published_ids.extend(t.id for t in result.published_tasks)
            result.published_tasks = []
            report.dispatch.add(result)
        report.last_published_at = utcnow()
        report.timings["dispatch"] = report.timings.get("dispatch", 0.0) + time.perf_counter() - started
        started = time.perf_counter()
        for start in range(0, len(published_ids), 5 * size):
            self.tasks.mark_published(published_ids[start : start + 5 * size])
        fresh = [
            new_boefje_schedule(c.organisation, c.boefje, c.input_ooi, c.hash, now, self.settings)
            for c in published
            if c.schedule_id is None
        ]
        report.schedules_created += self.schedules.add_many(fresh, now=now)
        report.timings["bookkeeping"] = report.timings.get("bookkeeping", 0.0) + time.perf_counter() - started

    # --- due schedules ---------------------------------------------------------------------

    def queue_due(self, *, now: datetime, dry_run: bool = False) -> PlanReport:
        """Queue every due schedule (oldest deadline first, no cap), re-checking eligibility."""
        return self._queue_due(now=now, dry_run=dry_run)

    def _queue_due(self, *, now: datetime, dry_run: bool) -> PlanReport:
        report = PlanReport(now=now, dry_run=dry_run)
        indexes: dict[str, BoefjeIndex | None] = {}
        max_band = self._backpressure(report)
        for batch in self.schedules.iter_due(now, batch_size=self.settings.batch_size):
            by_org: dict[str, list[ScheduleRow]] = defaultdict(list)
            for row in batch:
                by_org[row.organisation].append(row)
            per_org: list[list[Candidate]] = []
            advance: dict[str, tuple[ScheduleRow, Boefje, datetime]] = {}
            disable: dict[str, list[ScheduleRow]] = defaultdict(list)
            for org, rows in by_org.items():
                candidates = self._due_candidates(org, rows, indexes, advance, disable, report, now)
                per_org.append(candidates)
            candidates = list(interleave([sorted(c, key=lambda c: c.sort_key) for c in per_org]))
            kept = self._keep_bands(candidates, max_band, report)
            for held_back in {c.hash for c in candidates} - {c.hash for c in kept}:
                advance.pop(held_back)  # stays due: queued by a run once the queue is shallow again
            candidates = kept
            report.planned.extend(candidates)
            if dry_run:
                continue
            for reason, rows in disable.items():
                report.schedules_disabled += self.schedules.disable([r.id for r in rows], reason, now=now)
            if candidates:
                self._dispatch(candidates, report, now)
            deadlines = {
                row.id: next_deadline(
                    boefje,
                    after,
                    hash_=row.hash,
                    default_seconds=self.settings.grace_period,
                    jitter=self.settings.schedule_jitter,
                )
                for row, boefje, after in advance.values()
            }
            self.schedules.set_deadlines(deadlines, now=now)
            report.schedules_advanced += len(deadlines)
        return report

    def _due_candidates(
        self,
        org: str,
        rows: list[ScheduleRow],
        indexes: dict[str, BoefjeIndex | None],
        advance: dict[str, tuple[ScheduleRow, Boefje, datetime]],
        disable: dict[str, list[ScheduleRow]],
        report: PlanReport,
        now: datetime,
    ) -> list[Candidate]:
        if org not in indexes:
            try:
                indexes[org] = self._boefje_index(org)
            except (ServiceError, ValidationError) as exc:
                report.errors[org] = f"{type(exc).__name__}: {exc}"
                logger.error("due schedules of %s left for the next tick: %s", org, report.errors[org])
                indexes[org] = None
        index = indexes[org]
        if index is None:
            return []
        try:
            objects = self._objects(org, [r.input_ooi for r in rows if r.input_ooi], index)
        except (ServiceError, ValidationError) as exc:
            report.errors[org] = f"{type(exc).__name__}: {exc}"
            logger.error("due schedules of %s left for the next tick: %s", org, report.errors[org])
            return []
        live = self.tasks.live_hashes([r.hash for r in rows])
        last_runs = self.tasks.last_runs([r.hash for r in rows])
        default_grace = timedelta(seconds=self.settings.grace_period)
        stall_age = timedelta(seconds=self.settings.effective_bytes_stall_age)
        out: list[Candidate] = []
        for row in rows:
            boefje = index.boefjes.get(row.plugin_id)
            ooi = objects.get(row.input_ooi or "")
            if boefje is None and row.plugin_id in index.invalid:
                report.skipped[SkipReason.INVALID_PLUGIN] += 1  # not gone: left as it is until fixed
                continue
            if boefje is None:
                disable["plugin no longer exists"].append(row)
                continue
            if ooi is None:
                disable["object no longer exists"].append(row)
                continue
            reason = static_skip(boefje, ooi, periodic=True)
            if reason is not None:
                report.skipped[reason] += 1
                disable[str(reason)].append(row)
                continue
            advance[row.hash] = (row, boefje, now)
            if row.hash in live:
                report.skipped[SkipReason.LIVE] += 1
                continue
            # Our own history only (Bytes' was turned into this schedule by the tick): a run since
            # the schedule was written (an event's, a manual one) moves its deadline instead.
            decision = is_due(
                boefje_facts(
                    boefje,
                    now=now,
                    last_ended=last_runs.get(row.hash),
                    bytes_run=None,
                    default_grace=default_grace,
                    stall_age=stall_age,
                )
            )
            if not decision.due:
                report.skipped[NOT_DUE_SKIP[NotDueReason(decision.reason)]] += 1
                assert decision.last_ended is not None
                advance[row.hash] = (row, boefje, decision.last_ended)
                continue
            pair = Pair(boefje, ooi, row.hash)
            last = decision.last_ended or self._estimated_last_run(row, boefje)
            out.append(
                Candidate(
                    organisation=org,
                    boefje=boefje,
                    input_ooi=ooi.primary_key,
                    hash=row.hash,
                    rank=rank_pair(pair, Trigger.SCHEDULE, last, now, self.settings.grace_period),
                    trigger=Trigger.SCHEDULE,
                    schedule_id=row.id,
                )
            )
        return out

    def _estimated_last_run(self, row: ScheduleRow, boefje: Boefje) -> datetime | None:
        """A schedule made from Bytes' history has no run in our table: its deadline minus one period
        is when that run ended (within the jitter), which is enough to rank how overdue it is."""
        if row.deadline_at is None:
            return None
        if boefje.cron:
            return row.deadline_at - (next_cron(boefje.cron, row.deadline_at) - row.deadline_at)
        return row.deadline_at - period(boefje, self.settings.grace_period)

    def _objects(self, org: str, references: list[str], index: BoefjeIndex) -> dict[str, OOI]:
        """The objects behind due schedules: one by one when few, else one listing."""
        if len(references) <= PER_OBJECT_LOOKUP_LIMIT:
            found: dict[str, OOI] = {}
            for ref in references:
                ooi = self.clients.octopoes.get_object(org, ref)
                if ooi is not None:
                    found[ref] = ooi
            return found
        wanted = set(references)
        types = sorted({ref.split("|", 1)[0] for ref in references})
        found = {}
        for page in self.clients.octopoes.iter_objects(org, types=types, page_size=self.settings.batch_size):
            for ooi in page:
                if ooi.primary_key in wanted:
                    found[ooi.primary_key] = ooi
        return found

    # --- manual requests -------------------------------------------------------------------

    def push(self, organisation: str, boefje_id: str, input_ooi: str | None, *, now: datetime) -> PushResult:
        """Queue one boefje at band 0: bypasses grace, never clearance. Raises :class:`PushRefused`."""
        boefje = self.clients.katalogus.plugin(organisation, boefje_id)
        if not isinstance(boefje, Boefje):
            raise PushRefused(f"no boefje {boefje_id!r} in organisation {organisation!r}")
        scan_level = boefje.scan_level
        if input_ooi is not None:
            ooi = self.clients.octopoes.get_object(organisation, input_ooi)
            if ooi is None:
                raise PushRefused(f"no object {input_ooi!r} in organisation {organisation!r}")
            if boefje.consumes and ooi.object_type not in boefje.consumes:
                raise PushRefused(f"boefje {boefje_id} does not consume {ooi.object_type}")
            if clearance_skip(boefje, ooi) is not None:
                raise PushRefused(
                    f"boefje {boefje_id} needs scan level {boefje.scan_level}, {input_ooi} has "
                    f"{ooi.scan_level}: clearance is never bypassed"
                )
        hash_ = boefje_task_hash(boefje.id, organisation, input_ooi)
        rank = rank_boefje(
            BoefjeCandidate(
                trigger=Trigger.MANUAL,
                scan_level=scan_level,
                interval=grace_period(boefje, self.settings.grace_period),
            ),
            now,
        )
        candidate = Candidate(organisation, boefje, input_ooi, hash_, rank, Trigger.MANUAL)
        item = boefje_dispatchable(candidate)
        result = self._dispatcher().dispatch([item])
        if result.errors:
            raise PushRefused(f"could not publish: {result.errors[0]}")
        if result.claimed == 0:
            return PushResult(task_id=None, hash=hash_, already_live=True)
        return PushResult(task_id=item.task.id, hash=hash_, already_live=False)


class PushRefused(Exception):
    """A manual request that may not be queued (unknown plugin or object, clearance)."""


@dataclass(frozen=True)
class PushResult:
    task_id: uuid.UUID | None
    hash: str
    already_live: bool
