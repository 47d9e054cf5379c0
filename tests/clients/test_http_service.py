"""What every client inherits from HTTPService: retries, timeouts, error translation, counting."""

from __future__ import annotations

import pickle
import uuid
from datetime import UTC, datetime

import pytest
from requests.adapters import HTTPAdapter

from kat_scheduler.clients import (
    KatalogusClient,
    OctopoesClient,
    ServiceError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceUnavailable,
)
from kat_scheduler.version import __version__


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_are_retried_until_the_service_answers(kat, seen, octopoes, status):
    kat.inject_fault("octopoes", status=status, times=octopoes.retries, path_prefix="/health")

    assert octopoes.health().healthy

    assert seen("octopoes", "GET", "/health") == octopoes.retries + 1


def test_persistent_503_is_unavailable_after_the_configured_retries(kat, seen, octopoes):
    kat.inject_fault("octopoes", status=503, times=None, path_prefix="/org01/objects")

    with pytest.raises(ServiceUnavailable) as caught:
        octopoes.list_objects("org01", types=["Hostname"])

    assert seen("octopoes", "GET", "/org01/objects") == octopoes.retries + 1
    error = caught.value
    assert (error.service, error.endpoint, error.status_code) == ("octopoes", "GET /org01/objects", 503)
    assert str(error) == f"octopoes: GET /org01/objects: HTTP 503 after {octopoes.retries} retries"


def test_no_retries_configured_means_one_request(kat, seen):
    kat.inject_fault("katalogus", status=503, times=None, path_prefix="/v1/organisations")
    katalogus = KatalogusClient(kat.katalogus_url, retries=0, backoff=0)

    with katalogus, pytest.raises(ServiceUnavailable):
        katalogus.organisations()

    assert seen("katalogus", "GET", "/v1/organisations") == 1


def test_a_post_answered_503_is_retried_too(kat, seen, octopoes, world):
    kat.inject_fault("octopoes", status=503, times=1, path_prefix="/org02/observations", method="POST")
    network = world.oois("org02")["Network|internet"]

    octopoes.save_observation(
        "org02",
        method="kat_test_normalize",
        source=network.primary_key,
        source_method=None,
        task_id=uuid.uuid4(),
        valid_time=datetime.now(UTC),
        result=[],
    )

    assert seen("octopoes", "POST", "/org02/observations") == 2


def test_other_5xx_is_unavailable_without_retrying(kat, seen, octopoes):
    kat.inject_fault("octopoes", status=500, times=None, path_prefix="/health")

    with pytest.raises(ServiceUnavailable, match="HTTP 500"):
        octopoes.health()

    assert seen("octopoes", "GET", "/health") == 1


@pytest.mark.parametrize("status", [400, 401, 403, 409, 422])
def test_client_errors_are_request_errors_and_not_retried(kat, seen, katalogus, status):
    kat.inject_fault("katalogus", status=status, times=None, path_prefix="/v1/organisations")

    with pytest.raises(ServiceRequestError) as caught:
        katalogus.organisations()

    assert caught.value.status_code == status
    assert f"katalogus: GET /v1/organisations: HTTP {status}: injected fault ({status})" == str(caught.value)
    assert seen("katalogus", "GET", "/v1/organisations") == 1


def test_a_real_422_carries_the_services_detail(octopoes):
    with pytest.raises(ServiceRequestError) as caught:
        octopoes.list_objects("org01", types=["Hostname"], scan_levels=[7])

    assert caught.value.status_code == 422
    assert "scan_level" in str(caught.value)


def test_connection_refused_is_unavailable(closed_url, client_options):
    with OctopoesClient(closed_url, **client_options) as octopoes, pytest.raises(ServiceUnavailable) as caught:
        octopoes.get_object("org01", "Network|internet")

    message = str(caught.value)
    assert message.startswith("octopoes: GET /org01/object: connection failed:")
    assert "Connection refused" in message
    assert "reference=" not in message  # no query string in errors


def test_a_dropped_connection_is_unavailable(kat, octopoes):
    kat.inject_fault("octopoes", times=1, path_prefix="/health", drop=True)

    with pytest.raises(ServiceUnavailable, match="connection failed"):
        octopoes.health()


def test_a_slow_answer_times_out_as_unavailable(kat, seen):
    kat.inject_fault("octopoes", status=None, delay=1.0, times=1, path_prefix="/health")
    octopoes = OctopoesClient(kat.octopoes_url, timeout=0.2, retries=2, backoff=0)

    with octopoes, pytest.raises(ServiceUnavailable, match=r"octopoes: GET /health: timed out after 0\.2 s"):
        octopoes.health()

    assert seen("octopoes", "GET", "/health") == 1  # a read timeout is not repeated


def test_a_body_that_is_not_json_is_a_response_error(kat, octopoes):
    kat.inject_fault("octopoes", status=200, body=b"not json", times=1, content_type="text/plain")

    with pytest.raises(ServiceResponseError) as caught:
        octopoes.list_objects("org01", types=["Hostname"])

    assert caught.value.service == "octopoes"
    assert caught.value.endpoint == "GET /org01/objects"
    assert str(caught.value).startswith("octopoes: GET /org01/objects: malformed JSON")


def test_json_of_the_wrong_shape_is_a_response_error_naming_the_field(kat, katalogus):
    kat.inject_fault("katalogus", status=200, body=b'{"org01": {"id": "org01"}}')

    with pytest.raises(ServiceResponseError) as caught:
        katalogus.organisations()

    assert str(caught.value).startswith("katalogus: GET /v1/organisations: unexpected body: org01.name:")


def test_a_plugin_list_that_is_not_a_list_is_a_response_error(kat, katalogus):
    kat.inject_fault("katalogus", status=200, body=b'{"id": "x", "type": "boefje"}')

    with pytest.raises(ServiceResponseError) as caught:
        katalogus.plugins("org01")

    assert str(caught.value).startswith("katalogus: GET /v1/organisations/org01/plugins: unexpected body:")


def test_sends_its_user_agent(octopoes):
    assert octopoes.session.headers["User-Agent"] == f"kat-scheduler/{__version__}"


def test_counts_its_requests(kat, octopoes):
    octopoes.health()
    octopoes.get_object("org01", "Network|internet")

    assert octopoes.request_count == 2 == kat.request_counts["octopoes"]
    assert octopoes.reset_request_count() == 2
    assert octopoes.request_count == 0


def test_a_trailing_slash_on_the_base_url_is_ignored(kat, client_options):
    with OctopoesClient(kat.octopoes_url + "/", **client_options) as octopoes:
        assert octopoes.base_url == kat.octopoes_url
        assert octopoes.health().service == "octopoes"


def test_close_releases_the_pooled_connections(kat, client_options):
    with OctopoesClient(kat.octopoes_url, **client_options) as octopoes:
        octopoes.health()
        adapter = octopoes.session.get_adapter(kat.octopoes_url)
        assert isinstance(adapter, HTTPAdapter)
        pools = adapter.poolmanager.pools
        assert len(pools) == 1

    assert len(pools) == 0


@pytest.mark.parametrize("host", ["a..b", "." + "x" * 64 + ".nl", ".octopoes"])
def test_a_base_url_whose_host_cannot_be_used_is_a_service_error_without_its_password(host, client_options):
    # Settings refuse these; a client made without them fails each call with a ServiceError, not
    # urllib3's LocationParseError or requests' InvalidURL.
    with (
        OctopoesClient(f"http://user:s3cretpw@{host}:1", **client_options) as octopoes,
        pytest.raises(ServiceError) as caught,
    ):
        octopoes.health()

    assert type(caught.value) is ServiceError
    assert str(caught.value).startswith("octopoes: GET /health: request failed: ")
    assert f"(host {host!r}) cannot be used" in str(caught.value)
    assert "s3cretpw" not in str(caught.value)


@pytest.mark.parametrize("url", ["", "octopoes:80", "ftp://octopoes"])
def test_refuses_a_base_url_that_is_not_http(url):
    with pytest.raises(ValueError, match="base URL"):
        OctopoesClient(url)


def test_errors_survive_pickling_with_their_fields():
    error = ServiceUnavailable("bytes", "GET /bytes/raw/x", "HTTP 503", status_code=503)

    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is ServiceUnavailable
    assert (copy.service, copy.endpoint, copy.detail, copy.status_code) == (
        "bytes",
        "GET /bytes/raw/x",
        "HTTP 503",
        503,
    )
    assert str(copy) == str(error)
    assert isinstance(copy, ServiceError)
