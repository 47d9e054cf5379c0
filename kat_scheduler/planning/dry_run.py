"""Rendering a plan for people (``kat-scheduler plan --dry-run``): a table or JSON lines."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

from kat_scheduler.producers.results import PlanReport


def render_plan(report: PlanReport, *, fmt: str = "table", limit: int | None = None) -> Iterator[str]:
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
