"""Retries: which answers are retried, backoff with full jitter, Retry-After, re-signing per attempt.

Backoff never really waits here: the core's `_sleep` is replaced by a recorder at the unit edge.
"""

from __future__ import annotations

import email.utils
import itertools
import random
import time
from collections.abc import Callable

import httpx
import pytest
import vlunaai._http
import vlunaai.signing
from vlunaai import (
    APIConnectionError,
    APITimeoutError,
    BearerClient,
    GatePreflightError,
    InternalServerError,
    RateLimitError,
    RequestContext,
    ServiceClient,
)

from .support import ACCESS_TOKEN, ScriptedTransport, SleepRecorder, assert_signed, auth_fields, error, ok

ServiceFactory = Callable[..., ServiceClient]


async def test_retry_resigns_with_fresh_nonce_and_ts_but_keeps_idempotency_key(
    service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks = itertools.count()
    monkeypatch.setattr(
        vlunaai.signing, "utc_timestamp", lambda: f"2026-11-24T19:20:{next(ticks):02d}.000000+00:00"
    )
    transport = ScriptedTransport(error(503), error(502), ok({"id": "m"}))
    client = service(transport)
    result = await client.upsert_meter(body={"meter_code": "tokens"})
    assert result.ok is True
    assert len(transport.requests) == 3
    keys = {r.headers["idempotency-key"] for r in transport.requests}
    assert len(keys) == 1
    nonces = [auth_fields(r)["nonce"] for r in transport.requests]
    stamps = [auth_fields(r)["ts"] for r in transport.requests]
    assert len(set(nonces)) == 3
    assert len(set(stamps)) == 3
    assert len({r.headers["authorization"] for r in transport.requests}) == 3
    assert {r.content for r in transport.requests} == {b'{"meter_code": "tokens"}'}
    for req in transport.requests:
        assert_signed(req)


async def test_caller_idempotency_key_is_sent_on_every_attempt(service: ServiceFactory) -> None:
    transport = ScriptedTransport(httpx.ConnectError("refused"), error(500), ok({}))
    client = service(transport)
    await client.gate_commit(
        body={"feature_code": "f", "lease": "l", "quantity_minor": "1"},
        context=RequestContext(idempotency_key="commit-123"),
    )
    assert [r.headers["idempotency-key"] for r in transport.requests] == ["commit-123"] * 3


async def test_signed_get_keeps_its_idempotency_key_across_retries(service: ServiceFactory) -> None:
    # A signed GET carries an Idempotency-Key too (the signature covers it); a retry of the same
    # logical request must not change it.
    transport = ScriptedTransport(error(503), ok([]))
    client = service(transport)
    await client.list_meters()
    assert len(transport.requests) == 2
    assert len({r.headers["idempotency-key"] for r in transport.requests}) == 1
    for req in transport.requests:
        assert_signed(req)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retryable_statuses_are_retried(service: ServiceFactory, status: int) -> None:
    transport = ScriptedTransport(error(status), ok([]))
    client = service(transport)
    result = await client.list_meters()
    assert result.ok is True
    assert len(transport.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 409, 422])
async def test_client_errors_are_not_retried(service: ServiceFactory, status: int) -> None:
    transport = ScriptedTransport(error(status, "X.Y"), ok([]))
    sleeps = SleepRecorder()
    client = service(transport, sleep=sleeps)
    result = await client.list_meters()
    assert result.ok is False
    assert result.status == status  # type: ignore[attr-defined]
    assert len(transport.requests) == 1
    assert sleeps.delays == []


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_transport_errors_are_retried(service: ServiceFactory, failure: Exception) -> None:
    transport = ScriptedTransport(failure, ok([]))
    client = service(transport)
    result = await client.list_meters()
    assert result.ok is True
    assert len(transport.requests) == 2


@pytest.mark.parametrize("mode", ["result", "raise"])
async def test_transport_errors_raise_after_the_last_attempt(service: ServiceFactory, mode: str) -> None:
    transport = ScriptedTransport(httpx.ConnectError("refused"))
    client = service(transport, error_mode=mode)
    with pytest.raises(APIConnectionError) as info:
        await client.list_meters()
    assert not isinstance(info.value, APITimeoutError)
    assert info.value.operation == "list_meters"
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert len(transport.requests) == 3  # 1 + max_retries (default 2)

    timeouts = ScriptedTransport(httpx.ReadTimeout("slow"))
    client = service(timeouts, error_mode=mode)
    with pytest.raises(APITimeoutError):
        await client.list_meters()
    assert len(timeouts.requests) == 3


async def test_default_max_retries_is_two_then_the_answer_is_returned(service: ServiceFactory) -> None:
    transport = ScriptedTransport(error(503, "SERVER.UNEXPECTED", "down"))
    sleeps = SleepRecorder()
    client = service(transport, sleep=sleeps)
    result = await client.list_meters()
    assert len(transport.requests) == 3
    assert len(sleeps.delays) == 2
    assert result.ok is False
    assert result.status == 503  # type: ignore[attr-defined]
    assert result.code == "SERVER.UNEXPECTED"


async def test_raise_mode_raises_after_exhausting_retries(service: ServiceFactory) -> None:
    transport = ScriptedTransport(error(500))
    client = service(transport, error_mode="raise", max_retries=1)
    with pytest.raises(InternalServerError):
        await client.list_meters()
    assert len(transport.requests) == 2


async def test_max_retries_zero_sends_once(service: ServiceFactory) -> None:
    transport = ScriptedTransport(error(503), ok([]))
    client = service(transport, max_retries=0)
    result = await client.list_meters()
    assert result.ok is False
    assert len(transport.requests) == 1


def test_negative_max_retries_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        from .support import make_service

        make_service(ScriptedTransport(), max_retries=-1)


async def test_backoff_is_exponential_with_full_jitter(
    service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bounds: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        bounds.append((low, high))
        return high / 2

    monkeypatch.setattr(random, "uniform", uniform)  # the one vlunaai._http draws from
    transport = ScriptedTransport(error(503))
    sleeps = SleepRecorder()
    client = service(transport, sleep=sleeps, max_retries=4)
    client._http._retry_base_delay = 0.5
    client._http._retry_max_delay = 3.0
    await client.list_meters()
    # Full jitter: uniform over [0, min(cap, base * 2**attempt)].
    assert bounds == [(0, 0.5), (0, 1.0), (0, 2.0), (0, 3.0)]
    assert sleeps.delays == [0.25, 0.5, 1.0, 1.5]


async def test_jittered_delays_stay_within_the_window(service: ServiceFactory) -> None:
    transport = ScriptedTransport(httpx.ConnectError("x"), httpx.ConnectError("x"), ok([]))
    sleeps = SleepRecorder()
    client = service(transport, sleep=sleeps)
    client._http._retry_base_delay = 0.1
    await client.list_meters()
    assert len(sleeps.delays) == 2
    assert 0 <= sleeps.delays[0] <= 0.1
    assert 0 <= sleeps.delays[1] <= 0.2


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),  # the finer header wins
    ],
)
async def test_retry_after_is_honoured(
    service: ServiceFactory, headers: dict[str, str], expected: float
) -> None:
    transport = ScriptedTransport(error(429, "RATE.LIMITED", headers=headers), ok([]))
    sleeps = SleepRecorder()
    client = service(transport, sleep=sleeps)
    result = await client.list_meters()
    assert result.ok is True
    assert sleeps.delays == [expected]


async def test_retry_after_http_date_is_honoured(service: ServiceFactory) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    transport = ScriptedTransport(error(503, headers={"Retry-After": when}), ok([]))
    sleeps = SleepRecorder()
    client = service(transport, sleep=sleeps)
    await client.list_meters()
    assert len(sleeps.delays) == 1
    # Second resolution of the date: somewhere in the last 30 s, far above the jitter window.
    assert 25 < sleeps.delays[0] <= 30


async def test_retry_after_in_the_past_retries_at_once(service: ServiceFactory) -> None:
    when = email.utils.formatdate(time.time() - 60, usegmt=True)
    transport = ScriptedTransport(error(503, headers={"Retry-After": when}), ok([]))
    sleeps = SleepRecorder()
    client = service(transport, sleep=sleeps)
    await client.list_meters()
    assert sleeps.delays == [0.0]


async def test_retry_after_too_long_returns_the_answer_instead_of_blocking(service: ServiceFactory) -> None:
    transport = ScriptedTransport(error(429, "RATE.LIMITED", headers={"Retry-After": "3600"}), ok([]))
    sleeps = SleepRecorder()
    client = service(transport, sleep=sleeps)
    result = await client.list_meters()
    assert len(transport.requests) == 1
    assert sleeps.delays == []
    assert result.status == 429  # type: ignore[attr-defined]


async def test_garbage_retry_after_falls_back_to_backoff(service: ServiceFactory) -> None:
    transport = ScriptedTransport(error(503, headers={"Retry-After": "soon-ish"}), ok([]))
    sleeps = SleepRecorder()
    client = service(transport, sleep=sleeps)
    client._http._retry_base_delay = 0.2
    await client.list_meters()
    assert len(sleeps.delays) == 1
    assert 0 <= sleeps.delays[0] <= 0.2


# -- gate decisions are answers, not transient failures -----------------------------------------


@pytest.mark.parametrize("status", [402, 429])
@pytest.mark.parametrize("mode", ["result", "raise"])
async def test_preflight_denial_is_never_retried_and_is_typed(
    service: ServiceFactory, status: int, mode: str
) -> None:
    denial = error(
        status,
        "QUOTA.EXCEEDED" if status == 429 else "FUNDING.INSUFFICIENT",
        "denied",
        headers={"Retry-After": "1", "x-request-id": "req-9"},
        hints=[{"type": "funding.xusd_shortfall", "shortfall_xusd": 1}],
        trace_id="tr-1",
    )
    transport = ScriptedTransport(denial, ok({}))
    sleeps = SleepRecorder()
    client = service(transport, sleep=sleeps, error_mode=mode)
    result = await client.gate_preflight(body={"feature_code": "f"})
    assert isinstance(result, GatePreflightError)
    assert result.status == status
    assert result.ok is False
    assert result.hints is not None and len(result.hints) == 1
    assert result.trace_id == "tr-1"
    assert len(transport.requests) == 1
    assert sleeps.delays == []


@pytest.mark.parametrize("status", [402, 429])
async def test_authorize_denial_is_never_retried(service: ServiceFactory, status: int) -> None:
    transport = ScriptedTransport(error(status, "QUOTA.EXCEEDED", headers={"Retry-After": "1"}), ok({}))
    client = service(transport)
    result = await client.gate_authorize(body={"feature_code": "f"})
    assert result.ok is False
    assert result.status == status  # type: ignore[attr-defined]
    assert len(transport.requests) == 1

    raising = service(ScriptedTransport(error(429, "QUOTA.EXCEEDED"), ok({})), error_mode="raise")
    with pytest.raises(RateLimitError):
        await raising.gate_authorize(body={"feature_code": "f"})


async def test_preflight_server_failure_is_still_retried(service: ServiceFactory) -> None:
    transport = ScriptedTransport(error(503), ok({"allowed": True}))
    client = service(transport)
    result = await client.gate_preflight(body={"feature_code": "f"})
    assert result.status == 200
    assert len(transport.requests) == 2


async def test_bearer_retries_keep_the_token_and_key(bearer: Callable[..., BearerClient]) -> None:
    transport = ScriptedTransport(httpx.RemoteProtocolError("dropped"), error(502), ok({}))
    client = bearer(transport)
    await client.create_budget(body={"name": "b"}, context=RequestContext(access_token=ACCESS_TOKEN))
    assert len(transport.requests) == 3
    assert {r.headers["authorization"] for r in transport.requests} == {f"Bearer {ACCESS_TOKEN}"}
    assert len({r.headers["idempotency-key"] for r in transport.requests}) == 1
