"""KatalogusClient against the simulated Katalogus."""

from __future__ import annotations

import pytest

from kat_scheduler.clients import OrganisationNotFound
from kat_scheduler.models import Boefje, Normalizer, Organisation, PluginType


def test_organisations_are_keyed_by_id(katalogus, world):
    organisations = katalogus.organisations()

    assert organisations == {org.id: Organisation(id=org.id, name=org.name) for org in world.organisations}


def test_plugins_lists_every_plugin_with_its_state_in_the_organisation(katalogus, world):
    plugins = katalogus.plugins("org02")

    assert [plugin.id for plugin in plugins] == [plugin.id for plugin in world.plugins]
    assert {plugin.id: plugin.enabled for plugin in plugins} == {
        plugin.id: world.is_enabled("org02", plugin.id) for plugin in world.plugins
    }


@pytest.mark.parametrize("plugin_type", [PluginType.NORMALIZER, "normalizer"])
def test_plugins_filters_by_type(katalogus, world, plugin_type):
    plugins = katalogus.plugins("org01", plugin_type=plugin_type)

    assert plugins and all(isinstance(plugin, Normalizer) for plugin in plugins)
    assert len(plugins) == len(world.normalizers)


def test_plugins_filters_by_what_they_consume(katalogus, world):
    expected = [b.id for b in world.boefjes if {"Hostname", "DNSZone"} & set(b.consumes)]

    plugins = katalogus.plugins("org01", plugin_type="boefje", consumes=["Hostname", "DNSZone"])

    assert [plugin.id for plugin in plugins] == expected
    assert len(expected) >= 2


def test_plugins_filters_by_id(katalogus, world):
    wanted = [world.boefjes[0].id, world.normalizers[0].id, "no-such-plugin"]

    plugins = katalogus.plugins("org01", ids=wanted)

    assert {plugin.id for plugin in plugins} == set(wanted[:2])


@pytest.mark.parametrize("selection", [{"consumes": []}, {"ids": []}])
def test_an_empty_filter_matches_nothing_without_asking(kat, katalogus, selection):
    assert katalogus.plugins("org01", **selection) == []
    assert kat.request_counts["katalogus"] == 0


def test_an_unknown_plugin_type_is_refused_before_sending(kat, katalogus):
    with pytest.raises(ValueError):
        katalogus.plugins("org01", plugin_type="report")

    assert kat.request_counts["katalogus"] == 0


def test_plugins_of_an_unknown_organisation_raises_organisation_not_found(katalogus):
    with pytest.raises(OrganisationNotFound, match="katalogus: GET /v1/organisations/nope/plugins"):
        katalogus.plugins("nope")


def test_boefjes_and_normalizers_are_typed_lists(katalogus, world):
    boefjes = katalogus.boefjes("org03")
    normalizers = katalogus.normalizers("org03")

    assert [b.id for b in boefjes] == [b.id for b in world.boefjes]
    assert all(isinstance(b, Boefje) for b in boefjes)
    assert [n.id for n in normalizers] == [n.id for n in world.normalizers]
    by_id = {b.id: b for b in boefjes}
    for definition in world.boefjes:
        boefje = by_id[definition.id]
        assert (boefje.scan_level, tuple(boefje.consumes), boefje.interval) == (
            definition.scan_level,
            definition.consumes,
            definition.interval,
        )


def test_plugin_returns_one_plugin_as_the_organisation_sees_it(katalogus, world):
    definition = world.boefjes[1]

    plugin = katalogus.plugin("org01", definition.id)

    assert isinstance(plugin, Boefje)
    assert plugin.id == definition.id
    assert plugin.enabled == world.is_enabled("org01", definition.id)


@pytest.mark.parametrize(("org", "plugin_id"), [("org01", "no-such-plugin"), ("nope", "dns-records")])
def test_plugin_that_is_absent_is_none(katalogus, org, plugin_id):
    assert katalogus.plugin(org, plugin_id) is None


def test_boefje_settings_are_the_organisations_settings(katalogus, world):
    boefje = next(b for b in world.boefjes if world.boefje_settings("org01", b.id))

    assert katalogus.boefje_settings("org01", boefje.id) == world.boefje_settings("org01", boefje.id)


def test_boefje_settings_of_an_unknown_boefje_are_empty(katalogus):
    assert katalogus.boefje_settings("org01", "no-such-boefje") == {}


def test_health(katalogus):
    health = katalogus.health()

    assert (health.service, health.healthy) == ("katalogus", True)


def test_a_plugin_that_does_not_validate_is_skipped_alone_and_named(katalogus, kat, caplog):
    import json

    body = [
        {"id": "good", "type": "boefje", "enabled": True, "consumes": ["Hostname"], "scan_level": 1},
        {"id": "bad-cron", "type": "boefje", "enabled": True, "consumes": ["Hostname"], "cron": "not a cron"},
        {"id": "kat_good_normalize", "type": "normalizer", "enabled": True, "consumes": ["boefje/good"]},
    ]
    kat.inject_fault("katalogus", status=200, body=json.dumps(body).encode(), times=2, path_prefix="/v1/organisations")

    plugins = katalogus.plugins("org01")
    boefjes = katalogus.boefjes("org01")

    assert [p.id for p in plugins] == ["good", "kat_good_normalize"]
    assert [b.id for b in boefjes] == ["good"]
    assert [(i.plugin_id, i.reason) for i in boefjes.invalid] == [
        ("bad-cron", "boefje.cron: invalid cron expression 'not a cron' (it does not parse, or never comes)")
    ]
    assert "plugin 'bad-cron' skipped, it does not validate: boefje.cron: invalid cron expression" in caplog.text
