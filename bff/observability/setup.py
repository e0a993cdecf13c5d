"""Wiring: what ``create_app`` and each server process call."""

from __future__ import annotations

from typing import Any

from litestar import Litestar

from bff.auth import oidc
from bff.observability import metrics, middleware, tracing
from bff.observability.context import IdHasher, set_id_hasher
from bff.observability.health import Readiness, health_routes
from bff.observability.logging import configure_logging, register_settings_secrets
from bff.settings import Settings
from bff.vluna_probe import VlunaProbe


def configure_process(settings: Settings) -> None:
    """Once per server process (the CLI, each server worker): logging and tracing."""
    o = settings.observability
    configure_logging(settings.server.log_level, o.log_format)
    register_settings_secrets(settings)
    tracing.setup_tracing(o.tracing)


def instrument(app: Litestar, settings: Settings, services: Any) -> None:
    """Probes and metrics routes, the request middleware, readiness state, shutdown hooks."""
    o = settings.observability
    hmac_key = settings.cache.hmac_key
    set_id_hasher(IdHasher.derived_from(hmac_key.get_secret_value().encode() if hmac_key else None))
    register_settings_secrets(settings)
    metrics.initialise_series()
    for outcome in oidc.FETCH_OUTCOMES:
        metrics.JWKS_FETCHES.labels(outcome=outcome)
    probe = VlunaProbe(settings, services.issuer) if o.readiness.check_vluna else None
    app.state.readiness = Readiness(settings, services.redis, probe, services.auth, services.breaker)
    for route in health_routes(settings):
        app.register(route)
    middleware.install(
        app,
        request_id_header=o.request_id_header,
        trust_request_id=o.trust_request_id,
        access_log_enabled=o.access_log,
        metrics_path=o.metrics.path,
    )

    async def close() -> None:
        if probe is not None:
            await probe.aclose()
        metrics.mark_this_worker_dead()

    app.on_shutdown.append(close)
