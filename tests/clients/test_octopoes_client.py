"""OctopoesClient against the simulated Octopoes."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from kat_scheduler.clients import ObjectsPage, OrganisationNotFound, ServiceRequestError
from kat_scheduler.models import OOI
from kat_scheduler.models.ooi import ListedObject

SHARED_HOSTNAME = "Hostname|internet|gedeeld-platform.nl"  # the sim gives it to org01 and org03


def keys(oois):
    return [ooi.primary_key for ooi in oois]


def test_list_objects_returns_a_page_and_the_total(octopoes, world):
    expected = world.list_oois("org01", types=["Hostname", "IPAddressV4"])

    page = octopoes.list_objects("org01", types=["Hostname", "IPAddressV4"], limit=5)

    assert isinstance(page, ObjectsPage)
    assert page.count == len(expected) > 5
    assert keys(page.items) == keys(expected[:5])
    assert page.items[0] == ListedObject.model_validate(expected[0].to_json())


def test_a_listing_reads_type_key_and_clearance_and_get_object_the_whole_object(octopoes, world):
    expected = world.list_oois("org01", types=["Hostname"])[0].to_json()

    listed = octopoes.list_objects("org01", types=["Hostname"], limit=1).items[0]
    whole = octopoes.get_object("org01", expected["primary_key"])

    assert (listed.object_type, listed.primary_key) == (expected["object_type"], expected["primary_key"])
    assert listed.scan_level == expected["scan_profile"]["level"]
    assert listed.model_extra in (None, {})  # the type's own attributes are left unread
    assert whole == OOI.model_validate(expected)
    assert whole is not None and whole.model_extra and "name" in whole.model_extra


def test_list_objects_filters_by_scan_level(octopoes, world):
    expected = world.list_oois("org02", types=["Hostname", "URL"], scan_levels=[2, 3])

    page = octopoes.list_objects("org02", types=["URL", "Hostname"], scan_levels=[3, 2])

    assert keys(page.items) == keys(expected)
    assert {ooi.scan_level for ooi in page.items} <= {2, 3}


def test_list_objects_pages_with_offset(octopoes, world):
    expected = world.list_oois("org01", types=["IPPort"])

    page = octopoes.list_objects("org01", types=["IPPort"], offset=2, limit=3)

    assert keys(page.items) == keys(expected[2:5])


def test_list_objects_of_an_unknown_organisation_raises_organisation_not_found(octopoes):
    with pytest.raises(OrganisationNotFound) as caught:
        octopoes.list_objects("nope", types=["Hostname"])

    assert isinstance(caught.value, ServiceRequestError)
    assert caught.value.status_code == 404
    assert str(caught.value) == "octopoes: GET /nope/objects: organisation 'nope' not found"


@pytest.mark.parametrize(("types", "levels"), [([], None), (["Hostname"], [])])
def test_an_empty_selection_returns_an_empty_page_without_asking(kat, octopoes, types, levels):
    page = octopoes.list_objects("org01", types=types, scan_levels=levels)

    assert page == ObjectsPage(count=0, items=[])
    assert kat.request_counts["octopoes"] == 0


def test_iter_objects_pages_through_all_matching_objects(kat, octopoes, world):
    expected = world.list_oois("org03", types=["Hostname", "IPAddressV4", "IPPort"], scan_levels=[1, 2, 3, 4])

    pages = list(
        octopoes.iter_objects(
            "org03", types=["Hostname", "IPAddressV4", "IPPort"], scan_levels=range(1, 5), page_size=7
        )
    )

    assert [len(page) for page in pages[:-1]] == [7] * (len(pages) - 1)
    assert keys(item for page in pages for item in page) == keys(expected)
    assert kat.request_counts["octopoes"] == math.ceil(len(expected) / 7)


def test_iter_objects_reads_every_page_at_one_valid_time(octopoes):
    sent = []

    def seen(response: requests.Response, *args: object, **kwargs: object) -> None:
        [valid_time] = parse_qs(urlsplit(response.request.url or "").query)["valid_time"]
        sent.append(valid_time)

    octopoes.session.hooks["response"].append(seen)  # each request Octopoes answered

    pages = list(octopoes.iter_objects("org01", types=["Hostname", "IPAddressV4"], page_size=4))

    assert len(sent) == len(pages) > 1
    assert len(set(sent)) == 1
    assert datetime.fromisoformat(sent[0]).utcoffset() == timedelta(0)


def test_iter_objects_of_nothing_yields_nothing(octopoes):
    assert list(octopoes.iter_objects("org01", types=["NoSuchType"])) == []


def test_get_object_returns_the_object(octopoes, world):
    record = world.get_ooi("org01", SHARED_HOSTNAME)

    ooi = octopoes.get_object("org01", SHARED_HOSTNAME, valid_time=datetime.now(UTC))

    assert ooi == OOI.model_validate(record.to_json())
    assert ooi.scan_level == record.scan_level
    assert ooi.model_extra["name"] == "gedeeld-platform.nl"


@pytest.mark.parametrize(
    ("org", "reference"), [("org01", "Hostname|internet|absent.example"), ("nope", "Network|internet")]
)
def test_get_object_of_something_absent_is_none(octopoes, org, reference):
    assert octopoes.get_object(org, reference) is None


def test_object_clients_names_the_organisations_holding_the_object(octopoes, world):
    holders = {org for org in world.organisation_ids if world.get_ooi(org, SHARED_HOSTNAME) is not None}
    assert len(holders) >= 2

    found = octopoes.object_clients(SHARED_HOSTNAME, [*world.organisation_ids, "nope"])

    assert set(found) == holders
    assert all(ooi.primary_key == SHARED_HOSTNAME for ooi in found.values())


def test_object_clients_of_an_unknown_object_or_no_clients_is_empty(kat, octopoes):
    assert octopoes.object_clients("Hostname|internet|absent.example", ["org01", "org02"]) == {}
    assert octopoes.object_clients(SHARED_HOSTNAME, []) == {}
    assert kat.request_counts["octopoes"] == 1


def test_save_observation_adds_the_new_objects(octopoes, world):
    source = world.list_oois("org02", types=["Hostname"], scan_levels=[2])[0]
    name = f"obs-{uuid.uuid4().hex[:8]}.example"
    address = OOI(object_type="IPAddressV4", primary_key=f"IPAddressV4|internet|{name}", address=name)
    hostname = {"object_type": "Hostname", "primary_key": f"Hostname|internet|{name}", "name": name}
    task_id = uuid.uuid4()

    octopoes.save_observation(
        "org02",
        method="kat_dns_normalize",
        source=source.primary_key,
        source_method="dns-records",
        task_id=task_id,
        valid_time=datetime.now(UTC),
        result=[address, hostname],
    )

    saved = octopoes.get_object("org02", f"Hostname|internet|{name}")
    assert saved is not None and saved.scan_level == 2
    assert octopoes.get_object("org02", address.primary_key).model_extra["address"] == name
    observation = world.observations[-1]
    assert (observation.method, observation.source, observation.task_id) == (
        "kat_dns_normalize",
        source.primary_key,
        str(task_id),
    )


def test_save_observation_for_an_unknown_organisation_is_a_request_error(octopoes):
    with pytest.raises(ServiceRequestError) as caught:
        octopoes.save_observation(
            "nope",
            method="n",
            source="Network|internet",
            source_method=None,
            task_id=uuid.uuid4(),
            valid_time=datetime.now(UTC),
            result=[],
        )

    assert caught.value.status_code == 404


def test_naive_datetimes_are_refused_before_sending(kat, octopoes):
    with pytest.raises(ValueError, match="naive datetime"):
        octopoes.get_object("org01", "Network|internet", valid_time=datetime(2025, 1, 1))

    assert kat.request_counts["octopoes"] == 0


def test_health_of_the_service_and_of_an_organisation(octopoes):
    assert octopoes.health().service == "octopoes"
    assert octopoes.health("org01").healthy


def test_an_object_whose_key_the_database_cannot_store_is_skipped_alone_and_named(octopoes, kat, caplog):
    import json

    def hostname(key: str) -> dict[str, object]:
        return {"object_type": "Hostname", "primary_key": key, "scan_profile": None}

    too_long = "Hostname|internet|" + "x" * 1100
    body = {
        "count": 4,
        "items": [
            hostname("Hostname|internet|a.nl"),
            hostname(too_long),
            hostname("Hostname|internet|n\x00l"),
            hostname("Hostname|internet|b.nl"),
        ],
    }
    kat.inject_fault("octopoes", status=200, body=json.dumps(body).encode(), path_prefix="/org01/objects")

    page = octopoes.list_objects("org01", types=["Hostname"])

    assert [o.primary_key for o in page.items] == ["Hostname|internet|a.nl", "Hostname|internet|b.nl"]
    assert page.invalid == [too_long, "Hostname|internet|n\x00l"]
    assert "(1118 characters)" in caplog.text and "at most 1024 characters" in caplog.text
    assert "NUL character" in caplog.text


def test_a_page_of_objects_that_all_fail_to_validate_does_not_end_the_listing(kat, octopoes, world):
    import json

    expected = world.list_oois("org03", types=["Hostname"], scan_levels=[1, 2, 3, 4])
    bad = {"object_type": "Hostname", "primary_key": "Hostname|internet|" + "x" * 1100}
    first_page = {"count": len(expected), "items": [bad, bad, bad]}
    kat.inject_fault("octopoes", status=200, body=json.dumps(first_page).encode(), path_prefix="/org03/objects")

    pages = list(octopoes.iter_objects("org03", types=["Hostname"], scan_levels=range(1, 5), page_size=3))

    assert keys(item for page in pages for item in page) == keys(expected)[3:]
