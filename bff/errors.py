"""Every rejection the BFF answers with: a status, a stable code, a message safe to show."""

from __future__ import annotations


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

    def __init__(self, message: str, *, code: str | None = None, invalid: bool = True) -> None:
        # RFC 6750: no error attribute when no credentials were presented at all.
        challenge = 'Bearer realm="vluna-bff"'
        if invalid:
            challenge += ', error="invalid_token"'
        super().__init__(message, code=code, headers={"WWW-Authenticate": challenge})


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
