"""The one HTTP base class of the KAT clients.

:class:`HTTPService` owns a pooled :class:`requests.Session` whose adapter retries connection
errors and 502/503/504 answers with exponential backoff (urllib3 ``Retry``), puts a timeout on
every call, counts its requests and turns everything that goes wrong into the errors of
:mod:`kat_scheduler.clients.errors`. Subclasses only say which path to call and which model to
read the answer into.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Self, TypedDict, TypeVar
from urllib.parse import quote, urlsplit

import requests
from pydantic import TypeAdapter, ValidationError
from requests.adapters import HTTPAdapter
from urllib3.exceptions import LocationValueError
from urllib3.util.retry import Retry

from kat_scheduler.clients.errors import (
    NotFound,
    ServiceError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceUnavailable,
)
from kat_scheduler.models.health import ServiceHealth
from kat_scheduler.settings import masked_text, masked_url
from kat_scheduler.version import __version__

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Query parameters; a list value becomes repeated keys (``types=A&types=B``), ``None`` is left out.
Params = Mapping[str, Any]

USER_AGENT = f"kat-scheduler/{__version__}"
#: Answers that mean "not handled, try again": retried by the adapter, any method.
RETRY_STATUSES = (502, 503, 504)


class HTTPOptions(TypedDict, total=False):
    """The keyword arguments every client takes besides its URL (see :class:`HTTPService`)."""

    timeout: float
    retries: int
    backoff: float
    pool_size: int


HEALTH: TypeAdapter[ServiceHealth] = TypeAdapter(ServiceHealth)


def segment(value: object) -> str:
    """``value`` quoted as one path segment (plugin ids and the like may hold ``/``)."""
    return quote(str(value), safe="")


def isoformat(moment: datetime) -> str:
    """A timezone-aware datetime as ISO 8601; a naive one is a bug and is refused."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: KAT services need a timezone")
    return moment.isoformat()


def retry_policy(retries: int, backoff: float) -> Retry:
    """Retry connection errors and 502/503/504 only, ``backoff * 2**n`` seconds apart.

    - Any method is repeated on these: a refused connection never reached the service, and a
      502/503/504 means it did not handle the call (Bytes answers a repeated store with 400 or
      the raw ids it already has).
    - Read errors (a timeout or reset after the request went out) are not repeated: the service
      may have acted on it. Other statuses are never repeated.
    - ``Retry-After`` is ignored: it could hold a worker for minutes; callers retry later anyway.
    - ``raise_on_status=False`` hands the last 503 back, reported as :class:`ServiceUnavailable`.
    """
    return Retry(
        total=retries,
        connect=retries,
        read=False,
        status=retries,
        other=0,
        redirect=0,
        allowed_methods=None,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff,
        respect_retry_after_header=False,
        raise_on_status=False,
    )


class HTTPService:
    """A KAT service over HTTP. Thread-safe: one instance may serve many threads."""

    #: The service's name in errors, logs and request counts.
    name: ClassVar[str] = "kat"

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        pool_size: int = 10,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"{self.name}: base URL must be http(s)://…, got {masked_url(base_url)!r}")
        if retries < 0 or pool_size < 1 or timeout <= 0:
            raise ValueError(f"{self.name}: need retries >= 0, pool_size >= 1 and timeout > 0")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        adapter = HTTPAdapter(
            pool_connections=pool_size, pool_maxsize=pool_size, max_retries=retry_policy(retries, backoff)
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._count_lock = threading.Lock()
        self._request_count = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {masked_url(self.base_url)}>"

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- counting -----------------------------------------------------------------------

    @property
    def request_count(self) -> int:
        """Requests this client sent (each re-login and retried call counts; adapter retries do not)."""
        return self._request_count

    def reset_request_count(self) -> int:
        """Set the count back to 0 and return what it was."""
        with self._count_lock:
            count, self._request_count = self._request_count, 0
        return count

    # --- calls --------------------------------------------------------------------------

    def health(self) -> ServiceHealth:
        """The service's own health report (``GET /health``)."""
        return self._get("/health", HEALTH)

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
        """Send one request (the adapter retries it); only transport failures raise here."""
        with self._count_lock:
            self._request_count += 1
        try:
            return self.session.request(
                method,
                self.base_url + path,
                params=params,
                json=json,
                data=data,
                headers=headers,
                timeout=self.timeout,
            )
        except requests.Timeout as exc:
            raise ServiceUnavailable(self.name, f"{method} {path}", f"timed out after {self.timeout:g} s") from exc
        except (requests.exceptions.InvalidURL, LocationValueError) as exc:
            # requests refuses some hosts before sending (``.a``), urllib3 others only as it connects
            # (``a..b``: an empty label or one over 63 characters), outside requests' errors.
            detail = f"request failed: {_host_problem(self.base_url, exc)}"
            raise ServiceError(self.name, f"{method} {path}", detail) from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            reason = _root_cause(exc)
            raise ServiceUnavailable(self.name, f"{method} {path}", f"connection failed: {reason}") from exc
        except requests.RequestException as exc:
            # Not chained: the error requests raised quotes the URL (its password) or the header (a token).
            raise ServiceError(self.name, f"{method} {path}", f"request failed: {_request_error(exc)}") from None

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send a request and return a successful answer; raise the matching error otherwise."""
        response = self._send(method, path, params=params, json=json, data=data, headers=headers)
        return self._check(method, path, response)

    def _check(self, method: str, path: str, response: requests.Response) -> requests.Response:
        status = response.status_code
        if status < 400:
            return response
        endpoint = f"{method} {path}"
        if status >= 500:
            retried = _retries_done(response)
            after = f" after {retried} retr{'y' if retried == 1 else 'ies'}" if retried else ""
            logger.warning("%s: %s answered %d%s", self.name, endpoint, status, after)
            raise ServiceUnavailable(self.name, endpoint, f"HTTP {status}{after}", status_code=status)
        error = NotFound if status == 404 else ServiceRequestError
        raise error(self.name, endpoint, f"HTTP {status}: {_brief(response)}", status_code=status)

    def _parse(self, method: str, path: str, response: requests.Response, adapter: TypeAdapter[T]) -> T:
        """Validate a JSON answer into ``adapter``'s type."""
        try:
            return adapter.validate_json(response.content)
        except ValidationError as exc:
            raise ServiceResponseError(self.name, f"{method} {path}", _summarize(exc)) from None

    def _get(self, path: str, adapter: TypeAdapter[T], *, params: Params | None = None) -> T:
        """``GET path`` validated into ``adapter``'s type."""
        response = self._request("GET", path, params=params)
        return self._parse("GET", path, response, adapter)

    def _lookup(self, path: str, adapter: TypeAdapter[T], *, params: Params | None = None) -> T | None:
        """Like :meth:`_get`, but a 404 means "absent" and gives ``None``."""
        try:
            return self._get(path, adapter, params=params)
        except NotFound:
            return None


def _retries_done(response: requests.Response) -> int:
    retries = getattr(response.raw, "retries", None)
    return len(retries.history) if isinstance(retries, Retry) else 0


def _request_error(exc: requests.RequestException) -> str:
    """What a request that could not be sent says, without a secret: requests quotes the URL it
    sent, password and all (masked here), and a header value it refuses (a bearer token: left out)."""
    if isinstance(exc, requests.exceptions.InvalidHeader):
        return f"{type(exc).__name__}: a header value cannot be sent (not shown: it may be a credential)"
    return masked_text(str(exc))


def _host_problem(base_url: str, exc: Exception) -> str:
    """Why the base URL cannot be used, naming its host (never its password)."""
    try:
        host = urlsplit(base_url).hostname
    except ValueError:
        host = None
    where = "the base URL" if host is None else f"the base URL (host {host!r})"
    return f"{where} cannot be used: {masked_text(str(exc))}"


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, without the URL and its query."""
    reason: BaseException = exc
    while True:
        inner = getattr(reason, "reason", None)
        if not isinstance(inner, BaseException):
            inner = reason.args[0] if reason.args and isinstance(reason.args[0], BaseException) else None
        if inner is None:
            break
        reason = inner
    text = str(reason)
    # urllib3 prefixes "<HTTPConnection object at 0x…>: "; the rest is the useful part.
    if text.startswith("<") and ">: " in text:
        text = text.split(">: ", 1)[1]
    text = masked_text(text)  # it names the host; were it to quote the URL, never its password
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


def _brief(response: requests.Response, limit: int = 200) -> str:
    """The gist of an error answer: FastAPI's ``detail`` or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict) and "detail" in body:
        body = body["detail"]
    text = body if isinstance(body, str) else str(body)
    text = " ".join(text.split())
    return (text[:limit] + "…") if len(text) > limit else (text or response.reason or "no body")


def _summarize(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    if first["type"] == "json_invalid":
        return f"malformed JSON ({first['msg']})"
    return f"unexpected body: {validation_reason(exc, whole='body')}"


def validation_reason(exc: ValidationError, whole: str = "value") -> str:
    """The first problem of ``exc`` on one line: where (``whole`` when it is the whole value) and what."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or whole
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}"
