"""Forwarding a prepared call to Vluna: the caller's platform token (memoised for a few
seconds), an upstream request built from scratch, retries within one deadline behind a circuit
breaker, and one re-issue of the token when Vluna answers 401.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from urllib.parse import urlencode

from bff.errors import (
    BffError,
    GatewayTimeout,
    ServiceUnavailable,
    UpstreamInvalid,
    UpstreamRejected,
    UpstreamUnreachable,
    parse_retry_after,
)
from bff.principals import Principal
from bff.proxy.breaker import BreakerOpen, CircuitBreaker
from bff.proxy.request import Prepared
from bff.proxy.upstream import (
    Timeouts,
    Upstream,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamTooLarge,
)
from bff.settings import ProxySettings
from bff.stats import Stats
from bff.telemetry import tracing
from bff.telemetry.metrics import observe_upstream
from bff.tokens.broker import TokenBroker, TokenEntry

RETRY_STATUSES = frozenset({502, 503, 504})
_MEMO_MAX_ENTRIES = 10_000


class TokenMemo:
    """The broker's answer, reused in-process for a few seconds (``proxy.token_memo_sec``): it
    saves a Redis round trip and a decryption on every proxied call. The caller is still
    authenticated on every request; the memo only skips re-reading the same token. The broker is
    asked again at least every ``token_memo_sec``, so its refresh-ahead still runs."""

    def __init__(self, broker: TokenBroker, ttl_sec: float, default_scopes: tuple[str, ...]) -> None:
        self._broker = broker
        self._ttl = ttl_sec
        self._scopes = default_scopes
        # (principal, user, scopes) -> (entry, reuse until)
        self._memo: dict[tuple[str, str, tuple[str, ...]], tuple[TokenEntry, float]] = {}

    async def token(self, principal: Principal, scopes: list[str] | None) -> TokenEntry:
        wanted = tuple(scopes) if scopes else self._scopes
        broker = self._broker
        if broker.has_l1:
            # The broker's first level (cache.l1) is as cheap as this memo and, unlike it, drops
            # a token signed out on another replica: no memo then.
            return await broker.get_token(principal, wanted)  # its failures are BffErrors
        key = (principal.principal_id, principal.user_id, wanted)
        now = time.monotonic()
        memo = self._memo.get(key)
        if memo is not None and memo[1] > now:
            return memo[0]
        entry = await broker.get_token(principal, wanted)
        if self._ttl > 0:
            left = entry.expires_at - broker.now() - 30  # never near the token's expiry
            if left > 0:
                if len(self._memo) >= _MEMO_MAX_ENTRIES:
                    self._memo.clear()
                self._memo[key] = (entry, now + min(self._ttl, left))
        return entry

    def forget(self, principal: Principal) -> None:
        """Drop this user's memoised tokens (on a 401 from Vluna, and on sign-out)."""
        for key in [k for k in self._memo if k[0] == principal.principal_id and k[1] == principal.user_id]:
            del self._memo[key]


class Forwarder:
    def __init__(
        self,
        settings: ProxySettings,
        *,
        upstream: Upstream,
        broker: TokenBroker,
        tokens: TokenMemo,
        realm_id: str,
        stats: Stats,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self._broker = broker
        self.tokens = tokens
        self._realm = realm_id
        self._stats = stats
        self.breaker = CircuitBreaker(
            getattr(upstream, "base_url", "vluna"),
            failure_threshold=settings.breaker_failure_threshold,
            open_sec=settings.breaker_open_sec,
            probe_timeout_sec=settings.total_timeout_sec,
            stats=stats,
        )
        self._operations: dict[tuple[str, str], str] = {}
        # The first attempt's bounds (the whole deadline still ahead), built once.
        self._first = _bounds(settings, settings.total_timeout_sec)

    async def forward(self, p: Prepared) -> UpstreamResponse:
        """Vluna's answer to the prepared call (any status but a 401), or a ``BffError``."""
        route = p.match.route.route
        scopes = route.scopes
        entry = await self.tokens.token(p.principal, scopes)
        operation = self._operation(p.method, route.path)
        resp = await self._attempts(operation, p, self._path_and_query(p, entry), self._headers(p, entry))
        if resp.status == 401:
            # The cached token is no longer accepted (revoked, key rotated): drop it, get a new
            # one, try once more.
            self._stats.inc("proxy.token.reissued")
            self.tokens.forget(p.principal)
            await self._broker.forget(p.principal, strict=False)
            entry = await self.tokens.token(p.principal, scopes)
            resp = await self._attempts(operation, p, self._path_and_query(p, entry), self._headers(p, entry))
            if resp.status == 401:
                # Not the browser's credential that failed: never answer 401 for it.
                raise UpstreamRejected("the billing service does not accept this service's tokens")
        return resp

    def _operation(self, method: str, path: str) -> str:
        # The metric label of a route, built once per route (a bounded set: the allowlist's).
        key = (method, path)
        operation = self._operations.get(key)
        if operation is None:
            operation = self._operations[key] = f"proxy {method} {path}"
        return operation

    def _headers(self, p: Prepared, entry: TokenEntry) -> dict[str, str]:
        # Built from scratch: the client contributes only the vetted headers in p.headers.
        headers = p.headers.copy()
        headers["Authorization"] = "Bearer " + entry.access_token
        headers["X-Realm-Id"] = self._realm
        headers["User-Agent"] = "vluna-bff"
        if entry.billing_account_id:
            headers["X-Billing-Account-ID"] = entry.billing_account_id
        if tracing.enabled():
            tracing.inject(headers)
        return headers

    @staticmethod
    def _path_and_query(p: Prepared, entry: TokenEntry) -> str:
        if p.match.route.route.account_query:
            if not entry.billing_account_id:
                raise UpstreamRejected("no billing account is known for this user")
            return (
                p.path_and_query
                + "?"
                + urlencode([*p.query, ("billing_account_id", entry.billing_account_id)])
            )
        return p.path_and_query + "?" + urlencode(p.query) if p.query else p.path_and_query

    async def _attempts(
        self, operation: str, p: Prepared, path_and_query: str, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.total_timeout_sec
        attempt = 0
        while True:
            try:
                self.breaker.before()
            except BreakerOpen as exc:
                raise ServiceUnavailable(
                    "the billing service is unavailable",
                    retry_after=exc.retry_after,
                    code="upstream_unavailable",
                ) from None
            if attempt == 0:
                timeouts = self._first
            else:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise GatewayTimeout("the billing service did not answer in time")
                timeouts = _bounds(s, remaining)
            self._stats.inc("proxy.upstream.requests")
            failure: BffError | None = None
            resp: UpstreamResponse | None = None
            started = loop.time()
            try:
                resp = await self.upstream.send(p.method, path_and_query, headers, p.body, timeouts)
            except UpstreamTooLarge:
                self.breaker.success()
                self._stats.inc("proxy.upstream.errors")
                observe_upstream(operation, "error", loop.time() - started, "too_large")
                raise UpstreamInvalid("the billing service answered too much") from None
            except UpstreamTimeout:
                failure = GatewayTimeout("the billing service did not answer in time")
            except UpstreamError:
                failure = UpstreamUnreachable("the billing service could not be reached")
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
            self._stats.inc("proxy.upstream.errors")
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
            self._stats.inc("proxy.upstream.retries")
            await asyncio.sleep(delay)


def _bounds(s: ProxySettings, remaining: float) -> Timeouts:
    """An attempt's connect, read and total bounds with ``remaining`` seconds of the deadline left."""
    connect, read = min(s.connect_timeout_sec, remaining), min(s.read_timeout_sec, remaining)
    return Timeouts(connect=connect, read=read, total=remaining)


def _retry_after(resp: UpstreamResponse | None) -> float | None:
    if resp is None or "retry-after" not in resp.headers:
        return None
    return parse_retry_after(resp.headers)
