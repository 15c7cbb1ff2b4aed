"""OpenTelemetry tracing: a PRODUCER span per published event, the W3C trace context stored in the entry, and a
CONSUMER span per handler run, parented on the producer's context so one trace runs from publish to every group.

When no exporter is configured, `Tracing.enabled` is False and the publish and handler paths skip all of this.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..errors import ConfigError
from ..settings import Settings

# Messaging semantic conventions (https://opentelemetry.io/docs/specs/semconv/messaging/); Redis Streams has no
# registered messaging.system value, so we use "redis".
SYSTEM = "redis"
A_SYSTEM = "messaging.system"
A_DESTINATION = "messaging.destination.name"
A_OPERATION_TYPE = "messaging.operation.type"
A_OPERATION_NAME = "messaging.operation.name"
A_MESSAGE_ID = "messaging.message.id"
A_GROUP = "messaging.consumer.group.name"
A_STREAM_ID = "messaging.redis.stream.entry_id"
A_EVENT_TYPE = "streamproc.event.type"
A_ATTEMPT = "streamproc.attempt"

_propagator = TraceContextTextMapPropagator()


class Tracing:
    """Tracing for one app. Built once at the edge; `Tracing()` (no provider) is off and costs nothing."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self.enabled = provider is not None
        self.provider = provider
        self.tracer = (provider or trace.NoOpTracerProvider()).get_tracer("streamproc")

    def start_send(self, destination: str, event_id: str, event_type: str) -> tuple[Span, str]:
        """Start the PRODUCER span of one publish (child of the current span, e.g. the HTTP request);
        returns it and the traceparent to store with the entry."""
        span = self.tracer.start_span(f"send {destination}", kind=SpanKind.PRODUCER, attributes={
            A_SYSTEM: SYSTEM, A_DESTINATION: destination, A_OPERATION_TYPE: "send", A_OPERATION_NAME: "send",
            A_MESSAGE_ID: event_id, A_EVENT_TYPE: event_type})
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, context=trace.set_span_in_context(span))
        return span, carrier.get("traceparent", "")

    def start_process(self, destination: str, group: str, event_id: str, event_type: str, stream_id: str,
                      attempt: int, traceparent: bytes | None) -> Span:
        """Start the CONSUMER span of one handler run, child of the producer's context when the entry has one,
        and linked to it as well (so batch-oriented backends can follow the link)."""
        parent = _propagator.extract({"traceparent": traceparent.decode()}) if traceparent else None
        producer = trace.get_current_span(parent).get_span_context() if parent is not None else None
        links = [Link(producer)] if producer is not None and producer.is_valid else None
        return self.tracer.start_span(f"process {destination}", context=parent, kind=SpanKind.CONSUMER, links=links,
                                      attributes={
                                          A_SYSTEM: SYSTEM, A_DESTINATION: destination, A_OPERATION_TYPE: "process",
                                          A_OPERATION_NAME: "process", A_MESSAGE_ID: event_id, A_GROUP: group,
                                          A_STREAM_ID: stream_id, A_EVENT_TYPE: event_type, A_ATTEMPT: attempt})

    def shutdown(self) -> None:
        if isinstance(self.provider, TracerProvider):
            self.provider.shutdown()


def mark_failed(span: Span, error: BaseException, outcome: str) -> None:
    """Record a failed run on its span: the exception, an event naming the outcome, and an error status."""
    span.record_exception(error)
    span.add_event(outcome)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def resource_attributes(settings: Settings, service: str) -> dict[str, str]:
    attributes = {"service.name": service}
    if settings.region:
        attributes["cloud.region"] = settings.region
    if settings.instance:
        attributes["service.instance.id"] = settings.instance
    return attributes


def tracing_from_settings(settings: Settings, service: str, exporter: SpanExporter | None = None) -> Tracing:
    """Tracing as OTEL_TRACES_EXPORTER asks: "otlp" (endpoint from OTEL_EXPORTER_OTLP_*), "console", or "none"
    (the default). OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are honoured by the SDK's Resource."""
    kind = settings.traces_exporter.strip().lower()
    if exporter is None and kind in ("", "none"):
        return Tracing()
    resource = Resource.create(resource_attributes(settings, service))
    if settings.service_name:
        # Resource(...), not Resource.create(...): create() adds a fresh random service.instance.id, which
        # replaced the one from FLY_MACHINE_ID whenever OTEL_SERVICE_NAME was set.
        resource = resource.merge(Resource({"service.name": settings.service_name}))
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif kind == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise ConfigError(f"OTEL_TRACES_EXPORTER={kind!r} is not supported; use otlp, console or none")
    return Tracing(provider)

