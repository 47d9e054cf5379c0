"""A boefje queued by hand (``kat-scheduler push boefje``): band 0, bypasses grace, never clearance."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from kat_scheduler.models.plugins import Boefje
from kat_scheduler.planning.candidates import Candidate, boefje_dispatchable
from kat_scheduler.producers.base import ProducerContext
from kat_scheduler.producers.dispatching import CandidateDispatch
from kat_scheduler.rules import Trigger, clearance_skip, grace_period
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.ranking import BoefjeCandidate, rank_boefje


class PushRefused(Exception):
    """A manual request that may not be queued (unknown plugin or object, clearance)."""


@dataclass(frozen=True)
class PushResult:
    #: The task queued; ``None`` when one was live already, or on a dry run.
    task_id: uuid.UUID | None
    hash: str
    already_live: bool


class ManualPush:
    """One manual request for ``boefje_id`` on ``input_ooi`` (``None``: a boefje without input).

    :meth:`run` raises :class:`PushRefused` for an unknown boefje or object, an object the boefje
    does not consume, or clearance not met. A dry run checks all that and queues nothing.
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
        organisation, boefje_id, input_ooi = self.organisation, self.boefje_id, self.input_ooi
        clients = self.context.clients
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
        rank = rank_boefje(
            BoefjeCandidate(
                trigger=Trigger.MANUAL,
                scan_level=boefje.scan_level,
                interval=grace_period(boefje, self.context.settings.grace_period),
            ),
            now,
        )
        hash_ = boefje_task_hash(boefje.id, organisation, input_ooi)
        return Candidate(organisation, boefje, input_ooi, hash_, rank, Trigger.MANUAL)
