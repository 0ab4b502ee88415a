"""OpenTelemetry tracing: one trace from an HTTP call across every service it reaches.

``traceparent`` travels in Kafka headers: it is injected when an outbox row is written
(inside the span that caused it) and extracted when a message is consumed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

__all__ = [
    "current_trace_id",
    "extract_from_headers",
    "inject_into_headers",
    "setup_tracing",
    "trace_id_of",
    "tracer",
]

log = logging.getLogger(__name__)
_TRACE_HEADERS = ("traceparent", "tracestate")


def setup_tracing(service_name: str, otlp_endpoint: str | None) -> None:
    """Install the SDK provider; export over OTLP/HTTP when an endpoint is configured."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info("exporting traces to %s", otlp_endpoint)
    trace.set_tracer_provider(provider)


@functools.cache
def tracer() -> trace.Tracer:
    """One tracer per process (asked for before ``setup_tracing``, it is a proxy that
    follows the provider installed later)."""
    return trace.get_tracer("consenttrace")


def inject_into_headers() -> list[tuple[str, bytes]]:
    """The current trace context as Kafka headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, carrier[k].encode()) for k in _TRACE_HEADERS if k in carrier]


def extract_from_headers(headers: Iterable[tuple[str, bytes | None]]) -> Context:
    carrier: dict[str, str] = {}
    for name, value in headers:
        if name in _TRACE_HEADERS and value is not None and name not in carrier:
            carrier[name] = value.decode("latin-1")
    return propagate.extract(carrier)


def extract_from_mapping(headers: Mapping[str, str]) -> Context:
    return propagate.extract(dict(headers))


def current_trace_id() -> str | None:
    """Hex trace id of the active span, or None outside any trace."""
    return trace_id_of(trace.get_current_span())


def trace_id_of(span: trace.Span) -> str | None:
    """Hex trace id of ``span``, or None for a span outside any trace."""
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
