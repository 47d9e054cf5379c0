"""Bytes, the raw data store: boefje runs (BoefjeMeta), raw files and normalizer runs.

Every ``/bytes/*`` call carries a bearer token from ``POST /token``. The client logs in on first
use, again shortly before the token expires, and once more when a call is answered 401; a
second 401 right after a fresh login is an :class:`AuthenticationError`. The password and the
token are never logged and never appear in an error.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Unpack
from uuid import UUID

import requests
from pydantic import AwareDatetime, BaseModel, ConfigDict, SecretStr, TypeAdapter

from kat_scheduler.clients.base import HTTPOptions, HTTPService, Params, segment
from kat_scheduler.clients.errors import (
    AlreadyExists,
    AuthenticationError,
    NotFound,
    ServiceRequestError,
)
from kat_scheduler.models.bytes import BoefjeMeta, NormalizerMeta
from kat_scheduler.models.limits import storable_key

logger = logging.getLogger(__name__)

#: Log in again this long before the token says it expires (at most a tenth of its lifetime).
TOKEN_MARGIN = timedelta(seconds=30)
#: Login answers that mean "wrong credentials" (rather than "service trouble").
REFUSED = frozenset({400, 401, 403, 422})


class RawFile(NamedTuple):
    """One raw output file of a boefje run: a name unique within the run, content, mime types."""

    name: str
    content: bytes
    tags: Sequence[str]


class _Token(BaseModel):
    access_token: SecretStr
    token_type: str = "bearer"
    expires_at: AwareDatetime | None = None


TOKEN: TypeAdapter[_Token] = TypeAdapter(_Token)
BOEFJE_METAS: TypeAdapter[list[BoefjeMeta]] = TypeAdapter(list[BoefjeMeta])


class RunTimes(BaseModel):
    """The part of a BoefjeMeta that grace periods need (history is read in bulk: parse only this)."""

    model_config = ConfigDict(extra="ignore")

    input_ooi: str | None = None
    started_at: AwareDatetime | None = None
    ended_at: AwareDatetime | None = None


RUN_TIMES: TypeAdapter[list[RunTimes]] = TypeAdapter(list[RunTimes])
RAW_IDS: TypeAdapter[dict[str, UUID]] = TypeAdapter(dict[str, UUID])


class BytesClient(HTTPService):
    """Bytes' API, logged in with ``username`` / ``password``."""

    name = "bytes"

    def __init__(self, base_url: str, username: str, password: str | SecretStr, **options: Unpack[HTTPOptions]) -> None:
        super().__init__(base_url, **options)
        self.username = username
        self._password = password if isinstance(password, SecretStr) else SecretStr(password)
        self._auth_lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at: datetime | None = None

    # --- authentication -----------------------------------------------------------------

    def login(self) -> None:
        """Log in now (normally done lazily); raises :class:`AuthenticationError` when refused."""
        with self._auth_lock:
            self._login_locked()

    def _login_locked(self) -> str:
        form = {"username": self.username, "password": self._password.get_secret_value()}
        try:
            response = self._request("POST", "/token", data=form)
        except ServiceRequestError as exc:
            if exc.status_code not in REFUSED:
                raise
            # The answer's body is left out: a 422 may echo the form back.
            raise AuthenticationError(
                self.name,
                "POST /token",
                f"login as {self.username!r} refused (HTTP {exc.status_code})",
                status_code=exc.status_code,
            ) from None
        token = self._parse("POST", "/token", response, TOKEN)
        self._token = token.access_token.get_secret_value()
        self._refresh_at = _refresh_time(token.expires_at)
        logger.debug("bytes: logged in as %r, token valid until %s", self.username, token.expires_at)
        return self._token

    def _current_token(self) -> str:
        """A token believed valid, logging in when there is none or it is about to expire."""
        token = self._token
        if token is not None and not self._expiring():
            return token
        with self._auth_lock:
            if self._token is None or self._expiring():
                return self._login_locked()
            return self._token

    def _fresh_token(self, rejected: str) -> str:
        """A token other than ``rejected``: log in again unless another thread already did."""
        with self._auth_lock:
            if self._token is None or self._token == rejected:
                return self._login_locked()
            return self._token

    def _expiring(self) -> bool:
        refresh_at = self._refresh_at
        return refresh_at is not None and datetime.now(UTC) >= refresh_at

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        if not path.startswith("/bytes/"):
            return super()._send(method, path, params=params, json=json, data=data, headers=headers)

        def send(token: str) -> requests.Response:
            auth = {**(headers or {}), "Authorization": f"bearer {token}"}
            return super(BytesClient, self)._send(method, path, params=params, json=json, data=data, headers=auth)

        token = self._current_token()
        response = send(token)
        if response.status_code != 401:
            return response
        logger.info("bytes: token refused on %s %s, logging in again", method, path)
        response = send(self._fresh_token(rejected=token))
        if response.status_code == 401:
            raise AuthenticationError(
                self.name, f"{method} {path}", "token refused right after a fresh login", status_code=401
            )
        return response

    # --- boefje runs --------------------------------------------------------------------

    def boefje_meta(
        self,
        org: str,
        *,
        boefje_id: str | None = None,
        input_ooi: str | None = None,
        limit: int = 100,
        offset: int = 0,
        descending: bool = True,
    ) -> list[BoefjeMeta]:
        """Runs in ``org`` by ``started_at``, newest first unless ``descending=False``.

        Mind Bytes' quirk: ``input_ooi=None`` matches only runs *without* an input OOI;
        ``input_ooi="*"`` matches runs on any input.
        """
        params = {
            "organization": org,
            "boefje_id": boefje_id,
            "input_ooi": input_ooi,
            "limit": limit,
            "offset": offset,
            "descending": "true" if descending else "false",
        }
        return self._get("/bytes/boefje_meta", BOEFJE_METAS, params=params)

    def last_run(self, org: str, boefje_id: str, input_ooi: str | None) -> BoefjeMeta | None:
        """The latest run of ``boefje_id`` on ``input_ooi`` (``None``: runs without input) in ``org``."""
        runs = self.boefje_meta(org, boefje_id=boefje_id, input_ooi=input_ooi, limit=1, descending=True)
        return runs[0] if runs else None

    def iter_run_times(self, org: str, boefje_id: str, *, page_size: int = 1000) -> Iterator[list[RunTimes]]:
        """Like :meth:`iter_boefje_meta`, parsing only input object and times (for bulk history)."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        offset = 0
        while True:
            params = {
                "organization": org,
                "boefje_id": boefje_id,
                "input_ooi": "*",
                "limit": page_size,
                "offset": offset,
                "descending": "true",
            }
            page = self._get("/bytes/boefje_meta", RUN_TIMES, params=params)
            # A run on an object key the database cannot store concerns no object we can plan
            # (Octopoes' listing skips such objects): leave it out rather than fail on it later.
            storable = [run for run in page if run.input_ooi is None or storable_key(run.input_ooi)]
            if storable:
                yield storable
            if len(page) < page_size:
                return
            offset += len(page)

    def iter_boefje_meta(self, org: str, boefje_id: str, *, page_size: int = 1000) -> Iterator[list[BoefjeMeta]]:
        """Every run of ``boefje_id`` in ``org``, on any input, newest first, a page at a time.

        A run stored while paging may shift later pages, so a run can be seen twice; none is missed.
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        offset = 0
        while True:
            page = self.boefje_meta(org, boefje_id=boefje_id, input_ooi="*", limit=page_size, offset=offset)
            if page:
                yield page
            if len(page) < page_size:
                return
            offset += len(page)

    def save_boefje_meta(self, meta: BoefjeMeta) -> None:
        """Store a run; :class:`AlreadyExists` when Bytes holds one with this id."""
        self._store("/bytes/boefje_meta", meta.model_dump(mode="json"))

    # --- raw files ----------------------------------------------------------------------

    def save_raw(
        self,
        boefje_meta_id: UUID,
        files: Sequence[RawFile | tuple[str, bytes, Sequence[str]]],
        status: str = "COMPLETED",
    ) -> dict[str, UUID]:
        """Store a run's raw files (``status`` ``COMPLETED`` or ``FAILED``); returns name → raw id."""
        if status not in ("COMPLETED", "FAILED"):
            raise ValueError(f"status must be COMPLETED or FAILED, not {status!r}")
        body = {
            "status": status,
            "files": [
                {"name": name, "content": base64.b64encode(content).decode("ascii"), "tags": list(tags)}
                for name, content, tags in files
            ],
        }
        path = "/bytes/raw"
        response = self._request("POST", path, params={"boefje_meta_id": str(boefje_meta_id)}, json=body)
        return self._parse("POST", path, response, RAW_IDS)

    def get_raw(self, raw_id: UUID | str) -> bytes | None:
        """A raw file's content, or ``None`` when Bytes does not have it."""
        try:
            response = self._request("GET", f"/bytes/raw/{segment(raw_id)}", headers={"Accept": "*/*"})
        except NotFound:
            return None
        return response.content

    # --- normalizer runs ----------------------------------------------------------------

    def save_normalizer_meta(self, meta: NormalizerMeta | Mapping[str, Any]) -> None:
        """Store a normalizer run; :class:`AlreadyExists` when Bytes holds one with this id."""
        body = meta.model_dump(mode="json") if isinstance(meta, NormalizerMeta) else dict(meta)
        self._store("/bytes/normalizer_meta", body)

    def _store(self, path: str, body: Mapping[str, Any]) -> None:
        try:
            self._request("POST", path, json=body)
        except ServiceRequestError as exc:
            if exc.status_code != 400:
                raise
            raise AlreadyExists(self.name, exc.endpoint, exc.detail, status_code=400) from None


def _refresh_time(expires_at: datetime | None) -> datetime | None:
    """When to log in again ahead of ``expires_at``; ``None`` (wait for a 401) if it looks skewed."""
    if expires_at is None:
        return None
    lifetime = expires_at - datetime.now(UTC)
    if lifetime <= timedelta(0):
        return None  # our clock runs ahead of Bytes': trust its 401s instead
    return expires_at - min(TOKEN_MARGIN, lifetime / 10)
