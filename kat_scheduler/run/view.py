"""The terminal view of ``kat-scheduler run``: a live dashboard on a terminal, lines otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from kat_scheduler.models.tasks import TaskStatus
from kat_scheduler.run.monitor import Monitor, Sample
from kat_scheduler.run.supervisor import Child, ExitReport

TASK_TYPES = ("boefje", "normalizer")
SHOWN_STATUSES = (
    TaskStatus.QUEUED,
    TaskStatus.DISPATCHED,
    TaskStatus.RUNNING,
    TaskStatus.COMPLETED,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
)


#: What a child killed at the stop means for the work (by child name; see run/plan.py).
KILLED_MEANS = {
    "beat": "its lease lapses by itself; the next beat ticks after SCHEDULER_BEAT_LEASE",
    "listener": "what it had received but not acked comes back to the next listener, which cannot skip "
    "Octopoes look-ups for the objects it handled (it did not retire)",
    "api": "requests it was answering were cut off; their clients get an error and may retry",
    "scheduler": "the planning task it was running was cut off; the next tick plans again",
    "boefjes": "the tasks it was running are handed on by the reaper once the worker has been silent "
    "for SCHEDULER_WORKER_LOST_AFTER",
    "normalizers": "the tasks it was running are handed on by the reaper once the worker has been silent "
    "for SCHEDULER_WORKER_LOST_AFTER",
    "flower": "nothing is lost: Flower only watches",
    "redis": "the embedded Redis may miss its last second of writes (append-only file, fsync every second)",
    "kat-sim": "nothing is lost: the simulated KAT starts a new world every run",
}


def killed_lines(exits: Sequence[ExitReport]) -> list[str]:
    """One line per child killed at the stop: which, after how long, and what that means."""
    return [
        f"{report.name} killed {report.took:.1f}s after it was asked to stop: "
        f"{KILLED_MEANS.get(report.name, 'whatever it was doing was cut off')}"
        for report in exits
        if report.killed
    ]


@dataclass(frozen=True)
class Banner:
    mode: str
    flower_url: str | None
    flower_user: str
    #: Shown only when the run generated it; ``None``: the user's own, from FLOWER_BASIC_AUTH.
    flower_password: str | None
    log_dir: str
    services: dict[str, str]
    #: The shell command that shows this run's ``kat-scheduler status`` while it runs.
    status: str = ""
    #: Where the HTTP API answers (``None``: not started).
    api_url: str | None = None


def banner_lines(banner: Banner) -> list[str]:
    lines = [f"kat-scheduler run ({banner.mode})"]
    for name, where in banner.services.items():
        lines.append(f"  {name:<10} {where}")
    if banner.flower_url:
        password = banner.flower_password or "from FLOWER_BASIC_AUTH"
        lines.append(f"  flower     {banner.flower_url}  user {banner.flower_user}  password {password}")
    if banner.api_url:
        lines.append(f"  api        {banner.api_url}  (OpenAPI page: {banner.api_url}/docs)")
    lines.append(f"  logs       {banner.log_dir}")
    if banner.status:
        lines.append(f"  status     {banner.status}")
    return lines


def _objects(sample: Sample, monitor: Monitor) -> str:
    if sample.objects is None:
        return "unknown"
    grown = sample.objects - (monitor.first_objects or sample.objects)
    return f"{sample.objects:,} (+{grown:,} since start, {sample.organisations} organisations)"


def dashboard(
    sample: Sample, monitor: Monitor, children: Sequence[Child], elapsed: float, banner: Banner
) -> RenderableType:
    tasks = Table(title="tasks", title_justify="left", expand=False)
    tasks.add_column("type")
    for status in SHOWN_STATUSES:
        tasks.add_column(status.value, justify="right")
    for task_type in TASK_TYPES:
        tasks.add_row(task_type, *(f"{sample.count(task_type, status):,}" for status in SHOWN_STATUSES))

    queues = Table(title="broker queues", title_justify="left")
    queues.add_column("queue")
    queues.add_column("waiting", justify="right")
    for name, depth in sample.depths.items():
        queues.add_row(name, f"{depth:,}")

    processes = Table(title="processes", title_justify="left")
    processes.add_column("process")
    processes.add_column("pid", justify="right")
    processes.add_column("state")
    processes.add_column("restarts", justify="right")
    for child in children:
        processes.add_row(child.name, str(child.pid or "-"), "up" if child.alive else "down", str(child.restarts))

    header = Text("\n".join(banner_lines(banner)))
    progress = Text(
        f"elapsed {elapsed:,.0f}s   finished {monitor.rate():,.1f} tasks/s   objects {_objects(sample, monitor)}"
    )
    parts: list[RenderableType] = [header, progress, tasks, queues, processes]
    if sample.errors:
        parts.append(Text("\n".join(f"{k}: {v}" for k, v in sample.errors.items()), style="red"))
    parts.append(Text("Ctrl-C stops everything", style="dim"))
    return Group(*parts)


def status_line(sample: Sample, monitor: Monitor, elapsed: float) -> str:
    """One line for logs and non-terminal output."""
    parts = [f"t={elapsed:.0f}s"]
    for task_type in TASK_TYPES:
        counts = " ".join(
            f"{status.value}={sample.count(task_type, status)}"
            for status in (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.COMPLETED, TaskStatus.FAILED)
        )
        parts.append(f"{task_type}s[{counts}]")
    parts.append("waiting[" + " ".join(f"{q}={n}" for q, n in sample.depths.items()) + "]")
    parts.append(f"objects={sample.objects if sample.objects is not None else '?'}")
    parts.append(f"rate={monitor.rate():.1f}/s")
    if sample.errors:
        parts.append("errors[" + "; ".join(f"{k}: {v}" for k, v in sample.errors.items()) + "]")
    return "  ".join(parts)


def summary_lines(
    first: Sample | None, last: Sample, monitor: Monitor, elapsed: float, exits: Sequence[ExitReport]
) -> list[str]:
    lines = [f"summary after {elapsed:.1f}s"]
    for task_type in TASK_TYPES:
        counts = ", ".join(f"{status.value} {last.count(task_type, status):,}" for status in SHOWN_STATUSES)
        lines.append(f"  {task_type}s: {counts}")
    done = last.finished() - (first.finished() if first else 0)
    lines.append(f"  finished this run: {done:,} tasks ({done / elapsed if elapsed > 0 else 0.0:,.1f}/s)")
    if last.objects is not None:
        start = monitor.first_objects if monitor.first_objects is not None else last.objects
        lines.append(f"  objects: {start:,} -> {last.objects:,} (+{last.objects - start:,})")
    left = sum(last.count(t, TaskStatus.RUNNING) for t in TASK_TYPES)
    # dispatched: a worker received the message but stopped before starting it; it goes back
    waiting = sum(last.count(t, s) for t in TASK_TYPES for s in (TaskStatus.QUEUED, TaskStatus.DISPATCHED))
    lines.append(
        f"  unfinished: {waiting:,} queued (their messages stay on the broker), "
        f"{left:,} interrupted (redelivered, or requeued by the reaper)"
    )
    killed = killed_lines(exits)
    if killed:
        lines.append(
            f"  processes: {len(killed)} of {len(exits)} did not stop within the stop budget and were KILLED "
            "(the run still exits 0; what each kill cut off):"
        )
        lines += [f"    {line}" for line in killed]
    elif exits:
        slowest = max(exits, key=lambda report: report.took)
        lines.append(f"  processes: all stopped cleanly (the slowest, {slowest.name}, in {slowest.took:.1f}s)")
    else:
        lines.append("  processes: all stopped cleanly")
    return lines
