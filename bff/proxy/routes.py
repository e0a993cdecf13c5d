"""The API proxy: ``/vluna/api/v1/{path}`` for browsers and mobile apps (see service.py)."""

from __future__ import annotations

import secrets
from typing import Any

from litestar import Request, route
from litestar.types import ASGIApp, ControllerRouterHandler

from bff.proxy.config import derive_upstream_base
from bff.proxy.ratelimit import RateLimiter
from bff.proxy.service import PREFIX, ProxyService
from bff.proxy.upstream import AiohttpUpstream, AsgiUpstream, Upstream

__all__ = ["PREFIX", "AsgiUpstream", "ProxyService", "build_proxy", "proxy_routes"]

# Request headers browsers may send to the proxy (CORS), and answer headers they may read.
CORS_ALLOW_HEADERS = ["content-type", "idempotency-key", "accept-language", "x-request-id", "if-none-match"]
CORS_EXPOSE_HEADERS = ["retry-after", "etag", "x-request-id", "idempotent-replayed"]


def build_proxy(
    settings: Any, services: Any, realm_id: str, upstream: Upstream | None = None
) -> ProxyService:
    p = settings.proxy
    if upstream is None:
        upstream = AiohttpUpstream(
            derive_upstream_base(p, settings.vluna.base_url),
            max_connections=p.pool_max_connections,
            keepalive_timeout=p.keepalive_timeout_sec,
            max_response_bytes=p.max_response_bytes,
        )
    c = settings.cache
    limiter = RateLimiter(
        settings.rate_limit,
        redis=services.redis,
        hmac_key=c.hmac_key.get_secret_value().encode() if c.hmac_key else secrets.token_bytes(32),
        prefix=c.key_prefix,
        realm_id=realm_id,
        stats=services.stats,
        breaker=services.breaker,
    )
    return ProxyService(
        p,
        upstream=upstream,
        broker=services.broker,
        auth=services.auth,
        mapper=services.mapper,
        limiter=limiter,
        realm_id=realm_id,
        default_scopes=tuple(sorted(set(settings.tokens.default_scopes or settings.tokens.allowed_scopes))),
        stats=services.stats,
    )


@route(f"{PREFIX}/{{sub:path}}", http_method=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def proxy_call(request: Request[Any, Any, Any]) -> ASGIApp:
    # Annotated ASGIApp: a RawAnswer goes out as it is; a litestar Response (errors, 304) is
    # still converted by Litestar as usual.
    proxy: ProxyService = request.app.state.services.proxy
    answer: ASGIApp = await proxy.handle(request)  # type: ignore[assignment]
    return answer


def proxy_routes() -> list[ControllerRouterHandler]:
    return [proxy_call]
