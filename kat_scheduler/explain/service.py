"""The function ``kat-scheduler explain`` and ``GET /explain`` call: gather, then decide."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kat_scheduler.explain.decide import Explanation, Policy, explain
from kat_scheduler.explain.facts import ObjectFacts, Sources, gather_facts


@dataclass(frozen=True)
class Answer:
    facts: ObjectFacts
    explanations: list[Explanation]


def explain_object(sources: Sources, policy: Policy, organisation: str, reference: str, *, now: datetime) -> Answer:
    """Every boefje consuming ``reference``'s type in ``organisation``, with the rule that decides at ``now``.

    Raises :class:`~kat_scheduler.explain.facts.ObjectNotFound`,
    :class:`~kat_scheduler.clients.OrganisationNotFound` and other
    :class:`~kat_scheduler.clients.ServiceError` as :func:`gather_facts` does.
    """
    facts = gather_facts(sources, organisation, reference, now=now)
    return Answer(facts, explain(facts, now, policy))
