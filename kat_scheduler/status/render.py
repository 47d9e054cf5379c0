"""The status report as plain text: fixed-width tables, no box drawing, no colours (fine in a pipe or a log)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from kat_scheduler.models.tasks import TaskStatus
from kat_scheduler.queues import BAND_COUNT
from kat_scheduler.status.report import (
    BrokerSection,
    DatabaseSection,
    ProducersSection,
    QueueDepth,
    SchedulesSection,
    StalledSection,
    StatusReport,
    TasksSection,
)


def _grid(headers: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> list[str]:
    """A plain-text table; ``align`` holds ``l`` or ``r`` per column (default: the first left, the rest right)."""
    body = [list(row) for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *body, strict=False)]
    align = align or "l" + "r" * (len(widths) - 1)

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if align[i : i + 1] == "r" else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=False))
        ]
        return "  ".join(parts).rstrip()

    return [line(headers)] + [line(row) for row in body]


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def duration(seconds: float | None) -> str:
    """``0.25s``, ``42s``, ``3m20s``, ``2h05m``, ``3d04h``."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _brief(summary: dict[str, Any] | None, width: int = 60) -> str:
    """The summary's plain values that say something, as ``key=value`` (nested ones left out)."""

    def telling(value: Any) -> bool:
        if isinstance(value, bool):
            return value
        return isinstance(value, (int, float, str)) and value not in (0, "")

    text = " ".join(f"{key}={value}" for key, value in (summary or {}).items() if telling(value))
    return text if len(text) <= width else text[: width - 3] + "..."


def _failed(title: str, error: str) -> list[str]:
    return [title, f"  ERROR: {error}"]


def _bands_table(rows: dict[str, dict[int, int]]) -> list[str]:
    headers = ["queue", "total", *[f"b{band}" for band in range(BAND_COUNT)]]
    body = [
        [queue, str(sum(bands.values())), *[str(bands.get(band, 0)) for band in range(BAND_COUNT)]]
        for queue, bands in rows.items()
    ]
    return _grid(headers, body)


def _depths_table(depths: list[QueueDepth]) -> list[str]:
    """Per band where the broker tells (Redis), else totals and consumers (RabbitMQ)."""
    if all(depth.bands is not None for depth in depths):
        return _bands_table({depth.queue: depth.bands or {} for depth in depths})
    body = [
        [depth.queue, "-", "-", f"ERROR: {depth.error}"]
        if depth.error is not None
        else [depth.queue, str(depth.messages), "-" if depth.consumers is None else str(depth.consumers), ""]
        for depth in depths
    ]
    return _grid(["queue", "total", "consumers", ""], body, align="lrrl")


def _render_database(db: DatabaseSection) -> list[str]:
    if db.error is not None:
        return _failed(f"Database  {db.url}", db.error)
    state = "up to date" if db.up_to_date else f"UPGRADE NEEDED (head {db.head}): kat-scheduler db upgrade"
    return [f"Database  {db.url}  revision {db.revision or 'none'}, {state}"]


def _backpressure_line(broker: BrokerSection) -> list[str]:
    state = broker.backpressure
    if state is None:
        return []
    return [f"Backpressure ({state.queue}): {'ON' if state.max_band is not None else 'off'}, {state.reason}"]


def _render_broker(broker: BrokerSection) -> list[str]:
    if broker.error is None and broker.queues is None:
        return [f"Broker  {broker.url}  not read (--no-broker): no queue depths"]
    title = f"Broker  {broker.url}  (messages waiting; b0 = band 0, most urgent)"
    if broker.error is not None or broker.queues is None:
        return [*_failed(title, broker.error or "no data"), *_backpressure_line(broker)]
    lines = [title, *_depths_table(broker.queues)]
    if broker.transport == "amqp":
        lines.append("(RabbitMQ gives no count per priority; see the queued tasks per band below)")
    return [*lines, *_backpressure_line(broker)]


def held_back(summary: dict[str, Any] | None) -> str | None:
    """Why a producer's last run held bands back (its summary says ``backpressure``), or ``None``."""
    if not summary or not summary.get("backpressure"):
        return None
    if summary.get("queue_depth") is None:
        error = summary.get("queue_depth_error")
        return "the queue depth could not be read" + (f" ({error})" if error else "")
    return f"the queue held {summary['queue_depth']} messages"


def _render_tasks(tasks: TasksSection) -> list[str]:
    title = "Tasks (database)"
    if tasks.error is not None or tasks.by_status is None or tasks.by_scheduler is None:
        return _failed(title, tasks.error or "no data")
    schedulers = list(tasks.by_scheduler)
    body = [
        [status.value, *[str(tasks.by_scheduler[s][status]) for s in schedulers], str(tasks.by_status[status])]
        for status in TaskStatus
    ]
    totals = [str(sum(tasks.by_scheduler[s].values())) for s in schedulers]
    body.append(["total", *totals, str(tasks.total)])
    lines = [title, *_grid(["status", *schedulers, "total"], body)]
    if tasks.rate_limited:
        lines.append(
            f"{tasks.rate_limited} queued waiting for their rate limit's window (the first may run "
            f"{_when(tasks.rate_limited_next)})"
        )
    if tasks.queued_by_band is not None:
        lines += ["", "Queued tasks per band (database)", *_bands_table(tasks.queued_by_band)]
    return lines


def _render_schedules(schedules: SchedulesSection) -> list[str]:
    title = "Schedules"
    if schedules.error is not None:
        return _failed(title, schedules.error)
    due = f"due now {schedules.due}"
    if schedules.oldest_due_at is not None:
        due += f" (oldest due {duration(schedules.oldest_due_seconds)} ago)"
    return [title, f"  enabled {schedules.enabled}, disabled {schedules.disabled}, {due}"]


def _render_producers(section: ProducersSection) -> list[str]:
    title = "Producers (last run)"
    if section.error is not None or section.producers is None:
        return _failed(title, section.error or "no data")
    body = []
    errors = []
    for p in section.producers:
        if p.finished_at is None:
            body.append([p.name, "never", "", "", "", "", ""])
            continue
        outcome = (p.outcome.value if p.outcome else "?") + (" LATE" if p.late else "")
        where = f"{p.host}:{p.pid}" if p.host else "-"
        age = f"{duration(p.age_seconds)} ago"
        body.append(
            [p.name, _when(p.finished_at), age, duration(p.duration_seconds), outcome, where, _brief(p.summary)]
        )
        if p.error:
            errors.append(f"  {p.name}: {p.error}")
        why = held_back(p.summary)
        if why is not None:
            errors.append(f"  {p.name}: BACKPRESSURE in its last run, only urgent bands added: {why}")
    table = _grid(["producer", "finished", "age", "took", "outcome", "host:pid", "summary"], body, align="llrrlll")
    return [title, *table, *errors]


def _render_stalled(section: StalledSection) -> list[str]:
    title = "Stalled rows (the reaper repairs them on its next run)"
    if section.error is not None or section.running is None or section.unpublished is None:
        return _failed(title, section.error or "no data")
    lines = [title]
    for group in (section.running, section.unpublished):
        lines.append(f"  {group.count} {group.criterion} ({duration(group.threshold_seconds)})")
        for row in group.rows:
            target = f" on {row.input_ooi}" if row.input_ooi else ""
            worker = f" by {row.worker}" if row.worker else ""
            lines.append(
                f"    {row.id}  {row.scheduler_id} {row.plugin_id}{target} ({row.organisation}), "
                f"{row.status.value} for {duration(row.age_seconds)}{worker}, attempts {row.attempts}"
            )
        if group.count > len(group.rows):
            lines.append(f"    ... and {group.count - len(group.rows)} more")
    return lines


def render_table(report: StatusReport) -> str:
    """The report as plain text: fixed-width tables, no colours, fit for a terminal or a log."""
    verdict = "ok" if report.ok else "FAILED: " + ", ".join(report.failed)
    blocks = [
        [f"kat-scheduler status at {_when(report.generated_at)}: {verdict}"],
        _render_database(report.database),
        _render_broker(report.broker),
        _render_tasks(report.tasks),
        _render_schedules(report.schedules),
        _render_producers(report.producers),
        _render_stalled(report.stalled),
    ]
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"
