"""The cold planning tick: what to queue now, for which organisations.

Per organisation and tick: one Katalogus call (its boefjes), one paged Octopoes listing of
every type those boefjes consume (scan levels from the lowest clearance any of them needs),
then per page of objects: the static rules (pure), one query for pairs that already have a
schedule, one for live tasks, one for our own history, and, only for pairs our history does not
cover, Bytes' history of that boefje (:class:`~kat_scheduler.producers.bytes_history.BytesHistory`).
Whether a pair is due is :func:`kat_scheduler.rules.is_due`'s, here as on every other path (due
schedules, events). Candidates are ranked and capped per organisation.

``plan_threads`` organisations are planned at once, so one computes while others wait for a KAT
service or the database; each organisation's candidates are claimed on a background thread as
soon as it is planned (:class:`~kat_scheduler.producers.dispatching.ClaimsAhead`). When all are
planned, the claimed tasks are published in batches, most urgent band first with organisations
taking turns. Backpressure holds the low bands back while the boefje queue is deep or its depth
cannot be read.

Every pair that is planned gets a schedule; re-runs then come from due schedules
(:class:`~kat_scheduler.producers.due.DueSchedulesProducer`), so a second tick queues nothing
new and a restart causes no rescan storm.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydantic import ValidationError

from kat_scheduler.clients import ServiceError
from kat_scheduler.limiting.capacity import GroupBudget
from kat_scheduler.models.producers import ProducerName
from kat_scheduler.planning.candidates import (
    Candidate,
    Pair,
    TopK,
    interleave,
    new_boefje_schedule,
    pairs_for_page,
    rank_pair,
)
from kat_scheduler.producers.backpressure import backpressure_for, keep_bands
from kat_scheduler.producers.base import ProducerContext
from kat_scheduler.producers.bytes_history import BytesHistory, Histories
from kat_scheduler.producers.dispatching import CandidateDispatch
from kat_scheduler.producers.results import PlanReport
from kat_scheduler.rules import (
    NOT_DUE_SKIP,
    NotDueReason,
    SkipReason,
    Trigger,
    boefje_facts,
    counted_from,
    is_due,
)
from kat_scheduler.rules.ranking import shown_reason
from kat_scheduler.storage.schedules import NewSchedule

logger = logging.getLogger(__name__)


@dataclass
class OrgPlan:
    organisation: str
    candidates: list[Candidate] = field(default_factory=list)
    skipped: Counter[SkipReason] = field(default_factory=Counter)
    grace_schedules: list[NewSchedule] = field(default_factory=list)
    #: Bytes' newest run per object, by boefje, of every history this tick listed (kept in ``bytes_runs``).
    bytes_history: Histories = field(default_factory=dict)
    #: Katalogus plugins that do not validate (id → reason): skipped, the organisation planned.
    invalid_plugins: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def _interleaved(plans: Sequence[OrgPlan]) -> list[Candidate]:
    return list(interleave([plan.candidates for plan in plans]))


class TickProducer:
    """One planning tick of ``organisations`` (every organisation Katalogus knows when ``None``)."""

    name = ProducerName.PLAN_BOEFJES.value

    def __init__(self, context: ProducerContext, organisations: Sequence[str] | None = None) -> None:
        self.context = context
        self.organisations = None if organisations is None else list(organisations)
        self.settings = context.settings
        self.clients = context.clients
        self.tasks = context.tasks
        self.schedules = context.schedules
        self.history = BytesHistory(context)
        self.dispatch = CandidateDispatch(context)

    def run(self, now: datetime, dry_run: bool = False) -> PlanReport:
        """Plan the organisations and, unless dry, queue the result."""
        report = PlanReport(now=now, dry_run=dry_run)
        started = time.perf_counter()
        orgs = self.organisations if self.organisations is not None else self.context.organisations()
        report.organisations = orgs
        max_band = backpressure_for(self.context, report)
        budget = GroupBudget.of(self.settings, self.settings.plan_interval)  # per rate-limited group
        plans: list[OrgPlan] = []
        # Each organisation's candidates are final once it is planned (the cap is per organisation,
        # backpressure per band), so they are claimed in the background, by the database on another
        # core, while the next organisation is planned. Publishing waits for all: it interleaves.
        # Claimed rows wait unpublished only so long: a long tick publishes in rounds (each
        # interleaved), well before the reaper would take unpublished rows for lost.
        round_budget = self.settings.unpublished_after / 3
        with self.dispatch.claims_ahead(dry_run=dry_run) as claims:
            pending: list[OrgPlan] = []  # planned and claimed, not yet published
            round_started: float | None = None
            try:
                for plan in self._plan_orgs(orgs, now):
                    if plan.error:
                        report.errors[plan.organisation] = plan.error
                    if plan.invalid_plugins:
                        report.invalid_plugins[plan.organisation] = plan.invalid_plugins
                    report.skipped.update(plan.skipped)
                    plan.candidates = keep_bands(plan.candidates, max_band, report)
                    plan.candidates = budget.keep(plan.candidates, report.skipped, report.rate_limited)
                    plans.append(plan)
                    if dry_run:
                        continue
                    claims.submit(plan.candidates)
                    pending.append(plan)
                    round_started = round_started or time.monotonic()
                    if time.monotonic() - round_started >= round_budget:
                        self.dispatch.publish(_interleaved(pending), claims, report, now)
                        pending, round_started = [], None
            except Exception:
                if pending:  # publish what was claimed, so no row waits for the reaper
                    try:
                        self.dispatch.publish(_interleaved(pending), claims, report, now, strict=False)
                    except Exception:
                        logger.exception("could not publish what this tick claimed before it failed; the reaper will")
                raise
            report.planned = _interleaved(plans)
            report.timings["planning"] = time.perf_counter() - started
            if dry_run:
                return report
            self.dispatch.publish(_interleaved(pending), claims, report, now)
        grace = [s for p in plans for s in p.grace_schedules]
        started = time.perf_counter()
        report.schedules_created += self.schedules.add_many(grace, now=now)
        report.bytes_runs_recorded = self.history.record(((p.organisation, p.bytes_history) for p in plans), now)
        report.add_time("bookkeeping", time.perf_counter() - started)
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

    def _plan_org(self, plan: OrgPlan, now: datetime) -> None:
        org = plan.organisation
        index = self.context.boefje_index(org)
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
        self.history.list_unlisted(org, index, bytes_history, now)
        plan.skipped[SkipReason.ORG_CAP] += top.dropped
        plan.candidates = top.sorted()

    def _filter_pairs(
        self, org: str, pairs: list[Pair], plan: OrgPlan, bytes_history: Histories, now: datetime
    ) -> Iterable[Candidate]:
        if not pairs:
            return []
        hashes = [p.hash for p in pairs]
        # Enabled schedules are the due-schedule producer's; a disabled one is open again, so a
        # boefje enabled again in Katalogus (no event says so) is found by the next tick. A
        # descheduled one (its boefje said so) is nobody's until an operator enables it.
        held = self.schedules.held_hashes(hashes)
        open_pairs = [p for p in pairs if p.hash not in held]
        descheduled = sum(held.values())
        plan.skipped[SkipReason.SCHEDULED] += len(pairs) - len(open_pairs) - descheduled
        if descheduled:
            plan.skipped[SkipReason.DESCHEDULED] += descheduled
        live = self.tasks.live_hashes([p.hash for p in open_pairs])
        plan.skipped[SkipReason.LIVE] += len(live)
        open_pairs = [p for p in open_pairs if p.hash not in live]
        ours = self.tasks.last_runs([p.hash for p in open_pairs])
        grace = self.settings.grace_period
        default_grace = timedelta(seconds=grace)
        stall_age = timedelta(seconds=self.settings.effective_bytes_stall_age)
        bytes_run = self.history.run_of
        out: list[Candidate] = []
        for pair in open_pairs:
            last = ours.get(pair.hash)
            # Bytes only for pairs our own history does not cover (fetched in bulk per boefje).
            run = None if last is not None else bytes_run(org, pair.boefje, pair.ooi.primary_key, bytes_history, now)
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
