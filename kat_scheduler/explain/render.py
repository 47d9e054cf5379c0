"""Explanations for people (an aligned table) and for tools (one JSON object per line and boefje)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from kat_scheduler.explain.decide import Explanation
from kat_scheduler.explain.facts import ObjectFacts, when

FORMATS = ("table", "json")
_HEADERS = ("BOEFJE", "DECISION", "UNTIL", "BAND", "LAST RUN", "DETAIL")
#: The column whose numbers are aligned right.
_BAND = 3


def render_json(explanations: Sequence[Explanation]) -> Iterator[str]:
    """One JSON object per boefje, one a line."""
    for explanation in explanations:
        yield json.dumps(explanation.as_json(), ensure_ascii=False)


def render_table(facts: ObjectFacts, explanations: Sequence[Explanation]) -> Iterator[str]:
    """A heading naming the object and its level, then one aligned row per boefje."""
    ooi = facts.ooi
    profile = ooi.scan_profile.scan_profile_type.value if ooi.scan_profile else "no"
    at = f", at {when(facts.now)}" if facts.now else ""
    level = f"L{ooi.scan_level} ({profile} scan profile)"
    yield f"{ooi.primary_key} in {facts.organisation}: {ooi.object_type}, {level}{at}"
    if not explanations:
        yield f"no boefje of {facts.organisation} consumes {ooi.object_type}"
        return
    rows = [
        (
            e.boefje_id,
            e.decision.value,
            when(e.until) if e.until else "-",
            "-" if e.band is None else str(e.band),
            when(e.last_run.ended_at) if e.last_run else "-",
            e.detail,
        )
        for e in explanations
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(_HEADERS[:-1])]
    for row in [_HEADERS, *rows]:
        cells = [
            cell.rjust(width) if i == _BAND else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        yield "  ".join([*cells, row[-1]]).rstrip()


def render(facts: ObjectFacts, explanations: Sequence[Explanation], fmt: str = "table") -> Iterator[str]:
    if fmt == "json":
        return render_json(explanations)
    if fmt == "table":
        return render_table(facts, explanations)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
