"""HTTP clients for KAT's services: Octopoes, Katalogus and Bytes.

Each client is one pooled, retrying session (:class:`HTTPService`); build all three from the
settings with :func:`clients_from_settings`::

    with clients_from_settings(get_settings()) as kat:
        for page in kat.octopoes.iter_objects("aa", types=["Hostname"], scan_levels=[1, 2]):
            ...
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self

from kat_scheduler.clients.base import HTTPOptions, HTTPService
from kat_scheduler.clients.bytes import BytesClient, RawFile
from kat_scheduler.clients.errors import (
    AlreadyExists,
    AuthenticationError,
    NotFound,
    OrganisationNotFound,
    ServiceError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceUnavailable,
)
from kat_scheduler.clients.katalogus import KatalogusClient
from kat_scheduler.clients.octopoes import ObjectsPage, OctopoesClient

if TYPE_CHECKING:
    from kat_scheduler.settings import Settings

__all__ = [
    "AlreadyExists",
    "AuthenticationError",
    "BytesClient",
    "HTTPOptions",
    "HTTPService",
    "KATClients",
    "KatalogusClient",
    "NotFound",
    "ObjectsPage",
    "OctopoesClient",
    "OrganisationNotFound",
    "RawFile",
    "ServiceError",
    "ServiceRequestError",
    "ServiceResponseError",
    "ServiceUnavailable",
    "clients_from_settings",
]


@dataclass
class KATClients:
    """The three KAT clients together."""

    octopoes: OctopoesClient
    katalogus: KatalogusClient
    bytes: BytesClient

    def _all(self) -> tuple[HTTPService, ...]:
        return (self.octopoes, self.katalogus, self.bytes)

    def request_counts(self) -> dict[str, int]:
        """Requests sent so far, by service name."""
        return {client.name: client.request_count for client in self._all()}

    def close(self) -> None:
        for client in self._all():
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def clients_from_settings(settings: Settings) -> KATClients:
    """The three clients with the URLs, credentials and HTTP tuning of ``settings``."""
    options = HTTPOptions(
        timeout=settings.http_timeout,
        retries=settings.http_retries,
        backoff=settings.http_backoff,
        pool_size=settings.http_pool_size,
    )
    return KATClients(
        octopoes=OctopoesClient(_url(settings.octopoes_api), **options),
        katalogus=KatalogusClient(_url(settings.katalogus_api), **options),
        bytes=BytesClient(_url(settings.bytes_api), settings.bytes_username, settings.bytes_password, **options),
    )


def _url(url: object) -> str:
    # pydantic's AnyHttpUrl adds a trailing "/" to a bare host.
    return str(url).rstrip("/")
