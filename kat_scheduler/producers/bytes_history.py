"""Bytes' history for the tick: the newest run per object of a boefje, listed in bulk and kept.

Listed once per organisation and boefje, newest first, only as far back as a run could still
change a decision (the grace period or the stall age); only for pairs our own history does not
cover. After the publish, the newest run of every object of each history listed, eligible or
not, is kept in ``bytes_runs`` for the event handlers (an object raised later).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from kat_scheduler.models.plugins import Boefje
from kat_scheduler.planning.candidates import BoefjeIndex
from kat_scheduler.rules import BytesRun, grace_period
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.storage.bytes_runs import SeenRun

if TYPE_CHECKING:
    from kat_scheduler.producers.base import ProducerContext

#: An organisation's listed histories: by boefje id, Bytes' newest run per object.
Histories = dict[str, dict[str, BytesRun]]


class BytesHistory:
    """Reads Bytes' run history for the tick and keeps what it read in ``bytes_runs``."""

    def __init__(self, context: ProducerContext) -> None:
        self.context = context
        self.settings = context.settings

    def run_of(self, org: str, boefje: Boefje, input_ooi: str, cache: Histories, now: datetime) -> BytesRun | None:
        """Bytes' newest run of the pair, from its history fetched in bulk once per (organisation, boefje)."""
        if boefje.id not in cache:
            cache[boefje.id] = self.fetch(org, boefje, self.horizon(boefje, now))
        return cache[boefje.id].get(input_ooi)

    def list_unlisted(self, org: str, index: BoefjeIndex, cache: Histories, now: datetime) -> None:
        """List the histories this tick did not need, for ``bytes_runs`` (which events read), when
        no tick has listed them yet (none of their pairs needed it), or when they held a run that
        was going when seen and has passed the stall age since: did it end, or die?"""
        unlisted = [
            b for b in index.boefjes.values() if b.enabled and b.consumes and not b.run_on and b.id not in cache
        ]
        if not unlisted:
            return
        stall_age = timedelta(seconds=self.settings.effective_bytes_stall_age)
        listed, overdue = self.context.bytes_runs.listing_state(org, now=now, stall_age=stall_age)
        for boefje in unlisted:
            if boefje.id not in listed or boefje.id in overdue:
                self.run_of(org, boefje, "", cache, now)

    def fetch(self, org: str, boefje: Boefje, horizon: datetime) -> dict[str, BytesRun]:
        """Bytes' newest run (by start, ended or not) per object of ``boefje``, back to ``horizon``."""
        newest: dict[str, BytesRun] = {}
        for page in self.context.clients.bytes.iter_run_times(org, boefje.id, page_size=self.settings.batch_size):
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

    def horizon(self, boefje: Boefje, now: datetime) -> datetime:
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

    def record(self, listed: Iterable[tuple[str, Histories]], now: datetime) -> int:
        """Keep Bytes' newest run of every object in the histories listed, per organisation (``bytes_runs``).

        Every object, not only those eligible now: an event that raises an object's level later
        reads it there (:class:`~kat_scheduler.events.handlers.MutationHandler`). Written after the
        publish, off the tick's critical path; the hashes are computed here for the same reason.
        """
        listed = list(listed)
        runs = [
            SeenRun(boefje_task_hash(boefje_id, org, ooi), org, boefje_id, ooi, run.started_at, run.ended_at)
            for org, histories in listed
            for boefje_id, newest in histories.items()
            for ooi, run in newest.items()
        ]
        chunk = 20 * self.settings.batch_size
        for start in range(0, len(runs), chunk):
            self.context.bytes_runs.record(runs[start : start + chunk], now)
        self.context.bytes_runs.record_listed([(org, b) for org, histories in listed for b in histories], now)
        return len(runs)
