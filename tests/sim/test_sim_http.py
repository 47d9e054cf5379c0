"""The services as HTTP servers: keep-alive, counting, fault injection, robustness, shutdown."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests

from kat_scheduler.sim import SimulatedKAT, World
from kat_scheduler.sim.http import FaultInjector, Request, RequestStats, Response, Router, ServiceApp, ServiceServer


def test_urls_are_loopback_without_a_trailing_slash(shared_kat: SimulatedKAT) -> None:
    urls = [shared_kat.octopoes_url, shared_kat.katalogus_url, shared_kat.bytes_url]
    assert len({urlsplit(url).port for url in urls}) == 3
    for url in urls:
        assert url.startswith("http://127.0.0.1:") and not url.endswith("/")
    assert shared_kat.urls["OCTOPOES_API"] == shared_kat.octopoes_url


def test_one_connection_serves_many_requests(shared_kat: SimulatedKAT) -> None:
    parts = urlsplit(shared_kat.octopoes_url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        for _ in range(5):
            connection.request("GET", "/org01/objects?limit=3")
            response = connection.getresponse()
            assert response.status == 200
            assert int(response.headers["Content-Length"]) == len(response.read())
            assert response.headers.get("Connection") != "close"
        connection.request("POST", "/org01/observations", body=b"{", headers={"Content-Type": "application/json"})
        failed = connection.getresponse()
        assert failed.status == 422
        failed.read()
        connection.request("GET", "/health")  # still usable after an error
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_request_counts_per_service_and_reset(kat: SimulatedKAT, http: requests.Session) -> None:
    assert kat.request_counts == {"octopoes": 0, "katalogus": 0, "bytes": 0}
    http.get(f"{kat.octopoes_url}/org01/objects")
    http.get(f"{kat.octopoes_url}/org01/objects")
    http.get(f"{kat.katalogus_url}/v1/organisations")
    http.get(f"{kat.bytes_url}/health")
    assert kat.request_counts == {"octopoes": 2, "katalogus": 1, "bytes": 1}
    assert kat.path_counts[("octopoes", "GET", "/org01/objects")] == 2
    kat.reset_counts()
    assert kat.request_counts == {"octopoes": 0, "katalogus": 0, "bytes": 0}


def test_injected_status_answers_the_next_matching_requests_only(kat: SimulatedKAT, http: requests.Session) -> None:
    kat.inject_fault("bytes", status=503, times=2, path_prefix="/bytes/boefje_meta")
    url = f"{kat.bytes_url}/bytes/boefje_meta"
    assert http.get(f"{kat.bytes_url}/health").status_code == 200  # does not match the prefix
    assert http.get(url).status_code == 503
    assert http.get(url).status_code == 503
    assert http.get(url).status_code == 401  # fault used up: normal handling (no token)


def test_injected_body_is_served_verbatim(kat: SimulatedKAT, http: requests.Session) -> None:
    kat.inject_fault("octopoes", body=b"not json", status=200, times=1)
    response = http.get(f"{kat.octopoes_url}/org01/objects")
    assert (response.status_code, response.content) == (200, b"not json")
    with pytest.raises(ValueError):
        response.json()
    assert "items" in http.get(f"{kat.octopoes_url}/org01/objects").json()


def test_faults_can_match_a_method_and_last_until_cleared(kat: SimulatedKAT, http: requests.Session) -> None:
    kat.inject_fault("katalogus", status=502, times=None, method="PATCH")
    assert http.get(f"{kat.katalogus_url}/v1/organisations").status_code == 200
    for _ in range(3):
        assert http.patch(f"{kat.katalogus_url}/v1/organisations/org01/plugins/nmap", json={}).status_code == 502
    kat.clear_faults()
    assert http.patch(f"{kat.katalogus_url}/v1/organisations/org01/plugins/nmap", json={}).status_code == 422


def test_a_dropped_connection_is_a_connection_error(kat: SimulatedKAT) -> None:
    kat.inject_fault("octopoes", drop=True)
    with requests.Session() as session, pytest.raises(requests.ConnectionError):
        session.post(f"{kat.octopoes_url}/org01/observations", json={})


def test_a_delay_fault_slows_the_answer_down(kat: SimulatedKAT, http: requests.Session) -> None:
    kat.inject_fault("katalogus", status=None, delay=0.3)
    with pytest.raises(requests.Timeout):
        http.get(f"{kat.katalogus_url}/v1/organisations", timeout=0.1)
    assert http.get(f"{kat.katalogus_url}/v1/organisations", timeout=2).status_code == 200


def test_unknown_service_name_is_rejected(kat: SimulatedKAT) -> None:
    with pytest.raises(ValueError):
        kat.inject_fault("rocky")


def test_unknown_paths_and_methods_are_json_errors(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    missing = http.get(f"{shared_kat.katalogus_url}/v2/nothing")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    wrong_method = http.delete(f"{shared_kat.octopoes_url}/org01/objects")
    assert (wrong_method.status_code, wrong_method.json()) == (405, {"detail": "Method Not Allowed"})


def test_garbage_on_the_wire_does_not_stop_the_server(shared_kat: SimulatedKAT, http: requests.Session) -> None:
    parts = urlsplit(shared_kat.octopoes_url)
    for garbage in (b"\x00\x01\x02 nonsense\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n", b""):
        with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=5) as raw:
            raw.sendall(garbage)
            raw.shutdown(socket.SHUT_WR)
            while raw.recv(4096):
                pass
    assert http.get(f"{shared_kat.octopoes_url}/health").status_code == 200


def test_concurrent_clients_are_served(shared_kat: SimulatedKAT) -> None:
    failures: list[BaseException] = []

    def client() -> None:
        try:
            with requests.Session() as session:
                for offset in range(0, 200, 20):
                    body = session.get(f"{shared_kat.octopoes_url}/org01/objects", params={"offset": offset}).json()
                    assert len(body["items"]) == 20
        except BaseException as error:  # pragma: no cover - reported below
            failures.append(error)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_stop_closes_kept_alive_connections(world: World) -> None:
    kat = SimulatedKAT(world).start()
    with requests.Session() as session:
        assert session.get(f"{kat.octopoes_url}/health").status_code == 200
        url = f"{kat.octopoes_url}/health"
        kat.stop()
        with pytest.raises(requests.ConnectionError):
            session.get(url, timeout=2)
    kat.stop()  # idempotent


def test_the_sink_gets_no_events_after_stop(world: World) -> None:
    received: list[str] = []
    kat = SimulatedKAT(world, event_sink=lambda queue, body: received.append(queue)).start()
    world.add_ooi("org01", "Hostname", "Hostname|internet|during.example.nl", level=1)
    kat.stop()
    world.add_ooi("org01", "Hostname", "Hostname|internet|after.example.nl", level=1)
    assert received == ["scan_profile_mutations"]


def test_a_failing_sink_does_not_break_the_request(world: World, http: requests.Session) -> None:
    def broken(queue: str, body: dict[str, object]) -> None:
        raise RuntimeError("sink down")

    with SimulatedKAT(world, event_sink=broken).start() as kat:
        body = {
            "method": "n",
            "source": "Network|internet",
            "result": [{"object_type": "Hostname", "primary_key": "Hostname|internet|sink.example.nl"}],
        }
        assert http.post(f"{kat.octopoes_url}/org01/observations", json=body).status_code == 200
    assert world.get_ooi("org01", "Hostname|internet|sink.example.nl") is not None


def test_fixed_ports_are_used(world: World) -> None:
    ports = []
    for _ in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    with SimulatedKAT(world, octopoes_port=ports[0], katalogus_port=ports[1], bytes_port=ports[2]).start() as kat:
        assert kat.octopoes_url == f"http://127.0.0.1:{ports[0]}"
        assert kat.bytes_url == f"http://127.0.0.1:{ports[2]}"


def test_a_full_page_of_a_large_world_is_served_fast() -> None:
    """Prints the time of 1000-object pages of a 10,000-object organisation (not a timed assertion)."""
    from datetime import UTC, datetime

    from kat_scheduler.sim import WorldConfig, generate_world

    world = generate_world(
        WorldConfig(seed=3, organisations=1, oois_per_org=10_000, now=datetime(2025, 1, 1, tzinfo=UTC))
    )
    with SimulatedKAT(world).start() as kat, requests.Session() as session:
        timings = []
        for offset in range(0, 10_000, 1000):
            started = time.perf_counter()
            body = session.get(f"{kat.octopoes_url}/org01/objects", params={"offset": offset, "limit": 1000}).json()
            timings.append(time.perf_counter() - started)
            assert len(body["items"]) == 1000
    print(f"\n1000-object pages: median {sorted(timings)[5] * 1000:.1f} ms, max {max(timings) * 1000:.1f} ms")


def test_a_crashing_handler_answers_a_json_500() -> None:
    router = Router()

    def broken(request: Request) -> Response:
        raise RuntimeError("bug")

    router.add("GET", "/boom", broken)
    app = ServiceApp("octopoes", router, RequestStats(("octopoes",)), FaultInjector())
    server = ServiceServer(app)
    server.start()
    try:
        response = requests.get(f"{server.url}/boom", timeout=5)
        assert (response.status_code, response.json()) == (500, {"detail": "Internal Server Error"})
        assert requests.get(f"{server.url}/nothing", timeout=5).status_code == 404
    finally:
        server.stop()


def test_chunked_bodies_and_unencoded_plus_signs_are_understood(kat: SimulatedKAT) -> None:
    parts = urlsplit(kat.octopoes_url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        connection.request("GET", "/org01/objects?limit=1&valid_time=2025-05-27T09:00:15+00:00")
        response = connection.getresponse()
        assert response.status == 200, response.read()
        response.read()
        body = (
            b'{"method": "n", "source": "Network|internet", '
            b'"result": [{"object_type": "Hostname", "primary_key": "Hostname|internet|chunked.example.nl"}]}'
        )
        chunks = iter([body[:20], body[20:]])
        connection.request(
            "POST",
            "/org01/observations",
            body=chunks,
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        assert response.status == 200, response.read()
        response.read()
    finally:
        connection.close()
    assert kat.world.get_ooi("org01", "Hostname|internet|chunked.example.nl") is not None


def test_a_service_that_does_not_stop_never_holds_up_the_simulations_stop(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from kat_scheduler.sim import server as sim_server

    kat = SimulatedKAT(world).start()
    real_stop = ServiceServer.stop
    released = threading.Event()
    monkeypatch.setattr(sim_server, "STOP_TIMEOUT", 0.5)
    monkeypatch.setattr(ServiceServer, "stop", lambda self: released.wait(30))
    started = time.monotonic()
    kat.stop()
    assert time.monotonic() - started < 5
    assert "did not stop within" in caplog.text
    released.set()
    monkeypatch.setattr(ServiceServer, "stop", real_stop)
    kat.stop()
