"""Rate limits per group: what limit a boefje has, and which group a task counts in. Pure.

A limit comes from the boefje's Katalogus JSON (``rate_limit``: ``1/second``, ``10/hour;100/day``;
``rate_limit_group``: a template) or from ``SCHEDULER_RATE_LIMITS``, which overrides or adds limits
per boefje id. The group template names the counter every worker shares; its placeholders are
``{boefje_id}``, ``{input_ooi}``, ``{object_type}`` and ``{organisation}`` (default: the boefje id,
so one boefje's tasks share one counter across organisations). A template that cannot be resolved
for a task (a boefje without an input object and ``{input_ooi}`` in its group) leaves that task
unlimited; the caller says so.

The limit strings are parsed by the ``limits`` library; the parsed amounts and periods are what
our own windows count (:mod:`kat_scheduler.limiting.window`), so what parses here is what is
enforced.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from limits import RateLimitItem, parse_many

T = TypeVar("T")
K = TypeVar("K")

#: The placeholders a group template may use.
TEMPLATE_FIELDS: tuple[str, ...] = ("boefje_id", "input_ooi", "object_type", "organisation")
#: The group of a limit that names none: the boefje's own id.
DEFAULT_GROUP = "{boefje_id}"
#: ``SCHEDULER_RATE_LIMITS``'s word for "this boefje has no limit" (removes a plugin's own limit).
OFF = "off"


class Unresolvable(ValueError):
    """A group template that names a value the task does not have."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A boefje's limit: the limit string as given, its parsed items and its group template."""

    text: str
    items: tuple[RateLimitItem, ...]
    group: str = DEFAULT_GROUP

    @property
    def capacity(self) -> int:
        """The most starts its tightest window allows at once."""
        return min(item.amount for item in self.items)

    def starts_within(self, seconds: float) -> int:
        """The most starts the limit allows in ``seconds`` from now (at least one window's worth):
        what a producer that runs every ``seconds`` may send per group."""
        return min(max(item.amount, int(item.amount * seconds // item.get_expiry())) for item in self.items)


def parse_limit(text: str) -> tuple[RateLimitItem, ...]:
    """The items of a limit string (``5/second``, ``10/hour;100/day``); :class:`ValueError` if it is none."""
    stripped = text.strip()
    if not stripped:
        raise ValueError("empty rate limit")
    try:
        items = tuple(parse_many(stripped))
    except ValueError:
        raise ValueError(f"{text!r} is no rate limit (write e.g. '5/second' or '10/hour;100/day')") from None
    if not items or any(item.amount < 1 for item in items):
        raise ValueError(f"{text!r} is no rate limit (each part needs an amount of at least 1)")
    return items


def check_template(template: str) -> str:
    """``template`` if it is a group template of known placeholders, else :class:`ValueError`."""
    if not template.strip():
        raise ValueError("empty rate limit group")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"rate limit group {template!r}: {exc}") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS or spec or conversion:
            known = ", ".join("{" + field + "}" for field in TEMPLATE_FIELDS)
            raise ValueError(f"rate limit group {template!r}: unknown placeholder {{{name}}} (known: {known})")
    return template


def rate_limit(text: str, group: str | None = None) -> RateLimit:
    """A limit from its string and group template (``None`` or empty: the boefje's id)."""
    return RateLimit(text.strip(), parse_limit(text), check_template(group) if group else DEFAULT_GROUP)


def parse_overrides(text: str) -> dict[str, RateLimit | None]:
    """``SCHEDULER_RATE_LIMITS``: entries separated by white space, each ``BOEFJE_ID=LIMIT`` or
    ``BOEFJE_ID=LIMIT@GROUP`` (``LIMIT`` as in Katalogus, ``off`` for none). ``None``: no limit."""
    found: dict[str, RateLimit | None] = {}
    for entry in text.split():
        boefje_id, equals, rest = entry.partition("=")
        if not equals or not boefje_id or not rest:
            raise ValueError(
                f"{entry!r}: write BOEFJE_ID=LIMIT or BOEFJE_ID=LIMIT@GROUP, e.g. shodan=1/second@shodan.io"
            )
        if boefje_id in found:
            raise ValueError(f"boefje {boefje_id!r} is given twice")
        limit, _, group = rest.partition("@")
        try:
            found[boefje_id] = None if limit.strip().lower() == OFF else rate_limit(limit, group or None)
        except ValueError as exc:
            raise ValueError(f"{entry!r}: {exc}") from None
    return found


def limit_for(
    boefje_id: str,
    plugin_limit: str | None,
    plugin_group: str | None,
    overrides: dict[str, RateLimit | None],
) -> RateLimit | None:
    """The limit that applies to a boefje: the operator's override, else its plugin's own (which
    raises :class:`ValueError` when Katalogus holds a string that is no limit), else none."""
    if boefje_id in overrides:
        return overrides[boefje_id]
    if not plugin_limit or not plugin_limit.strip():
        return None
    return rate_limit(plugin_limit, plugin_group or None)


def object_type(input_ooi: str | None) -> str | None:
    """The object type of a reference (``Hostname|internet|example.com`` → ``Hostname``)."""
    if not input_ooi:
        return None
    head, bar, _ = input_ooi.partition("|")
    return head if bar and head else None


def resolve_group(template: str, *, boefje_id: str, organisation: str, input_ooi: str | None) -> str:
    """The group a task counts in; :class:`Unresolvable` when the template names what it lacks."""
    values = {
        "boefje_id": boefje_id,
        "organisation": organisation,
        "input_ooi": input_ooi or None,
        "object_type": object_type(input_ooi),
    }
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        value = values.get(name)
        if value is None:
            raise Unresolvable(f"rate limit group {template!r}: the task has no {name}")
        out.append(value)
    return "".join(out)


def within_capacity(
    candidates: Iterable[T], group_of: Callable[[T], tuple[K, int] | None], budget: dict[K, int]
) -> tuple[list[T], Counter[K]]:
    """The candidates (in their order, most urgent first) a producer may send now: per group at
    most what ``budget`` has left (a group seen for the first time gets its capacity, what its
    tightest window can start); ``group_of`` gives a candidate's group and capacity, ``None`` when
    it is not limited. The rest stay back (unclaimed, found again next time): how many, per group."""
    kept: list[T] = []
    held: Counter[K] = Counter()
    for candidate in candidates:
        limited = group_of(candidate)
        if limited is None:
            kept.append(candidate)
            continue
        group, capacity = limited
        left = budget.setdefault(group, capacity)
        if left <= 0:
            held[group] += 1
            continue
        budget[group] = left - 1
        kept.append(candidate)
    return kept, held
