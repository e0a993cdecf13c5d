"""Every rejection the BFF answers with: one class per HTTP status (or kind of failure), each
knowing its status, its default error code and its headers. The app's exception handler turns
any of them into the same answer: ``{"error": code, "message": message}`` with ``Cache-Control:
no-store`` and the class's headers.

``Retry-After`` is built in one place (``retry_after_value``), from seconds however they were
learnt (a limiter's window, a breaker's open time, Vluna's own answer read with the SDK's parser).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar, TypedDict

import httpx
from vlunaai._http import parse_retry_after as _sdk_parse_retry_after


class ErrorBody(TypedDict):
    """The body of every error answer."""

    error: str
    message: str


def retry_after_value(seconds: float) -> str:
    """The ``Retry-After`` header value for a wait of ``seconds``: whole seconds, rounded up,
    never negative."""
    return str(max(0, math.ceil(seconds)))


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait according to an upstream answer's headers (``Retry-After`` as seconds or
    an HTTP date), with the SDK's own parser; None when absent or unreadable."""
    return _sdk_parse_retry_after(httpx.Headers(headers))


class BffError(Exception):
    """Base of every rejection; ``status`` and ``code`` are the class's unless given."""

    status: ClassVar[int] = 500
    code: str = "internal_error"

    def __init__(
        self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> ErrorBody:
        return {"error": self.code, "message": self.message}


class RetryLater(BffError):
    """A rejection that says when to come back (``Retry-After``, in whole seconds)."""

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": retry_after_value(retry_after)})
        self.retry_after = max(0, math.ceil(retry_after))


# -- the caller's request ---------------------------------------------------------------------


class BadRequest(BffError):
    status = 400
    code = "bad_request"


class Unauthenticated(BffError):
    status = 401
    code = "unauthenticated"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        invalid: bool = True,
        reason: str | None = None,
        details: dict[str, str] | None = None,
    ) -> None:
        # RFC 6750: no error attribute when no credentials were presented at all.
        challenge = 'Bearer realm="vluna-bff"'
        if invalid:
            challenge += ', error="invalid_token"'
        super().__init__(message, code=code, headers={"WWW-Authenticate": challenge})
        # For the operator (bff/auth/diagnostics.py), never sent to the client: a code from a
        # fixed set, and non-secret claim values (expected vs received).
        self.reason = reason or ("invalid_token" if invalid else "no_credentials")
        self.details = details or {}


class Forbidden(BffError):
    status = 403
    code = "forbidden"


class NotFound(BffError):
    status = 404
    code = "not_found"


class RequestTimeout(BffError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(BffError):
    status = 413
    code = "body_too_large"


class UriTooLong(BffError):
    status = 414
    code = "uri_too_long"


class UnsupportedMediaType(BffError):
    status = 415
    code = "unsupported_media_type"


class TooManyRequests(RetryLater):
    status = 429
    code = "rate_limited"


# -- what lies behind the service ---------------------------------------------------------------


class UpstreamRejected(BffError):
    """Vluna refused what this service asked (never the caller's credential: never a 401)."""

    status = 502
    code = "upstream_rejected"


class UpstreamUnreachable(BffError):
    status = 502
    code = "upstream_unavailable"


class UpstreamInvalid(BffError):
    """Vluna's answer cannot be passed on (too large, not JSON)."""

    status = 502
    code = "upstream_invalid"


class ServiceUnavailable(RetryLater):
    status = 503
    code = "unavailable"


class GatewayTimeout(BffError):
    """Vluna did not answer within the deadline."""

    status = 504
    code = "upstream_timeout"
