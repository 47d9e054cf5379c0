"""Deschedule: a boefje says "do not run me on this object again" with a raw file tagged ``openkat/deschedule``.

KAT's boefjes return ``[({"openkat/deschedule"}, "why")]`` when their input is nothing for them
(a private address for Shodan, a service without TLS for testssl); Bytes stores it as a raw file
(with ``boefje/<id>`` beside it, as every raw file) and sends ``raw_file_received``. For each such
file the raw-file handler (:class:`~kat_scheduler.events.handlers.RawFileHandler`) asks this
module to:

* disable the schedule of the pair (boefje, input object, organisation) and mark it descheduled
  (``schedules.descheduled_at``, with the reason in ``disabled_reason``), creating a disabled
  schedule when the pair has none yet (a pair queued by an event gets its schedule only after its
  run); no producer enables it again (:mod:`kat_scheduler.storage.schedules`), only an operator
  through ``PATCH /schedules/{id}`` with ``enabled: true``;
* cancel the pair's task that has not started yet (queued or dispatched; a running one runs on).

The file's normalizers run as for any other raw file: the deschedule tag is one more mime type.
A file naming a boefje the organisation's Katalogus does not list, no input object, or a pair we
know nothing of (no schedule, no task, no run of ours) changes nothing: it is logged and counted.
Like every event path this reads no Bytes: the reason names the raw file, whose text (the
boefje's own words) Bytes keeps.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from kat_scheduler.clients import OrganisationNotFound, ServiceError
from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.events.consumer import TransientError
from kat_scheduler.models.events import RawFileReceived
from kat_scheduler.models.plugins import Boefje
from kat_scheduler.planning.candidates import new_boefje_schedule
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.settings import Settings
from kat_scheduler.storage.schedules import NewSchedule, ScheduleStore
from kat_scheduler.storage.tasks import TaskStore

logger = logging.getLogger(__name__)

#: The mime type by which a boefje's raw file asks that its pair be run no more.
DESCHEDULE_MIME_TYPE = "openkat/deschedule"

#: What :class:`DescheduleOutcome.skipped` counts (the handler's skip counter, by these names).
UNKNOWN_BOEFJE = "deschedule: unknown boefje"
NO_INPUT_OBJECT = "deschedule: no input object"
UNKNOWN_PAIR = "deschedule: unknown pair"


@dataclass(frozen=True, slots=True)
class DescheduleRequest:
    """One raw file tagged ``openkat/deschedule``: whose pair it deschedules, and which file said so."""

    organisation: str
    boefje_id: str
    input_ooi: str | None
    raw_id: uuid.UUID

    @property
    def reason(self) -> str:
        """The schedule's ``disabled_reason``."""
        return f"descheduled by boefje {self.boefje_id}: raw file {self.raw_id} is tagged {DESCHEDULE_MIME_TYPE}"


def deschedule_requests(events: Sequence[RawFileReceived], skip: Collection[int] = ()) -> list[DescheduleRequest]:
    """The requests among ``events`` (pure), in their order, leaving out the events at ``skip``."""
    found: list[DescheduleRequest] = []
    for i, event in enumerate(events):
        raw = event.raw_data
        if i in skip or DESCHEDULE_MIME_TYPE not in raw.mime_type_values:
            continue
        meta = raw.boefje_meta
        found.append(DescheduleRequest(event.organization, meta.boefje.id, meta.input_ooi, raw.id))
    return found


@dataclass
class DescheduleOutcome:
    """What a batch's deschedule requests did."""

    descheduled: int = 0
    cancelled: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


#: The writes of a batch's requests, at ``now``.
Writes = Callable[[datetime], DescheduleOutcome]


class Descheduler:
    """Turns deschedule requests into disabled schedules and cancelled tasks."""

    def __init__(self, plugins: PluginCache, tasks: TaskStore, schedules: ScheduleStore, settings: Settings) -> None:
        self.plugins = plugins
        self.tasks = tasks
        self.schedules = schedules
        self.settings = settings

    def plan(self, events: Sequence[RawFileReceived], skip: Collection[int] = ()) -> Writes:
        """Read what the requests among ``events`` need (their organisations' boefjes, from the cache);
        :class:`TransientError` when Katalogus cannot answer. Returns the writes."""
        requests = deschedule_requests(events, skip)
        outcome = DescheduleOutcome()
        pairs: list[tuple[DescheduleRequest, Boefje]] = []
        for request in requests:
            boefje = self._boefje(request)
            if boefje is None:
                outcome.skipped[UNKNOWN_BOEFJE] += 1
            elif request.input_ooi is None:
                logger.warning(
                    "raw file %s of boefje %s in %s is tagged %s but names no input object: nothing descheduled",
                    request.raw_id,
                    request.boefje_id,
                    request.organisation,
                    DESCHEDULE_MIME_TYPE,
                )
                outcome.skipped[NO_INPUT_OBJECT] += 1
            else:
                pairs.append((request, boefje))

        def write(now: datetime) -> DescheduleOutcome:
            return self._write(pairs, outcome, now)

        return write

    def _boefje(self, request: DescheduleRequest) -> Boefje | None:
        try:
            boefjes = self.plugins.boefjes(request.organisation)
        except OrganisationNotFound:
            boefjes = []
        except (ServiceError, ValidationError) as exc:
            raise TransientError(f"Katalogus: {exc}") from exc
        found = next((b for b in boefjes if b.id == request.boefje_id), None)
        if found is None:
            logger.warning(
                "raw file %s is tagged %s for boefje %s, which Katalogus does not list for %s: nothing descheduled",
                request.raw_id,
                DESCHEDULE_MIME_TYPE,
                request.boefje_id,
                request.organisation,
            )
        return found

    def _write(
        self, pairs: list[tuple[DescheduleRequest, Boefje]], outcome: DescheduleOutcome, now: datetime
    ) -> DescheduleOutcome:
        if not pairs:
            return outcome
        by_hash: dict[str, tuple[DescheduleRequest, Boefje]] = {}
        for request, boefje in pairs:  # the last file of a pair says why
            by_hash[boefje_task_hash(boefje.id, request.organisation, request.input_ooi)] = (request, boefje)
        hashes = list(by_hash)
        scheduled = self.schedules.states(hashes)
        unscheduled = [h for h in hashes if h not in scheduled]
        known = set(scheduled)
        if unscheduled:
            known |= self.tasks.live_hashes(unscheduled) | set(self.tasks.last_runs(unscheduled))
        writes: list[tuple[NewSchedule, str]] = []
        for hash_, (request, boefje) in by_hash.items():
            if hash_ not in known:
                logger.warning(
                    "raw file %s deschedules boefje %s on %s in %s, a pair with no schedule, task or run here: "
                    "nothing descheduled",
                    request.raw_id,
                    boefje.id,
                    request.input_ooi,
                    request.organisation,
                )
                outcome.skipped[UNKNOWN_PAIR] += 1
                continue
            schedule = new_boefje_schedule(request.organisation, boefje, request.input_ooi, hash_, now, self.settings)
            writes.append((schedule, request.reason))
        written = self.schedules.deschedule(writes, now=now)
        outcome.descheduled += len(written)
        if written:
            outcome.cancelled += len(self.tasks.cancel_hashes(written, now=now))
            logger.info("descheduled %d pair(s) at their boefjes' word", len(written))
        return outcome
