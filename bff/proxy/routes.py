"""The API proxy: ``/vluna/api/v1/{path}`` for browsers and mobile apps (see service.py)."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from litestar import Request, route
from litestar.di import NamedDependency
from litestar.params import SkipValidation
from litestar.types import ASGIApp, ControllerRouterHandler

from bff.principals import Principal
from bff.proxy.answer import Answer
from bff.proxy.http1 import Http1Upstream
from bff.proxy.ratelimit import RateLimiter
from bff.proxy.service import PREFIX, ProxyService
from bff.proxy.upstream import AsgiUpstream, Upstream
from bff.redis_client import RedisBreaker, RedisClient
from bff.settings import Derived, Settings
from bff.stats import Stats
from bff.tokens.broker import TokenBroker

__all__ = ["PREFIX", "PROXY_ROUTES", "AsgiUpstream", "CallerProxy", "ProxyService", "build_proxy"]

# Request headers browsers may send to the proxy (CORS), and answer headers they may read.
CORS_ALLOW_HEADERS = ["content-type", "idempotency-key", "accept-language", "x-request-id", "if-none-match"]
CORS_EXPOSE_HEADERS = ["retry-after", "etag", "x-request-id", "idempotent-replayed"]


def build_proxy(
    settings: Settings,
    *,
    broker: TokenBroker,
    redis: RedisClient | None,
    stats: Stats,
    derived: Derived,
    breaker: RedisBreaker,
    upstream: Upstream | None = None,
) -> ProxyService:
    """The proxy over ``upstream`` (default: the HTTP/1.1 client of bff/proxy/http1.py to the derived
    upstream base URL), with its per-user rate limiter on ``redis`` (None: this process only)."""
    p = settings.proxy
    if upstream is None:
        upstream = Http1Upstream(
            derived.upstream_base_url,
            max_connections=p.pool_max_connections,
            keepalive_timeout=p.keepalive_timeout_sec,
            max_response_bytes=p.max_response_bytes,
        )
    c = settings.cache
    limiter = RateLimiter(
        settings.rate_limit,
        redis=redis,
        hmac_key=derived.hmac_key,
        prefix=c.key_prefix,
        realm_id=derived.realm_id,
        stats=stats,
        breaker=breaker,
    )
    return ProxyService(
        p,
        upstream=upstream,
        broker=broker,
        limiter=limiter,
        realm_id=derived.realm_id,
        default_scopes=derived.default_scopes,
        stats=stats,
    )


@dataclass(slots=True)  # (not frozen: built per request, and a frozen __init__ costs 2.5x)
class CallerProxy:
    """The proxy route's dependency ``proxy``: the proxy as the signed-in caller uses it (the
    caller authenticated and mapped while the dependency is resolved; see
    ``bff.app.dependencies``)."""

    service: ProxyService
    principal: Principal

    def handle(self, request: Request[Any, Any, Any]) -> Awaitable[Answer]:
        # The service's coroutine itself (no frame of its own on every proxied call).
        return self.service.handle(request, self.principal)


@route(f"{PREFIX}/{{sub:path}}", http_method=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def proxy_call(
    request: Request[Any, Any, Any], proxy: NamedDependency[SkipValidation[CallerProxy]]
) -> ASGIApp:
    # Annotated ASGIApp: a RawAnswer goes out as it is; a litestar Response (errors, 304) is
    # still converted by Litestar as usual.
    answer: ASGIApp = await proxy.handle(request)  # type: ignore[assignment]
    return answer


PROXY_ROUTES: list[ControllerRouterHandler] = [proxy_call]
"""``/vluna/api/v1/{path}``; it takes the dependency ``proxy`` (``CallerProxy``)."""
