"""OpenTelemetry tracing, optional: ``pip install 'vluna-bff[otel]'`` and
``observability.tracing.enabled: true``.

Spans: one SERVER span per request (parent taken from an incoming ``traceparent``), one for the
token cache lookup, one CLIENT span per call to Vluna; ``traceparent`` is sent to Vluna. When
tracing is off (or OpenTelemetry is not installed) every helper here is a cheap no-op.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Literal

from bff.settings import TracingSettings

log = logging.getLogger("bff.tracing")

SpanKind = Literal["internal", "server", "client"]

_tracer: Any = None
_propagator: Any = None
_provider: Any = None


class _NoSpan:
    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def update_name(self, name: str) -> None:
        pass

    def set_status_error(self, description: str) -> None:
        pass


class _Span:
    def __init__(self, span: Any) -> None:
        self._span = span

    def set_attribute(self, key: str, value: Any) -> None:
        self._span.set_attribute(key, value)

    def update_name(self, name: str) -> None:
        self._span.update_name(name)

    def set_status_error(self, description: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_status(Status(StatusCode.ERROR, description))


_NO_SPAN = _NoSpan()


def enabled() -> bool:
    return _tracer is not None


def setup_tracing(settings: TracingSettings, provider: Any = None) -> bool:
    """Install the tracer for this process; False (and a warning) if OpenTelemetry is missing."""
    global _tracer, _propagator, _provider
    if not settings.enabled:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        log.warning("tracing is enabled but OpenTelemetry is not installed: pip install 'vluna-bff[otel]'")
        return False
    if provider is None:
        provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
        exporter: Any = None
        if settings.exporter == "console":
            exporter = ConsoleSpanExporter()
        elif settings.exporter == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                    OTLPSpanExporter,
                )
            except ImportError:
                log.warning(
                    "tracing exporter 'otlp' needs opentelemetry-exporter-otlp-proto-http; spans are dropped"
                )
            else:
                # Endpoint, headers and TLS from the standard OTEL_EXPORTER_OTLP_* variables.
                exporter = OTLPSpanExporter()
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("vluna-bff")
    _propagator = TraceContextTextMapPropagator()
    return True


def shutdown_tracing() -> None:
    """Flush and forget the tracer (end of the process, or of a test)."""
    global _tracer, _propagator, _provider
    provider, _provider, _tracer, _propagator = _provider, None, None, None
    if provider is not None:
        with contextlib.suppress(Exception):
            provider.force_flush()


class _NoSpanContext:
    """What ``span()`` returns while tracing is off: one shared, stateless context manager."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return _NO_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN_CONTEXT = _NoSpanContext()


def span(
    name: str,
    kind: SpanKind = "internal",
    attributes: Mapping[str, Any] | None = None,
    parent_headers: Mapping[str, str] | None = None,
) -> contextlib.AbstractContextManager[_NoSpan | _Span]:
    """``with span(...) as sp:``; with tracing off, a shared no-op (no generator, no allocation)."""
    if _tracer is None:
        return _NO_SPAN_CONTEXT
    return _traced_span(name, kind, attributes, parent_headers)


@contextlib.contextmanager
def _traced_span(
    name: str,
    kind: SpanKind,
    attributes: Mapping[str, Any] | None,
    parent_headers: Mapping[str, str] | None,
) -> Iterator[_NoSpan | _Span]:
    tracer = _tracer
    if tracer is None:  # shut down between span() and the with statement
        yield _NO_SPAN
        return
    from opentelemetry.trace import SpanKind as OtelKind

    otel_kind = {"internal": OtelKind.INTERNAL, "server": OtelKind.SERVER, "client": OtelKind.CLIENT}[kind]
    ctx = _propagator.extract(carrier=dict(parent_headers)) if parent_headers is not None else None
    with tracer.start_as_current_span(
        name, context=ctx, kind=otel_kind, attributes=dict(attributes or {})
    ) as otel_span:
        yield _Span(otel_span)


def inject(headers: MutableMapping[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``) of the current span to outgoing headers."""
    if _propagator is not None:
        _propagator.inject(headers)
