"""Shared helpers for the SDK unit tests: a scripted mock transport, client factories, and an
independent SVC-AUTH verifier written from the wire rules (it does not use `vlunaai.signing`).

Every test talks to the SDK through its public constructors with an `httpx` transport injected,
so the whole request path (build, sign, send, retry, parse) runs; only the network is fake.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx
from vlunaai import (
    BearerClient,
    BearerClientOptions,
    ServiceClient,
    ServiceClientOptions,
    ServiceKeyCredentials,
    VlunaAIConfig,
)

KEY_ID = "pk-test-0001"
SECRET_BYTES = b"vluna-unit-test-secret-\x00\xff-0123456789"
SECRET_B64 = base64.b64encode(SECRET_BYTES).decode()
REALM = "realm-unit"
HOST = "vluna.test"
SERVICE_BASE = f"https://{HOST}/mgt/v1"
BEARER_BASE = f"https://{HOST}/api/v1"
ACCESS_TOKEN = "eyJhbGciOiJIUzI1NiJ9.unit-test-access-token.c2lnbmF0dXJl"

# What the scripted transport can be told to do for one request.
Reply = httpx.Response | BaseException | Callable[[httpx.Request], Any]


def envelope(data: Any = None, *, meta: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ok": True, "code": "OK", "data": {} if data is None else data}
    if meta is not None:
        body["meta"] = meta
    body.update(extra)
    return body


def ok(
    data: Any = None, *, status: int = 200, headers: dict[str, str] | None = None, **extra: Any
) -> httpx.Response:
    return httpx.Response(status, json=envelope(data, **extra), headers=headers)


def error(
    status: int,
    code: str = "SERVER.UNEXPECTED",
    message: str = "failed",
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"ok": False, "code": code, "message": message, "meta": {"status": status}}
    body.update(extra)
    return httpx.Response(status, json=body, headers=headers)


class ScriptedTransport(httpx.AsyncBaseTransport):
    """Answers requests from a script (in order; the last entry repeats) and records them.

    An entry is a response, an exception to raise (a transport error), or a callable taking the
    request and returning either (sync or async).
    """

    def __init__(self, *replies: Reply) -> None:
        self.replies: list[Reply] = list(replies) or [ok()]
        self.requests: list[httpx.Request] = []
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        index = min(len(self.requests), len(self.replies)) - 1
        reply = self.replies[index]
        if callable(reply) and not isinstance(reply, (httpx.Response, BaseException)):
            reply = reply(request)
            if isinstance(reply, Awaitable):
                reply = await reply
        if isinstance(reply, BaseException):
            raise reply
        assert isinstance(reply, httpx.Response)
        # A fresh copy each time, so one scripted answer can be served repeatedly.
        return httpx.Response(reply.status_code, headers=reply.headers, content=reply.content)

    async def aclose(self) -> None:
        self.closed = True

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def json_bodies(self) -> list[Any]:
        return [json.loads(r.content) if r.content else None for r in self.requests]


class SleepRecorder:
    """Stands in for the core's backoff sleep: records the delays, waits for nothing."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def service_config(**overrides: Any) -> VlunaAIConfig:
    values: dict[str, Any] = {"base_url": SERVICE_BASE, "realm_id": REALM}
    values.update(overrides)
    return VlunaAIConfig(**values)


def bearer_config(**overrides: Any) -> VlunaAIConfig:
    values: dict[str, Any] = {"base_url": BEARER_BASE, "realm_id": REALM}
    values.update(overrides)
    return VlunaAIConfig(**values)


def make_service(
    transport: httpx.AsyncBaseTransport,
    *,
    config: VlunaAIConfig | None = None,
    sleep: SleepRecorder | None = None,
    **options: Any,
) -> ServiceClient:
    client = ServiceClient(
        ServiceClientOptions(
            config=config or service_config(),
            service_key=ServiceKeyCredentials(key_id=KEY_ID, secret=SECRET_B64),
            transport=transport,
            **options,
        )
    )
    client._http._sleep = sleep or SleepRecorder()
    return client


def make_bearer(
    transport: httpx.AsyncBaseTransport,
    *,
    config: VlunaAIConfig | None = None,
    sleep: SleepRecorder | None = None,
    **options: Any,
) -> BearerClient:
    client = BearerClient(
        BearerClientOptions(config=config or bearer_config(), transport=transport, **options)
    )
    client._http._sleep = sleep or SleepRecorder()
    return client


def header_names(requests: Iterable[httpx.Request]) -> set[str]:
    return {name.lower() for r in requests for name in r.headers}


# -- an independent SVC-AUTH verifier, from the README's rules ---------------------------------

AUTH_RE = re.compile(
    r"^SVC-AUTH keyId=(?P<key_id>[^,]+),sig=(?P<sig>[^,]+),ts=(?P<ts>[^,]+),"
    r"nonce=(?P<nonce>[0-9a-f]{32}),alg=HMAC-SHA256$"
)


def expected_digest(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


def auth_fields(request: httpx.Request) -> dict[str, str]:
    match = AUTH_RE.match(request.headers["authorization"])
    assert match is not None, request.headers["authorization"]
    return match.groupdict()


def canonical_from_request(request: httpx.Request) -> str:
    """Rebuild the canonical string from what went on the wire, the way a server would."""
    fields = auth_fields(request)
    h = request.headers
    lines = [
        request.method.upper(),
        request.url.raw_path.decode("ascii"),
        "ts:" + fields["ts"],
        "nonce:" + fields["nonce"],
        "content-digest:" + expected_digest(request.content),
        "content-type:" + h.get("content-type", ""),
        "x-realm-id:" + h.get("x-realm-id", ""),
        "x-principal-id:" + h.get("x-principal-id", ""),
        "x-user-id:" + h.get("x-user-id", ""),
        "x-billing-account-id:" + h.get("x-billing-account-id", ""),
        "x-billing-user-id:",
        "idempotency-key:" + h.get("idempotency-key", ""),
    ]
    return "\n".join(lines)


def assert_signed(request: httpx.Request, secret: bytes = SECRET_BYTES, key_id: str = KEY_ID) -> None:
    """The request carries a valid SVC-AUTH signature for its exact bytes and headers."""
    fields = auth_fields(request)
    assert fields["key_id"] == key_id
    assert request.headers["content-digest"] == expected_digest(request.content)
    mac = hmac.new(secret, canonical_from_request(request).encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(base64.b64decode(fields["sig"]), mac), "signature does not verify"
