"""Instrumentation around the calls to Vluna and the principal mapping.

- ``MeteredIssuer`` wraps any token issuer: a CLIENT span and the upstream metrics per call.
- ``PropagatingTransport`` wraps the SDK's httpx transport: it adds ``X-Request-Id`` (the
  current request's) and ``traceparent`` to every call. Neither header is covered by the SVC-AUTH
  signature, so adding them below the SDK keeps signatures valid.
- ``ObservedPrincipalMapper`` records the hashed principal and user for the request's log line.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from bff.observability import metrics, tracing
from bff.observability.context import current_request_id, note_identity
from bff.principals import PrincipalMapper
from bff.tokens.broker import Principal
from bff.tokens.issuer import IssuedToken, IssuerRejected, IssuerUnavailable, TokenIssuer

ISSUE_OPERATION = "issue_platform_token"


class MeteredIssuer:
    def __init__(self, inner: TokenIssuer) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"MeteredIssuer({self.inner!r})"

    async def issue(
        self, principal_id: str, user_id: str, scopes: Sequence[str], traits: Mapping[str, Any]
    ) -> IssuedToken:
        started = time.perf_counter()
        outcome = "error"
        with tracing.span(
            "vluna " + ISSUE_OPERATION, kind="client", attributes={"rpc.method": ISSUE_OPERATION}
        ) as sp:
            try:
                token = await self.inner.issue(principal_id, user_id, scopes, traits)
                outcome = "ok"
                return token
            except IssuerUnavailable:
                outcome = "unavailable"
                raise
            except IssuerRejected:
                outcome = "rejected"
                raise
            finally:
                sp.set_attribute("bff.upstream.outcome", outcome)
                if outcome != "ok":
                    sp.set_status_error(outcome)
                metrics.observe_upstream(ISSUE_OPERATION, outcome, time.perf_counter() - started)

    async def aclose(self) -> None:
        await self.inner.aclose()


class PropagatingTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request_id = current_request_id()
        if request_id is not None and "x-request-id" not in request.headers:
            request.headers["x-request-id"] = request_id
        if tracing.enabled():
            carrier: dict[str, str] = {}
            tracing.inject(carrier)
            for name, value in carrier.items():
                request.headers[name] = value
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class ObservedPrincipalMapper(PrincipalMapper):
    async def map(self, identity: Any) -> Principal:
        principal = await super().map(identity)
        note_identity(principal.principal_id, principal.user_id)
        return principal
