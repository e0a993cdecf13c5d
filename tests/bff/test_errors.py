"""The error hierarchy (bff/errors.py) and how Vluna's failures are sorted (bff/vluna.py)."""

from __future__ import annotations

import email.utils
import time

import pytest
from vlunaai import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    PermissionDeniedError,
    RateLimitError,
    VlunaAIError,
)

from bff import errors
from bff.errors import BffError, RetryLater, parse_retry_after, retry_after_value
from bff.vluna import is_transient, key_rejected


def test_every_class_knows_its_status_and_code() -> None:
    public = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, BffError)]
    assert len(public) >= 14
    for cls in public:
        assert 400 <= cls.status <= 599 or cls in (BffError, RetryLater), cls
        assert cls.code and cls.code == cls.code.lower(), cls
    statuses = {c.status for c in public}
    assert {400, 401, 403, 404, 408, 413, 414, 415, 429, 502, 503, 504} <= statuses


def test_the_body_and_headers_come_from_the_class() -> None:
    exc = errors.UriTooLong("the query string is too long", code="query_too_long")
    assert (exc.status, exc.body(), exc.headers) == (
        414,
        {"error": "query_too_long", "message": "the query string is too long"},
        {},
    )
    unauth = errors.Unauthenticated("authentication required", invalid=False)
    assert unauth.headers == {"WWW-Authenticate": 'Bearer realm="vluna-bff"'}


@pytest.mark.parametrize(("seconds", "header"), [(5, "5"), (0.2, "1"), (29.0, "29"), (-3, "0")])
def test_retry_after_is_whole_seconds_rounded_up(seconds: float, header: str) -> None:
    for cls in (errors.TooManyRequests, errors.ServiceUnavailable):
        exc = cls("later", retry_after=seconds)
        assert exc.headers == {"Retry-After": header} and exc.retry_after == int(header)
        assert retry_after_value(seconds) == header


def test_upstream_retry_after_is_read_with_the_sdk_parser() -> None:
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    date = email.utils.formatdate(time.time() + 120, usegmt=True)
    wait = parse_retry_after({"retry-after": date})
    assert wait is not None and 100 < wait <= 120


def test_the_domain_failures_are_the_http_errors() -> None:
    from bff.tokens.broker import SignOutIncomplete, TokenRejected, TokenUnavailable
    from bff.tokens.limits import IssuanceLimited

    unavailable = TokenUnavailable("IssuerUnavailable status=503", 5)
    assert (unavailable.status, unavailable.code, unavailable.headers) == (
        503,
        "token_unavailable",
        {"Retry-After": "5"},
    )
    assert "status=503" not in unavailable.message  # the reason is the operator's only
    assert (TokenRejected("no").status, TokenRejected("no").code) == (502, "upstream_rejected")
    assert SignOutIncomplete(5).code == "sign_out_incomplete"
    assert IssuanceLimited(9, budget=True).code == "issuance_budget_exhausted"
    assert IssuanceLimited(9, budget=False).code == "rate_limited"
    assert IssuanceLimited(9, budget=False).headers == {"Retry-After": "9"}


@pytest.mark.parametrize(
    ("exc", "transient", "rejected_key"),
    [
        (APIConnectionError("refused"), True, False),
        (APITimeoutError("slow"), True, False),
        (RateLimitError("slow down", status=429), True, False),
        (InternalServerError("oops", status=500), True, False),
        (InternalServerError("bad gateway", status=502), True, False),
        (APIStatusError("request timeout", status=408), True, False),
        (VlunaAIError("no status"), True, False),
        (AuthenticationError("bad signature", status=401), False, True),
        (PermissionDeniedError("realm", status=403), False, True),
        (BadRequestError("bad", status=400), False, False),
        (ConflictError("same key", status=409), False, False),
    ],
)
def test_vluna_failures_are_sorted_by_the_sdk_classes(
    exc: VlunaAIError, transient: bool, rejected_key: bool
) -> None:
    assert is_transient(exc) is transient
    assert key_rejected(exc) is rejected_key
