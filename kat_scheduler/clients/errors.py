"""What a KAT service call can raise.

Every error names the service and the endpoint (method and path, never the query string or a
body) so that a log line or a failed task row says where it went wrong. Callers decide on the
class alone:

- :class:`ServiceUnavailable`: transient (connection refused or reset, timeout, 5xx after the
  configured retries): try again later.
- :class:`ServiceResponseError`: the service answered with something we cannot read.
- :class:`ServiceRequestError` and subclasses: the service refused the request (4xx); repeating
  it will not help.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class: a call to a KAT service failed."""

    def __init__(self, service: str, endpoint: str, detail: str, *, status_code: int | None = None) -> None:
        self.service = service
        self.endpoint = endpoint
        self.detail = detail
        self.status_code = status_code
        super().__init__(f"{service}: {endpoint}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the keyword argument when pickled (multiprocessing, some result backends).
        return (_rebuild, (type(self), self.service, self.endpoint, self.detail, self.status_code))


def _rebuild(
    cls: type[ServiceError], service: str, endpoint: str, detail: str, status_code: int | None
) -> ServiceError:
    return cls(service, endpoint, detail, status_code=status_code)


class ServiceUnavailable(ServiceError):
    """Transient: the service could not be reached or kept failing (5xx). Retry later."""


class ServiceResponseError(ServiceError):
    """The answer was not JSON, or did not match the expected shape."""


class ServiceRequestError(ServiceError):
    """The service refused the request (4xx); ``status_code`` says how."""


class NotFound(ServiceRequestError):
    """404 where absence is not a normal answer. Lookups return ``None`` instead."""


class OrganisationNotFound(NotFound):
    """The service does not know the organisation (404 on an organisation's listing)."""


class AlreadyExists(ServiceRequestError):
    """Bytes already holds a record with this id (400 on a store)."""


class AuthenticationError(ServiceRequestError):
    """Bytes refused the login, or a freshly issued token."""
