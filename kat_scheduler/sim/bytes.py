"""The simulated Bytes API (raw data store), per KAT-API.md.

- ``POST /token`` (form ``username``, ``password``) → ``{"access_token", "token_type", "expires_at"}``
- every ``/bytes/*`` call needs ``Authorization: bearer <token>`` (401 otherwise)
- ``GET /bytes/boefje_meta?organization=&boefje_id=&boefje_version=&input_ooi=&limit=&offset=&descending=``
  ordered by ``started_at`` (newest first by default). ``input_ooi=*`` matches any run;
  leaving ``input_ooi`` out matches only runs *without* an input object, as real Bytes does.
- ``GET /bytes/boefje_meta/{id}``; ``POST /bytes/boefje_meta`` → 201, 400 if the id exists
- ``POST /bytes/raw?boefje_meta_id=`` body ``{"status", "files": [{"name", "content", "tags"}]}``
  → ``{name: raw id}``; each stored file emits ``raw_file_received``
- ``GET /bytes/raw/{id}`` (octet-stream), ``GET /bytes/raw/{id}/meta``,
  ``GET /bytes/raw?boefje_meta_id=&organization=&mime_types=&limit=``
- ``POST /bytes/normalizer_meta`` → 201, 400 if the id exists
- ``GET /health`` (no authentication)
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import pydantic

from kat_scheduler.models import BoefjeMeta, NormalizerMeta
from kat_scheduler.sim.http import (
    Handler,
    HTTPError,
    Request,
    Response,
    Router,
    from_validation_error,
    health_body,
    json_response,
    to_uuid,
    unprocessable,
)
from kat_scheduler.sim.world import Conflict, NotFound, World

T = TypeVar("T")

_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


class TokenStore:
    """Issues bearer tokens for one username/password; tokens expire after ``ttl`` seconds."""

    def __init__(self, username: str, password: str, ttl: float = 900.0) -> None:
        self.username = username
        self.password = password
        self.ttl = ttl
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}
        self.issued = 0

    def login(self, username: str, password: str) -> dict[str, Any] | None:
        """A token response, or ``None`` for wrong credentials."""
        if not (
            secrets.compare_digest(username.encode(), self.username.encode())
            and secrets.compare_digest(password.encode(), self.password.encode())
        ):
            return None
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._tokens = {t: deadline for t, deadline in self._tokens.items() if deadline > now}
            self._tokens[token] = now + self.ttl
            self.issued += 1
        expires_at = datetime.now(UTC) + timedelta(seconds=self.ttl)
        return {"access_token": token, "token_type": "bearer", "expires_at": expires_at.isoformat()}

    def valid(self, token: str) -> bool:
        with self._lock:
            deadline = self._tokens.get(token)
            return deadline is not None and deadline > time.monotonic()

    def expire_all(self) -> None:
        """Every token issued so far stops working."""
        with self._lock:
            self._tokens.clear()


class _File(pydantic.BaseModel):
    name: str
    content: str
    tags: list[str] = pydantic.Field(default_factory=list)


class _BoefjeOutput(pydantic.BaseModel):
    status: Literal["COMPLETED", "FAILED"]
    files: list[_File] = pydantic.Field(default_factory=list)


def page(items: Sequence[T], offset: int, limit: int, descending: bool) -> list[T]:
    """One page of an ascending sequence, counted from the end when ``descending``."""
    if descending:
        end = len(items) - offset
        if end <= 0 or limit <= 0:
            return []
        return list(reversed(items[max(0, end - limit) : end]))
    return list(items[offset : offset + limit])


def _validated(model: type[pydantic.BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as error:
        raise from_validation_error(error) from None


def build_router(world: World, tokens: TokenStore) -> Router:
    router = Router()

    def authenticated(handler: Handler) -> Handler:
        def check(request: Request) -> Response:
            scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
            if scheme.lower() != "bearer" or not tokens.valid(token.strip()):
                raise HTTPError(401, "Could not validate credentials", _UNAUTHORIZED)
            return handler(request)

        return check

    def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            router.add(method, pattern, authenticated(handler))
            return handler

        return decorate

    @router.route("GET", "/health")
    def health(request: Request) -> Response:
        return json_response(health_body("bytes"))

    @router.route("POST", "/token")
    def token(request: Request) -> Response:
        form = request.form()
        missing = [name for name in ("username", "password") if not form.get(name)]
        if missing:
            raise HTTPError(
                422,
                [
                    {"type": "missing", "loc": ["body", name], "msg": "Field required", "input": None}
                    for name in missing
                ],
            )
        answer = tokens.login(form["username"][-1], form["password"][-1])
        if answer is None:
            raise HTTPError(401, "Incorrect username or password", _UNAUTHORIZED)
        return json_response(answer)

    @route("GET", "/bytes/boefje_meta")
    def list_boefje_meta(request: Request) -> Response:
        query = request.query
        organization = query.required("organization")
        boefje_id = query.get("boefje_id")
        boefje_version = query.get("boefje_version")
        input_ooi = query.get("input_ooi")  # absent: only runs without an input object
        limit = query.get_int("limit", 1, ge=0)
        offset = query.get_int("offset", 0, ge=0)
        descending = query.get_bool("descending", True)
        with world.lock:
            runs = world.select_runs(organization, boefje_id, input_ooi, boefje_version)
            body = [world.render_boefje_meta(run) for run in page(runs, offset, limit, descending)]
        return json_response(body)

    @route("GET", "/bytes/boefje_meta/{meta_id}")
    def get_boefje_meta(request: Request) -> Response:
        run = world.boefje_meta(to_uuid(request.params["meta_id"], ["path", "boefje_meta_id"]))
        if run is None:
            raise HTTPError(404, "Boefje meta not found")
        return json_response(world.render_boefje_meta(run))

    @route("POST", "/bytes/boefje_meta")
    def create_boefje_meta(request: Request) -> Response:
        meta: BoefjeMeta = _validated(BoefjeMeta, request.json())
        try:
            world.add_boefje_meta(meta)
        except Conflict:
            return json_response({"status": "failed", "message": "Integrity error: object might already exist"}, 400)
        return json_response({"status": "success"}, 201)

    @route("POST", "/bytes/raw")
    def create_raw(request: Request) -> Response:
        meta_id = request.query.get_uuid("boefje_meta_id", required=True)
        assert meta_id is not None
        output: _BoefjeOutput = _validated(_BoefjeOutput, request.json())
        files: list[tuple[str, bytes, list[str]]] = []
        for index, file in enumerate(output.files):
            try:
                content = base64.b64decode(file.content.encode(), validate=True)
            except (binascii.Error, ValueError):
                raise unprocessable(["body", "files", index, "content"], "Invalid base64", file.content[:64]) from None
            files.append((file.name, content, file.tags))
        try:
            ids = world.add_raw(meta_id, files)
        except NotFound:
            raise HTTPError(404, f"Boefje meta {meta_id} not found") from None
        except Conflict as error:
            raise HTTPError(400, str(error)) from None
        return json_response({name: str(raw_id) for name, raw_id in ids.items()})

    @route("GET", "/bytes/raw")
    def list_raw(request: Request) -> Response:
        query = request.query
        meta_id = query.get_uuid("boefje_meta_id")
        organizations = set(query.get_list("organization") or ())
        mime_types = set(query.get_list("mime_types") or ())
        limit = query.get_int("limit", 1, ge=0)
        with world.lock:
            candidates = world.raw_files_of(meta_id) if meta_id is not None else world.raw_files()
            selected = [
                raw
                for raw in candidates
                if (not organizations or raw.organization in organizations) and mime_types.issubset(raw.mime_types)
            ]
            body = [world.render_raw_meta(raw) for raw in selected[:limit]]
        return json_response(body)

    @route("GET", "/bytes/raw/{raw_id}")
    def get_raw(request: Request) -> Response:
        raw = world.raw_file(to_uuid(request.params["raw_id"], ["path", "raw_id"]))
        if raw is None:
            raise HTTPError(404, "No raw data found")
        return Response(200, raw.content, "application/octet-stream")

    @route("GET", "/bytes/raw/{raw_id}/meta")
    def get_raw_meta(request: Request) -> Response:
        raw = world.raw_file(to_uuid(request.params["raw_id"], ["path", "raw_id"]))
        if raw is None:
            raise HTTPError(404, "No raw data found")
        return json_response(world.render_raw_meta(raw))

    @route("POST", "/bytes/normalizer_meta")
    def create_normalizer_meta(request: Request) -> Response:
        body = request.json()
        meta: NormalizerMeta = _validated(NormalizerMeta, body)
        try:
            world.add_normalizer_meta(meta, body)
        except Conflict:
            return json_response({"status": "failed", "message": "Integrity error: object might already exist"}, 400)
        return json_response({"status": "success"}, 201)

    return router
