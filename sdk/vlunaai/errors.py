"""Typed errors. Every error is a `VlunaAIError`, with the published client's fields.

`VlunaAIError` keeps the published positional order (message, code, status, operation, details,
hints, meta, trace_id) so code that builds or inspects it keeps working; subclasses say what kind
of failure it was, so callers can catch `RateLimitError` instead of comparing status codes.
"""

from __future__ import annotations

from typing import Any


class VlunaAIError(Exception):
    """Base class of every error the SDK raises."""

    def __init__(
        self,
        message: str,
        code: str | None = None,
        status: int | None = None,
        operation: str | None = None,
        details: dict[str, Any] | None = None,
        hints: list[dict[str, Any]] | None = None,
        meta: dict[str, Any] | None = None,
        trace_id: str | None = None,
        *,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.operation = operation
        self.details = details
        self.hints = hints
        self.meta = meta
        self.trace_id = trace_id
        self.request_id = request_id

    def __str__(self) -> str:
        text = self.message
        if self.status:
            text = f"{text} (status={self.status})"
        if self.code:
            text = f"{text} code={self.code}"
        if self.operation:
            text = f"{text} operation={self.operation}"
        if self.request_id:
            text = f"{text} request_id={self.request_id}"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}, status={self.status!r})"

    def __eq__(self, other: object) -> bool:
        # The published error was a dataclass, which compared by value; keep that.
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = Exception.__hash__


class APIConnectionError(VlunaAIError):
    """No HTTP answer: the connection failed, was dropped, or the request could not be sent."""


class APITimeoutError(APIConnectionError):
    """The request did not complete within its timeout."""


class APIStatusError(VlunaAIError):
    """The server answered with a 4xx or 5xx status."""


class BadRequestError(APIStatusError):
    """400."""


class AuthenticationError(APIStatusError):
    """401: missing, malformed or rejected credentials."""


class PermissionDeniedError(APIStatusError):
    """403: authenticated, but not allowed."""


class NotFoundError(APIStatusError):
    """404."""


class ConflictError(APIStatusError):
    """409: for example the same Idempotency-Key with a different body."""


class UnprocessableEntityError(APIStatusError):
    """422: the body failed validation."""


class RateLimitError(APIStatusError):
    """429."""


class InternalServerError(APIStatusError):
    """5xx."""


# What to change on the call when the server says bindings are missing: the request context
# fields that become the X-Principal-Id / X-User-Id / X-Billing-Account-ID headers.
_BINDING_ADVICE = {
    "AUTH.MISSING_RUNTIME_BINDINGS": (
        "this call needs both X-Principal-Id and X-User-Id: "
        "pass context=RequestContext(principal_id=..., user_id=...) (user_id is the one usually missing)"
    ),
    "AUTH.MISSING_SERVICE_BINDINGS": (
        "this call needs X-Principal-Id or X-Billing-Account-ID: "
        "pass context=RequestContext(principal_id=...) or RequestContext(billing_account_id=...)"
    ),
}


def explain(code: str | None, message: str) -> str:
    """The server's message, plus which `RequestContext` field to set when bindings are missing."""
    advice = _BINDING_ADVICE.get(code or "")
    if advice is None or advice in message:
        return message
    return f"{message} ({advice})"


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def error_class_for_status(status: int) -> type[APIStatusError]:
    if status >= 500:
        return InternalServerError
    return _BY_STATUS.get(status, APIStatusError)
