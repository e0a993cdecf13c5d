"""``/vluna/api/v1/{path}``: selected end-user calls forwarded to Vluna with the caller's token.

Per request: authenticate (the same chain and CSRF rule as /vluna/token) -> match the allowlist
on the raw path -> per-user rate limit (Redis) -> read and check the body -> public cache ->
platform token from the broker (a cache hit on the hot path) -> upstream call built from scratch
(retries, deadline, circuit breaker, one re-issue on 401) -> answer with an allowlist of headers.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import msgspec
from litestar import Request, Response

from bff.errors import BadRequest, BffError, UpstreamRejected
from bff.observability import tracing
from bff.observability.context import current_request_id
from bff.observability.metrics import observe_upstream
from bff.proxy.breaker import BreakerOpen, CircuitBreaker
from bff.proxy.config import ProxySettings
from bff.proxy.paths import Allowlist, Match, PathRefused
from bff.proxy.public_cache import PublicCache, etag_matches
from bff.proxy.ratelimit import RateLimited, RateLimiter
from bff.proxy.upstream import (
    Timeouts,
    Upstream,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamTooLarge,
)
from bff.routes.token import token_or_http_error
from bff.stats import Stats
from bff.tokens.broker import Principal, TokenBroker, TokenEntry

log = logging.getLogger("bff.proxy")

PREFIX = "/vluna/api/v1"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

_TOKENISH = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_LANGUAGE = re.compile(r"^[A-Za-z0-9*,;=. -]{1,128}$")
_ACCEPT = re.compile(r"^[A-Za-z0-9*/+.,;= -]{1,256}$")
_JSON_TYPE = re.compile(r"^application/(?:[a-z0-9.+-]+\+)?json\s*(?:;\s*charset=(?:\"?utf-8\"?))?\s*$", re.I)
_decode = msgspec.json.Decoder()


class ProxyError(BffError):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code, headers=headers)
        self.status = status


class RawAnswer:
    """A proxied JSON answer as a bare ASGI app: the upstream body bytes as they came, headers
    encoded once. Sends what ``litestar.Response(body, status_code=..., media_type=...,
    headers=...)`` sends (the given headers with lower-case names, then content-type and
    content-length) without the per-request Response -> ASGIResponse conversion. The proxy route
    sets no handler-level headers, cookies or background tasks that this would skip."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, content_type: str, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.body = body
        encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        encoded.append((b"content-type", content_type.encode("latin-1")))
        encoded.append((b"content-length", str(len(body)).encode("latin-1")))
        self.headers = encoded

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


def _response(
    status: int, content_type: str, headers: dict[str, str], body: bytes
) -> Response[Any] | RawAnswer:
    if status < 200 or status in (204, 304):
        # Bodiless statuses: Litestar's own rules (no content headers; a body is an error).
        return Response(body, status_code=status, media_type=content_type, headers=headers)
    return RawAnswer(status, content_type, headers, body)


@dataclass
class _Prepared:
    match: Match
    principal: Principal
    path_and_query: str
    query: list[tuple[str, str]]
    body: bytes | None
    headers: dict[str, str]  # from the client's allowlist, plus the request id


class ProxyService:
    def __init__(
        self,
        settings: ProxySettings,
        *,
        upstream: Upstream,
        broker: TokenBroker,
        auth: Any,
        mapper: Any,
        limiter: RateLimiter,
        realm_id: str,
        default_scopes: tuple[str, ...],
        stats: Stats,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self._broker = broker
        self._auth = auth
        self._mapper = mapper
        self._limiter = limiter
        self._realm = realm_id
        self._scopes = default_scopes
        self.stats = stats
        self.allowlist = Allowlist(settings)
        self.cache = PublicCache(settings.public_cache_ttl_sec, settings.public_cache_max_entries)
        # (principal, user, scopes) -> (entry, reuse until): see _token.
        self._memo: dict[tuple[str, str, tuple[str, ...]], tuple[TokenEntry, float]] = {}
        self._froze = False
        self.breaker = CircuitBreaker(
            getattr(upstream, "base_url", "vluna"),
            failure_threshold=settings.breaker_failure_threshold,
            open_sec=settings.breaker_open_sec,
            probe_timeout_sec=settings.total_timeout_sec,
            stats=stats,
        )

    def breaker_state(self) -> dict[str, Any]:
        """The circuit breaker as health checks and metrics see it."""
        return self.breaker.snapshot()

    async def start(self) -> None:
        await self.upstream.start()
        if self.settings.freeze_startup_heap and not self._froze:
            # Everything allocated so far (modules, models, routes, settings) lives as long as the
            # process: moved out of the collector's generations, it is no longer traversed by
            # every full collection. Under proxy load those came every ~0.5 s and paused all
            # requests for 60-80 ms (the p99); now they only traverse what was allocated since.
            gc.freeze()
            self._froze = True

    async def aclose(self) -> None:
        await self.upstream.aclose()
        if self._froze:
            gc.unfreeze()  # e.g. an app built and stopped inside a longer-lived process (tests)
            self._froze = False

    # -- the request ------------------------------------------------------------------------

    async def handle(self, request: Request[Any, Any, Any]) -> Response[Any] | RawAnswer:
        self.stats.inc("proxy.requests")
        method = request.method.upper()
        identity = await self._auth.authenticate(request)
        principal: Principal = await self._mapper.map(identity)
        try:
            match = self.allowlist.match(method, _sub_path(request.scope))
        except PathRefused as exc:
            self.stats.inc("proxy.refused")
            raise ProxyError(exc.status, exc.code, exc.message) from None
        try:
            await self._limiter.check(
                self._limiter.subject(principal.principal_id, principal.user_id),
                write=method in WRITE_METHODS,
            )
        except RateLimited as exc:
            raise ProxyError(
                429, "rate_limited", "too many requests", {"Retry-After": str(exc.retry_after)}
            ) from None
        prepared = await self._prepare(request, method, match, principal)
        route = match.route.route
        if route.public and self.cache.enabled:
            return await self._public(request, method, prepared)
        entry = await self._token(principal, route.scopes)
        resp = await self._forward(method, prepared, entry)
        return self._answer(resp, prepared, cache_control=NO_STORE)

    async def _public(
        self, request: Request[Any, Any, Any], method: str, p: _Prepared
    ) -> Response[Any] | RawAnswer:
        # Keyed by the caller: Vluna personalises catalog items (subscription_state carries the
        # caller's subscription id and status), so an answer fetched with one user's platform
        # token is only ever served to that same user (principal and user: the identity the token
        # was issued for). Everything else that shapes the upstream request is in the key too.
        key = (
            self._realm,
            p.principal.principal_id,
            p.principal.user_id,
            p.path_and_query,
            urlencode(p.query),
            p.headers.get("Accept-Language", ""),
            p.headers["Accept"],
        )
        cached = self.cache.get(key)
        if cached is None:
            entry = await self._token(p.principal, p.match.route.route.scopes)
            resp = await self._forward(method, p, entry)
            if resp.status != 200 or not _JSON_TYPE.match(resp.content_type):
                return self._answer(resp, p, cache_control=NO_STORE)
            cached = self.cache.put(key, resp.body, resp.content_type)
        else:
            self.stats.inc("proxy.cache.hits")
        headers = {
            "Cache-Control": f"private, max-age={int(self.cache.ttl)}",
            "ETag": cached.etag,
            # A browser shared by two users must not answer one from the other's copy.
            "Vary": "Accept-Language, Authorization, Cookie",
        }
        if current_request_id() is None:
            headers["X-Request-Id"] = p.headers["X-Request-Id"]
        if etag_matches(request.headers.get("if-none-match"), cached.etag):
            return Response(b"", status_code=304, headers=headers)
        return RawAnswer(200, cached.content_type, headers, cached.body)

    async def _prepare(
        self, request: Request[Any, Any, Any], method: str, match: Match, principal: Principal
    ) -> _Prepared:
        s = self.settings
        h = request.headers
        raw_query = request.scope.get("query_string", b"")
        if len(raw_query) > s.max_query_length:
            raise ProxyError(414, "query_too_long", "the query string is too long")
        allowed = match.route.query
        query: list[tuple[str, str]] = []
        if raw_query:
            try:
                pairs = parse_qsl(raw_query.decode("ascii"), keep_blank_values=True, strict_parsing=False)
            except (UnicodeDecodeError, ValueError):
                raise BadRequest("the query string is malformed", code="invalid_query") from None
            for name, value in pairs:
                if name in allowed and not any(c in value for c in "\r\n\x00"):
                    query.append((name, value))
        headers: dict[str, str] = {}
        # The request id of this request (the observability middleware's, which also puts it on
        # the answer), or one of our own when that middleware is not installed.
        rid = current_request_id()
        if rid is None:
            rid = h.get("x-request-id")
            if not (rid and _TOKENISH.match(rid)):
                rid = secrets.token_hex(16)
        headers["X-Request-Id"] = rid
        accept = h.get("accept")
        headers["Accept"] = accept if accept and _ACCEPT.match(accept) else "application/json"
        lang = h.get("accept-language")
        if lang and _LANGUAGE.match(lang):
            headers["Accept-Language"] = lang
        body: bytes | None = None
        if method in WRITE_METHODS:
            key = h.get("idempotency-key")
            if key is not None and not _TOKENISH.match(key):
                raise BadRequest(
                    "Idempotency-Key: 1-128 of A-Z a-z 0-9 _ . : -", code="invalid_idempotency_key"
                )
            # Every write carries a key, so that retries (ours and the client's) are safe.
            headers["Idempotency-Key"] = key or secrets.token_hex(16)
            body = await self._read_body(request)
            if body:
                headers["Content-Type"] = "application/json"
        else:
            length = h.get("content-length")
            if (length and length.strip() != "0") or h.get("transfer-encoding"):
                raise BadRequest("this call takes no request body", code="unexpected_body")
        path = match.upstream_path
        return _Prepared(match, principal, path, query, body, headers)

    async def _read_body(self, request: Request[Any, Any, Any]) -> bytes:
        limit = self.settings.max_body_bytes
        h = request.headers
        length = h.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                raise BadRequest("invalid Content-Length", code="bad_request") from None
            if n > limit:
                raise ProxyError(413, "body_too_large", f"the request body exceeds {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ProxyError(413, "body_too_large", f"the request body exceeds {limit} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body:
            return body
        ctype = h.get("content-type", "")
        if not _JSON_TYPE.match(ctype):
            raise ProxyError(415, "unsupported_media_type", "request bodies must be application/json")
        try:
            parsed = _decode.decode(body)
        except (msgspec.DecodeError, RecursionError, ValueError):
            raise BadRequest("the request body is not valid JSON", code="invalid_json") from None
        if not isinstance(parsed, dict):
            raise BadRequest("the request body must be a JSON object", code="invalid_json")
        return body

    async def _token(self, principal: Principal, scopes: list[str] | None) -> TokenEntry:
        # The broker's answer is reused in-process for a few seconds (proxy.token_memo_sec): it
        # saves a Redis round trip and a decryption on every proxied call. The caller is still
        # authenticated on every request; the memo only skips re-reading the same token. The
        # broker is asked again at least every token_memo_sec, so its refresh-ahead still runs.
        wanted = tuple(scopes) if scopes else self._scopes
        key = (principal.principal_id, principal.user_id, wanted)
        now = time.monotonic()
        memo = self._memo.get(key)
        if memo is not None and memo[1] > now:
            return memo[0]
        entry = await token_or_http_error(self._broker, principal, wanted)
        # With the broker's first level (cache.l1) the read is as cheap and, unlike this memo,
        # drops a token signed out on another replica: no memo then.
        ttl = 0.0 if self._broker.has_l1 else self.settings.token_memo_sec
        if ttl > 0:
            left = entry.expires_at - self._broker.now() - 30  # never near the token's expiry
            if left > 0:
                if len(self._memo) >= 10_000:
                    self._memo.clear()
                self._memo[key] = (entry, now + min(ttl, left))
        return entry

    def forget_memo(self, principal: Principal) -> None:
        """Drop this user's memoised tokens (on a 401 from Vluna, and on sign-out)."""
        for key in [k for k in self._memo if k[0] == principal.principal_id and k[1] == principal.user_id]:
            del self._memo[key]

    def _upstream_headers(self, p: _Prepared, entry: TokenEntry) -> dict[str, str]:
        # Built from scratch: the client contributes only the vetted headers in p.headers.
        headers = {
            **p.headers,
            "Authorization": f"Bearer {entry.access_token}",
            "X-Realm-Id": self._realm,
            "User-Agent": "vluna-bff",
        }
        if entry.billing_account_id:
            headers["X-Billing-Account-ID"] = entry.billing_account_id
        if tracing.enabled():
            tracing.inject(headers)
        return headers

    def _path_and_query(self, p: _Prepared, entry: TokenEntry) -> str:
        query = list(p.query)
        if p.match.route.route.account_query:
            if not entry.billing_account_id:
                raise UpstreamRejected("no billing account is known for this user")
            query.append(("billing_account_id", entry.billing_account_id))
        return p.path_and_query + ("?" + urlencode(query) if query else "")

    async def _forward(self, method: str, p: _Prepared, entry: TokenEntry) -> UpstreamResponse:
        operation = f"proxy {method} {p.match.route.route.path}"
        resp = await self._attempts(
            operation, method, self._path_and_query(p, entry), self._upstream_headers(p, entry), p.body
        )
        if resp.status == 401:
            # The cached token is no longer accepted (revoked, key rotated): drop it, get a new
            # one, try once more.
            self.stats.inc("proxy.token.reissued")
            self.forget_memo(p.principal)
            await self._broker.forget(p.principal, strict=False)
            entry = await self._token(p.principal, p.match.route.route.scopes)
            resp = await self._attempts(
                operation, method, self._path_and_query(p, entry), self._upstream_headers(p, entry), p.body
            )
            if resp.status == 401:
                # Not the browser's credential that failed: never answer 401 for it.
                raise UpstreamRejected("the billing service does not accept this service's tokens")
        return resp

    async def _attempts(
        self,
        operation: str,
        method: str,
        path_and_query: str,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> UpstreamResponse:
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.total_timeout_sec
        attempt = 0
        while True:
            try:
                self.breaker.before()
            except BreakerOpen as exc:
                raise ProxyError(
                    503,
                    "upstream_unavailable",
                    "the billing service is unavailable",
                    {"Retry-After": str(exc.retry_after)},
                ) from None
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ProxyError(504, "upstream_timeout", "the billing service did not answer in time")
            timeouts = Timeouts(
                connect=min(s.connect_timeout_sec, remaining),
                read=min(s.read_timeout_sec, remaining),
                total=remaining,
            )
            self.stats.inc("proxy.upstream.requests")
            failure: ProxyError | None = None
            resp: UpstreamResponse | None = None
            started = loop.time()
            try:
                resp = await self.upstream.send(method, path_and_query, headers, body, timeouts)
            except UpstreamTooLarge:
                self.breaker.success()
                self.stats.inc("proxy.upstream.errors")
                observe_upstream(operation, "error", loop.time() - started, "too_large")
                raise ProxyError(502, "upstream_invalid", "the billing service answered too much") from None
            except UpstreamTimeout:
                failure = ProxyError(504, "upstream_timeout", "the billing service did not answer in time")
            except UpstreamError:
                failure = ProxyError(502, "upstream_unavailable", "the billing service could not be reached")
            observe_upstream(
                operation,
                "ok" if resp is not None and resp.status < 500 else "error",
                loop.time() - started,
                failure.code if failure is not None else None,
            )
            if resp is not None and resp.status not in RETRY_STATUSES:
                self.breaker.success()
                return resp
            self.breaker.failure()
            self.stats.inc("proxy.upstream.errors")
            retry_after = _retry_after(resp)
            delay = min(s.retry_backoff_max_sec, s.retry_backoff_base_sec * (2**attempt)) * random.random()
            if retry_after is not None:
                delay = max(delay, retry_after)
            if attempt >= s.max_retries or loop.time() + delay >= deadline:
                if resp is not None:
                    return resp
                assert failure is not None
                raise failure
            attempt += 1
            self.stats.inc("proxy.upstream.retries")
            await asyncio.sleep(delay)

    def _answer(
        self, resp: UpstreamResponse, p: _Prepared, *, cache_control: dict[str, str]
    ) -> Response[Any] | RawAnswer:
        if not _JSON_TYPE.match(resp.content_type):
            self.stats.inc("proxy.upstream.errors")
            log.warning("upstream answered %d with a non-JSON content type", resp.status)
            if resp.status in (404, 405):
                # The server has no such route (a route of another generation of the API: see
                # proxy.upstream_flavor); its own page is never passed on.
                raise ProxyError(
                    404, "upstream_route_missing", "the billing service does not offer this call"
                )
            raise ProxyError(502, "upstream_invalid", "the billing service gave an unexpected answer")
        headers = dict(cache_control)
        if current_request_id() is None:
            headers["X-Request-Id"] = p.headers["X-Request-Id"]
        ra = resp.headers.get("retry-after")
        if ra is not None and resp.status in (429, 503) and ra.strip().isdigit():
            headers["Retry-After"] = ra.strip()
        if resp.headers.get("idempotent-replayed") == "true":
            headers["Idempotent-Replayed"] = "true"
        if resp.status >= 400:
            self.stats.inc(f"proxy.upstream.status.{resp.status // 100}xx")
        return _response(resp.status, resp.content_type, headers, resp.body)


def _retry_after(resp: UpstreamResponse | None) -> float | None:
    if resp is None:
        return None
    raw = resp.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def _sub_path(scope: Mapping[str, Any]) -> str:
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope.get("path", ""))
    path = path.split("?", 1)[0]
    if not path.startswith(PREFIX + "/"):
        # Anything that reached this handler but is not spelt exactly like the prefix (percent-
        # encoded, different case, ...) is refused outright.
        raise PathRefused(400, "invalid_path", "the request path is not allowed")
    return path[len(PREFIX) :]
