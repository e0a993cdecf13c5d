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
import logging
import time
from typing import Literal

from vlunaai import APIStatusError, RequestContext, ServiceClient, VlunaAIError

from bff import netdiag
from bff.telemetry import metrics
from bff.telemetry.context import current_request_id, quiet_http
from bff.vluna import key_rejected

log = logging.getLogger("bff.readiness")

PROBE_OPERATION = "list_feature_families"

ProbeResult = Literal["ok", "rejected", "unreachable"]


async def probe_call(client: ServiceClient, timeout: float) -> None:
    """Make the probe call with the SDK ``ServiceClient`` (raise mode); raises what the SDK
    raises (``VlunaAIError``), or ``asyncio.TimeoutError`` after ``timeout`` seconds."""
    await asyncio.wait_for(
        client.list_feature_families(
            context=RequestContext(request_id=current_request_id(), request_timeout_seconds=timeout),
        ),
        timeout,
    )


class VlunaProbe:
    """Runs the probe call with the app's one Vluna client (``bff.vluna``), the issuer's too;
    None when Vluna is not configured."""

    def __init__(self, client: ServiceClient | None) -> None:
        self._client = client
        self.last_error: str | None = None

    @property
    def configured(self) -> bool:
        return self._client is not None

    async def check(self, timeout: float) -> ProbeResult:
        """``ok``; ``rejected`` (the key, its secret or the realm refused: 401/403);
        ``unreachable`` (anything else: no answer, timeout, 5xx, 429, ...)."""
        client = self._client
        if client is None:
            self.last_error = "Vluna is not configured"
            return "unreachable"
        started = time.perf_counter()
        outcome = "error"
        result: ProbeResult = "unreachable"
        # The call's own httpx line goes to debug, like the probe's access log line.
        quiet = quiet_http.set(True)
        try:
            await probe_call(client, timeout)
            outcome, result = "ok", "ok"
            self.last_error = None
        except APIStatusError as exc:
            if key_rejected(exc):
                outcome, result = "rejected", "rejected"
            else:
                outcome = "unavailable"
            self.last_error = f"signed {PROBE_OPERATION}: " + f"HTTP {exc.status} {exc.code or ''}".rstrip()
            log.warning(
                "readiness: Vluna check failed: %s status=%s code=%s",
                type(exc).__name__,
                exc.status,
                exc.code,
            )
        except (VlunaAIError, OSError, asyncio.TimeoutError) as exc:
            # No answer (APIConnectionError, APITimeoutError) or none in time.
            outcome = "unavailable"
            self.last_error = f"signed {PROBE_OPERATION}: {netdiag.cause(exc).text}"
            log.warning("readiness: Vluna check failed: %s", type(exc).__name__)
        finally:
            quiet_http.reset(quiet)
            metrics.observe_upstream(PROBE_OPERATION, outcome, time.perf_counter() - started)
        return result
