"""Rate limits as rules: which limit applies, the group a task counts in, and settings that refuse
what is no limit, naming the variable."""

from __future__ import annotations

import pytest

from kat_scheduler.models.plugins import PLUGIN, Boefje
from kat_scheduler.rules.rate_limits import (
    Unresolvable,
    limit_for,
    object_type,
    parse_overrides,
    rate_limit,
    resolve_group,
)
from kat_scheduler.settings import SettingsError, load_settings
from tests.factories import BoefjeFactory

HOST = "Hostname|internet|example.com"


@pytest.mark.parametrize(
    ("template", "input_ooi", "group"),
    [
        ("{boefje_id}", HOST, "shodan"),
        ("shodan.io", HOST, "shodan.io"),
        ("host:{input_ooi}", HOST, "host:Hostname|internet|example.com"),
        ("{object_type}", HOST, "Hostname"),
        ("{organisation}/{boefje_id}", HOST, "org-a/shodan"),
        ("{boefje_id}@{object_type}:{organisation}", "IPAddressV4|internet|10.0.0.1", "shodan@IPAddressV4:org-a"),
        ("{{literal}}-{boefje_id}", None, "{literal}-shodan"),
        ("{organisation}", None, "org-a"),
    ],
)
def test_a_group_template_resolves_per_task(template: str, input_ooi: str | None, group: str) -> None:
    assert resolve_group(template, boefje_id="shodan", organisation="org-a", input_ooi=input_ooi) == group


@pytest.mark.parametrize(
    ("template", "input_ooi"),
    [("host:{input_ooi}", None), ("{object_type}", None), ("{object_type}", "no-type-in-this-reference")],
)
def test_a_template_the_task_cannot_fill_is_unresolvable(template: str, input_ooi: str | None) -> None:
    with pytest.raises(Unresolvable, match="has no"):
        resolve_group(template, boefje_id="shodan", organisation="org-a", input_ooi=input_ooi)


def test_object_type_is_the_reference_s_first_part() -> None:
    assert object_type(HOST) == "Hostname"
    assert object_type(None) is None


@pytest.mark.parametrize(
    ("text", "capacity", "parts"),
    [("1/second", 1, 1), ("5 per second", 5, 1), ("10/hour;100/day", 10, 2), ("2/5second", 2, 1)],
)
def test_a_limit_string_parses_as_the_limits_library_counts_it(text: str, capacity: int, parts: int) -> None:
    parsed = rate_limit(text)
    assert parsed.capacity == capacity
    assert len(parsed.items) == parts
    assert parsed.group == "{boefje_id}"


@pytest.mark.parametrize(
    ("text", "seconds", "starts"),
    [
        ("5/second", 60, 300),
        ("5/second", 0.5, 5),
        ("3/minute", 60, 3),
        ("10/hour;100/day", 60, 10),
        ("2/5second", 12, 4),
    ],
)
def test_a_producer_running_every_so_many_seconds_may_send_what_the_limit_starts_meanwhile(
    text: str, seconds: float, starts: int
) -> None:
    assert rate_limit(text).starts_within(seconds) == starts


def test_the_operator_overrides_adds_and_removes_limits() -> None:
    overrides = parse_overrides("shodan=1/second@shodan.io nmap=10/minute;100/hour@host:{input_ooi} dns=off")
    plugin = {"rate_limit": "5/second", "rate_limit_group": "{organisation}"}
    overridden = limit_for("shodan", plugin["rate_limit"], plugin["rate_limit_group"], overrides)
    assert overridden is not None and (overridden.text, overridden.group) == ("1/second", "shodan.io")
    added = limit_for("nmap", None, None, overrides)
    assert added is not None and (added.text, added.group) == ("10/minute;100/hour", "host:{input_ooi}")
    assert limit_for("dns", "5/second", None, overrides) is None
    own = limit_for("other", "5/second", "{organisation}", overrides)
    assert own is not None and (own.text, own.group) == ("5/second", "{organisation}")
    assert limit_for("unlimited", None, None, overrides) is None


@pytest.mark.parametrize(
    "value",
    [
        "shodan",
        "shodan=",
        "shodan=fast",
        "shodan=1/fortnight",
        "shodan=0/second",
        "shodan=1/second@{nope}",
        "shodan=1/second@{input_ooi.attr}",
        "shodan=1/second shodan=2/second",
    ],
)
def test_settings_refuse_what_is_no_limit_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SCHEDULER_RATE_LIMITS", value)
    with pytest.raises(SettingsError, match="SCHEDULER_RATE_LIMITS"):
        load_settings()


def test_settings_refuse_a_counter_store_that_is_not_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_RATE_LIMIT_STORAGE", "memcached://localhost")
    with pytest.raises(SettingsError, match="SCHEDULER_RATE_LIMIT_STORAGE"):
        load_settings()


def test_katalogus_limits_are_read_tolerantly() -> None:
    limited = PLUGIN.validate_python(
        {**BoefjeFactory().model_dump(), "rate_limit": "1/second", "rate_limit_group": "shodan.io"}
    )
    assert isinstance(limited, Boefje)
    assert (limited.rate_limit, limited.rate_limit_group) == ("1/second", "shodan.io")
    odd = PLUGIN.validate_python({**BoefjeFactory().model_dump(), "rate_limit": 5, "rate_limit_group": ""})
    assert isinstance(odd, Boefje)
    assert (odd.rate_limit, odd.rate_limit_group) == (None, None)
    # a string that is no limit keeps the plugin; it is refused (and logged) where it is enforced
    bad = PLUGIN.validate_python({**BoefjeFactory().model_dump(), "rate_limit": "fast"})
    assert isinstance(bad, Boefje) and bad.rate_limit == "fast"
    with pytest.raises(ValueError, match="no rate limit"):
        limit_for(bad.id, bad.rate_limit, None, {})


def test_a_producer_sends_each_group_at_most_its_capacity_most_urgent_first() -> None:
    from kat_scheduler.rules.rate_limits import within_capacity

    Item = tuple[str, str | None, int]  # (name, group, capacity); group None: not limited

    def group_of(item: Item) -> tuple[str, int] | None:
        return None if item[1] is None else (item[1], item[2])

    candidates: list[Item] = [("a1", "a", 2), ("free1", None, 0), ("a2", "a", 2), ("b1", "b", 1), ("a3", "a", 2)]
    candidates.append(("b2", "b", 1))
    budget: dict[str, int] = {}
    kept, held = within_capacity(candidates, group_of, budget)
    assert [c[0] for c in kept] == ["a1", "free1", "a2", "b1"]
    assert held == {"a": 1, "b": 1}  # what stayed back, per group
    assert budget == {"a": 0, "b": 0}
    # the same budget over a second batch of the same run: nothing more for a or b
    more: list[Item] = [("a4", "a", 2), ("c1", "c", 3)]
    kept, held = within_capacity(more, group_of, budget)
    assert [c[0] for c in kept] == ["c1"] and held == {"a": 1}


def test_a_producer_run_counts_what_its_budget_holds_back_per_limit_and_group_over_its_batches() -> None:
    from collections import Counter

    from kat_scheduler.limiting.capacity import GroupBudget
    from kat_scheduler.planning.candidates import Candidate
    from kat_scheduler.rules import SkipReason, Trigger
    from kat_scheduler.rules.ranking import Rank

    shodan = BoefjeFactory(id="shodan", rate_limit="1/second", rate_limit_group="shodan.io")
    nmap = BoefjeFactory(id="nmap")  # limited by the operator, per object
    free = BoefjeFactory(id="dns-records")

    def candidate(boefje: Boefje, n: int) -> Candidate:
        ref = f"Hostname|internet|h{n}.example"
        return Candidate("org", boefje, ref, f"{boefje.id}-{n}", Rank(3, n, "plan"), Trigger.PLAN)

    budget = GroupBudget(parse_overrides("nmap=2/minute@host:{input_ooi}"), every=60)
    skipped: Counter[SkipReason] = Counter()
    held: Counter[tuple[str, str]] = Counter()  # a report's
    first = [candidate(shodan, n) for n in range(200)] + [candidate(nmap, 1)] * 3 + [candidate(free, 1)] * 4
    kept = budget.keep(first, skipped, held)
    # shodan: 60 starts in the run's 60 s; nmap: 2 on the one object; the unlimited boefje: all.
    assert Counter(c.boefje.id for c in kept) == {"shodan": 60, "nmap": 2, "dns-records": 4}
    assert held == {("1/second", "shodan.io"): 140, ("2/minute", "host:Hostname|internet|h1.example"): 1}
    assert skipped[SkipReason.RATE_LIMITED] == 141
    budget.keep([candidate(nmap, 2)] * 3, skipped, held)  # a second batch of the run: another object
    assert held[("2/minute", "host:Hostname|internet|h2.example")] == 1
    assert budget.held == held and skipped[SkipReason.RATE_LIMITED] == 142
