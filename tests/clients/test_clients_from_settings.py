"""Building the three clients from Settings."""

from __future__ import annotations

from requests.adapters import HTTPAdapter

from kat_scheduler.clients import BytesClient, KatalogusClient, KATClients, OctopoesClient, clients_from_settings
from kat_scheduler.settings import Settings


def settings_for(kat, credentials, **overrides):
    username, password = credentials
    return Settings(
        octopoes_api=kat.octopoes_url,
        katalogus_api=kat.katalogus_url,
        bytes_api=kat.bytes_url,
        bytes_username=username,
        bytes_password=password,
        **overrides,
    )


def test_clients_from_settings_talk_to_the_configured_services(kat, credentials):
    with clients_from_settings(settings_for(kat, credentials)) as clients:
        assert isinstance(clients, KATClients)
        assert clients.octopoes.get_object("org01", "Network|internet") is not None
        assert clients.katalogus.organisations()
        assert clients.bytes.boefje_meta("org01", input_ooi="*", limit=1)

        assert clients.request_counts() == {"octopoes": 1, "katalogus": 1, "bytes": 2}
        assert clients.request_counts() == kat.request_counts


def test_clients_from_settings_use_the_urls_without_trailing_slash_and_the_http_tuning(kat, credentials):
    settings = settings_for(kat, credentials, http_timeout=3.5, http_retries=5, http_backoff=0.0, http_pool_size=4)
    assert str(settings.octopoes_api).endswith("/")

    clients = clients_from_settings(settings)

    assert isinstance(clients.octopoes, OctopoesClient)
    assert isinstance(clients.katalogus, KatalogusClient)
    assert isinstance(clients.bytes, BytesClient)
    assert [c.base_url for c in (clients.octopoes, clients.katalogus, clients.bytes)] == [
        kat.octopoes_url,
        kat.katalogus_url,
        kat.bytes_url,
    ]
    for client in (clients.octopoes, clients.katalogus, clients.bytes):
        adapter = client.session.get_adapter(client.base_url)
        assert isinstance(adapter, HTTPAdapter)
        assert (client.timeout, adapter.max_retries.total, adapter.poolmanager.connection_pool_kw["maxsize"]) == (
            3.5,
            5,
            4,
        )
    clients.close()


def test_the_password_stays_secret_in_the_client(kat, credentials):
    clients = clients_from_settings(settings_for(kat, credentials))

    assert credentials[1] not in repr(vars(clients.bytes))
    clients.close()


def test_a_client_never_shows_the_password_of_its_base_url() -> None:
    from kat_scheduler.clients import OctopoesClient

    client = OctopoesClient("http://kat:s3cret@127.0.0.1:1")
    assert repr(client) == "<OctopoesClient http://kat:***@127.0.0.1:1>"
    client.close()
