"""The API proxy: ``/vluna/api/v1/{path}`` for browsers and mobile apps (see service.py).

The route is a bare ASGI app mounted on the prefix (``ProxyEndpoint``): it authenticates and
maps the caller itself, with the same authenticator chain and principal mapper the ``tokens``
dependency uses, and sends the proxy's answer as it is. Litestar's router, CORS and exception
handling stay around it (refusals are ``BffError``\\s answered by the app's exception handlers);
what it skips is the per-request work of a Litestar HTTP route: the kwargs and signature models,
dependency resolution, an exit stack and the response conversion (about a third of a proxied
call's CPU in the service, canned upstream: bench/PROFILE.md).

What the HTTP route ``/vluna/api/v1/{sub:path}`` answered, the endpoint answers the same: its
methods, ``OPTIONS`` (204 with ``Allow``), 405 with Litestar's ``Allow`` for any other method,
404 for the bare prefix and for paths that only begin like it (``/vluna/api/v1x``), the
normalised ``scope["path"]`` and the route template ``/vluna/api/v1/{sub}`` that metrics, access
log lines and spans are labelled with.
"""

from __future__ import annotations

from typing import Any, cast

from litestar import Request
from litestar.enums import MediaType, ScopeType
from litestar.exceptions import ClientException, MethodNotAllowedException, NotFoundException
from litestar.handlers import ASGIRouteHandler
from litestar.types import Empty, Receive, Scope, Send

from bff.asgi_route import ExceptionHandlersOnce, not_routed, send_options
from bff.auth.chain import AuthChain
from bff.principals import PrincipalMapper
from bff.proxy.answer import RawAnswer
from bff.proxy.http1 import Http1Upstream
from bff.proxy.ratelimit import RateLimiter
from bff.proxy.service import PREFIX, ProxyService
from bff.proxy.upstream import AsgiUpstream, Upstream
from bff.redis_client import RedisBreaker, RedisClient
from bff.settings import Derived, Settings
from bff.stats import Stats
from bff.tokens.broker import TokenBroker

__all__ = [
    "PREFIX",
    "AsgiUpstream",
    "ProxyEndpoint",
    "ProxyService",
    "build_proxy",
    "proxy_routes",
]

# Request headers browsers may send to the proxy (CORS), and answer headers they may read.
CORS_ALLOW_HEADERS = ["content-type", "idempotency-key", "accept-language", "x-request-id", "if-none-match"]
CORS_EXPOSE_HEADERS = ["retry-after", "etag", "x-request-id", "idempotent-replayed"]

TEMPLATE = PREFIX + "/{sub}"
"""The route's label in metrics, access log lines and spans (Litestar's format of the path
``/vluna/api/v1/{sub:path}`` the proxy was declared with before)."""
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# What Litestar's router sent with a 405 for that route: its methods in the order of the set they
# were registered from (like Litestar, in this process's string hash order), then OPTIONS.
_ALLOW_405 = ", ".join([*set(METHODS), "OPTIONS"])
# What Litestar's automatic OPTIONS handler of that route answered with.
_ALLOW_OPTIONS = ", ".join(sorted([*METHODS, "OPTIONS"]))


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


class ProxyEndpoint:
    """``/vluna/api/v1/{path}`` as an ASGI app, for Litestar to mount on the prefix: the caller
    authenticated by ``auth`` and mapped by ``mapper`` (a refusal raises, as in the ``tokens``
    dependency), then ``service`` handles the call."""

    __slots__ = ("_auth", "_mapper", "_service")

    def __init__(self, service: ProxyService, *, auth: AuthChain, mapper: PrincipalMapper) -> None:
        self._service = service
        self._auth = auth
        self._mapper = mapper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Litestar's mount left what follows the prefix in scope["path"], with a "/" appended:
        # "/catalog/products/" for /vluna/api/v1/catalog/products.
        rest: str = scope["path"]
        if rest[:1] != "/" or rest == "/":
            # /vluna/api/v1x..., or the prefix alone: no route (the router's own 404 before).
            raise not_routed(scope, NotFoundException())
        if scope["type"] != ScopeType.HTTP:
            # A websocket: the router refused it on the HTTP route (no handler for it there).
            raise not_routed(scope, ClientException())
        method = scope["method"]
        if method not in METHODS and method != "OPTIONS":
            raise not_routed(scope, MethodNotAllowedException(headers={"allow": _ALLOW_405}))
        scope["path"] = PREFIX + rest[:-1]  # the normalised path, as the router gives a route
        scope["path_template"] = TEMPLATE
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        if method == "OPTIONS":
            await send_options(_ALLOW_OPTIONS, request, scope, receive, send)
            return
        principal = await self._mapper.map(await self._auth.authenticate(request))
        answer = await self._service.handle(request, principal)
        if type(answer) is RawAnswer:
            await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
            await send({"type": "http.response.body", "body": answer.body, "more_body": False})
        else:
            # Bodiless statuses (304 from the public cache, 204): converted as Litestar did.
            asgi_response = answer.to_asgi_response(app=None, request=request, media_type=MediaType.JSON)  # type: ignore[union-attr]
            await asgi_response(scope, receive, send)


class _ProxyRouteHandler(ExceptionHandlersOnce, ASGIRouteHandler):
    """Litestar's ASGI route handler, with its exception handlers resolved once, plus what
    ``Request.stream()`` asks the route handler of the request for: the request body size limit,
    resolved over the layers as an HTTP route handler does (the app's ``request_max_body_size``,
    10 MB by default: a bigger body is refused with 413 while it is read, as before, when
    ``proxy.max_body_bytes`` is above it)."""

    def resolve_request_max_body_size(self) -> int | None:
        for layer in reversed(self.ownership_layers):
            limit = getattr(layer, "request_max_body_size", Empty)
            if limit is not Empty:
                return cast("int | None", limit)
        return None


def proxy_routes(endpoint: ProxyEndpoint) -> list[ASGIRouteHandler]:
    """The proxy's route handler: ``endpoint`` mounted on ``/vluna/api/v1`` (one per app: it
    serves that app's proxy, caller authentication and principal mapping)."""

    return [_ProxyRouteHandler(PREFIX, is_mount=True, copy_scope=False, name="proxy_call")(endpoint.__call__)]
