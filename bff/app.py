"""The application factory: settings in, one ``Litestar`` declaration out.

``build_services`` wires the parts (auth chain, principal mapper, token broker, the one Vluna
client, proxy); ``create_app`` declares the app in one call: route handlers, the dependencies
they receive by name (``principal`` per request; ``broker``, ``proxy``, ``settings``,
``derived``, ``readiness``), exception handlers, the lifespan, and the ASGI middleware around
the whole app (observability, the request guard, the CORS credentials guard).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import httpx
from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, ControllerRouterHandler, Method
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from vlunaai import ServiceClient

from bff.auth.bearer import BearerAuthenticator, CookieAuthenticator
from bff.auth.chain import AuthChain
from bff.auth.hook import HookAuthenticator
from bff.auth.identity import Authenticator
from bff.auth.introspection import IntrospectionAuthenticator
from bff.auth.jwks import CompositeKeySource, JwksKeySource, KeySource, StaticKeySource
from bff.auth.jwt import JwtVerifier
from bff.cors_credentials import CredentialsOnlyForAllowedOrigins
from bff.errors import BffError
from bff.hooks import load_hook
from bff.http_guard import RequestGuard
from bff.observability.health import Readiness
from bff.observability.setup import instrument
from bff.openapi import openapi_config
from bff.principals import ObservedPrincipalMapper, PrincipalMapper
from bff.proxy.service import ProxyService
from bff.proxy.upstream import Upstream
from bff.redis_client import RedisBreaker, RedisClient, make_redis, redis_target
from bff.routes.token import CallerTokens, TokenEndpoint, TokenService
from bff.settings import Derived, Settings, SettingsError, derive, origin_problem, parse_key_spec
from bff.stats import Stats
from bff.telemetry.metrics import MeteredStats
from bff.tokens.broker import BrokerConfig, TokenBroker
from bff.tokens.cache import MemoryCache, RedisCache, ResilientCache
from bff.tokens.crypto import TokenCipher
from bff.tokens.issuer import MeteredIssuer, SdkTokenIssuer, TokenIssuer, first_call_retries
from bff.tokens.keys import CacheKeys
from bff.tokens.l1 import L1Cache
from bff.tokens.limits import IssuanceLimiter
from bff.tokens.lock import Notifier, RedisLock, ShardedNotifier, Waiters
from bff.vluna import create_vluna_client, vluna_transport

log = logging.getLogger("bff")


@dataclass
class Services:
    settings: Settings
    auth: AuthChain
    mapper: PrincipalMapper
    broker: TokenBroker
    stats: Stats
    issuer: TokenIssuer
    vluna: ServiceClient | None  # the one Vluna client: the issuer's and readiness's
    http: httpx.AsyncClient
    redis: RedisClient | None
    notifier: Waiters | None
    # One breaker for every use of Redis in this process (cache, lock, limits, rate limits).
    breaker: RedisBreaker
    owns_http: bool
    owns_redis: bool
    derived: Derived  # realm, HMAC key, default scopes, API base URLs: worked out once
    redis_target: str = "Redis"  # where Redis is, for log lines and readiness (no password)
    proxy: ProxyService | None = None  # when proxy.enabled
    l1: L1Cache | None = None  # the token cache's in-process first level (cache.l1)

    def __repr__(self) -> str:
        return f"Services(methods={self.auth.methods})"


def _verifier(settings: Settings, dev_keys: KeySource | None, http: httpx.AsyncClient) -> JwtVerifier:
    j = settings.auth.jwt
    sources: list[KeySource] = []
    # Fixed keys first: a token they verify never waits on (or fails with) the JWKS URL.
    if j.public_keys_pem:
        sources.append(StaticKeySource.from_pems(j.public_keys_pem))
    jwks: JwksKeySource | None = None
    if j.jwks_url or j.discovery:
        jwks = JwksKeySource(
            j.jwks_url,
            http,
            issuer=j.issuer,
            discovery=j.discovery,
            algorithms=j.algorithms,
            algorithms_explicit="algorithms" in j.model_fields_set,
            cache_ttl_sec=j.jwks_cache_ttl_sec,
            min_refresh_interval_sec=j.jwks_refresh_min_interval_sec,
        )
        sources.append(jwks)
    issuers = [j.issuer] if j.issuer else []
    audiences = list(j.audience)
    algorithms = list(j.algorithms)
    if dev_keys is not None:
        # The dev key is trusted only here, i.e. only when `vluna-bff dev` built the app.
        sources.insert(0, dev_keys)
        issuers.append(settings.dev.issuer)
        audiences.append(settings.dev.audience)
        if "ES256" not in algorithms:
            algorithms.append("ES256")
    return JwtVerifier(
        algorithms=algorithms,
        issuers=issuers,
        audiences=audiences,
        key_source=CompositeKeySource(sources) if sources else None,
        hs_secret=j.hs_secret.get_secret_value().encode() if j.hs_secret else None,
        leeway_sec=j.leeway_sec,
        required_claims=j.required_claims,
        cache_ttl_sec=j.verified_cache_ttl_sec,
        cache_max_entries=j.verified_cache_max_entries,
        jwks=jwks,
        static_keys=bool(j.public_keys_pem) or dev_keys is not None,
    )


def build_auth(settings: Settings, http: httpx.AsyncClient, dev_keys: KeySource | None = None) -> AuthChain:
    a = settings.auth
    methods = list(a.methods)
    if dev_keys is not None:
        for m in ("bearer", "cookie"):
            if m not in methods:
                methods.append(m)
    verifier = _verifier(settings, dev_keys, http) if {"bearer", "cookie"} & set(methods) else None
    chain: list[Authenticator] = []
    for method in methods:
        if method == "bearer":
            assert verifier is not None
            chain.append(BearerAuthenticator(verifier))
        elif method == "cookie":
            assert verifier is not None
            chain.append(
                CookieAuthenticator(verifier, a.cookie.name, a.cookie.csrf_header, a.cookie.csrf_value)
            )
        elif method == "introspection":
            chain.append(
                IntrospectionAuthenticator(
                    a.introspection, http, csrf_header=a.cookie.csrf_header, csrf_value=a.cookie.csrf_value
                )
            )
        elif method == "hook":
            assert a.hook.callable is not None
            chain.append(HookAuthenticator(load_hook(a.hook.callable)))
    return AuthChain(chain, verifier=verifier)


def _cipher(settings: Settings) -> TokenCipher:
    specs = settings.cache.encryption_keys
    if not specs:
        # Dev mode only (validation requires keys otherwise): entries die with the process anyway.
        return TokenCipher([("dev", os.urandom(32))])
    return TokenCipher([parse_key_spec(s.get_secret_value()) for s in specs])


def build_services(
    settings: Settings,
    *,
    issuer: TokenIssuer | None = None,
    redis: RedisClient | None = None,
    http: httpx.AsyncClient | None = None,
    dev_keys: KeySource | None = None,
    realm_id: str | None = None,
    clock: Callable[[], float] = time.time,
    vluna: ServiceClient | None = None,
) -> Services:
    stats = MeteredStats()
    owns_http = http is None
    http = http or httpx.AsyncClient(timeout=5.0, follow_redirects=False)
    derived = derive(settings, realm_id=realm_id)
    realm = derived.realm_id
    c = settings.cache
    keys = CacheKeys(derived.hmac_key, c.key_prefix, realm)
    target = redis_target(c.redis)
    owns_redis = False
    if c.backend == "redis" and redis is None:
        redis = make_redis(c.redis)
        owns_redis = True
    if c.backend != "redis":
        redis = None
    breaker = RedisBreaker(
        stats,
        redis,
        failures=c.redis.breaker_failures,
        ping_timeout_sec=c.redis.ping_timeout_sec,
        probe_interval_sec=c.redis.probe_interval_sec,
        target=target,
    )
    cluster = isinstance(redis, RedisCluster)
    lock = RedisLock(redis, keys, sharded=cluster) if redis is not None else None
    notifier: Waiters | None = None
    if isinstance(redis, RedisCluster):
        notifier = ShardedNotifier(redis, keys)
    elif redis is not None:
        notifier = Notifier(redis, keys)
    cache = ResilientCache(
        RedisCache(redis) if redis is not None else None,
        MemoryCache(c.memory_max_entries),
        breaker,
        retry_for_sec=settings.tokens.wait_timeout_sec,
    )
    l1 = (
        L1Cache(
            redis,
            c.key_prefix,
            stats,
            max_entries=c.l1.max_entries,
            max_ttl_sec=c.l1.max_ttl_sec,
            invalidation_window_sec=c.l1.invalidation_window_sec,
            heartbeat_sec=c.l1.heartbeat_sec,
        )
        # Not on a Redis Cluster: its pub/sub crosses nodes, and the heartbeat's proof needs one
        # server ordering the invalidations and the heartbeats (redis-py has no cluster pub/sub).
        if c.l1.enabled and isinstance(redis, Redis) and not c.redis.cluster
        else None
    )
    if vluna is None:
        vluna = create_vluna_client(settings.vluna, transport=vluna_transport(settings.vluna))
    if issuer is None:
        assert vluna is not None  # validation requires vluna.* outside dev mode, which injects one
        issuer = SdkTokenIssuer(
            vluna,
            settings.tokens.session_ttl_sec,
            first_call_retries=first_call_retries(settings.vluna.max_retries),
        )
    t = settings.tokens
    broker = TokenBroker(
        config=BrokerConfig(
            realm_id=realm,
            allowed_scopes=tuple(t.allowed_scopes),
            refresh_ahead_ratio=t.refresh_ahead_ratio,
            safety_margin_sec=t.safety_margin_sec,
            lock_ttl_sec=t.lock_ttl_sec,
            wait_timeout_sec=t.wait_timeout_sec,
            retry_after_sec=t.retry_after_sec,
        ),
        issuer=MeteredIssuer(issuer),
        cache=cache,
        cipher=_cipher(settings),
        keys=keys,
        breaker=breaker,
        stats=stats,
        lock=lock,
        notifier=notifier,
        limiter=IssuanceLimiter(
            t.issuance_limit, redis=redis, keys=keys, breaker=breaker, stats=stats, clock=clock
        ),
        l1=l1,
        clock=clock,
    )
    mapper = ObservedPrincipalMapper(
        settings.mapping, load_hook(settings.mapping.hook) if settings.mapping.hook else None
    )
    return Services(
        settings=settings,
        auth=build_auth(settings, http, dev_keys),
        mapper=mapper,
        broker=broker,
        stats=stats,
        issuer=issuer,
        vluna=vluna,
        http=http,
        redis=redis,
        notifier=notifier,
        breaker=breaker,
        owns_http=owns_http,
        owns_redis=owns_redis,
        derived=derived,
        redis_target=target,
        l1=l1,
    )


def error_body(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message}


def _bff_error(request: Request[Any, Any, Any], exc: BffError) -> Response[Any]:
    return Response(
        exc.body(),
        status_code=exc.status,
        headers={"Cache-Control": "no-store", **exc.headers},
    )


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status >= 500:
        log.error("error %d on %s %s", status, request.method, request.url.path)
        return Response(error_body("internal_error", "internal error"), status_code=500)
    code = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}.get(status, "http_error")
    return Response(error_body(code, str(exc.detail)), status_code=status, headers=exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # Type and route only: messages and tracebacks of arbitrary exceptions may carry secrets.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return Response(
        error_body("internal_error", "internal error"), status_code=500, headers={"Cache-Control": "no-store"}
    )


class BffApp(Litestar):
    """Litestar, plus ASGI middleware around the whole app (``outer_middleware``, outermost
    first). Litestar's own ``middleware=`` runs only for requests that reach a route handler;
    these also see 404/405 answers, CORS preflights and errors, which must be logged, counted,
    given a request id and held to the head and body limits like every other request."""

    def __init__(
        self, *, outer_middleware: Sequence[Callable[[ASGIApp], ASGIApp]] = (), **config: Any
    ) -> None:
        self._outer_middleware = tuple(outer_middleware)
        super().__init__(**config)

    def _create_asgi_handler(self) -> ASGIApp:
        handler = super()._create_asgi_handler()  # exception handlers, CORS
        for wrap in reversed(self._outer_middleware):
            handler = wrap(handler)
        return handler


def dependencies(services: Services, readiness: Readiness) -> dict[str, Provide]:
    """What handlers receive by name. For the documented token handlers (``TOKEN_ROUTES``, which
    the OpenAPI document describes), what they serve the caller with, bound to the caller's
    principal (authenticated and mapped while the dependency is resolved): ``tokens``
    (``CallerTokens``: the broker's work for this caller). An app serves the token route as an
    ASGI app that does the same work without resolving it (``bff.routes.token.TokenEndpoint``;
    tests/bff/test_app.py compares the two). For the probe and metrics routes: the ``readiness``
    state and the ``proxy_service``. (The proxy route takes none either: it is a bare ASGI app
    that authenticates and maps the caller with the same chain and mapper, see
    ``bff.proxy.routes.ProxyEndpoint``.)

    One dependency per handler, the principal inside it: Litestar resolves two or more
    dependencies of one batch in a task group per request (a principal beside the broker cost a
    proxied public-cache hit ~40% of its CPU in an in-process A/B), and a principal resolved as a
    dependency of its own, before a caller-bound one, cost ~2 us more per request (one more
    resolution: ~3% of a cache hit in bench.hit_cpu)."""
    auth, mapper, proxy = services.auth, services.mapper, services.proxy
    tokens = token_service(services)

    # The caller authenticated and mapped in the provider itself (no coroutine between: this is
    # every request's path). Failures are BffErrors (401, 403, 503), answered as such.
    async def provide_tokens(request: Request[Any, Any, Any]) -> CallerTokens:
        return CallerTokens(tokens, await mapper.map(await auth.authenticate(request)))

    def provide_proxy_service() -> ProxyService | None:
        return proxy

    def provide_readiness() -> Readiness:
        return readiness

    provided = {
        "tokens": Provide(provide_tokens),
        "proxy_service": Provide(provide_proxy_service, use_cache=True, sync_to_thread=False),
        "readiness": Provide(provide_readiness, use_cache=True, sync_to_thread=False),
    }
    assert set(provided) <= set(DEPENDENCY_NAMES)
    return provided


def token_service(services: Services) -> TokenService:
    """What the token routes work with (after the proxy is built: sign-out forgets its memo)."""
    return TokenService(
        broker=services.broker,
        proxy=services.proxy,
        allowed_scopes=services.settings.tokens.allowed_scopes,
        derived=services.derived,
    )


DEPENDENCY_NAMES = ("tokens", "proxy_service", "readiness")


def dependency_placeholders() -> dict[str, Provide]:
    """The same names with nothing behind them, for an app that only describes its routes (the
    OpenAPI document): handlers' dependencies are then not taken for query parameters."""

    def placeholder(name: str) -> Provide:
        def unavailable() -> None:  # one function per name: Litestar keys providers by function
            raise RuntimeError(f"{name}: this app only describes its routes")

        return Provide(unavailable, sync_to_thread=False)

    return {name: placeholder(name) for name in DEPENDENCY_NAMES}


def create_app(
    settings: Settings,
    *,
    issuer: TokenIssuer | None = None,
    redis: RedisClient | None = None,
    http: httpx.AsyncClient | None = None,
    dev_keys: KeySource | None = None,
    realm_id: str | None = None,
    extra_routes: Sequence[ControllerRouterHandler] = (),
    proxy_upstream: Upstream | None = None,
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
    clock: Callable[[], float] = time.time,
    vluna: ServiceClient | None = None,
) -> Litestar:
    from bff.routes.token import token_routes
    from bff.web import client_routes

    # validate_settings refuses these; an app built from unchecked settings must not either, since
    # "*" would grant credentials to every site.
    bad = [
        (f"server.cors_allow_origins[{i}]", p)
        for i, o in enumerate(settings.server.cors_allow_origins)
        if (p := origin_problem(o))
    ]
    if bad:
        raise SettingsError(bad)
    services = build_services(
        settings,
        issuer=issuer,
        redis=redis,
        http=http,
        dev_keys=dev_keys,
        realm_id=realm_id,
        clock=clock,
        vluna=vluna,
    )
    proxy_handlers: list[ControllerRouterHandler] = []
    if settings.proxy.enabled:
        from bff.proxy.routes import ProxyEndpoint, build_proxy, proxy_routes

        services.proxy = build_proxy(
            settings,
            broker=services.broker,
            redis=services.redis,
            stats=services.stats,
            derived=services.derived,
            breaker=services.breaker,
            upstream=proxy_upstream,
        )
        proxy_handlers += proxy_routes(
            ProxyEndpoint(services.proxy, auth=services.auth, mapper=services.mapper)
        )
    telemetry = instrument(
        settings,
        hmac_key=services.derived.hmac_key,
        redis=services.redis,
        vluna=services.vluna,
        auth=services.auth,
        redis_target=services.redis_target,
        breaker=services.breaker,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if services.notifier is not None:
            await services.notifier.start()
        if services.l1 is not None:
            await services.l1.start()
        if services.proxy is not None:
            await services.proxy.start()
        try:
            yield
        finally:
            await services.broker.aclose()
            if services.proxy is not None:
                with contextlib.suppress(Exception):
                    await services.proxy.aclose()
            if services.notifier is not None:
                await services.notifier.stop()
            if services.l1 is not None:
                await services.l1.stop()
            await services.breaker.aclose()
            with contextlib.suppress(Exception):
                await services.issuer.aclose()
            if services.vluna is not None:
                with contextlib.suppress(Exception):
                    await services.vluna.close()
            if services.owns_redis and services.redis is not None:
                with contextlib.suppress(Exception):
                    await services.redis.aclose()
            if services.owns_http:
                await services.http.aclose()
            for fn in on_shutdown:
                await fn()
            log.info("Application shutdown complete (pools closed)")

    s = settings.server
    cors = cors_config(settings)

    # (Both speak plain ASGI, with dict messages: cast to Litestar's typed ASGIApp.)
    def request_guard(app: ASGIApp) -> ASGIApp:
        guard = RequestGuard(
            app, max_header_bytes=s.max_header_bytes, body_read_timeout_sec=s.body_read_timeout_sec
        )
        return cast("ASGIApp", guard)

    def credentials_guard(app: ASGIApp) -> ASGIApp:
        return cast("ASGIApp", CredentialsOnlyForAllowedOrigins(app))

    return BffApp(
        route_handlers=[
            # An ASGI app of this app's services (TOKEN_ROUTES describe it): see token_routes.
            *token_routes(TokenEndpoint(token_service(services), auth=services.auth, mapper=services.mapper)),
            *client_routes(),
            *proxy_handlers,
            *extra_routes,
            *telemetry.routes,
        ],
        dependencies=dependencies(services, telemetry.readiness),
        # Outermost first: every request is logged and counted (also those the guard refuses);
        # credentials are stripped from CORS answers that grant no origin.
        outer_middleware=[
            telemetry.middleware,
            request_guard,
            *([credentials_guard] if cors is not None else []),
        ],
        exception_handlers={BffError: _bff_error, HTTPException: _http_error, Exception: _unexpected},
        cors_config=cors,
        lifespan=[lifespan],
        on_shutdown=[telemetry.close],
        state=State({"services": services, "readiness": telemetry.readiness}),
        debug=False,
        logging_config=None,
        openapi_config=openapi_config(settings),
    )


def cors_config(settings: Settings) -> CORSConfig | None:
    """Cross-origin access with credentials for ``server.cors_allow_origins`` (None: none), with
    the proxy's methods and headers when the proxy is on."""
    origins = settings.server.cors_allow_origins
    if not origins:
        return None
    methods: list[Method | Literal["*"]] = ["GET", "DELETE"]
    allow = ["authorization", settings.auth.cookie.csrf_header.lower()]
    expose: list[str] = []
    if settings.proxy.enabled:
        from bff.proxy.routes import CORS_ALLOW_HEADERS, CORS_EXPOSE_HEADERS

        methods.append("POST")
        allow += CORS_ALLOW_HEADERS
        expose += CORS_EXPOSE_HEADERS
    return CORSConfig(
        allow_origins=list(origins),
        allow_methods=methods,
        allow_headers=allow,
        expose_headers=expose,
        allow_credentials=True,
    )
