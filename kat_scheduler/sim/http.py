"""A small HTTP/1.1 keep-alive server for the simulated services (standard library only).

Each service is a :class:`Router` of handlers ``(Request) -> Response``. :class:`ServiceServer`
runs one router on a ``ThreadingHTTPServer`` in a daemon thread, counts requests, applies
injected faults, and turns errors into FastAPI-like JSON (``{"detail": ...}``; 422 with a list
of ``{"type", "loc", "msg", "input"}`` for bad parameters). A handler thread never dies on bad
input: anything unexpected becomes a 500 with a JSON body.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pydantic

logger = logging.getLogger(__name__)

JSON = "application/json"
_TRUE = frozenset({"1", "true", "on", "yes", "t", "y"})
_FALSE = frozenset({"0", "false", "off", "no", "f", "n"})
_MAX_BODY = 256 * 1024 * 1024


class HTTPError(Exception):
    """Answer with ``status`` and ``{"detail": detail}``."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def unprocessable(loc: list[str | int], msg: str, value: Any, kind: str = "value_error") -> HTTPError:
    """A FastAPI-style 422 for one bad input."""
    return HTTPError(422, [{"type": kind, "loc": loc, "msg": msg, "input": value}])


def from_validation_error(error: pydantic.ValidationError, prefix: str = "body") -> HTTPError:
    """A 422 listing every error of a pydantic validation, locations prefixed like FastAPI's."""
    details = json.loads(error.json(include_url=False))
    for item in details:
        item["loc"] = [prefix, *item.get("loc", [])]
        item.pop("ctx", None)
    return HTTPError(422, details)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str | None = JSON
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, separators=(",", ":")).encode())


def health_body(service: str) -> dict[str, Any]:
    """What every KAT service answers on ``/health``."""
    from kat_scheduler.version import __version__

    return {
        "service": service,
        "healthy": True,
        "version": f"{__version__}-sim",
        "additional": None,
        "results": [],
    }


def error_response(error: HTTPError) -> Response:
    response = json_response({"detail": error.detail}, error.status)
    response.headers.update(error.headers)
    return response


class Query:
    """Typed access to query parameters, raising FastAPI-like 422s."""

    def __init__(self, raw: dict[str, list[str]]) -> None:
        self.raw = raw

    def __contains__(self, name: str) -> bool:
        return name in self.raw

    def get(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        values = self.raw.get(name)
        if not values:
            if required:
                raise HTTPError(
                    422, [{"type": "missing", "loc": ["query", name], "msg": "Field required", "input": None}]
                )
            return default
        return values[-1]

    def required(self, name: str) -> str:
        value = self.get(name, required=True)
        assert value is not None
        return value

    def get_list(self, name: str) -> list[str] | None:
        """All values of a repeated parameter, ``None`` when absent."""
        return self.raw.get(name)

    def get_int(self, name: str, default: int, *, ge: int | None = None, le: int | None = None) -> int:
        text = self.get(name)
        return default if text is None else _to_int(text, ["query", name], ge, le)

    def get_int_list(self, name: str, *, ge: int | None = None, le: int | None = None) -> list[int] | None:
        values = self.get_list(name)
        if values is None:
            return None
        return [_to_int(text, ["query", name, i], ge, le) for i, text in enumerate(values)]

    def get_bool(self, name: str, default: bool) -> bool:
        text = self.get(name)
        if text is None:
            return default
        return to_bool(text, ["query", name])

    def get_optional_bool(self, name: str) -> bool | None:
        text = self.get(name)
        return None if text is None else to_bool(text, ["query", name])

    def get_datetime(self, name: str) -> datetime | None:
        text = self.get(name)
        if text is None:
            return None
        for candidate in (text, text.replace(" ", "+")):
            try:
                return datetime.fromisoformat(candidate)
            except ValueError:
                continue
        raise unprocessable(["query", name], "Input should be a valid datetime", text, "datetime_parsing")

    def get_uuid(self, name: str, *, required: bool = False) -> uuid.UUID | None:
        text = self.get(name, required=required)
        return None if text is None else to_uuid(text, ["query", name])


def _to_int(text: str, loc: list[str | int], ge: int | None, le: int | None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise unprocessable(
            loc, "Input should be a valid integer, unable to parse string as an integer", text, "int_parsing"
        ) from None
    if ge is not None and value < ge:
        raise unprocessable(loc, f"Input should be greater than or equal to {ge}", text, "greater_than_equal")
    if le is not None and value > le:
        raise unprocessable(loc, f"Input should be less than or equal to {le}", text, "less_than_equal")
    return value


def to_bool(text: str, loc: list[str | int]) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise unprocessable(loc, "Input should be a valid boolean, unable to interpret input", text, "bool_parsing")


def to_uuid(text: str, loc: list[str | int]) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise unprocessable(loc, "Input should be a valid UUID", text, "uuid_parsing") from None


@dataclass
class Request:
    method: str
    path: str
    query: Query
    headers: Message
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON; a 422 like FastAPI's when it is not."""
        try:
            return json.loads(self.body or b"null")
        except (ValueError, UnicodeDecodeError) as error:
            raise unprocessable(["body", 0], f"JSON decode error: {error}", None, "json_invalid") from None

    def form(self) -> dict[str, list[str]]:
        content_type = self.headers.get("Content-Type", "")
        if "application/x-www-form-urlencoded" not in content_type:
            return {}
        try:
            return parse_qs(self.body.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            return {}


Handler = Callable[[Request], Response]


class Router:
    """Routes ``METHOD /path/{param}`` patterns to handlers, in the order they were added."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self._routes.append((method.upper(), re.compile(f"^{regex}$"), handler))

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            self.add(method, pattern, handler)
            return handler

        return decorate

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        path_matched = False
        for route_method, regex, handler in self._routes:
            match = regex.match(path)
            if match is None:
                continue
            path_matched = True
            if route_method == method:
                return handler, {k: unquote(v) for k, v in match.groupdict().items()}
        if path_matched:
            raise HTTPError(405, "Method Not Allowed")
        raise HTTPError(404, "Not Found")


@dataclass
class Fault:
    """An injected answer for requests to one service whose path starts with ``path_prefix``.

    ``status=None`` only delays (``delay`` seconds) and then answers normally; ``drop`` closes
    the connection without answering. ``times=None`` keeps the fault until cleared.
    """

    service: str
    status: int | None = 503
    body: bytes | None = None
    times: int | None = 1
    path_prefix: str = ""
    method: str | None = None
    content_type: str = JSON
    delay: float = 0.0
    drop: bool = False

    def matches(self, service: str, method: str, path: str) -> bool:
        return (
            self.service == service
            and path.startswith(self.path_prefix)
            and (self.method is None or self.method.upper() == method)
        )

    def response(self) -> Response:
        assert self.status is not None
        if self.body is not None:
            return Response(self.status, self.body, self.content_type)
        return json_response({"detail": f"injected fault ({self.status})"}, self.status)


class FaultInjector:
    """Thread-safe list of pending faults; the first match is used and counted down."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        if fault.times is not None and fault.times < 1:
            raise ValueError("times must be at least 1 (or None for 'until cleared')")
        with self._lock:
            self._faults.append(fault)

    def take(self, service: str, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(service, method, path):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def clear(self, service: str | None = None) -> None:
        with self._lock:
            self._faults = [f for f in self._faults if service is not None and f.service != service]

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)


class RequestStats:
    """Thread-safe request counters per service and per (service, method, path)."""

    def __init__(self, services: tuple[str, ...]) -> None:
        self._lock = threading.Lock()
        self._services = services
        self._counts: Counter[str] = Counter()
        self._paths: Counter[tuple[str, str, str]] = Counter()

    def record(self, service: str, method: str, path: str) -> None:
        with self._lock:
            self._counts[service] += 1
            self._paths[(service, method, path)] += 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {service: self._counts[service] for service in self._services}

    def paths(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._paths)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._paths.clear()


class ServiceApp:
    """One service: counting, faults, routing and error handling around a router."""

    def __init__(self, name: str, router: Router, stats: RequestStats, faults: FaultInjector) -> None:
        self.name = name
        self.router = router
        self.stats = stats
        self.faults = faults

    def handle(self, request: Request) -> Response | None:
        """The response to send, or ``None`` to drop the connection unanswered."""
        self.stats.record(self.name, request.method, request.path)
        fault = self.faults.take(self.name, request.method, request.path)
        if fault is not None:
            if fault.delay > 0:
                time.sleep(fault.delay)
            if fault.drop:
                return None
            if fault.status is not None:
                return fault.response()
        try:
            handler, request.params = self.router.resolve(request.method, request.path)
            return handler(request)
        except HTTPError as error:
            return error_response(error)
        except Exception:
            logger.exception("simulated %s failed on %s %s", self.name, request.method, request.path)
            return json_response({"detail": "Internal Server Error"}, 500)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: ServiceApp) -> None:
        self.app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Cut open keep-alive connections, so a stopped service really is gone."""
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kat-sim/1"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 300  # an idle keep-alive connection is closed after this many seconds
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.server.app.name, *args)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(8)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > _MAX_BODY:
            raise ValueError(f"bad Content-Length {length}")
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self._write(json_response({"detail": "Bad request body"}, 400))
            return
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path or "/",
            query=Query(parse_qs(parts.query, keep_blank_values=True)),
            headers=self.headers,
            body=body,
        )
        response = self.server.app.handle(request)
        if response is None:
            self.close_connection = True
            return
        self._write(response)

    def _write(self, response: Response) -> None:
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = ""
        lines = [
            f"{self.protocol_version} {response.status} {phrase}",
            f"Server: {self.version_string()}",
            f"Date: {self.date_time_string()}",
        ]
        body = response.body
        if response.status in (204, 304) or response.status < 200:
            body = b""
        else:
            if response.content_type:
                lines.append(f"Content-Type: {response.content_type}")
            lines.append(f"Content-Length: {len(body)}")
        lines.extend(f"{name}: {value}" for name, value in response.headers.items())
        if self.close_connection:
            lines.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.wfile.write(head + body)
        except OSError:
            self.close_connection = True


class ServiceServer:
    """One simulated service on its own port, served from a daemon thread."""

    def __init__(self, app: ServiceApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"simulated {self.app.name} is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        if self._server is not None:
            return
        server = _HTTPServer((self.host, self.requested_port), self.app)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sim-{self.app.name}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
