"""The simulated Octopoes speaks KAT-API.md's paths, parameters and JSON."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from kat_scheduler.models import OOI, ScanProfileMutation
from kat_scheduler.sim import EventRecorder, SimulatedKAT, World


def test_health_answers_like_octopoes(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    for path in ("/health", "/org01/health"):
        body = http.get(f"{shared_kat.octopoes_url}{path}").json()
        assert body["service"] == "octopoes" and body["healthy"] is True
        assert set(body) == {"service", "healthy", "version", "additional", "results"}


def test_objects_lists_valid_oois_with_a_total_count(
    shared_kat: SimulatedKAT, shared_world: World, http: requests.Session
) -> None:
    response = http.get(f"{shared_kat.octopoes_url}/org01/objects", params={"limit": 50})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"count", "items"}
    assert body["count"] == len(shared_world.oois("org01"))
    assert len(body["items"]) == 50
    for item in body["items"]:
        ooi = OOI.model_validate(item)
        assert ooi.scan_level == shared_world.oois("org01")[ooi.primary_key].scan_level


def test_objects_filters_on_repeated_types_and_scan_levels(
    shared_kat: SimulatedKAT, shared_world: World, http: requests.Session
) -> None:
    params: dict[str, Any] = {"types": ["Hostname", "IPAddressV4"], "scan_level": [2, 3], "limit": 10_000}
    body = http.get(f"{shared_kat.octopoes_url}/org02/objects", params=params).json()
    expected = {
        o.primary_key
        for o in shared_world.oois("org02").values()
        if o.object_type in ("Hostname", "IPAddressV4") and o.scan_level in (2, 3)
    }
    assert body["count"] == len(expected) > 0
    assert {item["primary_key"] for item in body["items"]} == expected


def test_scan_level_zero_includes_objects_with_an_empty_profile(
    shared_kat: SimulatedKAT, http: requests.Session
) -> None:
    body = http.get(f"{shared_kat.octopoes_url}/org01/objects", params={"scan_level": 0, "limit": 10_000}).json()
    profile_types = {item["scan_profile"]["scan_profile_type"] for item in body["items"]}
    assert "empty" in profile_types
    assert all(item["scan_profile"]["level"] == 0 for item in body["items"])


def test_paging_walks_every_object_once_in_a_stable_order(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    url = f"{shared_kat.octopoes_url}/org03/objects"
    everything = http.get(url, params={"limit": 100_000}).json()
    keys: list[str] = []
    for offset in range(0, everything["count"] + 70, 70):
        page = http.get(url, params={"offset": offset, "limit": 70}).json()
        assert page["count"] == everything["count"]
        keys.extend(item["primary_key"] for item in page["items"])
    assert keys == [item["primary_key"] for item in everything["items"]]
    assert len(set(keys)) == everything["count"]


def test_objects_default_page_size_is_twenty(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    assert len(http.get(f"{shared_kat.octopoes_url}/org01/objects").json()["items"]) == 20


def test_valid_time_is_accepted(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    params: dict[str, Any] = {"valid_time": "2025-05-27T09:00:15.129953+00:00", "limit": 1}
    assert http.get(f"{shared_kat.octopoes_url}/org01/objects", params=params).status_code == 200


def test_unknown_organisation_is_a_json_404(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    for path in ("/nope/objects", "/nope/object?reference=Network|internet", "/nope/health"):
        response = http.get(f"{shared_kat.octopoes_url}{path}")
        assert response.status_code == 404
        assert "detail" in response.json()


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"limit": "abc"}, ["query", "limit"]),
        ({"offset": "-1"}, ["query", "offset"]),
        ({"scan_level": "7"}, ["query", "scan_level", 0]),
        ({"valid_time": "yesterday"}, ["query", "valid_time"]),
    ],
)
def test_bad_query_parameters_are_a_fastapi_422(
    shared_kat: SimulatedKAT, http: requests.Session, params: dict[str, str], loc: list[object]
) -> None:
    response = http.get(f"{shared_kat.octopoes_url}/org01/objects", params=params)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == loc and error["msg"]


def test_object_returns_one_ooi_or_404(shared_kat: SimulatedKAT, shared_world: World, http: requests.Session) -> None:
    pk = next(pk for pk in shared_world.oois("org01") if pk.startswith("Website|"))
    response = http.get(f"{shared_kat.octopoes_url}/org01/object", params={"reference": pk})
    assert response.status_code == 200
    assert response.json() == shared_world.oois("org01")[pk].to_json()
    missing = http.get(f"{shared_kat.octopoes_url}/org01/object", params={"reference": "Hostname|internet|x.invalid"})
    assert missing.status_code == 404


def test_object_without_reference_is_a_422(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    response = http.get(f"{shared_kat.octopoes_url}/org01/object")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "reference"]


def test_object_clients_names_the_organisations_holding_an_object(
    shared_kat: SimulatedKAT, http: requests.Session
) -> None:
    reference = "Hostname|internet|gedeeld-platform.nl"
    params = {"reference": reference, "clients": ["org01", "org02", "org03", "unknown"]}
    body = http.get(f"{shared_kat.octopoes_url}/object-clients", params=params).json()
    assert set(body) == {"org01", "org03"}
    assert all(OOI.model_validate(ooi).primary_key == reference for ooi in body.values())


def observation(source: str, *results: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": "kat_dns_normalize",
        "source": source,
        "source_method": "dns-records",
        "task_id": str(uuid.uuid4()),
        "valid_time": "2025-05-27T09:00:15+00:00",
        "result": list(results),
    }


def test_observations_add_new_objects_with_an_inherited_profile(
    kat: SimulatedKAT, world: World, events: EventRecorder, http: requests.Session
) -> None:
    source = next(o for o in world.oois("org01").values() if o.object_type == "Hostname" and o.scan_level >= 2)
    new = {"object_type": "IPAddressV4", "primary_key": "IPAddressV4|internet|192.0.2.250", "address": "192.0.2.250"}
    existing = world.oois("org01")["Network|internet"].to_json()
    response = http.post(f"{kat.octopoes_url}/org01/observations", json=observation(source.primary_key, new, existing))
    assert response.status_code == 200 and response.content == b""

    added = http.get(f"{kat.octopoes_url}/org01/object", params={"reference": new["primary_key"]}).json()
    assert added["scan_profile"]["scan_profile_type"] == "inherited"
    assert added["scan_profile"]["level"] == source.scan_level
    assert added["address"] == "192.0.2.250"

    (event,) = events.bodies("scan_profile_mutations")  # only the new object, not the existing one
    assert event == {
        "operation": "create",
        "primary_key": "IPAddressV4|internet|192.0.2.250",
        "client_id": "org01",
        "value": {
            "primary_key": "IPAddressV4|internet|192.0.2.250",
            "object_type": "IPAddressV4",
            "scan_profile": {
                "scan_profile_type": "inherited",
                "reference": "IPAddressV4|internet|192.0.2.250",
                "level": source.scan_level,
            },
        },
    }
    ScanProfileMutation.model_validate(event)
    assert world.observations[-1].created == ("IPAddressV4|internet|192.0.2.250",)


def test_observation_from_a_level_zero_source_adds_objects_with_an_empty_profile(
    kat: SimulatedKAT, world: World, events: EventRecorder, http: requests.Session
) -> None:
    source = next(o for o in world.oois("org01").values() if o.scan_level == 0)
    new = {"object_type": "Hostname", "primary_key": "Hostname|internet|zero.example.nl", "name": "zero.example.nl"}
    http.post(f"{kat.octopoes_url}/org01/observations", json=observation(source.primary_key, new)).raise_for_status()
    added = world.get_ooi("org01", "Hostname|internet|zero.example.nl")
    assert added is not None and (added.scan_profile_type, added.scan_level) == ("empty", 0)
    assert events.bodies("scan_profile_mutations")[0]["value"]["scan_profile"]["level"] == 0


def test_observation_with_an_invalid_body_is_a_422_and_changes_nothing(
    kat: SimulatedKAT, world: World, events: EventRecorder, http: requests.Session
) -> None:
    before = len(world.oois("org01"))
    response = http.post(f"{kat.octopoes_url}/org01/observations", json={"method": "x", "result": [{"nope": 1}]})
    assert response.status_code == 422
    assert {tuple(e["loc"][:2]) for e in response.json()["detail"]} >= {("body", "source"), ("body", "result")}
    assert len(world.oois("org01")) == before
    assert events.events == []


def test_world_changes_show_up_in_the_listing(kat: SimulatedKAT, world: World, http: requests.Session) -> None:
    url = f"{kat.octopoes_url}/org02/objects"
    pk = next(pk for pk, o in world.oois("org02").items() if o.scan_level == 0 and o.object_type == "Hostname")
    world.set_scan_level("org02", pk, 4)
    params: dict[str, Any] = {"types": "Hostname", "scan_level": 4, "limit": 10_000}
    body = http.get(url, params=params).json()
    assert pk in {item["primary_key"] for item in body["items"]}
    world.delete_ooi("org02", pk)
    assert http.get(f"{kat.octopoes_url}/org02/object", params={"reference": pk}).status_code == 404
