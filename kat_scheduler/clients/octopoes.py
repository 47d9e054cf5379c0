"""Octopoes, the object graph: listing objects, looking one up, saving observations."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from requests import Response

from kat_scheduler.clients.base import HEALTH, HTTPService, isoformat, segment, validation_reason
from kat_scheduler.clients.errors import NotFound, OrganisationNotFound
from kat_scheduler.models.health import ServiceHealth
from kat_scheduler.models.ooi import OOI, ListedObject

logger = logging.getLogger(__name__)


class ObjectsPage(BaseModel):
    """One page of ``GET /{org}/objects``: ``count`` is the total over all pages.

    ``invalid`` names the objects of the page that did not validate (a key longer than the
    database can store, say): they are left out of ``items`` and logged, the rest count. Items are
    read as :class:`~kat_scheduler.models.ooi.ListedObject`: type, key and clearance, what the rules
    decide on (a listing is the tick's largest parse); :meth:`OctopoesClient.get_object` reads a
    whole object.
    """

    count: int = Field(ge=0)
    items: list[ListedObject]
    invalid: list[str] = Field(default_factory=list)


class _RawObjectsPage(BaseModel):
    count: int = Field(ge=0)
    items: list[dict[str, Any]]


OBJECTS_PAGE: TypeAdapter[ObjectsPage] = TypeAdapter(ObjectsPage)
RAW_OBJECTS_PAGE: TypeAdapter[_RawObjectsPage] = TypeAdapter(_RawObjectsPage)
OBJECT: TypeAdapter[OOI] = TypeAdapter(OOI)
LISTED_OBJECT: TypeAdapter[ListedObject] = TypeAdapter(ListedObject)
OBJECT_CLIENTS: TypeAdapter[dict[str, OOI]] = TypeAdapter(dict[str, OOI])


class OctopoesClient(HTTPService):
    """Octopoes' API. Every read is at a ``valid_time``, now (UTC) unless given."""

    name = "octopoes"

    def list_objects(
        self,
        org: str,
        *,
        types: Iterable[str],
        scan_levels: Iterable[int] | None = None,
        offset: int = 0,
        limit: int = 1000,
        valid_time: datetime | None = None,
    ) -> ObjectsPage:
        """One page of ``org``'s objects of ``types`` (and ``scan_levels``, all when ``None``).

        An empty ``types`` or ``scan_levels`` selects nothing and sends no request.
        Raises :class:`OrganisationNotFound` when Octopoes does not know ``org``.
        """
        types = sorted(set(types))
        levels = None if scan_levels is None else sorted(set(scan_levels))
        if not types or levels == []:
            return ObjectsPage(count=0, items=[])
        params = {
            "types": types,
            "scan_level": levels,
            "offset": offset,
            "limit": limit,
            "valid_time": _valid_time(valid_time),
        }
        path = f"/{segment(org)}/objects"
        try:
            response = self._request("GET", path, params=params)
        except NotFound as exc:
            raise OrganisationNotFound(
                self.name, exc.endpoint, f"organisation {org!r} not found", status_code=404
            ) from None
        try:
            return OBJECTS_PAGE.validate_json(response.content)
        except ValidationError:
            return self._page_without_invalid(org, path, response)

    def _page_without_invalid(self, org: str, path: str, response: Response) -> ObjectsPage:
        """The page whose objects are validated one by one: one bad object is skipped, not the page."""
        raw = self._parse("GET", path, response, RAW_OBJECTS_PAGE)  # a page of the wrong shape still fails
        page = ObjectsPage(count=raw.count, items=[])
        for item in raw.items:
            try:
                page.items.append(LISTED_OBJECT.validate_python(item))
            except ValidationError as exc:
                key = str(item.get("primary_key", "?"))
                shown = key if len(key) <= 80 else f"{key[:80]}… ({len(key)} characters)"
                page.invalid.append(key)
                logger.warning(
                    "octopoes: organisation %s: object %r skipped, it does not validate: %s",
                    org,
                    shown,
                    validation_reason(exc),
                )
        return page

    def iter_objects(
        self,
        org: str,
        *,
        types: Iterable[str],
        scan_levels: Iterable[int] | None = None,
        page_size: int = 1000,
        valid_time: datetime | None = None,
        on_invalid: Callable[[list[str]], None] | None = None,
    ) -> Iterator[list[ListedObject]]:
        """All matching objects, a page at a time, all read at one ``valid_time`` for consistency.

        Objects that do not validate are skipped (and logged); ``on_invalid`` gets their keys.
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        types = list(types)
        levels = None if scan_levels is None else list(scan_levels)
        moment = valid_time or datetime.now(UTC)
        offset = 0
        while True:
            page = self.list_objects(
                org, types=types, scan_levels=levels, offset=offset, limit=page_size, valid_time=moment
            )
            listed = len(page.items) + len(page.invalid)  # a skipped object still takes its place
            if page.invalid and on_invalid is not None:
                on_invalid(page.invalid)
            if not listed:
                return
            if page.items:
                yield page.items
            offset += listed
            if offset >= page.count or listed < page_size:
                return

    def get_object(self, org: str, reference: str, valid_time: datetime | None = None) -> OOI | None:
        """The object ``reference`` in ``org``, or ``None`` when it (or the org) does not exist."""
        params = {"reference": reference, "valid_time": _valid_time(valid_time)}
        return self._lookup(f"/{segment(org)}/object", OBJECT, params=params)

    def object_clients(
        self, reference: str, clients: Iterable[str], valid_time: datetime | None = None
    ) -> dict[str, OOI]:
        """Which of ``clients`` (organisations) hold ``reference``, with their view of the object."""
        wanted = sorted(set(clients))
        if not wanted:
            return {}
        params = {"reference": reference, "clients": wanted, "valid_time": _valid_time(valid_time)}
        return self._lookup("/object-clients", OBJECT_CLIENTS, params=params) or {}

    def save_observation(
        self,
        org: str,
        *,
        method: str,
        source: str,
        source_method: str | None,
        task_id: UUID,
        valid_time: datetime,
        result: Sequence[dict[str, Any] | OOI],
    ) -> None:
        """Store a normalizer's output: ``method`` is the normalizer id, ``source`` the input OOI."""
        body = {
            "method": method,
            "source": source,
            "source_method": source_method,
            "task_id": str(task_id),
            "valid_time": isoformat(valid_time),
            "result": [item.model_dump(mode="json") if isinstance(item, OOI) else item for item in result],
        }
        self._request("POST", f"/{segment(org)}/observations", json=body)
        logger.debug("octopoes: saved %d objects observed by %s for %s", len(result), method, org)

    def health(self, org: str | None = None) -> ServiceHealth:
        """Octopoes' health; with ``org``, that of the organisation's graph."""
        if org is None:
            return super().health()
        return self._get(f"/{segment(org)}/health", HEALTH)


def _valid_time(moment: datetime | None) -> str:
    return isoformat(moment or datetime.now(UTC))
