"""The application factory: settings in, a Litestar app with every part wired out.

Later features (the API proxy, metrics, health) plug in as more route handlers on the same
``Services``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.exceptions import HTTPException
from litestar.types import ControllerRouterHandler
from redis.asyncio.cluster import RedisCluster

from bff.auth.bearer import BearerAuthenticator, CookieAuthenticator
from bff.auth.chain import AuthChain
from bff.auth.hook import HookAuthenticator
from bff.auth.identity import Authenticator
from bff.auth.introspection import IntrospectionAuthenticator
from bff.auth.jwks import CompositeKeySource, JwksKeySource, KeySource, StaticKeySource
from bff.auth.jwt import JwtVerifier
from bff.errors import BffError
from bff.hooks import load_hook
from bff.observability.metrics import MeteredStats
from bff.observability.upstream import MeteredIssuer, ObservedPrincipalMapper, PropagatingTransport
from bff.openapi import openapi_config
from bff.principals import PrincipalMapper
from bff.redis_client import RedisBreaker, make_redis, redis_target
from bff.settings import Settings, SettingsError, api_base_url, origin_problem, parse_key_spec
from bff.stats import Stats
from bff.tokens.broker import BrokerConfig, TokenBroker
from bff.tokens.cache import MemoryCache, RedisCache, ResilientCache
from bff.tokens.crypto import TokenCipher
from bff.tokens.issuer import SdkTokenIssuer, TokenIssuer
from bff.tokens.keys import CacheKeys
from bff.tokens.l1 import L1Cache
from bff.tokens.limits import IssuanceLimiter
from bff.tokens.lock import Notifier, RedisLock, ShardedNotifier, Waiters

log = logging.getLogger("bff")


@dataclass
class Services:
    settings: Settings
    auth: AuthChain
    mapper: PrincipalMapper
    broker: TokenBroker
    stats: Stats
    issuer: TokenIssuer
    http: httpx.AsyncClient
    redis: Any | None
    notifier: Waiters | None
    # One breaker for every use of Redis in this process (cache, lock, limits, rate limits).
    breaker: RedisBreaker
    owns_http: bool
    owns_redis: bool
    realm_id: str = ""
    api_base_url: str = ""  # Vluna's /api/v1 as apps reach it (GET /vluna/token tells them)
    proxy: Any = None  # bff.proxy.ProxyService when proxy.enabled
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
    redis: Any | None = None,
    http: httpx.AsyncClient | None = None,
    dev_keys: KeySource | None = None,
    realm_id: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Services:
    stats = MeteredStats()
    owns_http = http is None
    http = http or httpx.AsyncClient(timeout=5.0, follow_redirects=False)
    realm = realm_id or settings.vluna.realm_id or settings.dev.realm_id
    c = settings.cache
    hmac_key = c.hmac_key.get_secret_value().encode() if c.hmac_key else secrets.token_bytes(32)
    keys = CacheKeys(hmac_key, c.key_prefix, realm)
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
        target=redis_target(c.redis),
    )
    cluster = isinstance(redis, RedisCluster)
    lock = RedisLock(redis, keys, sharded=cluster) if redis is not None else None
    notifier: Waiters | None = None
    if cluster:
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
        if c.l1.enabled and redis is not None and not c.redis.cluster and hasattr(redis, "pubsub")
        else None
    )
    if issuer is None:
        v = settings.vluna
        assert v.realm_id and v.service_key_id and v.service_key_secret
        issuer = SdkTokenIssuer.create(
            base_url=v.base_url,
            realm_id=v.realm_id,
            key_id=v.service_key_id,
            secret=v.service_key_secret.get_secret_value(),
            session_ttl_sec=settings.tokens.session_ttl_sec,
            timeout_sec=v.timeout_sec,
            max_retries=v.max_retries,
            transport=PropagatingTransport(httpx.AsyncHTTPTransport()),
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
        http=http,
        redis=redis,
        notifier=notifier,
        breaker=breaker,
        owns_http=owns_http,
        owns_redis=owns_redis,
        realm_id=realm,
        api_base_url=api_base_url(settings),
        l1=l1,
    )


def error_body(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message}


def _bff_error(request: Request[Any, Any, Any], exc: BffError) -> Response[Any]:
    return Response(
        error_body(exc.code, exc.message),
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


def create_app(
    settings: Settings,
    *,
    issuer: TokenIssuer | None = None,
    redis: Any | None = None,
    http: httpx.AsyncClient | None = None,
    dev_keys: KeySource | None = None,
    realm_id: str | None = None,
    extra_routes: Sequence[ControllerRouterHandler] = (),
    proxy_upstream: Any = None,
    on_shutdown: Sequence[Any] = (),
    clock: Callable[[], float] = time.time,
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
        settings, issuer=issuer, redis=redis, http=http, dev_keys=dev_keys, realm_id=realm_id, clock=clock
    )
    if settings.proxy.enabled:
        from bff.proxy.routes import build_proxy

        realm = realm_id or settings.vluna.realm_id or settings.dev.realm_id
        services.proxy = build_proxy(settings, services, realm, upstream=proxy_upstream)

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
            if services.owns_redis and services.redis is not None:
                with contextlib.suppress(Exception):
                    await services.redis.aclose()
            if services.owns_http:
                await services.http.aclose()
            for fn in on_shutdown:
                await fn()
            log.info("Application shutdown complete (pools closed)")

    s = settings.server
    cors = (
        CORSConfig(
            allow_origins=list(s.cors_allow_origins),
            allow_methods=["GET", "DELETE", "POST"] if settings.proxy.enabled else ["GET", "DELETE"],
            allow_headers=[
                "authorization",
                settings.auth.cookie.csrf_header.lower(),
                *_proxy_cors(settings)[0],
            ],
            expose_headers=_proxy_cors(settings)[1],
            allow_credentials=True,
        )
        if s.cors_allow_origins
        else None
    )
    app = Litestar(
        route_handlers=[*token_routes(), *client_routes(), *_proxy_routes(settings), *extra_routes],
        lifespan=[lifespan],
        exception_handlers={BffError: _bff_error, HTTPException: _http_error, Exception: _unexpected},
        cors_config=cors,
        debug=False,
        logging_config=None,
        openapi_config=openapi_config(settings),
    )
    app.state.services = services
    from bff import cors_credentials, http_guard
    from bff.observability.setup import instrument

    if cors is not None:
        cors_credentials.install(app)
    # Inside the observability wrapper, so refused requests are still logged and counted.
    http_guard.install(
        app, max_header_bytes=s.max_header_bytes, body_read_timeout_sec=s.body_read_timeout_sec
    )
    instrument(app, settings, services)
    return app


def _proxy_routes(settings: Settings) -> list[ControllerRouterHandler]:
    from bff.proxy.routes import proxy_routes

    return proxy_routes() if settings.proxy.enabled else []


def _proxy_cors(settings: Settings) -> tuple[list[str], list[str]]:
    from bff.proxy.routes import CORS_ALLOW_HEADERS, CORS_EXPOSE_HEADERS

    return (CORS_ALLOW_HEADERS, CORS_EXPOSE_HEADERS) if settings.proxy.enabled else ([], [])
