"""A boefje queued by hand (``kat-scheduler push boefje``, the API's push): band 0, bypasses grace,
interval and cron, never clearance and never a run still going in Bytes.

Whether a pushed pair may be queued is the rules core's (:func:`kat_scheduler.rules.may_push`),
from the pair's facts: our own last run and Bytes' newest run as the tick or the listener last saw
it (``bytes_runs``). :func:`check_push` is the one check of both push paths, the CLI's
:class:`ManualPush` and the API's push (``api/push.py``): the boefje and object exist, the boefje
consumes the object, clearance, then :func:`check_not_running` reads the pair's facts and asks the rule.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from kat_scheduler.clients import KATClients
from kat_scheduler.models.plugins import Boefje
from kat_scheduler.planning.candidates import Candidate, boefje_dispatchable
from kat_scheduler.producers.base import ProducerContext
from kat_scheduler.producers.dispatching import CandidateDispatch
from kat_scheduler.rules import Decision, PairFacts, Trigger, clearance_skip, grace_period, may_push
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.ranking import BoefjeCandidate, rank_boefje
from kat_scheduler.settings import Settings
from kat_scheduler.storage.bytes_runs import BytesRunStore
from kat_scheduler.storage.tasks import TaskStore


class PushRefused(Exception):
    """A manual request that may not be queued (unknown plugin or object, clearance, running in Bytes)."""


class RunningInBytes(PushRefused):
    """The pushed pair is running in Bytes (a run with a start, no end, younger than the stall age)."""

    def __init__(self, hash_: str, started_at: datetime, stalled_after: datetime) -> None:
        super().__init__(
            f"running in Bytes since {started_at.isoformat()}; it counts as stalled after "
            f"{stalled_after.isoformat()} (hash {hash_})"
        )
        self.hash = hash_
        self.started_at = started_at
        self.stalled_after = stalled_after


def check_not_running(
    tasks: TaskStore, bytes_runs: BytesRunStore, settings: Settings, hash_: str, now: datetime
) -> Decision:
    """The rules core's word on pushing the pair of ``hash_`` at ``now`` (:func:`may_push`), from our
    own last run and Bytes' newest run as last seen; raises :class:`RunningInBytes` when it refuses."""
    run = bytes_runs.newest([hash_]).get(hash_)
    last = tasks.last_runs([hash_]).get(hash_) if run is not None else None
    facts = PairFacts(
        now=now,
        last_ended=last,
        bytes_run=run,
        interval=None,  # a push bypasses interval, cron and grace: they do not decide here
        cron=None,
        default_grace=timedelta(seconds=settings.grace_period),
        stall_age=timedelta(seconds=settings.effective_bytes_stall_age),
    )
    decision = may_push(facts)
    if not decision.due:
        assert run is not None and run.started_at is not None and decision.until is not None
        raise RunningInBytes(hash_, run.started_at, decision.until)
    return decision


@dataclass(frozen=True)
class PushResult:
    #: The task queued; ``None`` when one was live already, or on a dry run.
    task_id: uuid.UUID | None
    hash: str
    already_live: bool


class ManualPush:
    """One manual request for ``boefje_id`` on ``input_ooi`` (``None``: a boefje without input).

    :meth:`run` raises :class:`PushRefused` for an unknown boefje or object, an object the boefje
    does not consume, or clearance not met, and :class:`RunningInBytes` while Bytes shows the pair
    running (:func:`check_not_running`). A dry run checks all that and queues nothing.
    """

    name = "push"

    def __init__(self, context: ProducerContext, organisation: str, boefje_id: str, input_ooi: str | None) -> None:
        self.context = context
        self.organisation = organisation
        self.boefje_id = boefje_id
        self.input_ooi = input_ooi

    def run(self, now: datetime, dry_run: bool = False) -> PushResult:
        candidate = self.candidate(now)
        if dry_run:
            return PushResult(task_id=None, hash=candidate.hash, already_live=False)
        item = boefje_dispatchable(candidate)
        result = CandidateDispatch(self.context).dispatcher().dispatch([item])
        if result.errors:
            raise PushRefused(f"could not publish: {result.errors[0]}")
        if result.claimed == 0:
            return PushResult(task_id=None, hash=candidate.hash, already_live=True)
        return PushResult(task_id=item.task.id, hash=candidate.hash, already_live=False)

    def candidate(self, now: datetime) -> Candidate:
        """The pushed pair, ranked at band 0; raises :class:`PushRefused` when it may not be queued."""
        context = self.context
        organisation, input_ooi = self.organisation, self.input_ooi
        boefje = check_push(
            context.clients,
            context.tasks,
            context.bytes_runs,
            context.settings,
            organisation,
            self.boefje_id,
            input_ooi,
            now,
        )
        rank = rank_boefje(
            BoefjeCandidate(
                trigger=Trigger.MANUAL,
                scan_level=boefje.scan_level,
                interval=grace_period(boefje, context.settings.grace_period),
            ),
            now,
        )
        hash_ = boefje_task_hash(boefje.id, organisation, input_ooi)
        return Candidate(organisation, boefje, input_ooi, hash_, rank, Trigger.MANUAL)


def check_push(
    clients: KATClients,
    tasks: TaskStore,
    bytes_runs: BytesRunStore,
    settings: Settings,
    organisation: str,
    boefje_id: str,
    input_ooi: str | None,
    now: datetime,
) -> Boefje:
    """Whether ``boefje_id`` may be queued by hand on ``input_ooi`` at ``now``: the one check of
    both push paths (the CLI's :class:`ManualPush`, the API's push). The boefje (Katalogus) when it
    may; :class:`PushRefused` for an unknown boefje or object, an object the boefje does not
    consume or below its clearance, :class:`RunningInBytes` while Bytes shows the pair running
    (:func:`check_not_running`). A failing service raises its ``ServiceError``."""
    boefje = clients.katalogus.plugin(organisation, boefje_id)
    if not isinstance(boefje, Boefje):
        raise PushRefused(f"no boefje {boefje_id!r} in organisation {organisation!r}")
    if input_ooi is not None:
        ooi = clients.octopoes.get_object(organisation, input_ooi)
        if ooi is None:
            raise PushRefused(f"no object {input_ooi!r} in organisation {organisation!r}")
        if boefje.consumes and ooi.object_type not in boefje.consumes:
            raise PushRefused(f"boefje {boefje_id} does not consume {ooi.object_type}")
        if clearance_skip(boefje, ooi) is not None:
            raise PushRefused(
                f"boefje {boefje_id} needs scan level {boefje.scan_level}, {input_ooi} has "
                f"{ooi.scan_level}: clearance is never bypassed"
            )
    check_not_running(tasks, bytes_runs, settings, boefje_task_hash(boefje.id, organisation, input_ooi), now)
    return boefje
