"""The simulated Katalogus speaks KAT-API.md's paths, parameters and JSON."""

from __future__ import annotations

import pytest
import requests

from kat_scheduler.models import Organisation
from kat_scheduler.models.plugins import PLUGIN, PLUGIN_LIST, Boefje, Normalizer
from kat_scheduler.sim import SimulatedKAT, World


def plugins_url(kat: SimulatedKAT, org: str = "org01") -> str:
    return f"{kat.katalogus_url}/v1/organisations/{org}/plugins"


def test_health_answers_like_the_katalogus(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    body = http.get(f"{shared_kat.katalogus_url}/health").json()
    assert body["service"] == "katalogus" and body["healthy"] is True


def test_organisations_is_a_dict_keyed_by_id(
    shared_kat: SimulatedKAT, shared_world: World, http: requests.Session
) -> None:
    body = http.get(f"{shared_kat.katalogus_url}/v1/organisations").json()
    assert list(body) == shared_world.organisation_ids
    for org_id, org in body.items():
        assert Organisation.model_validate(org).id == org_id
    one = http.get(f"{shared_kat.katalogus_url}/v1/organisations/org02").json()
    assert one == body["org02"]


def test_plugins_validate_and_carry_the_organisations_enabled_flags(
    shared_kat: SimulatedKAT, shared_world: World, http: requests.Session
) -> None:
    body = http.get(plugins_url(shared_kat, "org02")).json()
    plugins = PLUGIN_LIST.validate_python(body)
    assert [p.id for p in plugins] == [p.id for p in shared_world.plugins]
    for plugin in plugins:
        assert plugin.enabled is shared_world.is_enabled("org02", plugin.id)
    dns = next(p for p in body if p["id"] == "dns-records")
    assert set(dns) == {
        "id",
        "name",
        "version",
        "type",
        "enabled",
        "scan_level",
        "consumes",
        "produces",
        "cron",
        "interval",
        "run_on",
        "oci_image",
        "oci_arguments",
        "deduplicate",
        "description",
    }


def test_plugin_type_filter(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    boefjes = PLUGIN_LIST.validate_python(http.get(plugins_url(shared_kat), params={"plugin_type": "boefje"}).json())
    normalizers = PLUGIN_LIST.validate_python(
        http.get(plugins_url(shared_kat), params={"plugin_type": "normalizer"}).json()
    )
    assert boefjes and all(isinstance(p, Boefje) for p in boefjes)
    assert normalizers and all(isinstance(p, Normalizer) for p in normalizers)
    assert http.get(plugins_url(shared_kat), params={"plugin_type": "bit"}).json() == []


def test_consumes_filter_keeps_plugins_consuming_any_of_the_types(
    shared_kat: SimulatedKAT, http: requests.Session
) -> None:
    params = {"plugin_type": "boefje", "consumes": ["Hostname", "DNSZone"]}
    body = http.get(plugins_url(shared_kat), params=params).json()
    assert {p["id"] for p in body} >= {"dns-records", "dns-zone", "crt-sh", "fierce"}
    assert all({"Hostname", "DNSZone"} & set(p["consumes"]) for p in body)
    normalizers = http.get(plugins_url(shared_kat), params={"consumes": "boefje/dns-records"}).json()
    assert [p["id"] for p in normalizers] == ["kat_dns_normalize"]


def test_ids_and_paging(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    by_ids = http.get(plugins_url(shared_kat), params={"ids": ["nmap", "shodan", "nope"]}).json()
    assert {p["id"] for p in by_ids} == {"nmap", "shodan"}
    everything = http.get(plugins_url(shared_kat)).json()
    page = http.get(plugins_url(shared_kat), params={"offset": 3, "limit": 4}).json()
    assert page == everything[3:7]


def test_state_filter(shared_kat: SimulatedKAT, shared_world: World, http: requests.Session) -> None:
    enabled = http.get(plugins_url(shared_kat), params={"state": "true"}).json()
    assert {p["id"] for p in enabled} == {pid for pid, on in shared_world.enabled_plugins("org01").items() if on}


def test_one_plugin_or_404(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    plugin = PLUGIN.validate_python(http.get(f"{plugins_url(shared_kat)}/nmap").json())
    assert isinstance(plugin, Boefje) and plugin.consumes == ["IPAddressV4", "IPAddressV6"]
    assert http.get(f"{plugins_url(shared_kat)}/no-such-boefje").status_code == 404


def test_patch_enables_and_disables_a_plugin_for_one_organisation(
    kat: SimulatedKAT, world: World, http: requests.Session
) -> None:
    other = world.is_enabled("org02", "nmap")
    for enabled in (False, True):
        response = http.patch(f"{plugins_url(kat)}/nmap", json={"enabled": enabled})
        assert response.status_code == 204
        assert world.is_enabled("org01", "nmap") is enabled
        assert http.get(f"{plugins_url(kat)}/nmap").json()["enabled"] is enabled
    assert world.is_enabled("org02", "nmap") is other


@pytest.mark.parametrize("body", [{}, {"enabled": "maybe"}, [1]])
def test_patch_with_a_bad_body_is_a_422(kat: SimulatedKAT, http: requests.Session, body: object) -> None:
    assert http.patch(f"{plugins_url(kat)}/nmap", json=body).status_code == 422


def test_patch_of_an_unknown_plugin_is_a_404(kat: SimulatedKAT, http: requests.Session) -> None:
    assert http.patch(f"{plugins_url(kat)}/nope", json={"enabled": True}).status_code == 404


def test_settings_are_a_flat_string_dict(shared_kat: SimulatedKAT, shared_world: World, http: requests.Session) -> None:
    url = f"{shared_kat.katalogus_url}/v1/organisations/org01/shodan/settings"
    body = http.get(url).json()
    assert body == shared_world.boefje_settings("org01", "shodan")
    assert set(body) == {"SHODAN_API"}
    assert http.get(f"{shared_kat.katalogus_url}/v1/organisations/org01/dns-zone/settings").json() == {}


def test_unknown_organisation_is_a_404(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    for path in ("/plugins", "/plugins/nmap", "/nmap/settings", ""):
        response = http.get(f"{shared_kat.katalogus_url}/v1/organisations/nope{path}")
        assert response.status_code == 404, path
        assert "detail" in response.json()


def test_unknown_plugin_type_is_a_422(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    assert http.get(plugins_url(shared_kat), params={"plugin_type": "robot"}).status_code == 422
