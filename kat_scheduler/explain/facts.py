"""What is known about one object and every boefje that consumes its type: the only I/O of ``explain``.

One request to Octopoes (the object, at ``now``), one to Katalogus (the organisation's boefjes that
consume the object's type, enabled or not), four indexed reads through the stores (live tasks, our
own last runs exactly as the producers read them, those runs' outcomes, the schedules), and, for
the pairs whose history our own table does not hold, Bytes' newest run of the pair (one request
each). Reads that do not wait for each other run at once, on threads. When Bytes does not answer,
its newest runs as the last tick saw them (``bytes_runs``) stand in, and the answer says so.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine

from kat_scheduler.clients import KATClients, ServiceError
from kat_scheduler.models.limits import ID_LENGTH, OBJECT_KEY_LENGTH
from kat_scheduler.models.ooi import OOI
from kat_scheduler.models.plugins import Boefje, PluginType
from kat_scheduler.models.tasks import TaskStatus
from kat_scheduler.rules import BytesRun
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.storage.bytes_runs import BytesRunStore
from kat_scheduler.storage.schedules import ScheduleQuery, ScheduleStore
from kat_scheduler.storage.tables import ScheduleRow, table_of
from kat_scheduler.storage.task_views import TaskViews
from kat_scheduler.storage.tasks import TaskStore
from kat_scheduler.storage.waiting import RATE_LIMIT_KEY, WaitingStore

logger = logging.getLogger(__name__)

_SCHEDULES = table_of(ScheduleRow)
#: Reads at once per explain: the services' and the database's (Bytes: one per pair without history of our own).
CONCURRENCY = 8


class ObjectNotFound(LookupError):
    """Octopoes does not know the object in the organisation."""


class BadRequest(ValueError):
    """An organisation id or an object key no object can have (too long, a NUL, not UTF-8)."""


def check_request(organisation: str, reference: str) -> None:
    """Refuse (:class:`BadRequest`) what no organisation or object can be called, before any I/O."""
    for what, value, limit in (("organisation", organisation, ID_LENGTH), ("object key", reference, OBJECT_KEY_LENGTH)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"the {what} is not valid UTF-8 text") from None
        if not value:
            raise BadRequest(f"the {what} is empty")
        if "\x00" in value:
            raise BadRequest(f"the {what} contains a NUL character")
        if len(value) > limit:
            raise BadRequest(f"the {what} is {len(value)} characters long; at most {limit} can be one")


@dataclass(frozen=True, slots=True)
class LiveTask:
    """The pair's live task: queued, dispatched or running."""

    id: uuid.UUID
    status: TaskStatus
    #: When it got its status: its start when running, else when it was queued.
    since: datetime
    band: int
    #: The task of another organisation whose one run serves this one (deduplication), if any.
    served_by: str | None = None
    #: Queued and waiting for its rate limit's window, if it does.
    rate_limit: RateLimitWait | None = None


@dataclass(frozen=True, slots=True)
class RateLimitWait:
    """A queued task waiting for its group's window (:mod:`kat_scheduler.limiting`): when it opens."""

    until: datetime
    limit: str | None
    group: str | None


@dataclass(frozen=True, slots=True)
class LastRun:
    """The newest run of the pair we know of: when it ended, and how."""

    ended_at: datetime
    #: ``completed`` or ``failed`` (our own tasks), or ``seen in Bytes``.
    outcome: str


@dataclass(frozen=True, slots=True)
class ScheduleFacts:
    id: uuid.UUID
    enabled: bool
    deadline_at: datetime | None
    disabled_reason: str | None = None
    #: When its boefje descheduled the pair (a raw file tagged ``openkat/deschedule``); ``None``: it did not.
    descheduled_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PairFacts:
    """One boefje on the object.

    ``last_ended``: the end of our own last run, exactly as the producers read it
    (:meth:`TaskStore.last_runs`: a task given up on because a KAT service failed is no run);
    ``last_outcome``: that run's status. ``bytes_run``: Bytes' newest run of the pair, asked only
    when our own table holds no run of it (``None``: none, or not asked); ``bytes_note``: said
    when that run is not Bytes' own answer (Bytes did not answer).
    """

    boefje: Boefje
    hash: str
    live: LiveTask | None = None
    last_ended: datetime | None = None
    last_outcome: str | None = None
    schedule: ScheduleFacts | None = None
    bytes_run: BytesRun | None = None
    bytes_note: str | None = None


@dataclass(frozen=True)
class ObjectFacts:
    organisation: str
    ooi: OOI
    pairs: list[PairFacts]
    #: Plugins Katalogus lists for the object's type that do not validate (id → reason).
    invalid: dict[str, str] = field(default_factory=dict)
    #: The moment the facts are of (``None``: not said).
    now: datetime | None = None


@dataclass(frozen=True)
class Sources:
    """Where the facts come from: the KAT clients and the stores, on one engine."""

    clients: KATClients
    tasks: TaskStore
    views: TaskViews
    schedules: ScheduleStore
    bytes_runs: BytesRunStore

    @classmethod
    def on(cls, engine: Engine, clients: KATClients) -> Sources:
        return cls(clients, TaskStore(engine), TaskViews(engine), ScheduleStore(engine), BytesRunStore(engine))


def _aware(moment: datetime) -> datetime:
    """A moment read from the database, in UTC (SQLite gives it without a zone)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else _aware(moment)


def gather_facts(sources: Sources, organisation: str, reference: str, *, now: datetime) -> ObjectFacts:
    """The facts of ``reference`` in ``organisation`` at ``now``.

    Raises :class:`BadRequest` for what cannot be an organisation or an object key,
    :class:`ObjectNotFound` for an object Octopoes does not know,
    :class:`~kat_scheduler.clients.OrganisationNotFound` for an organisation Katalogus does not
    know, and any other :class:`~kat_scheduler.clients.ServiceError` of Octopoes or Katalogus.
    """
    check_request(organisation, reference)
    # Independent reads run at once (threads: each mostly waits on a service or the database):
    # Katalogus is asked for the boefjes of the type the primary key starts with while Octopoes is
    # asked for the object; the pairs' rows are read as soon as the boefjes are known.
    with ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="explain") as pool:
        guessed = reference.split("|", 1)[0]
        listing = pool.submit(_consumers, sources.clients, organisation, guessed)
        found = pool.submit(sources.clients.octopoes.get_object, organisation, reference, valid_time=now)
        boefjes, invalid = listing.result()  # raises OrganisationNotFound for an unknown organisation
        rows = _rows(pool, sources, organisation, reference, boefjes)
        ooi = found.result()
        if ooi is None:
            raise ObjectNotFound(f"no object {reference!r} in organisation {organisation!r} (Octopoes, at {when(now)})")
        if ooi.object_type != guessed or ooi.primary_key != reference:  # read again for what the object says
            boefjes, invalid = _consumers(sources.clients, organisation, ooi.object_type)
            rows = _rows(pool, sources, organisation, ooi.primary_key, boefjes)
        if not boefjes:
            return ObjectFacts(organisation, ooi, [], invalid, now)
        hashes, live, last_ended, schedules = rows.result()
        outcomes_read = pool.submit(_outcomes, sources.views, organisation, ooi.primary_key, last_ended)
        ask_bytes = [b for b in boefjes if hashes[b.id] not in last_ended and hashes[b.id] not in live]
        runs, note = _bytes_runs(pool, sources, organisation, ooi.primary_key, ask_bytes, hashes)
        outcomes = outcomes_read.result()
    pairs = [
        PairFacts(
            boefje=b,
            hash=hashes[b.id],
            live=live.get(hashes[b.id]),
            last_ended=last_ended.get(hashes[b.id]),
            last_outcome=outcomes.get(hashes[b.id]),
            schedule=schedules.get(hashes[b.id]),
            bytes_run=runs.get(hashes[b.id]),
            bytes_note=note if hashes[b.id] in runs else None,
        )
        for b in boefjes
    ]
    return ObjectFacts(organisation, ooi, pairs, invalid, now)


class _PendingRows:
    """The pairs' rows being read (:func:`_rows`): their hashes by boefje id, then live tasks, our
    own last run ends and schedules, by hash."""

    def __init__(
        self,
        hashes: dict[str, str],
        live: Future[dict[str, LiveTask]],
        last: Future[dict[str, datetime]],
        schedules: Future[dict[str, ScheduleFacts]],
    ) -> None:
        self.hashes, self._live, self._last, self._schedules = hashes, live, last, schedules

    def result(self) -> tuple[dict[str, str], dict[str, LiveTask], dict[str, datetime], dict[str, ScheduleFacts]]:
        return self.hashes, self._live.result(), self._last.result(), self._schedules.result()


def _rows(
    pool: ThreadPoolExecutor, sources: Sources, organisation: str, reference: str, boefjes: Sequence[Boefje]
) -> _PendingRows:
    """Start reading the pairs' rows: three statements at once."""
    hashes = {b.id: boefje_task_hash(b.id, organisation, reference) for b in boefjes}
    wanted = list(hashes.values())
    return _PendingRows(
        hashes,
        pool.submit(_live, sources.views, organisation, reference, wanted),
        pool.submit(_last_ended, sources.tasks, wanted),
        pool.submit(_schedules, sources.schedules, organisation, wanted),
    )


def _last_ended(tasks: TaskStore, hashes: list[str]) -> dict[str, datetime]:
    """Our own last run of each hash, exactly as the producers read it."""
    return {h: _aware(t) for h, t in tasks.last_runs(hashes).items()} if hashes else {}


def _consumers(clients: KATClients, organisation: str, object_type: str) -> tuple[list[Boefje], dict[str, str]]:
    """The organisation's boefjes consuming ``object_type`` (enabled or not), by id; and those
    Katalogus lists for it that do not validate (id → reason)."""
    found = clients.katalogus.plugins(organisation, plugin_type=PluginType.BOEFJE, consumes=[object_type])
    boefjes = sorted((p for p in found if isinstance(p, Boefje) and object_type in p.consumes), key=lambda b: b.id)
    return boefjes, {p.plugin_id: p.reason for p in found.invalid}


def when(moment: datetime) -> str:
    """A moment for people: UTC to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _live(views: TaskViews, organisation: str, reference: str, hashes: list[str]) -> dict[str, LiveTask]:
    """The live task of each of ``hashes`` (at most one each: ``uq_tasks_live_hash``)."""
    if not hashes:
        return {}
    rows = views.live_of_object(organisation, reference, hashes)
    noted = [row.id for row in rows if row.status == TaskStatus.QUEUED and RATE_LIMIT_KEY in (row.data or {})]
    waiting = WaitingStore(views.engine).waiting_until(noted) if noted else {}
    found: dict[str, LiveTask] = {}
    for row in rows:
        since = row.started_at if row.status == TaskStatus.RUNNING and row.started_at else row.created_at
        wait = None
        if row.id in waiting:
            note = row.data.get(RATE_LIMIT_KEY) or {}
            wait = RateLimitWait(_aware(waiting[row.id]), note.get("limit"), note.get("group"))
        found[row.hash] = LiveTask(
            row.id, TaskStatus(row.status), _aware(since), row.band, _served_by(row.data), rate_limit=wait
        )
    return found


def _outcomes(
    views: TaskViews, organisation: str, reference: str, last_ended: Mapping[str, datetime]
) -> dict[str, str]:
    """The status (``completed`` or ``failed``) of the run each last end in ``last_ended`` belongs to."""
    if not last_ended:
        return {}
    ends = sorted(set(last_ended.values()))
    rows = views.runs_ended_at(organisation, reference, list(last_ended), ends, limit=4 * len(last_ended))
    found: dict[str, str] = {}
    for row in rows:
        if _utc(row.ended_at) == last_ended.get(row.hash):
            served = _served_by(row.data)
            found.setdefault(row.hash, TaskStatus(row.status).value + (f" (served by task {served})" if served else ""))
    return found


def _served_by(data: Mapping[str, object] | None) -> str | None:
    """The task whose run served a row (its data's ``served_by``: cross-organisation deduplication)."""
    served = (data or {}).get("served_by")
    return served if isinstance(served, str) else None


def _schedules(store: ScheduleStore, organisation: str, hashes: list[str]) -> dict[str, ScheduleFacts]:
    if not hashes:
        return {}
    query = ScheduleQuery(organisation=organisation, where=[_SCHEDULES.c.hash.in_(hashes)])
    page = store.page(query, offset=0, limit=len(hashes))
    return {
        row.hash: ScheduleFacts(
            row.id, bool(row.enabled), _utc(row.deadline_at), row.disabled_reason, _utc(row.descheduled_at)
        )
        for row in page.rows
    }


def _bytes_runs(
    pool: ThreadPoolExecutor,
    sources: Sources,
    organisation: str,
    reference: str,
    boefjes: Sequence[Boefje],
    hashes: dict[str, str],
) -> tuple[dict[str, BytesRun], str | None]:
    """Bytes' newest run of each pair of ``boefjes`` on ``reference`` (the requests at once); on a
    Bytes error, the runs a tick last saw (``bytes_runs``) and a note saying so."""
    if not boefjes:
        return {}, None
    client = sources.clients.bytes

    def newest(boefje: Boefje) -> tuple[str, BytesRun | None]:
        meta = client.last_run(organisation, boefje.id, reference)
        if meta is None or (meta.started_at is None and meta.ended_at is None):
            return hashes[boefje.id], None
        return hashes[boefje.id], BytesRun(meta.started_at, meta.ended_at)

    asked = [pool.submit(newest, boefje) for boefje in boefjes]
    try:
        answers = [future.result() for future in asked]
    except ServiceError as exc:
        logger.warning(
            "explain: Bytes did not answer for %s in %s, using the runs a tick saw: %s", reference, organisation, exc
        )
        seen = sources.bytes_runs.newest([hashes[b.id] for b in boefjes])
        runs = {h: BytesRun(_utc(r.started_at), _utc(r.ended_at)) for h, r in seen.items()}
        return runs, f"Bytes did not answer ({type(exc).__name__}); its newest run as a planning tick last saw it"
    return {h: run for h, run in answers if run is not None}, None
