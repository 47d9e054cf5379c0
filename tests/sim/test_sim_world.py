"""The generated world: deterministic, realistic, well-formed, and changeable by tests."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from croniter import croniter

from kat_scheduler.models import OOI, ScanProfileMutation
from kat_scheduler.models.plugins import PLUGIN_LIST, Boefje, Normalizer
from kat_scheduler.sim import EventRecorder, World, WorldConfig, generate_world
from kat_scheduler.sim.catalogue import BOEFJES, OOI_TYPES

NOW = datetime(2025, 5, 27, 9, 0, 0, tzinfo=UTC)
#: Worlds this module generates itself (the fixtures' world is configured in conftest.py).
SMALL = WorldConfig(seed=11, organisations=3, oois_per_org=300, boefjes=12, history_fraction=0.4, now=NOW)


def snapshot(world: World) -> dict[str, object]:
    """Everything observable about a world, as plain data."""
    return {
        "organisations": [o.to_json() for o in world.organisations],
        "plugins": [p.to_json(True) for p in world.plugins],
        "per_org": {
            org: {
                "oois": [o.to_json() for o in world.oois(org).values()],
                "enabled": world.enabled_plugins(org),
                "settings": {b.id: world.boefje_settings(org, b.id) for b in world.boefjes},
                "runs": [world.render_boefje_meta(r) for r in world.runs(org)],
            }
            for org in world.organisation_ids
        },
    }


def test_same_config_generates_an_identical_world() -> None:
    assert snapshot(generate_world(SMALL)) == snapshot(generate_world(SMALL))


def test_another_seed_generates_another_world() -> None:
    assert snapshot(generate_world(SMALL)) != snapshot(generate_world(replace(SMALL, seed=8)))


def test_changing_history_fraction_keeps_the_objects() -> None:
    a = generate_world(SMALL)
    b = generate_world(replace(SMALL, history_fraction=0.1))
    for org in a.organisation_ids:
        assert list(a.oois(org)) == list(b.oois(org))
    assert len(a.runs("org01")) > len(b.runs("org01"))


def test_now_defaults_to_generation_time_and_is_kept_in_the_config() -> None:
    world = generate_world(replace(SMALL, now=None, organisations=1, oois_per_org=10))
    assert world.config.now is not None
    assert world.now.tzinfo is not None


@pytest.mark.parametrize(
    "bad",
    [
        {"organisations": -1},
        {"history_fraction": 1.5},
        {"boefje_enabled_fraction": -0.1},
        {"now": NOW.replace(tzinfo=None)},
    ],
)
def test_config_rejects_impossible_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        WorldConfig(**bad)  # type: ignore[arg-type]


def test_organisations_have_slug_ids_and_names(shared_world: World) -> None:
    assert [o.id for o in shared_world.organisations] == ["org01", "org02", "org03"]
    assert all(o.name for o in shared_world.organisations)


def test_each_organisation_has_exactly_the_configured_number_of_objects(shared_world: World) -> None:
    for org in shared_world.organisation_ids:
        oois = shared_world.oois(org)
        assert len(oois) == shared_world.config.oois_per_org
        assert all(pk == ooi.primary_key for pk, ooi in oois.items())


def test_objects_render_as_valid_octopoes_json(shared_world: World) -> None:
    for ooi in shared_world.oois("org01").values():
        body = ooi.to_json()
        model = OOI.model_validate(body)
        assert model.primary_key.startswith(f"{model.object_type}|")
        assert model.scan_level == ooi.scan_level
        assert list(body)[:3] == ["object_type", "primary_key", "scan_profile"]
        assert body["user_id"] is None
        assert body["scan_profile"]["reference"] == ooi.primary_key


def test_objects_carry_their_natural_keys(shared_world: World) -> None:
    oois = shared_world.oois("org01")
    by_type = {ooi.object_type: ooi.to_json() for ooi in oois.values()}
    assert by_type["Hostname"]["network"] == "Network|internet"
    assert by_type["Hostname"]["primary_key"] == f"Hostname|internet|{by_type['Hostname']['name']}"
    assert by_type["IPAddressV4"]["primary_key"].endswith(by_type["IPAddressV4"]["address"])
    port = by_type["IPPort"]
    assert port["primary_key"] == (f"IPPort|internet|{port['address'].split('|')[2]}|{port['protocol']}|{port['port']}")
    assert isinstance(port["port"], int)
    assert by_type["Website"]["hostname"].startswith("Hostname|internet|")
    assert by_type["URL"]["raw"].startswith("http")


def test_objects_spread_over_types_levels_and_profile_types(shared_world: World) -> None:
    oois = [o for org in shared_world.organisation_ids for o in shared_world.oois(org).values()]
    assert set(Counter(o.object_type for o in oois)) == set(OOI_TYPES)
    assert set(Counter(o.scan_level for o in oois)) == {0, 1, 2, 3, 4}
    assert set(Counter(o.scan_profile_type for o in oois)) == {"declared", "inherited", "empty"}
    assert all(o.scan_level == 0 for o in oois if o.scan_profile_type == "empty")


def test_some_objects_are_held_by_several_organisations(shared_world: World) -> None:
    shared = set(shared_world.oois("org01")) & set(shared_world.oois("org03"))
    assert "Hostname|internet|gedeeld-platform.nl" in shared


def test_list_oois_filters_by_type_and_effective_scan_level(shared_world: World) -> None:
    everything = shared_world.oois("org02").values()
    listed = shared_world.list_oois("org02", types=["Hostname", "URL"], scan_levels=[2, 3])
    expected = {o.primary_key for o in everything if o.object_type in ("Hostname", "URL") and o.scan_level in (2, 3)}
    assert {o.primary_key for o in listed} == expected
    assert len(listed) == len(expected)
    assert shared_world.list_oois("org02", scan_profile_types=["empty"]) == [
        o for o in everything if o.scan_profile_type == "empty"
    ]


def test_the_first_ten_boefjes_cover_every_scheduling_feature() -> None:
    first = BOEFJES[:10]
    assert {b.scan_level for b in first} == {0, 1, 2, 3, 4}
    assert any(b.interval for b in first)
    assert any(b.run_on == ("create", "update") for b in first)
    assert any(not b.consumes for b in first)
    crons = [b.cron for b in first if b.cron]
    assert crons and all(croniter.is_valid(c) for c in crons)


@pytest.mark.parametrize("count", [0, 1, 10, len(BOEFJES), 25])
def test_boefjes_n_takes_the_first_n_and_synthesises_more(count: int) -> None:
    world = generate_world(replace(SMALL, boefjes=count, organisations=1, oois_per_org=20))
    assert len(world.boefjes) == count
    assert len({b.id for b in world.boefjes}) == count
    assert [b.id for b in world.boefjes[: len(BOEFJES)]] == [b.id for b in BOEFJES[:count]]


def test_plugins_validate_as_katalogus_plugins(shared_world: World) -> None:
    plugins = PLUGIN_LIST.validate_python(
        [p.to_json(shared_world.is_enabled("org01", p.id)) for p in shared_world.plugins]
    )
    boefjes = [p for p in plugins if isinstance(p, Boefje)]
    normalizers = [p for p in plugins if isinstance(p, Normalizer)]
    assert len(boefjes) == len(normalizers) == shared_world.config.boefjes
    for boefje in boefjes:
        assert any(n.consumes == [f"boefje/{boefje.id}"] for n in normalizers)
    assert "kat_dns_normalize" in {n.id for n in normalizers}


def test_most_plugins_are_enabled_and_some_disabled_per_organisation(shared_world: World) -> None:
    enabled = [
        shared_world.is_enabled(org, b.id) for org in shared_world.organisation_ids for b in shared_world.boefjes
    ]
    assert 0.5 < sum(enabled) / len(enabled) < 1.0
    assert shared_world.enabled_boefjes("org01") == [
        b for b in shared_world.boefjes if shared_world.is_enabled("org01", b.id)
    ]


def test_boefje_settings_are_strings(shared_world: World) -> None:
    settings = shared_world.boefje_settings("org01", "shodan")
    assert set(settings) == {"SHODAN_API"}
    assert all(isinstance(v, str) for v in settings.values())
    assert shared_world.boefje_settings("org01", "dns-zone") == {}


def test_history_covers_about_the_configured_fraction_of_pairs() -> None:
    world = generate_world(replace(SMALL, organisations=1, oois_per_org=2000, history_fraction=0.3))
    pairs = {
        (b.id, o.primary_key)
        for b in world.boefjes
        for o in world.oois("org01").values()
        if o.object_type in b.consumes
    }
    with_history = {(r.boefje_id, r.input_ooi) for r in world.runs("org01") if r.input_ooi is not None}
    assert with_history <= pairs
    assert 0.25 < len(with_history) / len(pairs) < 0.35


def test_history_lies_between_thirty_days_ago_and_now_sorted_by_start(shared_world: World) -> None:
    now = shared_world.now
    runs = shared_world.runs("org01")
    assert runs
    starts = [r.started_at for r in runs]
    assert starts == sorted(starts)  # type: ignore[type-var]
    for run in runs:
        assert run.started_at is not None
        assert now - timedelta(days=30, minutes=1) <= run.started_at <= (run.ended_at or run.started_at) <= now
    assert sum(r.ended_at is None for r in runs) < 0.1 * len(runs)  # a few never ended (running, or died)
    assert any(now - r.started_at < timedelta(hours=1) for r in runs if r.started_at)  # recent runs exist
    assert any(now - r.started_at > timedelta(days=7) for r in runs if r.started_at)  # and old ones


def test_last_run_is_the_latest_started_run(shared_world: World) -> None:
    run = shared_world.runs("org01")[0]
    same = shared_world.runs("org01", run.boefje_id, run.input_ooi)
    assert shared_world.last_run("org01", run.boefje_id, run.input_ooi) == same[-1]
    assert shared_world.last_run("org01", "dns-records", "Hostname|internet|does-not-exist.nl") is None


def test_no_history_when_fraction_is_zero() -> None:
    world = generate_world(replace(SMALL, history_fraction=0.0))
    assert all(not world.runs(org) for org in world.organisation_ids)


def test_set_scan_level_declares_the_level_and_emits_an_update(world: World) -> None:
    recorder = EventRecorder()
    world.add_listener(recorder)
    pk = next(pk for pk, o in world.oois("org01").items() if o.scan_profile_type == "empty")
    world.set_scan_level("org01", pk, 3)
    ooi = world.get_ooi("org01", pk)
    assert ooi is not None and (ooi.scan_profile_type, ooi.scan_level) == ("declared", 3)
    assert pk in {o.primary_key for o in world.list_oois("org01", scan_levels=[3])}
    (event,) = recorder.bodies("scan_profile_mutations")
    assert event["operation"] == "update" and event["client_id"] == "org01"
    assert ScanProfileMutation.model_validate(event).value is not None


def test_add_and_delete_ooi_emit_create_and_delete(world: World) -> None:
    recorder = EventRecorder()
    world.add_listener(recorder)
    world.add_ooi("org02", "Hostname", "Hostname|internet|new.example.nl", level=2)
    assert world.get_ooi("org02", "Hostname|internet|new.example.nl") is not None
    assert world.delete_ooi("org02", "Hostname|internet|new.example.nl") is True
    assert world.delete_ooi("org02", "Hostname|internet|new.example.nl") is False
    create, delete = recorder.bodies("scan_profile_mutations")
    assert create["operation"] == "create" and create["value"]["scan_profile"]["level"] == 2
    assert delete == {
        "operation": "delete",
        "primary_key": "Hostname|internet|new.example.nl",
        "client_id": "org02",
        "value": None,
    }


def test_set_plugin_enabled_changes_one_organisation_only(world: World) -> None:
    before = world.is_enabled("org02", "nmap")
    world.set_plugin_enabled("org01", "nmap", not world.is_enabled("org01", "nmap"))
    world.set_plugin_enabled("org01", "nmap", True)
    assert world.is_enabled("org01", "nmap") is True
    assert world.is_enabled("org02", "nmap") is before


def test_large_world_generates_quickly() -> None:
    """10 organisations × 10,000 objects: prints the time, asserts only the size."""
    config = WorldConfig(seed=1, organisations=10, oois_per_org=10_000, boefjes=10, now=NOW)
    started = time.perf_counter()
    world = generate_world(config)
    elapsed = time.perf_counter() - started
    stats = world.stats()
    print(f"\n10x10,000 world: {elapsed:.2f}s, {stats['oois']} objects, {stats['boefje_runs']} boefje runs")
    assert stats["oois"] == 100_000
