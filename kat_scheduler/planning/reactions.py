"""Pure rules for events: which boefjes a scan-profile mutation may trigger, which queued work it
makes wrong, what a batch of mutations writes per pair, and which normalizers a raw file gets.
No I/O, no clock (``now`` is given), no Celery."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from kat_scheduler.models.bytes import RawData
from kat_scheduler.models.events import MutationOperation, ScanProfileMutation
from kat_scheduler.models.ooi import ListedObject
from kat_scheduler.models.plugins import Normalizer
from kat_scheduler.planning.candidates import BoefjeIndex, Pair, new_boefje_schedule
from kat_scheduler.rules import (
    NOT_DUE_SKIP,
    BytesRun,
    NotDueReason,
    SkipReason,
    Trigger,
    boefje_facts,
    clearance_skip,
    counted_from,
    is_due,
    static_skip,
)
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.timing import period
from kat_scheduler.settings import Settings
from kat_scheduler.storage.schedules import NewSchedule, ScheduleState


def object_type_of(primary_key: str) -> str:
    """``Hostname|internet|mispo.es`` → ``Hostname`` (a delete event carries no object)."""
    return primary_key.split("|", 1)[0]


def mutation_pairs(
    organisation: str,
    index: BoefjeIndex,
    ooi: ListedObject,
    operation: MutationOperation,
    skipped: Counter[SkipReason],
) -> list[Pair]:
    """The boefjes a create/update of ``ooi`` may run now (clearance checked against its new level).

    A boefje with ``run_on`` runs only when the operation is one of them; others run on any
    create or update (grace still applies, checked by the caller).
    """
    pairs: list[Pair] = []
    for boefje in index.consumers(ooi.object_type):
        reason = static_skip(boefje, ooi, periodic=False)
        if reason is None and boefje.run_on and operation.value not in {r.value for r in boefje.run_on}:
            reason = SkipReason.RUN_ON_OPERATION
        if reason is not None:
            skipped[reason] += 1
            continue
        pairs.append(Pair(boefje, ooi, boefje_task_hash(boefje.id, organisation, ooi.primary_key)))
    return pairs


def hashes_without_clearance(organisation: str, index: BoefjeIndex, ooi: ListedObject) -> list[str]:
    """Task hashes of boefjes on ``ooi`` that its (new) level no longer clears."""
    return [
        boefje_task_hash(b.id, organisation, ooi.primary_key)
        for b in index.consumers(ooi.object_type)
        if clearance_skip(b, ooi) is not None
    ]


def hashes_of_object(organisation: str, index: BoefjeIndex, primary_key: str) -> list[str]:
    """Task hashes of every boefje that consumes the object's type (for a delete)."""
    return [boefje_task_hash(b.id, organisation, primary_key) for b in index.consumers(object_type_of(primary_key))]


# --- a batch of mutations, folded per pair ---------------------------------------------------
#
# A batch handles its events as one-by-one would, in order: per pair (boefje, object,
# organisation) its events make a sequence of steps, each either the pair to weigh (a create or
# update its boefje may run on) or ``None`` (a delete, or a level the boefje no longer clears:
# cancel its task, disable its schedule). :func:`fold_pair` walks a pair's steps from what the
# database holds when the batch is written and says what the batch writes for it.

#: One step of a pair: weigh it (a create or update its boefje may run on), or ``None``: withdraw it.
Step = Pair | None


def mutation_steps(
    organisation: str,
    index: BoefjeIndex,
    mutation: ScanProfileMutation,
    skipped: Counter[SkipReason],
) -> list[tuple[str, Step]]:
    """What one mutation does to each boefje consuming its object's type, as ``(hash, step)``.

    A delete withdraws every such pair; a create or update withdraws those its new level does
    not clear and weighs those that may run (enabled, ``run_on`` matching); the rest it leaves
    alone (counted in ``skipped``).
    """
    if mutation.operation == MutationOperation.DELETE or mutation.value is None:
        return [(h, None) for h in hashes_of_object(organisation, index, mutation.primary_key)]
    ooi = mutation.value
    operation = mutation.operation.value
    steps: list[tuple[str, Step]] = []
    for boefje in index.consumers(ooi.object_type):
        hash_ = boefje_task_hash(boefje.id, organisation, ooi.primary_key)
        if clearance_skip(boefje, ooi) is not None:
            steps.append((hash_, None))
        reason = static_skip(boefje, ooi, periodic=False)
        if reason is None and boefje.run_on and operation not in {r.value for r in boefje.run_on}:
            reason = SkipReason.RUN_ON_OPERATION
        if reason is not None:
            skipped[reason] += 1
            continue
        steps.append((hash_, Pair(boefje, ooi, hash_)))
    return steps


@dataclass(frozen=True, slots=True)
class Known:
    """What the database holds for one pair when its batch is written (:data:`NOTHING_KNOWN`: nothing)."""

    #: A live task (queued, dispatched or running).
    live: bool = False
    #: The live task is running: a cancel leaves it live.
    running: bool = False
    schedule: ScheduleState | None = None
    #: The end of our own last run.
    last_ended: datetime | None = None
    #: Bytes' newest run as the last tick saw it.
    bytes_run: BytesRun | None = None


#: A pair the database holds nothing of (no task, schedule, run of ours or Bytes' run).
NOTHING_KNOWN = Known()


@dataclass(slots=True)
class Queued:
    """Queue the pair: the step that did, its trigger and the run its rank counts from."""

    pair: Pair
    trigger: Trigger
    last_ended: datetime | None


@dataclass(slots=True)
class Folded:
    """What a batch writes for one pair (each ``None`` or false: nothing)."""

    #: A new task, the last one the steps queued and did not withdraw again.
    queue: Queued | None = None
    #: The pair's schedule as the steps last wrote it (insert, or enable with this deadline).
    schedule: NewSchedule | None = None
    #: ``schedule`` was written by the step that queued ``queue``: only once that task is sent.
    schedule_if_queued: bool = False
    #: Disable the schedule (after writing ``schedule``, if any): the last word was a withdrawal.
    disable: bool = False


def in_force(state: ScheduleState | None, now: datetime) -> bool:
    """Whether a pair's schedule keeps it from running now (enabled, its deadline still ahead)."""
    return state is not None and state.enabled and state.deadline_at is not None and state.deadline_at > now


def fold_pair(
    organisation: str,
    steps: Sequence[Step],
    known: Known,
    *,
    now: datetime,
    settings: Settings,
    skipped: Counter[SkipReason],
) -> Folded:
    """The writes that leave a pair as its ``steps``, handled one at a time from ``known``, would.

    A step withdrawing the pair cancels its task (a running one stays live: the caller cancels
    before folding, and says in ``known.running`` which task stayed live) and disables its
    schedule. A step weighing it queues it unless a task is live, its schedule is in force, or
    our last run (else Bytes' newest) makes it not due, in which case its schedule is written
    with the deadline that run gives. A pair queued with a schedule gets its next deadline from
    ``now``. A task queued and withdrawn within the steps is never written (one-by-one would
    write it and cancel it, and it would never run); its schedule's writes still count. Each
    step weighed and not queued is counted in ``skipped``.
    """
    out = Folded()
    live, schedule, last_ended = known.live, known.schedule, known.last_ended
    for step in steps:
        if step is None:
            if out.queue is not None:
                out.queue = None
                out.schedule_if_queued = False
            elif not known.running:
                live = False  # the caller cancels a live task the steps withdraw, before folding
            if schedule is not None:
                schedule = replace(schedule, enabled=False)
                out.disable = True
            continue
        if live or out.queue is not None:
            skipped[SkipReason.LIVE] += 1
            continue
        boefje = step.boefje
        if schedule is not None and schedule.descheduled:
            skipped[SkipReason.DESCHEDULED] += 1  # its boefje said so: only an operator enables it again
            continue
        if in_force(schedule, now):
            # The deadline is when the rules make the pair due (written from what the planner knew).
            skipped[SkipReason.CRON if boefje.cron else SkipReason.GRACE] += 1
            continue
        last = last_ended
        # Our own last run, else Bytes' newest run as the last tick saw it (as the tick does).
        run = known.bytes_run if last is None else None
        if last is not None or run is not None:
            facts = boefje_facts(
                boefje,
                now=now,
                last_ended=last,
                bytes_run=run,
                default_grace=timedelta(seconds=settings.grace_period),
                stall_age=timedelta(seconds=settings.effective_bytes_stall_age),
            )
            decision = is_due(facts)
            if not decision.due:
                skipped[NOT_DUE_SKIP[NotDueReason(decision.reason)]] += 1
                new = new_boefje_schedule(
                    organisation, boefje, step.ooi.primary_key, step.hash, counted_from(decision, run), settings
                )
                out.schedule, out.schedule_if_queued, out.disable = new, False, False
                schedule = _written(schedule, new)
                continue
            last = decision.last_ended
        if last is None and schedule is not None and schedule.enabled and schedule.deadline_at is not None:
            last = schedule.deadline_at - period(boefje, settings.grace_period)
        out.queue = Queued(step, Trigger.NEW_OBJECT if last is None else Trigger.SCHEDULE, last)
        if schedule is not None:
            # A pair that has a schedule gets its next deadline now that it is queued. A new pair
            # gets none: once its task has run, the next planning tick writes its schedule from
            # that run, and until then its live task, then its history, keep it from running twice.
            new = new_boefje_schedule(organisation, boefje, step.ooi.primary_key, step.hash, now, settings)
            out.schedule, out.schedule_if_queued, out.disable = new, True, False
            schedule = _written(schedule, new)
    return out


def _written(state: ScheduleState | None, schedule: NewSchedule) -> ScheduleState:
    """A pair's schedule state once ``schedule`` is written (inserted, or enabled with its deadline)."""
    if state is None:
        return ScheduleState(schedule.id or _NO_ID, True, schedule.deadline_at)
    return replace(state, enabled=True, deadline_at=schedule.deadline_at)


_NO_ID = uuid.UUID(int=0)


def claim_spans(count: int, size: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans of about ``size`` covering ``count`` items; a short tail joins the last.

    A batch of events makes a little more than one claim's worth of tasks as often as not (500
    events, 1,025 tasks): a tail of 25 would cost a claim, a commit and a publish of its own.
    So a tail under half of ``size`` goes with the span before it (spans stay under 1.5 ``size``).
    """
    starts = list(range(0, count, size))
    if len(starts) > 1 and count - starts[-1] < size / 2:
        starts.pop()
    return [(start, starts[i + 1] if i + 1 < len(starts) else count) for i, start in enumerate(starts)]


def normalizers_for_raw(normalizers: Iterable[Normalizer], raw: RawData) -> list[Normalizer]:
    """Enabled normalizers consuming any of the file's mime types, each once; none for ``error/…`` files."""
    if raw.is_error:
        return []
    mime_types = set(raw.mime_type_values)
    chosen: dict[str, Normalizer] = {}
    for normalizer in normalizers:
        if normalizer.enabled and mime_types.intersection(normalizer.consumes):
            chosen.setdefault(normalizer.id, normalizer)
    return list(chosen.values())
