"""``/healthz`` (alive), ``/readyz`` (ready to serve, with JSON detail), ``/metrics``.

None of them needs user authentication: they are for the platform (kubelet, Prometheus).

Readiness checks, cached for ``observability.readiness.cache_ttl_sec`` so that probes of many
kubelets and load balancers cost Vluna one call per interval per process:

- ``config``: the settings were loaded and validated (otherwise the process would not run);
- ``redis``: ``PING`` answers. When it does not, the service still works from its in-process
  cache, so ``readiness.redis_down`` decides: ``degraded`` (200, ``"redis": "degraded"``) or
  ``fail`` (503);
- ``redis_breaker``: ``closed`` (Redis is used) or ``open`` (this process has found Redis down
  and serves from its in-process cache until a PING answers again; see bff/redis_client.py);
  ``not_used`` with the memory backend. ``open`` counts like a failed ``redis`` check (degraded
  or failing per ``readiness.redis_down``), and is reported without waiting for the cache TTL;
- ``vluna``: the probe call of ``bff.vluna_probe`` (a signed, unbound ``list_feature_families``,
  which every Vluna server accepts) succeeds. A 401 or 403 (wrong key or realm) always fails;
  unreachable/5xx follows ``readiness.vluna_down``;
- ``auth``: a key can verify user tokens (``not_used`` without JWT sign-in). ``no_keys`` (503)
  while the JWKS (or discovery) has not given one and no PEM key or HS secret is configured:
  every sign-in would be refused, so the replica must not take traffic.

Each check that is not ``ok`` has its reason in ``reasons`` (host:port or URL and the cause).

``warnings`` lists configuration that works but is unsafe in production (``settings_warnings``),
without changing the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import SkipValidation
from litestar.types import ControllerRouterHandler

from bff import netdiag
from bff.proxy.service import ProxyService
from bff.redis_client import RedisBreaker, RedisClient
from bff.settings import Settings, settings_warnings
from bff.telemetry import metrics
from bff.vluna_probe import VlunaProbe

if TYPE_CHECKING:
    from bff.auth.chain import AuthChain

log = logging.getLogger("bff.readiness")

_LEVEL = {"ok": 1.0, "degraded": 0.5, "not_used": 1.0, "skipped": 1.0, "closed": 1.0}
NO_STORE = {"Cache-Control": "no-store"}


State = tuple[str, str | None]  # (state, reason when not ok)


class Readiness:
    def __init__(
        self,
        settings: Settings,
        redis: RedisClient | None,
        probe: VlunaProbe | None,
        auth: AuthChain | None = None,
        *,
        redis_target: str = "Redis",
        breaker: RedisBreaker | None = None,
    ) -> None:
        """``redis_target``: where Redis is, as log lines and reasons name it (no password)."""
        self._r = settings.observability.readiness
        self._redis = redis
        self._redis_target = redis_target
        self._breaker = breaker if redis is not None else None
        self._probe = probe
        self._auth = auth
        # Configuration that works but is unsafe in production (e.g. the memory cache outside dev
        # mode): reported in every answer, without changing the status.
        self._warnings = settings_warnings(settings)
        self._cached: tuple[float, int, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def _redis_state(self) -> State:
        if self._redis is None:
            return "not_used", None
        try:
            await asyncio.wait_for(self._redis.ping(), self._r.timeout_sec)
        except asyncio.TimeoutError:
            reason = f"{self._redis_target}: PING: no answer within {self._r.timeout_sec:g} s"
        except Exception as exc:  # any failure means: not reachable now
            reason = f"{self._redis_target}: PING: {netdiag.cause(exc).text}"
        else:
            return "ok", None
        log.warning("readiness: %s", reason)
        return ("degraded" if self._r.redis_down == "degraded" else "down"), reason

    async def _vluna_state(self) -> State:
        if not self._r.check_vluna or self._probe is None or not self._probe.configured:
            return "skipped", None
        result = await self._probe.check(self._r.timeout_sec)
        reason = None if result == "ok" else self._probe.last_error
        if result == "unreachable" and self._r.vluna_down == "degraded":
            return "degraded", reason
        return result, reason

    async def _auth_state(self) -> State:
        """Not ready while no key can verify a token (JWKS empty or unreachable, no static key)."""
        if self._auth is None:
            return "not_used", None
        problem = await self._auth.key_problem()
        return ("ok", None) if problem is None else ("no_keys", problem)

    def _breaker_state(self) -> str:
        return "not_used" if self._breaker is None else self._breaker.state

    def _fresh(self, cached: tuple[float, int, dict[str, Any]] | None) -> bool:
        """A cached answer is reused within its TTL, unless the breaker changed since."""
        return (
            cached is not None
            and time.monotonic() - cached[0] < self._r.cache_ttl_sec
            and cached[2]["checks"].get("redis_breaker") == self._breaker_state()
        )

    async def check(self) -> tuple[int, dict[str, Any]]:
        cached = self._cached
        if cached is not None and self._fresh(cached):
            return cached[1], {**cached[2], "cached": True}
        async with self._lock:
            cached = self._cached
            if cached is not None and self._fresh(cached):
                return cached[1], {**cached[2], "cached": True}
            (redis_state, redis_why), (vluna_state, vluna_why), (auth_state, auth_why) = await asyncio.gather(
                self._redis_state(), self._vluna_state(), self._auth_state()
            )
            breaker_state = self._breaker_state()
            checks = {
                "config": "ok",
                "redis": redis_state,
                "redis_breaker": breaker_state,
                "vluna": vluna_state,
                "auth": auth_state,
            }
            reasons = {
                name: why
                for name, why in (("redis", redis_why), ("vluna", vluna_why), ("auth", auth_why))
                if why is not None
            }
            if breaker_state == "open":
                reasons["redis_breaker"] = (
                    f"{self._redis_target}: commands failed and PING did not answer; "
                    "serving from the in-process cache"
                )
            breaker_ok = breaker_state != "open"
            failing = [
                k for k, v in checks.items() if v not in _LEVEL and (breaker_ok or k != "redis_breaker")
            ]
            degraded = [k for k, v in checks.items() if v == "degraded"]
            if not breaker_ok:
                (degraded if self._r.redis_down == "degraded" else failing).append("redis_breaker")
            status = "not_ready" if failing else ("degraded" if degraded else "ready")
            code = 503 if failing else 200
            for name, state in checks.items():
                level = _LEVEL.get(state, 0.0)
                if name == "redis_breaker" and not breaker_ok:
                    level = 0.5 if self._r.redis_down == "degraded" else 0.0
                metrics.READINESS.labels(check=name).set(level)
            body = {
                "status": status,
                "checks": checks,
                **({"reasons": reasons} if reasons else {}),
                "checked_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            }
            if self._warnings:
                body["warnings"] = list(self._warnings)
            self._cached = (time.monotonic(), code, body)
            return code, {**body, "cached": False}


def refresh_breaker_gauge(proxy: ProxyService | None) -> None:
    """The proxy's breaker as of now (open turns half-open by time alone, without an event;
    the Redis breaker's gauge follows its state changes as they happen)."""
    if proxy is None:
        return
    with contextlib.suppress(Exception):
        metrics.set_breaker_state(metrics.PROXY_BREAKER, str(proxy.breaker_state()["state"]))


def health_routes(settings: Settings) -> list[ControllerRouterHandler]:
    m = settings.observability.metrics

    @get("/healthz", sync_to_thread=False, tags=["probes"], operation_id="healthz", summary="Liveness")
    def healthz() -> Response[dict[str, str]]:
        return Response({"status": "ok"}, headers=NO_STORE)

    @get(
        "/readyz",
        tags=["probes"],
        operation_id="readyz",
        summary="Readiness, with the state and reason of each check",
        responses={
            503: ResponseSpec(
                data_container=dict[str, Any], description="not ready (same body)", generate_examples=False
            )
        },
    )
    async def readyz(readiness: NamedDependency[SkipValidation[Readiness]]) -> Response[dict[str, Any]]:
        code, body = await readiness.check()
        return Response(body, status_code=code, headers=NO_STORE)

    routes: list[ControllerRouterHandler] = [healthz, readyz]
    if m.enabled and m.port is None:

        @get(m.path, sync_to_thread=False, include_in_schema=False)
        def metrics_endpoint(
            proxy_service: NamedDependency[SkipValidation[ProxyService | None]],
        ) -> Response[bytes]:
            refresh_breaker_gauge(proxy_service)
            body, content_type = metrics.render()
            return Response(body, media_type=content_type, headers=NO_STORE)

        routes.append(metrics_endpoint)
    return routes
