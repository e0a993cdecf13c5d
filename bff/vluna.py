"""The service's one Vluna client, and how its failures are told apart.

One SDK ``ServiceClient`` (raise mode, signed with the service key) is built per app and shared
by the token issuer (``bff.tokens.issuer``) and readiness (``bff.vluna_probe``). Failures are
sorted by the SDK's exception classes, never by comparing status codes:

- transient (retry later; a cached token keeps being served): no answer (``APIConnectionError``,
  including ``APITimeoutError``), ``RateLimitError`` (429), ``InternalServerError`` (5xx), and
  a 408 (the one status the SDK gives no class of its own);
- a rejection (retrying will not help): any other ``APIStatusError`` (400, 401, 403, 404, 409,
  422, ...); ``AuthenticationError`` and ``PermissionDeniedError`` say the service key, its
  secret or the realm is wrong.
"""

from __future__ import annotations

import httpx
from vlunaai import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    InternalServerError,
    PermissionDeniedError,
    RateLimitError,
    ServiceClient,
    ServiceClientOptions,
    ServiceKeyCredentials,
    VlunaAIConfig,
    VlunaAIError,
    create_service_client,
)

from bff.http1.httpx_transport import Http1Transport
from bff.settings import VlunaSettings
from bff.telemetry import tracing
from bff.telemetry.context import current_request_id

TRANSIENT: tuple[type[VlunaAIError], ...] = (APIConnectionError, RateLimitError, InternalServerError)
KEY_REJECTED: tuple[type[VlunaAIError], ...] = (AuthenticationError, PermissionDeniedError)


def is_transient(exc: VlunaAIError) -> bool:
    """Worth trying again later: no answer, 408, 429 or 5xx (or no status at all)."""
    if isinstance(exc, TRANSIENT) or not isinstance(exc, APIStatusError):
        return True
    return exc.status == 408  # Request Timeout: the SDK has no class for it


def key_rejected(exc: VlunaAIError) -> bool:
    """Vluna does not accept this service's key (wrong key, secret or realm)."""
    return isinstance(exc, KEY_REJECTED)


def configured(v: VlunaSettings) -> bool:
    return bool(v.realm_id and v.service_key_id and v.service_key_secret)


def create_vluna_client(
    v: VlunaSettings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    max_retries: int | None = None,
) -> ServiceClient | None:
    """The raise-mode service client for ``vluna``, or None when Vluna is not configured.
    ``max_retries`` defaults to ``vluna.max_retries``."""
    if not (v.realm_id and v.service_key_id and v.service_key_secret):
        return None
    return create_service_client(
        ServiceClientOptions(
            config=VlunaAIConfig(base_url=v.base_url, realm_id=v.realm_id, timeout_seconds=v.timeout_sec),
            service_key=ServiceKeyCredentials(
                key_id=v.service_key_id, secret=v.service_key_secret.get_secret_value()
            ),
            error_mode="raise",
            max_retries=v.max_retries if max_retries is None else max_retries,
            transport=transport,
        )
    )


def vluna_transport(v: VlunaSettings) -> httpx.AsyncBaseTransport:
    """What the service's SDK client sends through: the service's HTTP/1.1 client to
    ``vluna.base_url``'s origin (bff/http1/httpx_transport.py; about a quarter of the CPU of httpx's
    own transport per issuance), adding the request id and trace context to each call."""
    return PropagatingTransport(Http1Transport(v.base_url))


class PropagatingTransport(httpx.AsyncBaseTransport):
    """Wraps the SDK's httpx transport: adds ``X-Request-Id`` (the current request's) and
    ``traceparent`` to every call. Neither header is covered by the SVC-AUTH signature, so
    adding them below the SDK keeps signatures valid."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request_id = current_request_id()
        if request_id is not None and "x-request-id" not in request.headers:
            request.headers["x-request-id"] = request_id
        if tracing.enabled():
            carrier: dict[str, str] = {}
            tracing.inject(carrier)
            for name, value in carrier.items():
                request.headers[name] = value
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
