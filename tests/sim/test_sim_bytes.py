"""The simulated Bytes: token auth, boefje meta history (with its input_ooi quirk), raw files."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
import requests

from kat_scheduler.models import BoefjeMeta, RawFileReceived
from kat_scheduler.sim import EventRecorder, SimulatedKAT, World

Login = Callable[[SimulatedKAT], dict[str, str]]


def meta_body(org: str = "org01", input_ooi: str | None = "Hostname|internet|mispo.es", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "started_at": "2025-05-27T09:00:15.5+00:00",
        "ended_at": "2025-05-27T09:00:16.4+00:00",
        "boefje": {"id": "dns-records", "version": None},
        "input_ooi": input_ooi,
        "arguments": {"input": {"object_type": "Hostname", "primary_key": "Hostname|internet|mispo.es"}},
        "organization": org,
        "runnable_hash": None,
        "environment": {},
    }
    body.update(extra)
    return body


# -- authentication -----------------------------------------------------------------------


def test_token_login_returns_a_bearer_token(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    response = http.post(f"{shared_kat.bytes_url}/token", data={"username": "bytes", "password": "bytes"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_at"}
    assert body["token_type"] == "bearer"
    assert datetime.fromisoformat(body["expires_at"]).tzinfo is not None


def test_wrong_credentials_are_a_401(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    response = http.post(f"{shared_kat.bytes_url}/token", data={"username": "bytes", "password": "wrong"})
    assert response.status_code == 401


def test_token_needs_form_fields(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    response = http.post(f"{shared_kat.bytes_url}/token", json={"username": "bytes", "password": "bytes"})
    assert response.status_code == 422


@pytest.mark.parametrize("header", [None, "bearer not-a-token", "Basic Ynl0ZXM6Ynl0ZXM="])
def test_bytes_calls_without_a_valid_token_are_a_401(
    shared_kat: SimulatedKAT, http: requests.Session, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    response = http.get(f"{shared_kat.bytes_url}/bytes/boefje_meta", params={"organization": "org01"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_the_bearer_scheme_is_case_insensitive(shared_kat: SimulatedKAT, http: requests.Session, login: Login) -> None:
    token = login(shared_kat)["Authorization"].split()[1]
    for scheme in ("bearer", "Bearer", "BEARER"):
        headers = {"Authorization": f"{scheme} {token}"}
        response = http.get(
            f"{shared_kat.bytes_url}/bytes/boefje_meta", params={"organization": "org01"}, headers=headers
        )
        assert response.status_code == 200


def test_health_needs_no_token(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    assert http.get(f"{shared_kat.bytes_url}/health").json()["service"] == "bytes"


def test_expire_tokens_invalidates_every_issued_token(kat: SimulatedKAT, http: requests.Session, login: Login) -> None:
    url = f"{kat.bytes_url}/bytes/boefje_meta"
    first, second = login(kat), login(kat)
    kat.expire_tokens()
    for headers in (first, second):
        assert http.get(url, params={"organization": "org01"}, headers=headers).status_code == 401
    assert http.get(url, params={"organization": "org01"}, headers=login(kat)).status_code == 200


def test_tokens_expire_after_their_ttl(world: World, http: requests.Session, login: Login) -> None:
    with SimulatedKAT(world, token_ttl=0.2).start() as kat:
        headers = login(kat)
        url = f"{kat.bytes_url}/bytes/boefje_meta"
        assert http.get(url, params={"organization": "org01"}, headers=headers).status_code == 200
        time.sleep(0.3)
        assert http.get(url, params={"organization": "org01"}, headers=headers).status_code == 401


def test_custom_credentials(world: World, http: requests.Session) -> None:
    with SimulatedKAT(world, bytes_username="kat", bytes_password="s3cret").start() as kat:
        url = f"{kat.bytes_url}/token"
        assert http.post(url, data={"username": "bytes", "password": "bytes"}).status_code == 401
        assert http.post(url, data={"username": "kat", "password": "s3cret"}).status_code == 200


# -- boefje meta --------------------------------------------------------------------------


def test_boefje_meta_lists_valid_runs_newest_first(
    shared_kat: SimulatedKAT, shared_world: World, http: requests.Session, login: Login
) -> None:
    params: dict[str, Any] = {"organization": "org01", "boefje_id": "dns-records", "input_ooi": "*", "limit": 1000}
    body = http.get(f"{shared_kat.bytes_url}/bytes/boefje_meta", params=params, headers=login(shared_kat)).json()
    metas = [BoefjeMeta.model_validate(item) for item in body]
    assert len(metas) == len(shared_world.runs("org01", "dns-records")) > 1
    starts = [m.started_at for m in metas]
    assert starts == sorted(starts, reverse=True)  # type: ignore[type-var]
    assert all(m.boefje.id == "dns-records" and m.organization == "org01" for m in metas)
    assert all(m.arguments["input"]["primary_key"] == m.input_ooi for m in metas)


def test_boefje_meta_ascending_and_paging(
    shared_kat: SimulatedKAT, shared_world: World, http: requests.Session, login: Login
) -> None:
    url, headers = f"{shared_kat.bytes_url}/bytes/boefje_meta", login(shared_kat)
    expected = [str(r.id) for r in shared_world.runs("org01", "dns-records")]
    collected: list[str] = []
    for offset in range(0, len(expected) + 7, 7):
        params: dict[str, Any] = {
            "organization": "org01",
            "boefje_id": "dns-records",
            "input_ooi": "*",
            "limit": 7,
            "offset": offset,
            "descending": "false",
        }
        collected.extend(item["id"] for item in http.get(url, params=params, headers=headers).json())
    assert collected == expected
    newest = http.get(
        url, params={"organization": "org01", "boefje_id": "dns-records", "input_ooi": "*"}, headers=headers
    ).json()
    assert [item["id"] for item in newest] == [expected[-1]]  # default limit 1, descending


def test_boefje_meta_for_one_input_ooi(
    shared_kat: SimulatedKAT, shared_world: World, http: requests.Session, login: Login
) -> None:
    run = shared_world.runs("org02", "nmap")[0]
    params = {"organization": "org02", "boefje_id": "nmap", "input_ooi": run.input_ooi, "limit": 10}
    body = http.get(f"{shared_kat.bytes_url}/bytes/boefje_meta", params=params, headers=login(shared_kat)).json()
    assert body and all(item["input_ooi"] == run.input_ooi for item in body)
    assert body[0]["id"] == str(shared_world.last_run("org02", "nmap", run.input_ooi).id)  # type: ignore[union-attr]


def test_leaving_input_ooi_out_matches_only_runs_without_an_input_ooi(
    kat: SimulatedKAT, http: requests.Session, login: Login
) -> None:
    """The quirk of real Bytes: no ``input_ooi`` parameter means ``input_ooi IS NULL``."""
    url, headers = f"{kat.bytes_url}/bytes/boefje_meta", login(kat)
    without = meta_body(input_ooi=None, arguments={})
    http.post(url, json=without, headers=headers).raise_for_status()
    http.post(url, json=meta_body(), headers=headers).raise_for_status()
    base: dict[str, Any] = {"organization": "org01", "boefje_id": "dns-records", "limit": 100_000}
    absent = http.get(url, params=base, headers=headers).json()
    assert [item["id"] for item in absent] == [without["id"]]
    anything = http.get(url, params={**base, "input_ooi": "*"}, headers=headers).json()
    assert without["id"] in {item["id"] for item in anything}
    assert len(anything) > 2


def test_manual_boefje_history_has_runs_without_input(shared_world: World) -> None:
    runs = shared_world.runs("org01", "masscan", None)
    assert runs and all(r.input_ooi is None for r in runs)


def test_posted_boefje_meta_is_stored_once(
    kat: SimulatedKAT, world: World, http: requests.Session, login: Login
) -> None:
    url, headers = f"{kat.bytes_url}/bytes/boefje_meta", login(kat)
    body = meta_body()
    created = http.post(url, json=body, headers=headers)
    assert (created.status_code, created.json()) == (201, {"status": "success"})
    assert http.post(url, json=body, headers=headers).status_code == 400
    fetched = http.get(f"{url}/{body['id']}", headers=headers).json()
    assert fetched == body | {
        "started_at": "2025-05-27T09:00:15.500000+00:00",
        "ended_at": "2025-05-27T09:00:16.400000+00:00",
    }
    assert world.last_run("org01", "dns-records", "Hostname|internet|mispo.es").id == uuid.UUID(body["id"])  # type: ignore[union-attr]


def test_boefje_meta_of_an_organisation_unknown_to_octopoes_is_accepted(
    kat: SimulatedKAT, http: requests.Session, login: Login
) -> None:
    url, headers = f"{kat.bytes_url}/bytes/boefje_meta", login(kat)
    http.post(url, json=meta_body(org="aa"), headers=headers).raise_for_status()
    body = http.get(url, params={"organization": "aa", "input_ooi": "*"}, headers=headers).json()
    assert len(body) == 1


def test_invalid_boefje_meta_is_a_422(kat: SimulatedKAT, http: requests.Session, login: Login) -> None:
    response = http.post(f"{kat.bytes_url}/bytes/boefje_meta", json={"id": "x"}, headers=login(kat))
    assert response.status_code == 422
    assert all(error["loc"][0] == "body" for error in response.json()["detail"])


@pytest.mark.parametrize("params", [{"organization": "org01", "limit": "abc"}, {}])
def test_bad_boefje_meta_queries_are_a_422(
    shared_kat: SimulatedKAT, http: requests.Session, login: Login, params: dict[str, str]
) -> None:
    response = http.get(f"{shared_kat.bytes_url}/bytes/boefje_meta", params=params, headers=login(shared_kat))
    assert response.status_code == 422


# -- raw files ----------------------------------------------------------------------------


def raw_body(*files: tuple[str, bytes, list[str]], status: str = "COMPLETED") -> dict[str, Any]:
    return {
        "status": status,
        "files": [{"name": n, "content": base64.b64encode(c).decode(), "tags": t} for n, c, t in files],
    }


def test_raw_upload_stores_files_and_emits_raw_file_received(
    kat: SimulatedKAT, events: EventRecorder, http: requests.Session, login: Login
) -> None:
    headers = login(kat)
    meta = meta_body()
    http.post(f"{kat.bytes_url}/bytes/boefje_meta", json=meta, headers=headers).raise_for_status()
    body = raw_body(
        ("0", b"mispo.es. 300 IN A 192.0.2.1", ["boefje/dns-records", "dns/records"]),
        ("1", b"{}", ["boefje/dns-records", "application/json"]),
    )
    response = http.post(
        f"{kat.bytes_url}/bytes/raw", params={"boefje_meta_id": meta["id"]}, json=body, headers=headers
    )
    assert response.status_code == 200
    ids = response.json()
    assert set(ids) == {"0", "1"}

    raw = http.get(f"{kat.bytes_url}/bytes/raw/{ids['0']}", headers=headers)
    assert raw.headers["Content-Type"] == "application/octet-stream"
    assert raw.content == b"mispo.es. 300 IN A 192.0.2.1"

    received = events.bodies("raw_file_received")
    assert len(received) == 2
    first = RawFileReceived.model_validate(received[0])
    assert received[0]["event_id"] == "raw_file_received"
    assert set(received[0]) == {"event_id", "created_at", "organization", "raw_data"}
    assert set(received[0]["raw_data"]) == {"id", "boefje_meta", "mime_types", "secure_hash", "hash_retrieval_link"}
    assert first.organization == "org01"
    assert str(first.raw_data.id) == ids["0"]
    assert first.raw_data.mime_type_values == ["boefje/dns-records", "dns/records"]
    assert str(first.raw_data.boefje_meta.id) == meta["id"]
    assert not first.raw_data.is_error
    assert RawFileReceived.model_validate(received[1]).raw_data.mime_type_values == [
        "boefje/dns-records",
        "application/json",
    ]


def test_a_failed_run_keeps_its_error_tag(
    kat: SimulatedKAT, events: EventRecorder, http: requests.Session, login: Login
) -> None:
    headers = login(kat)
    meta = meta_body()
    http.post(f"{kat.bytes_url}/bytes/boefje_meta", json=meta, headers=headers).raise_for_status()
    body = raw_body(("error", b"Traceback ...", ["boefje/dns-records", "error/boefje"]), status="FAILED")
    url = f"{kat.bytes_url}/bytes/raw"
    http.post(url, params={"boefje_meta_id": meta["id"]}, json=body, headers=headers).raise_for_status()
    (event,) = events.bodies("raw_file_received")
    assert RawFileReceived.model_validate(event).raw_data.is_error


def test_uploading_the_same_mime_types_again_returns_the_stored_file(
    kat: SimulatedKAT, events: EventRecorder, http: requests.Session, login: Login
) -> None:
    headers = login(kat)
    meta = meta_body()
    http.post(f"{kat.bytes_url}/bytes/boefje_meta", json=meta, headers=headers).raise_for_status()
    url, params = f"{kat.bytes_url}/bytes/raw", {"boefje_meta_id": meta["id"]}
    first = http.post(url, params=params, json=raw_body(("0", b"a", ["boefje/dns-records"])), headers=headers).json()
    again = http.post(url, params=params, json=raw_body(("x", b"b", ["boefje/dns-records"])), headers=headers).json()
    assert again == {"x": first["0"]}
    assert len(events.bodies("raw_file_received")) == 1
    twice = raw_body(("a", b"1", ["t/1"]), ("b", b"2", ["t/1"]))
    assert http.post(url, params=params, json=twice, headers=headers).status_code == 400


def test_raw_for_an_unknown_boefje_meta_is_a_404(kat: SimulatedKAT, http: requests.Session, login: Login) -> None:
    response = http.post(
        f"{kat.bytes_url}/bytes/raw",
        params={"boefje_meta_id": str(uuid.uuid4())},
        json=raw_body(("0", b"x", ["boefje/dns-records"])),
        headers=login(kat),
    )
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("params", "body"),
    [
        ({}, {"status": "COMPLETED", "files": []}),
        ({"boefje_meta_id": "not-a-uuid"}, {"status": "COMPLETED", "files": []}),
        ({"boefje_meta_id": str(uuid.uuid4())}, {"status": "DONE", "files": []}),
        ({"boefje_meta_id": str(uuid.uuid4())}, {"status": "COMPLETED", "files": [{"name": "0", "content": "%%%"}]}),
    ],
)
def test_bad_raw_uploads_are_a_422(
    kat: SimulatedKAT, http: requests.Session, login: Login, params: dict[str, str], body: dict[str, Any]
) -> None:
    response = http.post(f"{kat.bytes_url}/bytes/raw", params=params, json=body, headers=login(kat))
    assert response.status_code == 422


def test_unknown_raw_is_a_404(shared_kat: SimulatedKAT, http: requests.Session, login: Login) -> None:
    assert http.get(f"{shared_kat.bytes_url}/bytes/raw/{uuid.uuid4()}", headers=login(shared_kat)).status_code == 404


def test_raw_meta_can_be_listed_by_boefje_meta(kat: SimulatedKAT, http: requests.Session, login: Login) -> None:
    headers = login(kat)
    meta = meta_body()
    http.post(f"{kat.bytes_url}/bytes/boefje_meta", json=meta, headers=headers).raise_for_status()
    body = raw_body(("0", b"a", ["boefje/dns-records"]))
    ids = http.post(
        f"{kat.bytes_url}/bytes/raw", params={"boefje_meta_id": meta["id"]}, json=body, headers=headers
    ).json()
    listed = http.get(f"{kat.bytes_url}/bytes/raw", params={"boefje_meta_id": meta["id"]}, headers=headers).json()
    assert [item["id"] for item in listed] == [ids["0"]]
    single = http.get(f"{kat.bytes_url}/bytes/raw/{ids['0']}/meta", headers=headers).json()
    assert single == listed[0]


def test_normalizer_meta_is_stored_once(kat: SimulatedKAT, world: World, http: requests.Session, login: Login) -> None:
    headers = login(kat)
    meta = meta_body()
    body = {
        "id": str(uuid.uuid4()),
        "raw_data": {"id": str(uuid.uuid4()), "boefje_meta": meta, "mime_types": [{"value": "boefje/dns-records"}]},
        "normalizer": {"id": "kat_dns_normalize", "version": None},
        "started_at": "2025-05-27T09:00:17+00:00",
        "ended_at": "2025-05-27T09:00:18+00:00",
    }
    url = f"{kat.bytes_url}/bytes/normalizer_meta"
    assert http.post(url, json=body, headers=headers).status_code == 201
    assert http.post(url, json=body, headers=headers).status_code == 400
    assert [run.normalizer_id for run in world.normalizer_runs] == ["kat_dns_normalize"]
    assert http.post(url, json={"id": "nope"}, headers=headers).status_code == 422
