"""The probe call: the one cheap signed request that says whether Vluna is there and accepts this
service's key. Readiness (``/readyz``) makes it; start-up checks can reuse ``VlunaProbe`` or
``probe_call`` as they are.

The call is ``list_feature_families`` (``GET /mgt/v1/feature-families``), signed and without
binding headers. Every Vluna server accepts it as it is: the 0.3.2 API, and the open-source server,
which refuses unbound catalog calls (401 ``AUTH.MISSING_SERVICE_BINDINGS``) but lists feature
families, features, meters, plans and billing accounts without a binding (recorded in
``spec/vluna-api/recorded/README.md``). It needs no principal either, so a probe never creates a
billing account (a bound call for a new principal would, and fails once with a 500 on that
server). Its answer is small: a realm has a handful of feature families.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Literal

from bff.observability import metrics
from bff.observability.context import current_request_id
from bff.settings import Settings

log = logging.getLogger("bff.readiness")

PROBE_OPERATION = "list_feature_families"

ProbeResult = Literal["ok", "rejected", "unreachable"]


async def probe_call(client: Any, timeout: float) -> None:
    """Make the probe call with an SDK ``ServiceClient`` in raise mode; raises what the SDK
    raises (``VlunaAIError``), or ``asyncio.TimeoutError`` after ``timeout`` seconds."""
    from vlunaai import RequestContext

    await asyncio.wait_for(
        getattr(client, PROBE_OPERATION)(
            context=RequestContext(request_id=current_request_id(), request_timeout_seconds=timeout),
        ),
        timeout,
    )


class VlunaProbe:
    """Runs the probe call; built lazily, shares the issuer's SDK client when it can."""

    def __init__(self, settings: Settings, issuer: Any) -> None:
        self._settings = settings
        self._issuer = issuer
        self._client: Any = None
        self._owns = False

    def _get_client(self) -> Any:
        if self._client is None:
            shared = getattr(self._issuer, "_client", None)
            if shared is not None and hasattr(shared, PROBE_OPERATION):
                self._client = shared
            else:
                self._client = build_probe_client(self._settings)
                self._owns = self._client is not None
        return self._client

    @property
    def configured(self) -> bool:
        return self._get_client() is not None

    async def check(self, timeout: float) -> ProbeResult:
        """``ok``; ``rejected`` (401/403: wrong key, secret or realm); ``unreachable`` (anything
        else: connection, timeout, 5xx, 429)."""
        from vlunaai import VlunaAIError

        started = time.perf_counter()
        outcome = "error"
        result: ProbeResult = "unreachable"
        try:
            await probe_call(self._get_client(), timeout)
            outcome, result = "ok", "ok"
        except VlunaAIError as exc:
            status = getattr(exc, "status", None)
            if status in (401, 403):
                outcome, result = "rejected", "rejected"
            else:
                outcome = "unavailable"
            log.warning(
                "readiness: Vluna check failed: %s status=%s code=%s",
                type(exc).__name__,
                status,
                getattr(exc, "code", None),
            )
        except (OSError, asyncio.TimeoutError) as exc:
            outcome = "unavailable"
            log.warning("readiness: Vluna check failed: %s", type(exc).__name__)
        finally:
            metrics.observe_upstream(PROBE_OPERATION, outcome, time.perf_counter() - started)
        return result

    async def aclose(self) -> None:
        if self._owns and self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()


def build_probe_client(settings: Settings) -> Any:
    """A raise-mode SDK service client without retries, or None when Vluna is not configured."""
    v = settings.vluna
    if not (v.realm_id and v.service_key_id and v.service_key_secret):
        return None
    import httpx
    from vlunaai import ServiceClientOptions, ServiceKeyCredentials, VlunaAIConfig, create_service_client

    from bff.observability.upstream import PropagatingTransport

    return create_service_client(
        ServiceClientOptions(
            config=VlunaAIConfig(base_url=v.base_url, realm_id=v.realm_id, timeout_seconds=v.timeout_sec),
            service_key=ServiceKeyCredentials(
                key_id=v.service_key_id, secret=v.service_key_secret.get_secret_value()
            ),
            error_mode="raise",
            max_retries=0,
            transport=PropagatingTransport(httpx.AsyncHTTPTransport()),
        )
    )
