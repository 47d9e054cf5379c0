"""Due boefje schedules: every enabled schedule whose deadline has passed, queued again.

Oldest deadline first, in batches of ``SCHEDULER_BATCH_SIZE``, no cap. Each is re-checked by the
rules before it is queued (the plugin and object still exist, enabled, clearance; a run of our
own since the schedule was written moves its deadline instead). A schedule whose plugin or
object is gone, or that the static rules now refuse, is disabled with the reason; one whose
plugin does not validate is left as it is until it does. Backpressure holds due schedules of
the low bands back: they keep their deadline, so a later run queues them once the queue is
shallow again (or its depth can be read again).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta

from pydantic import ValidationError

from kat_scheduler.clients import ServiceError
from kat_scheduler.limiting.capacity import GroupBudget
from kat_scheduler.models.ooi import ListedObject
from kat_scheduler.models.plugins import Boefje
from kat_scheduler.models.producers import ProducerName
from kat_scheduler.planning.candidates import BoefjeIndex, Candidate, Pair, interleave, rank_pair
from kat_scheduler.producers.backpressure import backpressure_for, keep_bands
from kat_scheduler.producers.base import ProducerContext
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
    static_skip,
)
from kat_scheduler.rules.ranking import shown_reason
from kat_scheduler.rules.timing import next_cron, next_deadline, period
from kat_scheduler.storage.tables import ScheduleRow

logger = logging.getLogger(__name__)

#: Due schedules of one organisation up to this many are checked object by object; more, by listing.
PER_OBJECT_LOOKUP_LIMIT = 20


class DueSchedulesProducer:
    """Queues every due boefje schedule (oldest deadline first, no cap), re-checking eligibility."""

    name = ProducerName.QUEUE_DUE_SCHEDULES.value

    def __init__(self, context: ProducerContext) -> None:
        self.context = context
        self.settings = context.settings
        self.clients = context.clients
        self.tasks = context.tasks
        self.schedules = context.schedules
        self.dispatch = CandidateDispatch(context)

    def run(self, now: datetime, dry_run: bool = False) -> PlanReport:
        report = PlanReport(now=now, dry_run=dry_run)
        indexes: dict[str, BoefjeIndex | None] = {}
        max_band = backpressure_for(self.context, report)
        budget = GroupBudget.of(self.settings, self.settings.schedules_interval)  # per rate-limited group
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
            kept = budget.keep(keep_bands(candidates, max_band, report), report.skipped, report.rate_limited)
            for held_back in {c.hash for c in candidates} - {c.hash for c in kept}:
                advance.pop(held_back)  # stays due: queued by a run once the queue is shallow again
            candidates = kept
            report.planned.extend(candidates)
            if dry_run:
                continue
            for reason, rows in disable.items():
                report.schedules_disabled += self.schedules.disable([r.id for r in rows], reason, now=now)
            if candidates:
                self.dispatch.dispatch(candidates, report, now)
            deadlines = {
                row.id: next_deadline(
                    boefje,
                    after,
                    hash_=row.hash,
                    default_seconds=self.settings.grace_period,
                    jitter=self.settings.schedule_jitter,
                    cron=row.schedule,
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
                indexes[org] = self.context.boefje_index(org)
            except (ServiceError, ValidationError) as exc:
                report.errors[org] = f"{type(exc).__name__}: {exc}"
                logger.error("due schedules of %s left for the next tick: %s", org, report.errors[org])
                indexes[org] = None
        index = indexes[org]
        if index is None:
            return []
        try:
            objects = self._objects(org, [r.input_ooi for r in rows if r.input_ooi])
        except (ServiceError, ValidationError) as exc:
            report.errors[org] = f"{type(exc).__name__}: {exc}"
            logger.error("due schedules of %s left for the next tick: %s", org, report.errors[org])
            return []
        live = self.tasks.live_hashes([r.hash for r in rows])
        last_runs = self.tasks.last_runs([r.hash for r in rows])
        # Bytes' newest run as the tick (or the listener) last saw it, for pairs with no run of ours:
        # one still going is not queued again, one past the stall age is (the tick's own rule).
        seen_in_bytes = self.context.bytes_runs.newest([r.hash for r in rows if r.hash not in last_runs])
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
            # Our own last run first (a run since the schedule was written, an event's or a manual
            # one, moves its deadline); without one, Bytes' newest run as last seen.
            decision = is_due(
                boefje_facts(
                    boefje,
                    now=now,
                    last_ended=last_runs.get(row.hash),
                    bytes_run=seen_in_bytes.get(row.hash),
                    default_grace=default_grace,
                    stall_age=stall_age,
                )
            )
            if not decision.due:
                report.skipped[NOT_DUE_SKIP[NotDueReason(decision.reason)]] += 1
                advance[row.hash] = (row, boefje, counted_from(decision, seen_in_bytes.get(row.hash)))
                continue
            pair = Pair(boefje, ooi, row.hash)
            last = decision.last_ended or self._estimated_last_run(row, boefje)
            rank = rank_pair(pair, Trigger.SCHEDULE, last, now, self.settings.grace_period)
            out.append(
                Candidate(
                    organisation=org,
                    boefje=boefje,
                    input_ooi=ooi.primary_key,
                    hash=row.hash,
                    rank=shown_reason(rank, decision),
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

    def _objects(self, org: str, references: list[str]) -> dict[str, ListedObject]:
        """The objects behind due schedules: one by one when few, else one listing."""
        if len(references) <= PER_OBJECT_LOOKUP_LIMIT:
            found: dict[str, ListedObject] = {}
            for ref in references:
                whole = self.clients.octopoes.get_object(org, ref)
                if whole is not None:
                    found[ref] = whole
            return found
        wanted = set(references)
        types = sorted({ref.split("|", 1)[0] for ref in references})
        found = {}
        for page in self.clients.octopoes.iter_objects(org, types=types, page_size=self.settings.batch_size):
            for ooi in page:
                if ooi.primary_key in wanted:
                    found[ooi.primary_key] = ooi
        return found
