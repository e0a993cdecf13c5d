"""Every rejection the BFF answers with: a status, a stable code, a message safe to show."""

from __future__ import annotations

from typing import TypedDict


class ErrorBody(TypedDict):
    """The body of every error answer."""

    error: str
    message: str


class BffError(Exception):
    status = 500
    code = "internal_error"

    def __init__(
        self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}


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


class UpstreamRejected(BffError):
    status = 502
    code = "upstream_rejected"


class ServiceUnavailable(BffError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class TooManyRequests(BffError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after
