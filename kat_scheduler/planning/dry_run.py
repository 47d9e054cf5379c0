"""Rendering a plan for people (``kat-scheduler plan --dry-run``): a table or JSON lines.

The table ends with the rate limits: what this run held back, in all and per group (more than
the group may start before the next run), and, per group, the tasks already waiting in the
database for their window (put back by a worker or held back by the event listener, see
:mod:`kat_scheduler.storage.waiting`): how many, and when the next may run.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime

from kat_scheduler.producers.results import PlanReport
from kat_scheduler.rules import SkipReason
from kat_scheduler.status.render import duration
from kat_scheduler.storage.waiting import WaitingGroup


def render_plan(
    report: PlanReport, *, fmt: str = "table", limit: int | None = None, waiting: Sequence[WaitingGroup] = ()
) -> Iterator[str]:
    """The plan's lines: per task (``limit``: at most that many) and a summary; ``waiting``: the
    rate-limited tasks waiting in the database, per group (the table only; JSON lines are tasks)."""
    shown = report.planned if limit is None else report.planned[:limit]
    if fmt == "jsonl":
        for c in shown:
            yield json.dumps(
                {
                    "organisation": c.organisation,
                    "boefje_id": c.boefje.id,
                    "input_ooi": c.input_ooi,
                    "band": c.rank.band,
                    "reason": c.rank.reason,
                }
            )
        return
    verb = "would queue" if report.dry_run else "queued"
    if shown:
        org_w = max(12, *(len(c.organisation) for c in shown))
        boefje_w = max(9, *(len(c.boefje.id) for c in shown))
        yield f"{'ORGANISATION':<{org_w}}  {'BOEFJE':<{boefje_w}}  BAND  {'REASON':<24}  INPUT OOI"
        for c in shown:
            yield (
                f"{c.organisation:<{org_w}}  {c.boefje.id:<{boefje_w}}  {c.rank.band:>4}  "
                f"{c.rank.reason:<24}  {c.input_ooi or '-'}"
            )
        if len(shown) < len(report.planned):
            yield f"... and {len(report.planned) - len(shown)} more"
        yield ""
    bands = Counter(c.rank.band for c in report.planned)
    count = len(report.planned) if report.dry_run else report.queued
    yield f"{verb}: {count} task(s) for {len(report.organisations)} organisation(s)" + (
        f" (by band: {', '.join(f'{b}: {n}' for b, n in sorted(bands.items()))})" if bands else ""
    )
    if not report.dry_run and report.dispatch.claimed != report.dispatch.offered:
        yield f"lost the claim (taken meanwhile): {report.dispatch.offered - report.dispatch.claimed}"
    if report.skipped:
        yield "skipped:"
        for reason, n in sorted(report.skipped.items(), key=lambda kv: -kv[1]):
            yield f"  {reason}: {n}"
    yield from rate_limit_lines(report, waiting)
    yield backpressure_line(report)
    for org, invalid in sorted(report.invalid_plugins.items()):
        for plugin_id, why in sorted(invalid.items()):
            yield f"SKIPPED plugin {plugin_id} of {org}, it does not validate: {why}"
    for org, error in sorted(report.errors.items()):
        yield f"ERROR {org}: {error}"


def backpressure_line(report: PlanReport) -> str:
    """The boefje queue's depth and whether backpressure held bands back (and why)."""
    if report.queue_depth_error is not None:
        depth = f"unknown, could not be read ({report.queue_depth_error})"
    else:
        depth = "unknown" if report.queue_depth is None else str(report.queue_depth)
    if not report.backpressure:
        return f"queue depth (boefjes): {depth}"
    bands = "urgent bands" if report.max_band is None else f"bands <= {report.max_band}"
    return f"queue depth (boefjes): {depth} — BACKPRESSURE: only {bands} added"


def rate_limit_lines(report: PlanReport, waiting: Sequence[WaitingGroup]) -> Iterator[str]:
    """What the run held back for its rate limits, and the tasks waiting for a window per group
    (nothing when neither)."""
    held = report.skipped.get(SkipReason.RATE_LIMITED, 0)
    if not held and not waiting:
        return
    yield "rate limits:"
    verb = "would hold back" if report.dry_run else "held back"
    if held:
        yield f"  this run {verb} {held} task(s): more than their groups may start before the next run"
        by_group = sorted(report.rate_limited.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][0]))
        if by_group:
            yield from _table(_HELD_HEADERS, [(group, limit, str(n)) for (limit, group), n in by_group])
    else:
        yield f"  this run {verb} none"
    if not waiting:
        yield "  waiting for their window: none"
        return
    total = sum(w.count for w in waiting)
    yield f"  waiting for their window: {total} task(s) in {len(waiting)} group(s)"
    yield from _table(
        _WAITING_HEADERS,
        [(w.group or "-", w.limit or "-", str(w.count), _opens(w.next_at, report.now)) for w in waiting],
    )


_HELD_HEADERS = ("GROUP", "LIMIT", "HELD BACK")
_WAITING_HEADERS = ("GROUP", "LIMIT", "WAITING", "NEXT MAY RUN")


def _table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> Iterator[str]:
    """A table under the section: its third column (a count) right-aligned, the others left."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for cells in [headers, *rows]:
        padded = (
            cell.rjust(w) if i == 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )
        yield ("    " + "  ".join(padded)).rstrip()


def _opens(at: datetime, now: datetime) -> str:
    """When a group's next waiting task may run, and how far that is from ``now``."""
    when = at.strftime("%Y-%m-%d %H:%M:%SZ")
    seconds = (at - now).total_seconds()
    if seconds > 0:
        return f"{when} (in {duration(seconds)})"
    return f"{when} (due {duration(-seconds)} ago: a worker node's release sends it)"
