"""The decision per boefje on one object, from its facts and ``now``: pure, no I/O, no clock.

The producers' rule functions, in the producers' order:

1. the static rules (:func:`~kat_scheduler.rules.static_skip`): not enabled, clearance (the
   boefje needs a level the object does not have);
2. descheduled: the boefje said, with a raw file tagged ``openkat/deschedule``, that it is not to
   run on the object again; its schedule is disabled and no producer queues the pair until an
   operator enables it (``PATCH /schedules/{id}``), as the tick and the events skip it first;
3. a live task for the pair (queued, dispatched or running): nothing is queued beside it; one
   that another organisation's run serves (``served_by``: deduplication) is deduplicated into it;
   a queued one waiting for its rate limit's window (:mod:`kat_scheduler.limiting`) is
   rate-limited until the window opens;
4. ``run_on`` boefjes run on scan-profile events only, never from a tick or a schedule;
5. an enabled schedule makes the pair the due-schedules run's: it waits for the schedule's
   deadline, then :func:`~kat_scheduler.rules.is_due` decides on our own history (as that run does);
6. otherwise the tick's rule: :func:`~kat_scheduler.rules.is_due` on our own last run, or, when
   we have none, Bytes' newest run: running in Bytes, grace (the plugin's interval or the
   default grace period), cron, or due (never run, grace over, cron time passed, a stalled run);
7. due pairs are ranked by :func:`~kat_scheduler.rules.ranking.rank_boefje` (band and reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from kat_scheduler.explain.facts import LastRun, LiveTask, ObjectFacts, PairFacts, ScheduleFacts, when
from kat_scheduler.models.ooi import OOI
from kat_scheduler.models.plugins import Boefje
from kat_scheduler.rules import (
    BytesRun,
    DueReason,
    NotDueReason,
    SkipReason,
    Trigger,
    boefje_facts,
    counted_from,
    grace_period,
    is_due,
    static_skip,
)
from kat_scheduler.rules import Decision as DueDecision
from kat_scheduler.rules.ranking import BoefjeCandidate, Rank, rank_boefje
from kat_scheduler.rules.timing import next_cron, next_deadline, period
from kat_scheduler.settings import Settings


class Decision(StrEnum):
    """What decides about a boefje on the object now (the JSON's ``decision``)."""

    QUEUE = "queue"
    NOT_ENABLED = "not_enabled"
    CLEARANCE = "clearance"
    GRACE = "grace"
    CRON = "cron"
    LIVE = "live"
    RUNNING = "running"
    STALLED = "stalled"
    RATE_LIMITED = "rate_limited"
    DEDUPLICATED = "deduplicated"
    DESCHEDULED = "descheduled"


#: Every value ``decision`` may take, in the issue's order.
DECISIONS: tuple[str, ...] = tuple(d.value for d in Decision)


@dataclass(frozen=True, slots=True)
class Policy:
    """The settings the rules read: the default grace period, the stall age, the schedule jitter."""

    default_grace_seconds: int
    stall_age: timedelta
    jitter: float

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        return cls(
            default_grace_seconds=settings.grace_period,
            stall_age=timedelta(seconds=settings.effective_bytes_stall_age),
            jitter=settings.schedule_jitter,
        )

    @property
    def default_grace(self) -> timedelta:
        return timedelta(seconds=self.default_grace_seconds)


@dataclass(frozen=True, slots=True)
class Explanation:
    """One boefje's answer: the decision, until when it holds, the band, the last run, and why."""

    boefje_id: str
    decision: Decision
    until: datetime | None
    band: int | None
    last_run: LastRun | None
    detail: str

    def as_json(self) -> dict[str, Any]:
        """The JSON object of ``--format json`` and ``GET /explain``."""
        return {
            "boefje_id": self.boefje_id,
            "decision": self.decision.value,
            "until": _iso(self.until),
            "band": self.band,
            "last_run": _iso(self.last_run.ended_at if self.last_run else None),
            "detail": self.detail,
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def span(length: timedelta) -> str:
    """A duration for people: ``1 day``, ``12 h``, ``90 min``, ``30 s``."""
    seconds = int(length.total_seconds())
    if seconds and seconds % 86400 == 0:
        days = seconds // 86400
        return f"{days} day" + ("s" if days != 1 else "")
    if seconds and seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds and seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def explain(facts: ObjectFacts, now: datetime, policy: Policy) -> list[Explanation]:
    """Every boefje consuming the object's type, by id; plugins that do not validate too."""
    found = [explain_pair(pair, facts.ooi, facts.organisation, now, policy) for pair in facts.pairs]
    found.extend(
        Explanation(
            plugin_id,
            Decision.NOT_ENABLED,
            None,
            None,
            None,
            f"Katalogus lists it, but it does not validate ({reason}): no producer plans it",
        )
        for plugin_id, reason in facts.invalid.items()
    )
    return sorted(found, key=lambda e: e.boefje_id)


def last_run_of(pair: PairFacts) -> LastRun | None:
    """Our own last run, else Bytes' newest run that ended."""
    if pair.last_ended is not None:
        return LastRun(pair.last_ended, pair.last_outcome or "completed")
    if pair.bytes_run is not None and pair.bytes_run.ended_at is not None:
        return LastRun(pair.bytes_run.ended_at, "seen in Bytes")
    return None


def _with_last(detail: str, last: LastRun | None) -> str:
    """The detail, ending with how the last run went (its time is ``last_run``'s)."""
    return f"{detail}; last run: {last.outcome}" if last else detail


def _rhythm(boefje: Boefje, policy: Policy) -> str:
    if boefje.cron:
        return f"cron {boefje.cron!r}"
    if boefje.interval:
        return f"interval {span(timedelta(minutes=boefje.interval))}"
    return f"default grace period {span(policy.default_grace)}"


class _Answer(Protocol):
    """``explain_pair``'s ``answer``: an explanation of the pair with its last run."""

    def __call__(
        self, decision: Decision, detail: str, until: datetime | None = None, band: int | None = None
    ) -> Explanation: ...


def explain_pair(pair: PairFacts, ooi: OOI, organisation: str, now: datetime, policy: Policy) -> Explanation:
    """The decision for one boefje on ``ooi`` at ``now`` (see the module for the order)."""
    boefje = pair.boefje
    last = last_run_of(pair)

    def answer(decision: Decision, detail: str, until: datetime | None = None, band: int | None = None) -> Explanation:
        return Explanation(boefje.id, decision, until, band, last, _with_last(detail, last))

    skip = static_skip(boefje, ooi, periodic=True)
    if skip == SkipReason.NOT_ENABLED:
        return answer(Decision.NOT_ENABLED, f"not enabled for organisation {organisation} in Katalogus")
    if skip == SkipReason.CLEARANCE:
        return answer(Decision.CLEARANCE, f"needs L{boefje.scan_level}, object has L{ooi.scan_level}")
    schedule = pair.schedule
    if schedule is not None and schedule.descheduled_at is not None:
        return answer(Decision.DESCHEDULED, _descheduled(schedule, pair.live))
    if pair.live is not None and pair.live.served_by is not None:
        task = pair.live
        return answer(
            Decision.DEDUPLICATED,
            f"deduplicated into task {task.served_by}: another organisation's run of {boefje.id} on this object "
            f"serves this one (stored for it too); its task {task.id} {task.status.value} since {when(task.since)}",
            band=task.band,
        )
    if pair.live is not None and pair.live.rate_limit is not None:
        task, wait = pair.live, pair.live.rate_limit
        return answer(
            Decision.RATE_LIMITED,
            f"task {task.id} waits for its rate limit ({wait.limit or 'limit not said'}, group "
            f"{wait.group or 'not said'}) until {when(wait.until)}, holding no worker; it keeps its band",
            wait.until,
            task.band,
        )
    if pair.live is not None:
        task = pair.live
        return answer(Decision.LIVE, f"task {task.id} {task.status.value} since {when(task.since)}", band=task.band)
    if skip == SkipReason.RUN_ON_ONLY:
        operations = ", ".join(str(op) for op in boefje.run_on or [])
        return answer(
            Decision.NOT_ENABLED,
            f"enabled for scan-profile events only (run_on: {operations}): no tick or schedule queues it",
        )
    if schedule is not None and schedule.enabled:
        return _scheduled(pair, now, policy, answer)
    return _planned(pair, now, policy, answer, disabled=schedule.disabled_reason if schedule else None)


def _descheduled(schedule: ScheduleFacts, live: LiveTask | None) -> str:
    """Why a descheduled pair does not run, and how an operator runs it again."""
    assert schedule.descheduled_at is not None
    running = f"; task {live.id} is {live.status.value} since {when(live.since)}" if live else ""
    return (
        f"schedule {schedule.id} descheduled at {when(schedule.descheduled_at)} "
        f"({schedule.disabled_reason or 'no reason kept'}): no producer queues it until "
        f"PATCH /schedules/{schedule.id} with enabled: true{running}"
    )


def _rank(boefje: Boefje, trigger: Trigger, last_ended: datetime | None, now: datetime, policy: Policy) -> Rank:
    return rank_boefje(
        BoefjeCandidate(
            trigger=trigger,
            scan_level=boefje.scan_level,
            interval=grace_period(boefje, policy.default_grace_seconds),
            last_run_ended=last_ended,
        ),
        now,
    )


def _due(pair: PairFacts, now: datetime, policy: Policy) -> tuple[BytesRun | None, DueDecision]:
    """The producers' rule for a pair: our own last run, else Bytes' newest run (which is returned)."""
    run = pair.bytes_run if pair.last_ended is None else None
    facts = boefje_facts(
        pair.boefje,
        now=now,
        last_ended=pair.last_ended,
        bytes_run=run,
        default_grace=policy.default_grace,
        stall_age=policy.stall_age,
    )
    return run, is_due(facts)


def _scheduled(pair: PairFacts, now: datetime, policy: Policy, answer: _Answer) -> Explanation:
    """A pair with an enabled schedule: the due-schedules run's (our own last run, else Bytes')."""
    boefje = pair.boefje
    schedule = pair.schedule
    assert schedule is not None
    waits = Decision.CRON if boefje.cron else Decision.GRACE
    rhythm = _rhythm(boefje, policy)
    if schedule.deadline_at is not None and schedule.deadline_at > now:
        return answer(
            waits, f"schedule {schedule.id} is due at {when(schedule.deadline_at)} ({rhythm})", schedule.deadline_at
        )
    run, decision = _due(pair, now, policy)
    note = f"; {pair.bytes_note}" if run is not None and pair.bytes_note else ""
    if decision.reason == NotDueReason.RUNNING:
        assert run is not None and run.started_at is not None and decision.until is not None
        return answer(
            Decision.RUNNING,
            f"schedule {schedule.id} fell due, but Bytes shows a run since {when(run.started_at)}; taken for dead "
            f"at {when(decision.until)} (stall age {span(policy.stall_age)}){note}",
            decision.until,
        )
    if not decision.due:
        until = next_deadline(
            boefje,
            counted_from(decision, run),
            hash_=pair.hash,
            default_seconds=policy.default_grace_seconds,
            jitter=policy.jitter,
        )
        return answer(
            waits,
            f"schedule {schedule.id} fell due, but the pair ran since ({decision.reason}, {rhythm}): "
            f"its deadline moves to {when(until)}{note}",
            until,
        )
    last = decision.last_ended or _estimated_last_run(boefje, schedule.deadline_at, policy)
    rank = _rank(boefje, Trigger.SCHEDULE, last, now, policy)
    due_at = f" at {when(schedule.deadline_at)}" if schedule.deadline_at else ""
    if decision.reason == DueReason.STALLED:
        assert run is not None and run.started_at is not None
        return answer(
            Decision.STALLED,
            f"schedule {schedule.id} fell due{due_at}; Bytes' run started {when(run.started_at)} has no end after "
            f"the stall age ({span(policy.stall_age)}): would queue on the next due-schedules run at band "
            f"{rank.band}{note}",
            band=rank.band,
        )
    return answer(
        Decision.QUEUE,
        f"would queue from schedule {schedule.id} (due{due_at}) on the next due-schedules run: "
        f"band {rank.band}, {rank.reason}",
        band=rank.band,
    )


def _estimated_last_run(boefje: Boefje, deadline: datetime | None, policy: Policy) -> datetime | None:
    """As the due-schedules run estimates it for a schedule made from Bytes' history: one period
    before its deadline."""
    if deadline is None:
        return None
    if boefje.cron:
        return deadline - (next_cron(boefje.cron, deadline) - deadline)
    return deadline - period(boefje, policy.default_grace_seconds)


def _planned(pair: PairFacts, now: datetime, policy: Policy, answer: _Answer, *, disabled: str | None) -> Explanation:
    """A pair without an enabled schedule: the tick's (our own last run, else Bytes')."""
    boefje = pair.boefje
    run, decision = _due(pair, now, policy)
    notes = []
    if disabled:
        notes.append(f"its schedule was disabled ({disabled})")
    if run is not None and pair.bytes_note:
        notes.append(pair.bytes_note)
    note = "".join(f"; {n}" for n in notes)
    if decision.reason == NotDueReason.RUNNING:
        assert run is not None and run.started_at is not None and decision.until is not None
        return answer(
            Decision.RUNNING,
            f"running in Bytes since {when(run.started_at)}; taken for dead at {when(decision.until)} "
            f"(stall age {span(policy.stall_age)}){note}",
            decision.until,
        )
    if not decision.due:
        assert decision.last_ended is not None
        until = next_deadline(
            boefje,
            decision.last_ended,
            hash_=pair.hash,
            default_seconds=policy.default_grace_seconds,
            jitter=policy.jitter,
        )
        if decision.reason == NotDueReason.CRON:
            return answer(
                Decision.CRON,
                f"cron {boefje.cron!r}: next at {when(until)}, the last run ended {when(decision.last_ended)}{note}",
                until,
            )
        return answer(
            Decision.GRACE,
            f"within the {_rhythm(boefje, policy)} since the last run (until {when(decision.until or until)}); "
            f"its schedule falls due at {when(until)}{note}",
            until,
        )
    rank = _rank(boefje, Trigger.PLAN, decision.last_ended, now, policy)
    if decision.reason == DueReason.STALLED:
        assert run is not None and run.started_at is not None
        return answer(
            Decision.STALLED,
            f"Bytes' run started {when(run.started_at)} has no end after the stall age ({span(policy.stall_age)}): "
            f"taken for dead; would queue on the next tick at band {rank.band}{note}",
            band=rank.band,
        )
    why = rank.reason if decision.reason == DueReason.NEVER_RUN else f"{rank.reason}, {decision.reason}"
    return answer(Decision.QUEUE, f"would queue on the next tick: band {rank.band}, {why}{note}", band=rank.band)
