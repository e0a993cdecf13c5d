"""The outermost layer of every HTTP request: request id, metrics, access log line, server span.

It wraps Litestar's whole ASGI handler (routing and exception handlers included), so 404s and
errors are counted and logged like everything else. Every label value comes from a bounded set:
the route is the matched route *template* (``/vluna/api/v1/{path:path}``), ``<unmatched>`` when
nothing matched; the method is a known HTTP method or ``other``; the status a number 100-599.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, cast

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from bff.telemetry import metrics, tracing
from bff.telemetry.context import RequestInfo, current_request, valid_request_id

access_log = logging.getLogger("bff.access")

UNMATCHED = "<unmatched>"
PROBE_ROUTES = frozenset({"/healthz", "/readyz"})
_MAX_SERIES = 4096


_ID_BATCH = 256
_random = bytearray()
_random_at = 0


def _reset_random() -> None:
    global _random, _random_at
    _random, _random_at = bytearray(), 0


# A forked child must not hand out the ids its parent has buffered.
os.register_at_fork(after_in_child=_reset_random)


def new_request_id() -> str:
    """A random (version 4) UUID as 32 hex digits, like ``uuid.uuid4().hex``, built without the
    UUID object (this runs on every request that brings no id of its own). The random bytes come
    from the OS in batches: one getrandom() per 256 requests instead of one per request."""
    global _random, _random_at
    at = _random_at
    if at >= len(_random):
        _random, at = bytearray(os.urandom(16 * _ID_BATCH)), 0
    b = _random[at : at + 16]
    _random_at = at + 16
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    return b.hex()


class ObservabilityMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        request_id_header: str = "X-Request-Id",
        trust_request_id: bool = True,
        access_log_enabled: bool = True,
        metrics_path: str = "/metrics",
    ) -> None:
        self.app = app
        self._header = request_id_header.lower().encode("latin-1")
        self._trust = trust_request_id
        self._log = access_log_enabled
        self._quiet = PROBE_ROUTES | {metrics_path}
        # Metric children by label values: labels() validates and locks on every call.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._in_flight = metrics.fast(metrics.HTTP_IN_FLIGHT)

    def _incoming_id(self, scope: Scope) -> str:
        if self._trust:
            for name, value in scope.get("headers", ()):
                if name == self._header:
                    text = value.decode("latin-1")
                    if valid_request_id(text):
                        return text
                    break
        return new_request_id()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = self._incoming_id(scope)
        # Bounded everywhere it goes (labels, log lines, span names): the client chooses it.
        method = metrics.method_label(cast(Any, scope)["method"])
        info = RequestInfo(request_id, method)
        token = current_request.set(info)
        header = (self._header, request_id.encode("latin-1"))
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        in_flight = self._in_flight
        in_flight.inc()
        started = time.perf_counter()
        try:
            if tracing.enabled():
                parent = _tracing_headers(scope)
                with tracing.span(
                    f"{method}",
                    kind="server",
                    parent_headers=parent,
                    attributes={"http.request.method": method},
                ) as sp:
                    try:
                        await self.app(scope, receive, send_wrapper)
                    finally:
                        route = str(scope.get("path_template") or UNMATCHED)
                        info.route = route
                        sp.update_name(f"{method} {route}")
                        sp.set_attribute("http.route", route)
                        sp.set_attribute("http.response.status_code", status)
                        sp.set_attribute("bff.request_id", request_id)
                        if status >= 500:
                            sp.set_status_error(str(status))
            else:
                try:
                    await self.app(scope, receive, send_wrapper)
                finally:
                    info.route = str(scope.get("path_template") or UNMATCHED)
        finally:
            elapsed = time.perf_counter() - started
            in_flight.dec()
            self._observe(method, info.route, status, elapsed)
            if self._log:
                self._access_line(info, status, elapsed)
            current_request.reset(token)

    def _access_line(self, info: RequestInfo, status: int, elapsed: float) -> None:
        level = logging.DEBUG if info.route in self._quiet and status < 400 else logging.INFO
        if access_log.isEnabledFor(level):
            access_log.log(
                level,
                "request",
                extra={
                    "request_id": info.request_id,
                    "method": info.method,
                    "route": info.route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "principal_hash": info.principal,
                    "user_hash": info.user,
                },
            )

    def _observe(self, method: str, route: str, status: int, elapsed: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            if len(self._children) >= _MAX_SERIES:
                self._children.clear()
            children = self._children[key] = (
                metrics.fast(
                    metrics.HTTP_REQUESTS.labels(
                        method=method, route=route, status=metrics.status_label(status)
                    )
                ),
                metrics.fast_histogram(metrics.HTTP_LATENCY.labels(method=method, route=route)),
            )
        children[0].inc()
        children[1].observe(elapsed)


def _tracing_headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        if name in (b"traceparent", b"tracestate"):
            out[name.decode()] = value.decode("latin-1")
    return out
