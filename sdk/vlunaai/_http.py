"""The one request path: build, sign per attempt, send, retry with backoff, map errors.

Every operation of both clients goes through `HttpCore.send`. What is decided once per call
(URL, body bytes, idempotency key) is computed before the loop; what must be fresh per attempt
(timestamp, nonce, signature) is computed inside it, so a retry re-signs but never changes the
idempotency key the server uses to de-duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import anyio
import httpx

from .config import RequestContext
from .errors import (
    APIConnectionError,
    APITimeoutError,
    VlunaAIError,
    error_class_for_status,
    explain,
)
from .signing import ServiceKeyAuth

logger = logging.getLogger("vlunaai")

ErrorMode = Literal["raise", "result"]

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD"})
# A server asking for a longer pause than this is treated as "not now": we stop retrying and
# report the answer instead of blocking the caller for minutes.
MAX_RETRY_AFTER_SECONDS = 60.0
# Reserved names: set by the core (signed, or derived from the context); never from defaults.
_RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "content-digest",
        "content-type",
        "content-length",
        "host",
        "idempotency-key",
        "x-realm-id",
        "x-principal-id",
        "x-user-id",
        "x-billing-account-id",
        "x-billing-user-id",
        "x-realm-admin",
    }
)
# Segment characters that cannot change the route; everything else is percent-encoded.
_PATH_SAFE = ":@!$&'()*+,;=-._~"
# Parsed URLs of recent paths (without query): parsing is a noticeable share of a call's cost.
_URL_CACHE_SIZE = 512

if sys.version_info >= (3, 11):
    # A quarter of anyio.fail_after's cost per attempt; same effect (cancel, then TimeoutError).
    _attempt_deadline = asyncio.timeout
else:  # pragma: no cover - exercised on Python 3.10 only

    @contextlib.asynccontextmanager
    async def _attempt_deadline(seconds: float) -> AsyncIterator[None]:
        with anyio.fail_after(seconds):
            yield


@dataclass(frozen=True)
class RawResponse:
    status: int
    body: Any
    headers: httpx.Headers

    @property
    def request_id(self) -> str | None:
        value: str | None = self.headers.get("x-request-id")
        return value

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


def encode_path(template: str, params: Mapping[str, object]) -> str:
    """Fill `{name}` placeholders with percent-encoded values that can never alter the route."""
    path = template
    for name, value in params.items():
        text = str(value)
        if not text:
            raise ValueError(f"{name} must be a non-empty string")
        encoded = quote(text, safe=_PATH_SAFE)
        if set(encoded) == {"."}:
            # "." and ".." would be collapsed as dot segments by URL normalisation.
            encoded = "%2E" * len(encoded)
        path = path.replace("{" + name + "}", encoded)
    return path


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def decode_body(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


class HttpCore:
    def __init__(
        self,
        *,
        base_url: str,
        realm_id: str,
        user_agent: str,
        timeout: httpx.Timeout,
        attempt_timeout_seconds: float,
        max_retries: int,
        error_mode: ErrorMode,
        signer: ServiceKeyAuth | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
        default_headers: Mapping[str, str] | None = None,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 8.0,
    ) -> None:
        if error_mode not in ("raise", "result"):
            raise ValueError("error_mode must be 'raise' or 'result'")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._base_url = base_url.rstrip("/")
        self._realm_id = realm_id
        self._signer = signer
        self._timeout = timeout
        self._attempt_timeout = attempt_timeout_seconds
        self.max_retries = max_retries
        self.error_mode: ErrorMode = error_mode
        self._retry_base_delay = retry_base_delay
        self._retry_max_delay = retry_max_delay
        self._base_headers = {
            k.lower(): v for k, v in (default_headers or {}).items() if k.lower() not in _RESERVED_HEADERS
        }
        self._base_headers["user-agent"] = user_agent
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            limits=limits or httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        self._url_cache: dict[str, httpx.URL] = {}
        # Replaceable in unit tests, so backoff can be observed without waiting for it.
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @property
    def realm_id(self) -> str:
        return self._realm_id

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def _build_url(self, path: str, query: Mapping[str, Any] | None) -> httpx.URL:
        url = self._url_cache.get(path)
        if url is None:
            url = httpx.URL(self._base_url + path)
            if len(self._url_cache) >= _URL_CACHE_SIZE:
                self._url_cache.clear()
            self._url_cache[path] = url
        if query:
            url = url.copy_with(params={k: v for k, v in query.items() if v is not None})
        return url

    def _timeouts(self, context: RequestContext | None) -> tuple[httpx.Timeout, float]:
        override = context.request_timeout_seconds if context else None
        if override is not None and override > 0:
            return httpx.Timeout(override), override
        return self._timeout, self._attempt_timeout

    def _retry_delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds before the next attempt, or None when the server's wait is too long to honour."""
        if response is not None:
            wait = parse_retry_after(response.headers)
            if wait is not None:
                return wait if wait <= MAX_RETRY_AFTER_SECONDS else None
        # Full jitter: spreads retries of many clients over the whole backoff window.
        return random.uniform(0, min(self._retry_max_delay, self._retry_base_delay * 2**attempt))

    async def send(
        self,
        *,
        operation: str,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        context: RequestContext | None = None,
        decision: bool = False,
        raise_for_status: bool | None = None,
    ) -> RawResponse:
        """Send one logical request (with its retries). Raises on transport failure, and on a
        4xx/5xx in `raise` mode; in `result` mode an error answer is returned as a RawResponse.
        `raise_for_status` overrides the client's error mode for this call."""
        method = method.upper()
        raising = self.error_mode == "raise" if raise_for_status is None else raise_for_status
        url = self._build_url(path, query)
        content = None if body is None else (body if isinstance(body, str) else json.dumps(body))
        ctx = context or RequestContext()
        idempotency_key = ctx.idempotency_key
        # Chosen once per logical request: SVC-AUTH signs a key even on GET, and every retry
        # must carry the same one.
        if not idempotency_key and (method not in IDEMPOTENT_METHODS or self._signer is not None):
            idempotency_key = secrets.token_hex(16)
        retry_allowed = method in IDEMPOTENT_METHODS or idempotency_key is not None
        httpx_timeout, attempt_timeout = self._timeouts(context)

        attempt = 0
        while True:
            headers = self._headers(method, url, content, idempotency_key, ctx)
            request = self._client.build_request(
                method,
                url,
                headers=headers,
                content=content,
                timeout=httpx_timeout,
            )
            if not self._owns_client:
                self._drop_injected_reserved_headers(request, headers)
            started = time.perf_counter()
            try:
                async with _attempt_deadline(attempt_timeout):
                    response = await self._client.send(request)
                    await response.aread()
            except (TimeoutError, httpx.TimeoutException) as exc:
                failure: VlunaAIError = APITimeoutError(
                    f"Request timed out after {attempt_timeout:g}s", operation=operation
                )
                failure.__cause__ = exc
            except httpx.TransportError as exc:
                failure = APIConnectionError(f"Connection error: {type(exc).__name__}", operation=operation)
                failure.__cause__ = exc
            else:
                self._log(method, url, response.status_code, attempt, started)
                status = response.status_code
                retryable = status in RETRYABLE_STATUSES and not (decision and status < 500)
                if 200 <= status < 300 or not retryable or not retry_allowed or attempt >= self.max_retries:
                    return self._finish(operation, method, url, response, raising)
                delay = self._retry_delay(attempt, response)
                if delay is None:
                    return self._finish(operation, method, url, response, raising)
                attempt += 1
                await self._sleep(delay)
                continue

            self._log(method, url, None, attempt, started)
            if not retry_allowed or attempt >= self.max_retries:
                raise failure
            delay = self._retry_delay(attempt, None)
            attempt += 1
            await self._sleep(delay or 0.0)

    def _headers(
        self,
        method: str,
        url: httpx.URL,
        content: str | None,
        idempotency_key: str | None,
        ctx: RequestContext,
    ) -> dict[str, str]:
        headers = dict(self._base_headers)
        headers["x-realm-id"] = self._realm_id
        if content is not None:
            headers["content-type"] = "application/json; charset=utf-8"
        if idempotency_key:
            headers["idempotency-key"] = idempotency_key
        if ctx.billing_account_id:
            headers["x-billing-account-id"] = ctx.billing_account_id
        if ctx.principal_id:
            headers["x-principal-id"] = ctx.principal_id
        if ctx.user_id:
            headers["x-user-id"] = ctx.user_id
        if ctx.request_id:
            headers["x-request-id"] = ctx.request_id
        if self._signer is not None:
            # Signed last, so nothing set earlier can disagree with what the signature covers.
            headers.update(
                self._signer.sign(
                    method=method,
                    url=url.raw_path.decode("ascii"),
                    body=content,
                    idempotency_key=idempotency_key,
                    realm_id=self._realm_id,
                    billing_account_id=ctx.billing_account_id,
                    principal_id=ctx.principal_id,
                    user_id=ctx.user_id,
                    headers=headers,
                )
            )
        elif ctx.access_token:
            headers["authorization"] = f"Bearer {ctx.access_token}"
        return headers

    def _drop_injected_reserved_headers(self, request: httpx.Request, headers: Mapping[str, str]) -> None:
        """An injected httpx client's own default headers must not add or replace reserved ones
        (a signed value, an identity header, the Host): `build_request` merges them in."""
        for name in [k for k in self._client.headers if k in _RESERVED_HEADERS]:
            if name == "host":
                request.headers["host"] = request.url.netloc.decode("ascii")
            elif name == "content-length":
                if request.content:
                    request.headers["content-length"] = str(len(request.content))
                else:
                    del request.headers["content-length"]
            elif name not in headers:
                del request.headers[name]

    def _finish(
        self, operation: str, method: str, url: httpx.URL, response: httpx.Response, raising: bool
    ) -> RawResponse:
        raw = RawResponse(status=response.status_code, body=decode_body(response), headers=response.headers)
        if raw.is_success or not raising:
            return raw
        raise status_error(operation, method, url, raw)

    def _log(self, method: str, url: httpx.URL, status: int | None, attempt: int, started: float) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            # Path only: queries and headers are left out so no identifier or token is logged.
            logger.debug(
                "vlunaai %s %s -> %s attempt=%d duration_ms=%.1f",
                method,
                url.path,
                status if status is not None else "transport-error",
                attempt,
                (time.perf_counter() - started) * 1000,
            )


def status_error(operation: str, method: str, url: httpx.URL, raw: RawResponse) -> VlunaAIError:
    body = raw.body if isinstance(raw.body, dict) else {}
    message = body.get("message")
    if not isinstance(message, str) or not message:
        message = "Request failed"
    hints = body.get("hints")
    meta = body.get("meta")
    trace_id = body.get("trace_id", body.get("traceId"))
    code = body.get("code")
    return error_class_for_status(raw.status)(
        explain(code if isinstance(code, str) else None, message),
        code=code if isinstance(code, str) else None,
        status=raw.status,
        operation=operation,
        details={
            "url": str(url.copy_with(query=None)),
            "path": url.path,
            "method": method,
            "api_name": operation,
            "operation": operation,
            "body": raw.body,
        },
        hints=[dict(h) for h in hints if isinstance(h, dict)] if isinstance(hints, list) else None,
        meta=dict(meta) if isinstance(meta, dict) else None,
        trace_id=trace_id if isinstance(trace_id, str) else None,
        request_id=raw.request_id,
    )
