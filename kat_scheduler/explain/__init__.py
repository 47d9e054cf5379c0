"""``kat-scheduler explain`` and ``GET /explain``: why an object was or was not scanned, boefje by boefje.

This package owns the answer to "why was this not scanned?" for one object of one organisation:

* :mod:`~kat_scheduler.explain.facts`: what is known about the object and every boefje that
  consumes its type (Katalogus, Octopoes, Bytes, the ``tasks``, ``schedules`` and ``bytes_runs``
  tables), gathered through the clients and stores; the only I/O of the package;
* :mod:`~kat_scheduler.explain.decide`: the decision per boefje (pure: facts and ``now``), made by
  the producers' own rule functions (:mod:`kat_scheduler.rules`: ``static_skip``, ``is_due``,
  ``rank_boefje``) in the producers' order;
* :mod:`~kat_scheduler.explain.render`: a table for people, JSON lines for tools;
* :mod:`~kat_scheduler.explain.service`: :func:`explain_object`, what the command and the route call;
* :mod:`~kat_scheduler.explain.command`: the click command (``kat-scheduler explain``, also
  ``python -m kat_scheduler.explain``).

The API route is :mod:`kat_scheduler.api.explain`. Nothing here changes anything.
"""

from kat_scheduler.explain.decide import DECISIONS, Decision, Explanation, Policy, explain
from kat_scheduler.explain.facts import (
    BadRequest,
    LastRun,
    LiveTask,
    ObjectFacts,
    ObjectNotFound,
    PairFacts,
    RateLimitWait,
    ScheduleFacts,
    Sources,
    check_request,
    gather_facts,
)
from kat_scheduler.explain.service import Answer, explain_object

__all__ = [
    "DECISIONS",
    "Answer",
    "BadRequest",
    "Decision",
    "Explanation",
    "LastRun",
    "LiveTask",
    "ObjectFacts",
    "ObjectNotFound",
    "PairFacts",
    "Policy",
    "RateLimitWait",
    "ScheduleFacts",
    "Sources",
    "check_request",
    "explain",
    "explain_object",
    "gather_facts",
]
