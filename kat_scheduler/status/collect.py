"""Collecting the status report, section by section; a section that fails carries its error.

The broker is only read (``LLEN`` on Redis, a passive declare on RabbitMQ) and the database only
queried; the stalled rows are found with the reaper's own conditions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.exc import DBAPIError

from kat_scheduler.models.producers import ProducerName
from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.producers.recording import describe
from kat_scheduler.queues import BAND_COUNT, Queue, band_of_priority, transport_of
from kat_scheduler.rules.backpressure import backpressure
from kat_scheduler.settings import Settings, env_name, redacted
from kat_scheduler.status.report import (
    BackpressureStatus,
    BrokerSection,
    DatabaseSection,
    ProducersSection,
    ProducerStatus,
    QueueDepth,
    SchedulesSection,
    Section,
    StalledGroup,
    StalledRow,
    StalledSection,
    StatusReport,
    TasksSection,
)
from kat_scheduler.storage.db import missing_sqlite_file
from kat_scheduler.storage.tables import ScheduleRow, table_of, utcnow
from kat_scheduler.storage.task_views import Stalled, TaskViews
from kat_scheduler.storage.waiting import WaitingStore

_SCHEDULES = table_of(ScheduleRow)

#: Which broker queue a scheduler's tasks go to.
QUEUE_OF: dict[SchedulerId, Queue] = {SchedulerId.BOEFJE: Queue.BOEFJES, SchedulerId.NORMALIZER: Queue.NORMALIZERS}
#: Seconds to wait for the broker before its section reports an error.
BROKER_TIMEOUT = 3.0
#: A ticked producer whose last run ended more than this many intervals ago is ``late``.
LATE_AFTER_INTERVALS = 3
#: Stalled rows listed per kind by default.
EXAMPLES = 5

_Section = TypeVar("_Section", bound=Section)


def error_text(exc: Exception) -> str:
    """One line saying what went wrong (a database error without SQLAlchemy's statement and links)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    return " ".join(describe(exc).split())


def _guarded(section: _Section, fill: Callable[[_Section], None]) -> _Section:
    """``fill(section)``, or the section with its error when that raised."""
    try:
        fill(section)
    except Exception as exc:
        section.error = error_text(exc)
    return section


def _shown_url(settings: Settings, field: str) -> str:
    return str(redacted(settings)[env_name(field)])


def age_seconds(now: datetime, then: datetime | None) -> float | None:
    """Seconds from ``then`` to ``now``; never negative (a row written while we collect, or a
    producer on a host whose clock is a little ahead, is simply 0 s old)."""
    return None if then is None else max(0.0, round((now - then).total_seconds(), 3))


def collect_broker(settings: Settings) -> BrokerSection:
    """Messages waiting per queue on the Celery broker (per band on Redis)."""
    transport = transport_of(settings.broker_url)

    def fill(section: BrokerSection) -> None:
        if transport == "redis":
            section.queues = _redis_depths(settings)
        elif transport == "amqp":
            section.queues = _amqp_depths(settings.broker_url)
        else:
            raise ValueError(f"queue depths are not available on the {transport!r} transport")

    section = _guarded(BrokerSection(transport=transport, url=_shown_url(settings, "broker_url")), fill)
    section.backpressure = _backpressure(settings, section)
    return section


def _backpressure(settings: Settings, broker: BrokerSection) -> BackpressureStatus:
    """The producers' rule on the ``boefjes`` depth just read; one that could not be read holds bands back."""
    queue = Queue.BOEFJES.value
    depth = next((q for q in broker.queues or [] if q.queue == queue), None)
    messages = depth.messages if depth is not None else None
    error = broker.error or (depth.error if depth is not None else None) or "not reported"
    decision = backpressure(
        queue,
        messages,
        limit=settings.queue_depth_limit_boefjes,
        band=settings.backpressure_band,
        error=error if messages is None else None,
    )
    return BackpressureStatus(
        queue=queue, limit=decision.limit, depth=decision.depth, max_band=decision.max_band, reason=decision.reason
    )


def _redis_depths(settings: Settings) -> list[QueueDepth]:
    """One ``LLEN`` per queue and priority step (kombu's lists), the steps mapped back to bands."""
    from kat_scheduler.dispatch.publishing.redis_publisher import RedisPublisher
    from kat_scheduler.runtime.celery_config import broker_transport_options

    depths = []
    with RedisPublisher(
        settings.broker_url,
        transport_options=broker_transport_options(settings),
        queues=[queue.value for queue in Queue],
        connect_timeout=BROKER_TIMEOUT,
        socket_timeout=BROKER_TIMEOUT,
    ) as redis_publisher:
        for queue in Queue:
            bands = dict.fromkeys(range(BAND_COUNT), 0)
            for priority, count in redis_publisher.depth_by_priority(queue.value).items():
                bands[band_of_priority(priority, "redis")] += count
            depths.append(QueueDepth(queue=queue.value, messages=sum(bands.values()), bands=bands))
    return depths


def _amqp_depths(url: str) -> list[QueueDepth]:
    """A passive declare per queue: its message and consumer counts, declaring nothing."""

    from kombu.connection import Connection

    depths = []
    with Connection(url, connect_timeout=BROKER_TIMEOUT) as connection:
        connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        for queue in Queue:
            channel = connection.channel()
            try:
                declared = channel.queue_declare(queue=queue.value, passive=True)
                depths.append(
                    QueueDepth(
                        queue=queue.value, messages=int(declared.message_count), consumers=declared.consumer_count
                    )
                )
            except connection.channel_errors as exc:  # NOT_FOUND closes the channel
                depths.append(QueueDepth(queue=queue.value, error=f"not declared yet ({error_text(exc)})"))
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
    return depths


def _collect_database(engine: Engine, section: DatabaseSection) -> None:
    """Connect, and compare the schema's revision with the newest one."""
    from kat_scheduler.storage import migrate

    def fill(section: DatabaseSection) -> None:
        section.head = migrate.head_revision()
        with engine.connect() as conn:
            # alembic's own table, read directly: its MigrationContext logs at INFO on every use
            if inspect(conn).has_table("alembic_version"):
                section.revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        section.up_to_date = section.revision == section.head

    _guarded(section, fill)


def _count_tasks(engine: Engine, section: TasksSection) -> None:
    views = TaskViews(engine)
    by_scheduler: dict[str, dict[TaskStatus, int]] = {
        scheduler.value: dict.fromkeys(TaskStatus, 0) for scheduler in QUEUE_OF
    }
    by_status = dict.fromkeys(TaskStatus, 0)
    queued: dict[str, dict[int, int]] = {
        queue.value: dict.fromkeys(range(BAND_COUNT), 0) for queue in QUEUE_OF.values()
    }
    for (scheduler, status), count in views.counts(zeros=False).items():
        by_scheduler.setdefault(scheduler.value, dict.fromkeys(TaskStatus, 0))[status] += count
        by_status[status] += count
    for (scheduler, band), count in views.queued_by_band().items():
        queue = QUEUE_OF.get(scheduler, scheduler).value
        queued.setdefault(queue, dict.fromkeys(range(BAND_COUNT), 0))[band] = count
    section.by_status, section.by_scheduler, section.queued_by_band = by_status, by_scheduler, queued
    section.total = sum(by_status.values())
    with contextlib.suppress(DBAPIError):  # a schema before 0010 has no waiting tasks to count
        section.rate_limited, section.rate_limited_next = WaitingStore(engine).summary()


def _count_schedules(engine: Engine, now: datetime, section: SchedulesSection) -> None:
    col = _SCHEDULES.c
    with engine.connect() as conn:
        counts = {
            bool(enabled): n for enabled, n in conn.execute(select(col.enabled, func.count()).group_by(col.enabled))
        }
        due, oldest = conn.execute(
            select(func.count(), func.min(col.deadline_at)).where(col.enabled.is_(True), col.deadline_at <= now)
        ).one()
    section.enabled, section.disabled, section.due = counts.get(True, 0), counts.get(False, 0), due
    section.oldest_due_at = oldest
    section.oldest_due_seconds = age_seconds(now, section.oldest_due_at)


def _intervals(settings: Settings) -> dict[str, float]:
    return {
        ProducerName.PLAN_BOEFJES.value: settings.plan_interval,
        ProducerName.QUEUE_DUE_SCHEDULES.value: settings.schedules_interval,
        ProducerName.QUEUE_REPORT_SCHEDULES.value: settings.schedules_interval,
        ProducerName.REAP.value: settings.reap_interval,
    }


def _producer_runs(engine: Engine, settings: Settings, now: datetime, section: ProducersSection) -> None:
    from kat_scheduler.storage.producers import ProducerRunStore

    runs = {run.name: run for run in ProducerRunStore(engine).all()}
    intervals = _intervals(settings)
    names = [name.value for name in ProducerName] + sorted(set(runs) - {name.value for name in ProducerName})
    producers = []
    for name in names:
        status = ProducerStatus(name=name, interval_seconds=intervals.get(name))
        run = runs.get(name)
        if run is not None:
            status.started_at, status.finished_at, status.last_ok_at = run.started_at, run.finished_at, run.last_ok_at
            status.age_seconds = age_seconds(now, run.finished_at)
            status.duration_seconds = round((run.finished_at - run.started_at).total_seconds(), 3)
            status.outcome, status.host, status.pid = run.outcome, run.host, run.pid
            status.summary, status.error = run.summary, run.error
            if status.interval_seconds is not None and status.age_seconds is not None:
                status.late = status.age_seconds > LATE_AFTER_INTERVALS * status.interval_seconds
        producers.append(status)
    section.producers = producers


def _stalled_group(criterion: str, threshold: float, stalled: Stalled, now: datetime) -> StalledGroup:
    listed = [
        StalledRow(
            id=row.id,
            scheduler_id=row.scheduler_id.value,
            organisation=row.organisation,
            plugin_id=row.plugin_id,
            input_ooi=row.input_ooi,
            status=row.status,
            since=row.since,
            age_seconds=age_seconds(now, row.since),
            worker=row.worker,
            attempts=row.attempts,
        )
        for row in stalled.rows
    ]
    return StalledGroup(criterion=criterion, threshold_seconds=threshold, count=stalled.count, rows=listed)


def _stalled(engine: Engine, settings: Settings, now: datetime, examples: int, section: StalledSection) -> None:
    from kat_scheduler.workers.reaper import stuck_running_after

    views = TaskViews(engine)
    running_after = stuck_running_after(settings)
    section.running = _stalled_group(
        "running for longer than the hard time limit plus SCHEDULER_RUNNING_SLACK",
        running_after,
        views.stalled_running(now - timedelta(seconds=running_after), examples),
        now,
    )
    section.unpublished = _stalled_group(
        "claimed but not published for longer than SCHEDULER_UNPUBLISHED_AFTER",
        settings.unpublished_after,
        views.stalled_unpublished(now - timedelta(seconds=settings.unpublished_after), examples),
        now,
    )


def collect_status(
    settings: Settings,
    *,
    now: datetime | None = None,
    engine: Engine | None = None,
    examples: int = EXAMPLES,
    broker: bool = True,
) -> StatusReport:
    """Everything ``kat-scheduler status`` shows; a section that fails carries its error.

    ``engine`` is the task database (made from ``settings.db_uri`` and disposed when not given);
    ``examples`` is how many stalled rows of each kind are listed; ``broker=False`` leaves the
    broker unread (its section then holds neither queues nor an error).
    """
    now = now or utcnow()
    if broker:
        broker_section = collect_broker(settings)
    else:
        broker_section = BrokerSection(
            transport=transport_of(settings.broker_url), url=_shown_url(settings, "broker_url")
        )
    tasks, schedules, producers, stalled = TasksSection(), SchedulesSection(), ProducersSection(), StalledSection()
    database = DatabaseSection(url=_shown_url(settings, "db_uri"))
    own_engine = engine is None
    if engine is None:
        missing = missing_sqlite_file(settings.db_uri)
        if missing is not None:
            from kat_scheduler.storage.migrate import UPGRADE_HINT

            database.error = f"no database file at {missing}: {UPGRADE_HINT}"
        else:
            from kat_scheduler.storage.db import make_engine

            engine = make_engine(settings.db_uri, pool_size=1)
    try:
        if engine is not None:
            _collect_database(engine, database)
        if engine is None or database.error is not None:
            for section in (tasks, schedules, producers, stalled):
                section.error = "no database (see database)"
        elif database.revision is None:
            for section in (tasks, schedules, producers, stalled):
                section.error = "no schema (see database)"
        else:
            db = engine
            _guarded(tasks, lambda s: _count_tasks(db, s))
            _guarded(schedules, lambda s: _count_schedules(db, now, s))
            _guarded(producers, lambda s: _producer_runs(db, settings, now, s))
            _guarded(stalled, lambda s: _stalled(db, settings, now, examples, s))
    finally:
        if own_engine and engine is not None:
            engine.dispose()
    return StatusReport(
        generated_at=now,
        database=database,
        broker=broker_section,
        tasks=tasks,
        schedules=schedules,
        producers=producers,
        stalled=stalled,
    )
