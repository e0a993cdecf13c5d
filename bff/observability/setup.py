"""Wiring: what ``create_app`` and each server process call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from litestar.types import ASGIApp, ControllerRouterHandler
from vlunaai import ServiceClient

from bff.auth import oidc
from bff.auth.chain import AuthChain
from bff.observability import middleware
from bff.observability.health import Readiness, health_routes
from bff.observability.logging import configure_logging, register_settings_secrets
from bff.redis_client import RedisBreaker, RedisClient
from bff.settings import Settings
from bff.telemetry import metrics, tracing
from bff.telemetry.context import IdHasher, set_id_hasher
from bff.vluna_probe import VlunaProbe


def configure_process(settings: Settings) -> None:
    """Once per server process (the CLI, each server worker): logging and tracing."""
    o = settings.observability
    configure_logging(settings.server.log_level, o.log_format)
    register_settings_secrets(settings)
    tracing.setup_tracing(o.tracing)


@dataclass
class Instrumentation:
    """What the app declares for observability: probe and metrics routes, the readiness state
    they answer from, the outermost request middleware, and a shutdown hook."""

    routes: list[ControllerRouterHandler]
    readiness: Readiness
    middleware: Callable[[ASGIApp], ASGIApp]

    async def close(self) -> None:
        metrics.mark_this_worker_dead()


def instrument(
    settings: Settings,
    *,
    hmac_key: bytes,
    redis: RedisClient | None,
    vluna: ServiceClient | None,
    auth: AuthChain,
    redis_target: str,
    breaker: RedisBreaker | None = None,
) -> Instrumentation:
    """Process-wide telemetry state (the id hasher, series initialised) and the parts above."""
    o = settings.observability
    set_id_hasher(IdHasher.derived_from(hmac_key))
    register_settings_secrets(settings)
    metrics.initialise_series()
    for outcome in oidc.FETCH_OUTCOMES:
        metrics.JWKS_FETCHES.labels(outcome=outcome)
    probe = VlunaProbe(vluna) if o.readiness.check_vluna else None

    def observability_middleware(app: ASGIApp) -> ASGIApp:
        return middleware.ObservabilityMiddleware(
            app,
            request_id_header=o.request_id_header,
            trust_request_id=o.trust_request_id,
            access_log_enabled=o.access_log,
            metrics_path=o.metrics.path,
        )

    return Instrumentation(
        routes=health_routes(settings),
        readiness=Readiness(settings, redis, probe, auth, redis_target=redis_target, breaker=breaker),
        middleware=observability_middleware,
    )
