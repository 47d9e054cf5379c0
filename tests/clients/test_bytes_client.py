"""BytesClient against the simulated Bytes: login and token refresh, runs, raw files."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import requests

from kat_scheduler.clients import (
    AlreadyExists,
    AuthenticationError,
    BytesClient,
    RawFile,
    ServiceRequestError,
    ServiceUnavailable,
)
from kat_scheduler.models import BoefjeMeta, BoefjeRef, NormalizerMeta, RawData
from kat_scheduler.sim import SimulatedKAT


def a_run(world, *, runs_at_least=2):
    """(org, boefje id, input OOI) of some object the history has several runs for."""
    for org in world.organisation_ids:
        for boefje in world.boefjes:
            for run in world.runs(org, boefje.id):
                if run.input_ooi and len(world.runs(org, boefje.id, run.input_ooi)) >= runs_at_least:
                    return org, boefje.id, run.input_ooi
    raise AssertionError("the world has no object with repeated runs")


def new_meta(org="org01", boefje_id="dns-records", input_ooi=None):
    started = datetime.now(UTC) - timedelta(seconds=5)
    return BoefjeMeta(
        id=uuid.uuid4(),
        started_at=started,
        ended_at=started + timedelta(seconds=2),
        boefje=BoefjeRef(id=boefje_id),
        input_ooi=input_ooi or f"Hostname|internet|{uuid.uuid4().hex[:10]}.example",
        arguments={},
        organization=org,
    )


# --- login and tokens -------------------------------------------------------------------


def test_logs_in_on_first_use_and_reuses_the_token(kat, seen, bytes_client):
    assert seen("bytes", "POST", "/token") == 0

    bytes_client.boefje_meta("org01", input_ooi="*", limit=1)
    bytes_client.boefje_meta("org02", input_ooi="*", limit=1)

    assert seen("bytes", "POST", "/token") == 1
    assert seen("bytes", "GET", "/bytes/boefje_meta") == 2
    assert bytes_client.request_count == 3


def test_an_expired_token_is_renewed_once_and_the_call_repeated(kat, seen, bytes_client, world):
    org, boefje_id, input_ooi = a_run(world)
    bytes_client.login()
    kat.expire_tokens()

    run = bytes_client.last_run(org, boefje_id, input_ooi)

    assert run is not None and run.id == world.last_run(org, boefje_id, input_ooi).id
    assert seen("bytes", "POST", "/token") == 2
    assert seen("bytes", "GET", "/bytes/boefje_meta") == 2


def test_threads_that_all_hit_an_expired_token_log_in_once(kat, seen, credentials):
    client = BytesClient(kat.bytes_url, *credentials, retries=0, backoff=0, pool_size=8)
    client.login()
    kat.expire_tokens()
    results, barrier = [], threading.Barrier(8)

    def call():
        barrier.wait()
        results.append(client.boefje_meta("org01", input_ooi="*", limit=1))

    with client:
        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert len(results) == 8 and all(len(result) == 1 for result in results)
    assert seen("bytes", "POST", "/token") == 2  # the first login and one renewal


def test_a_token_refused_again_after_a_fresh_login_is_an_authentication_error(kat, seen, bytes_client):
    kat.inject_fault("bytes", status=401, times=None, path_prefix="/bytes/")

    with pytest.raises(AuthenticationError) as caught:
        bytes_client.boefje_meta("org01")

    assert caught.value.endpoint == "GET /bytes/boefje_meta"
    assert caught.value.status_code == 401
    assert seen("bytes", "POST", "/token") == 2
    assert seen("bytes", "GET", "/bytes/boefje_meta") == 2


def test_refused_credentials_are_an_authentication_error(kat, seen, client_options, credentials):
    client = BytesClient(kat.bytes_url, credentials[0], "wrong", **client_options)

    with client, pytest.raises(AuthenticationError) as caught:
        client.boefje_meta("org01")

    assert caught.value.status_code == 401
    assert str(caught.value) == "bytes: POST /token: login as 'bytes' refused (HTTP 401)"
    assert seen("bytes", "GET", "/bytes/boefje_meta") == 0


def test_a_refused_login_does_not_repeat_what_the_answer_echoes(kat, bytes_client, credentials):
    password = credentials[1]
    echo = f'{{"detail": [{{"loc": ["body", "password"], "input": "{password}"}}]}}'.encode()
    kat.inject_fault("bytes", status=422, body=echo, path_prefix="/token")

    with pytest.raises(AuthenticationError) as caught:
        bytes_client.login()

    assert caught.value.status_code == 422
    assert password not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_renews_the_token_before_it_expires(world, client_options, credentials):
    username, password = credentials
    with (
        SimulatedKAT(world, bytes_username=username, bytes_password=password, token_ttl=0.5).start() as short,
        BytesClient(short.bytes_url, username, password, **client_options) as client,
    ):
        client.boefje_meta("org01", input_ooi="*", limit=1)
        time.sleep(0.5)
        client.boefje_meta("org01", input_ooi="*", limit=1)

        assert short.path_counts[("bytes", "POST", "/token")] == 2
        assert short.path_counts[("bytes", "GET", "/bytes/boefje_meta")] == 2  # never answered 401


def test_never_logs_the_password_or_the_token(kat, bytes_client, credentials, caplog):
    issued = []

    def seen(response: requests.Response, *args: object, **kwargs: object) -> None:
        if response.request.method == "POST" and urlsplit(response.url).path.endswith("/token"):
            issued.append(response.json()["access_token"])

    bytes_client.session.hooks["response"].append(seen)  # the tokens Bytes handed out
    caplog.set_level(logging.DEBUG)
    bytes_client.boefje_meta("org01", input_ooi="*", limit=1)
    kat.expire_tokens()
    bytes_client.boefje_meta("org01", input_ooi="*", limit=1)

    assert len(issued) == 2 and all(issued) and "logging in again" in caplog.text
    assert credentials[1] not in caplog.text
    assert not any(token in caplog.text for token in issued)


def test_health_needs_no_login(kat, seen, bytes_client):
    assert bytes_client.health().service == "bytes"
    assert seen("bytes", "POST", "/token") == 0


def test_an_unavailable_bytes_is_retried_before_giving_up(kat, seen, bytes_client):
    kat.inject_fault("bytes", status=503, times=2, path_prefix="/bytes/boefje_meta")

    assert len(bytes_client.boefje_meta("org01", input_ooi="*", limit=2)) == 2
    assert seen("bytes", "GET", "/bytes/boefje_meta") == 3

    kat.inject_fault("bytes", status=503, times=None, path_prefix="/bytes/boefje_meta")
    with pytest.raises(ServiceUnavailable, match="bytes: GET /bytes/boefje_meta: HTTP 503"):
        bytes_client.boefje_meta("org01", input_ooi="*")


# --- boefje runs ------------------------------------------------------------------------


def test_boefje_meta_lists_runs_newest_first(bytes_client, world):
    org, boefje_id, input_ooi = a_run(world)
    expected = [run.id for run in reversed(world.runs(org, boefje_id, input_ooi))]

    runs = bytes_client.boefje_meta(org, boefje_id=boefje_id, input_ooi=input_ooi)

    assert [run.id for run in runs] == expected
    assert all(run.boefje.id == boefje_id and run.input_ooi == input_ooi for run in runs)
    assert runs[0].arguments["input"]["primary_key"] == input_ooi


def test_boefje_meta_pages_oldest_first_on_request(bytes_client, world):
    org, boefje_id, _ = a_run(world)
    expected = [run.id for run in world.runs(org, boefje_id)]

    runs = bytes_client.boefje_meta(org, boefje_id=boefje_id, input_ooi="*", limit=3, offset=1, descending=False)

    assert [run.id for run in runs] == expected[1:4]


def test_without_an_input_ooi_only_runs_without_one_match(bytes_client, world):
    org = world.organisation_ids[0]
    without_input = next(b.id for b in world.boefjes if not b.consumes)
    with_input = a_run(world)[1]

    runs = bytes_client.boefje_meta(org, boefje_id=without_input, limit=1000)

    assert [run.id for run in runs] == [run.id for run in reversed(world.runs(org, without_input, None))]
    assert runs and all(run.input_ooi is None for run in runs)
    assert bytes_client.boefje_meta(org, boefje_id=with_input) == []


def test_last_run_is_the_newest_run(bytes_client, world):
    org, boefje_id, input_ooi = a_run(world)

    run = bytes_client.last_run(org, boefje_id, input_ooi)

    expected = world.last_run(org, boefje_id, input_ooi)
    assert (run.id, run.ended_at) == (expected.id, expected.ended_at)


def test_last_run_of_something_never_run_is_none(bytes_client):
    assert bytes_client.last_run("org01", "dns-records", "Hostname|internet|never.example") is None


def test_iter_boefje_meta_pages_through_every_run_of_a_boefje(kat, seen, bytes_client, world):
    org, boefje_id, _ = a_run(world)
    expected = [run.id for run in reversed(world.runs(org, boefje_id))]
    assert len(expected) > 5

    pages = list(bytes_client.iter_boefje_meta(org, boefje_id, page_size=5))

    assert all(len(page) == 5 for page in pages[:-1])
    assert [run.id for page in pages for run in page] == expected
    assert seen("bytes", "GET", "/bytes/boefje_meta") == len(expected) // 5 + 1


def test_iter_boefje_meta_of_a_boefje_never_run_yields_nothing(bytes_client):
    assert list(bytes_client.iter_boefje_meta("org01", "no-such-boefje")) == []


def test_save_boefje_meta_stores_the_run(bytes_client):
    meta = new_meta()

    bytes_client.save_boefje_meta(meta)

    assert bytes_client.last_run(meta.organization, "dns-records", meta.input_ooi) == meta


def test_saving_a_run_twice_raises_already_exists(bytes_client):
    meta = new_meta()
    bytes_client.save_boefje_meta(meta)

    with pytest.raises(AlreadyExists) as caught:
        bytes_client.save_boefje_meta(meta)

    assert isinstance(caught.value, ServiceRequestError)
    assert caught.value.status_code == 400
    assert caught.value.endpoint == "POST /bytes/boefje_meta"


# --- raw files and normalizer runs ------------------------------------------------------


def test_save_raw_stores_files_that_read_back_byte_for_byte(bytes_client, world):
    meta = new_meta()
    bytes_client.save_boefje_meta(meta)
    content = bytes(range(256)) * 3

    ids = bytes_client.save_raw(
        meta.id,
        [RawFile("0", content, ["boefje/dns-records"]), ("1", b"{}", ["boefje/dns-records", "application/json"])],
    )

    assert set(ids) == {"0", "1"}
    assert all(isinstance(raw_id, uuid.UUID) for raw_id in ids.values())
    assert bytes_client.get_raw(ids["0"]) == content
    assert bytes_client.get_raw(str(ids["1"])) == b"{}"
    assert world.raw_file(ids["1"]).mime_types == ("boefje/dns-records", "application/json")


def test_save_raw_of_a_failed_run(bytes_client, world):
    meta = new_meta()
    bytes_client.save_boefje_meta(meta)

    ids = bytes_client.save_raw(meta.id, [("error", b"Traceback ...", ["error/boefje"])], status="FAILED")

    assert world.raw_file(ids["error"]).mime_types == ("error/boefje",)


def test_save_raw_refuses_an_unknown_status_before_sending(kat, bytes_client):
    with pytest.raises(ValueError, match="COMPLETED or FAILED"):
        bytes_client.save_raw(uuid.uuid4(), [], status="DONE")

    assert kat.request_counts["bytes"] == 0


def test_save_raw_for_an_unknown_run_is_a_request_error(bytes_client):
    with pytest.raises(ServiceRequestError) as caught:
        bytes_client.save_raw(uuid.uuid4(), [("0", b"x", ["boefje/x"])])

    assert caught.value.status_code == 404
    assert caught.value.endpoint == "POST /bytes/raw"


def test_get_raw_of_an_unknown_file_is_none(bytes_client):
    assert bytes_client.get_raw(uuid.uuid4()) is None


def test_save_normalizer_meta_stores_the_run_once(bytes_client, world):
    meta = new_meta()
    bytes_client.save_boefje_meta(meta)
    raw_id = bytes_client.save_raw(meta.id, [("0", b"data", ["boefje/dns-records"])])["0"]
    now = datetime.now(UTC)
    normalizer_meta = NormalizerMeta(
        id=uuid.uuid4(),
        raw_data=RawData(id=raw_id, boefje_meta=meta, mime_types=[{"value": "boefje/dns-records"}]),
        normalizer={"id": "kat_dns_normalize"},
        started_at=now,
        ended_at=now,
    )

    bytes_client.save_normalizer_meta(normalizer_meta)

    stored = next(run for run in world.normalizer_runs if run.id == normalizer_meta.id)
    assert (stored.normalizer_id, stored.raw_data_id) == ("kat_dns_normalize", raw_id)
    with pytest.raises(AlreadyExists):
        bytes_client.save_normalizer_meta(normalizer_meta.model_dump(mode="json"))


def test_run_times_page_through_all_runs_of_a_boefje_newest_first(world, bytes_client) -> None:
    org = world.organisation_ids[0]
    boefje_id = next(b.id for b in world.boefjes if world.runs(org, b.id))
    pages = list(bytes_client.iter_run_times(org, boefje_id, page_size=7))
    times = [run for page in pages for run in page]
    expected = world.runs(org, boefje_id)
    assert len(times) == len(expected)
    assert [t.started_at for t in times] == sorted((r.started_at for r in expected), reverse=True)
    assert {t.input_ooi for t in times} == {r.input_ooi for r in expected}


def test_a_run_on_an_object_key_the_database_cannot_store_is_left_out_of_the_history(kat, bytes_client) -> None:
    import json

    def run(key: str) -> dict[str, object]:
        return {"input_ooi": key, "started_at": "2026-06-01T10:00:00Z", "ended_at": "2026-06-01T10:01:00Z"}

    page = [run("Hostname|internet|a.nl"), run("Hostname|internet|" + "x" * 1100), run("Hostname|internet|n\x00l")]
    kat.inject_fault("bytes", status=200, body=json.dumps(page).encode(), path_prefix="/bytes/boefje_meta")

    pages = list(bytes_client.iter_run_times("org01", "dns-records", page_size=3))

    assert [[r.input_ooi for r in p] for p in pages[:1]] == [["Hostname|internet|a.nl"]]
