"""OpenTelemetry tracing through the API only: a PRODUCER span per published event, the propagator's fields (W3C
`traceparent`, `tracestate`, `baggage`, or whatever OTEL_PROPAGATORS configures) stored in the entry, and a CONSUMER
span per handler run, parented on the producer's context, so one trace runs from publish to every group.

streamproc never makes a TracerProvider: it uses the global one, which the application sets (or `streamproc
worker|ingest|dev` does, see observe/sdk.py, or `opentelemetry-instrument`). Until one is set, tracing is off and
the publish and handler paths pay one check per event (Tracing.tracer), not a span.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import opentelemetry.trace as trace_api
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import Link, NoOpTracer, NoOpTracerProvider, Span, SpanKind, Status, StatusCode, Tracer

from ..codec import ENVELOPE_FIELDS
from ..keys import PartitionKeys
from ..version import __version__

# The semantic conventions the attribute names below follow (messaging, HTTP, error.type).
SCHEMA_URL = "https://opentelemetry.io/schemas/1.27.0"

# Messaging semantic conventions (https://opentelemetry.io/docs/specs/semconv/messaging/). Redis Streams has no
# registered messaging.system value, so we use "redis". Our own attributes are under "streamproc.".
SYSTEM = "redis"
A_SYSTEM = "messaging.system"
A_DESTINATION = "messaging.destination.name"
A_PARTITION = "messaging.destination.partition.id"
A_OPERATION_TYPE = "messaging.operation.type"
A_OPERATION_NAME = "messaging.operation.name"
A_MESSAGE_ID = "messaging.message.id"
A_GROUP = "messaging.consumer.group.name"
A_CLIENT_ID = "messaging.client.id"
A_ERROR_TYPE = "error.type"
A_ENTRY_ID = "streamproc.stream.entry_id"
A_EVENT_TYPE = "streamproc.event.type"
A_ATTEMPT = "streamproc.attempt"
A_RETRY_DELAY = "streamproc.retry.delay_s"
A_DEAD_LETTER_REASON = "streamproc.dead_letter.reason"
# Span events: constant names, the variable part in attributes.
EV_RETRY = "streamproc.retry_scheduled"
EV_DEAD_LETTER = "streamproc.dead_lettered"


# Should a future API drop the private slot, tracing resolves at once to the API's proxy tracer: still correct (its
# spans go to whichever provider is set later), only no longer free while none is.
_NO_SLOT = object()


class Tracing:
    """Whether tracing is on, decided from the global TracerProvider when it is set (possibly after the App was
    built: by a web app at start-up, by `opentelemetry-instrument`, by the CLI's edge set-up).

    A global provider can be set only once per process, so the answer, once there is a provider, is final and
    cached: the hot paths then pay one attribute read. Until then they pay one read of the API's provider slot.
    (`trace.get_tracer_provider()` would be the public way, but it looks up os.environ on every call while no
    provider is set: about 1.8 µs, twice per event; this method, the slot read included, about 100 ns, both timed
    with timeit on the project's 2-core shared machine.)"""

    __slots__ = ("_resolved", "_tracer", "owned_shutdown")

    def __init__(self) -> None:
        self._tracer: Tracer | None = None
        self._resolved = False
        # Set by the edge when it installed the provider itself (observe/sdk.py): flushes and closes its exporters.
        self.owned_shutdown: Callable[[], object] | None = None
        trace.get_tracer_provider()  # loads a provider named by OTEL_PYTHON_TRACER_PROVIDER, as the API does

    def tracer(self) -> Tracer | None:
        """streamproc's tracer, or None while tracing is off (no provider, or a no-op one such as the SDK's under
        OTEL_SDK_DISABLED=true)."""
        if self._resolved or getattr(trace_api, "_TRACER_PROVIDER", _NO_SLOT) is None:
            return self._tracer
        return self._resolve()

    def _resolve(self) -> Tracer | None:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, NoOpTracerProvider):
            tracer = provider.get_tracer("streamproc", __version__, schema_url=SCHEMA_URL)
            self._tracer = None if isinstance(tracer, NoOpTracer) else tracer
        self._resolved = True
        return self._tracer

    def shutdown(self) -> None:
        """Flush and close the provider streamproc's edge installed; a provider the application set is its own."""
        if self.owned_shutdown is not None:
            self.owned_shutdown()
            self.owned_shutdown = None


class _EntrySetter(Setter[dict[bytes, bytes | str | int]]):
    """Writes the propagator's fields into a stream entry, as fields of their own (never over the envelope)."""

    def set(self, carrier: dict[bytes, bytes | str | int], key: str, value: str) -> None:
        name = key.encode()
        if name not in ENVELOPE_FIELDS:
            carrier[name] = value


class _EntryGetter(Getter[dict[bytes, bytes]]):
    """Reads the propagator's fields from a stream entry as read from Redis (bytes names and values)."""

    def get(self, carrier: dict[bytes, bytes], key: str) -> list[str] | None:
        value = carrier.get(key.encode())
        return None if value is None else [value.decode(errors="replace")]

    def keys(self, carrier: dict[bytes, bytes]) -> list[str]:
        return [k.decode(errors="replace") for k in carrier if k not in ENVELOPE_FIELDS]


_SETTER = _EntrySetter()
_GETTER = _EntryGetter()


def start_send(tracer: Tracer, fields: dict[bytes, bytes | str | int], keys: PartitionKeys, event_id: str) -> Span:
    """Start the PRODUCER span of one publish, a child of the caller's current span (e.g. a web request's), and
    store its context in the entry's fields, with everything else the global propagator writes (baggage...)."""
    span = tracer.start_span(f"send {keys.stream}", kind=SpanKind.PRODUCER, attributes={
        A_SYSTEM: SYSTEM, A_DESTINATION: keys.stream, A_PARTITION: str(keys.partition), A_OPERATION_TYPE: "send",
        A_OPERATION_NAME: "send", A_MESSAGE_ID: event_id, A_EVENT_TYPE: keys.tag})
    propagate.inject(fields, context=trace.set_span_in_context(span), setter=_SETTER)
    return span


def entry_context(fields: dict[bytes, bytes]) -> Context:
    """The context the publisher stored in an entry (empty if none: entries published untraced start a trace)."""
    return propagate.extract(fields, context=Context(), getter=_GETTER)


def start_process(tracer: Tracer, fields: dict[bytes, bytes], keys: PartitionKeys, group: str, consumer: str,
                  attributes: dict[str, str | int]) -> tuple[Span, Context]:
    """Start the CONSUMER span of one handler run: a child of the producer's context when the entry has one, and
    linked to it as well (so batch-oriented backends can follow the link). `attributes`: message id and such.
    Returns it and the context to run the handler in: the span as current, with the publisher's baggage."""
    parent = entry_context(fields)
    producer = trace.get_current_span(parent).get_span_context()
    span = tracer.start_span(f"process {keys.stream}", context=parent, kind=SpanKind.CONSUMER,
                             links=[Link(producer)] if producer.is_valid else None, attributes={
                                 A_SYSTEM: SYSTEM, A_DESTINATION: keys.stream, A_PARTITION: str(keys.partition),
                                 A_OPERATION_TYPE: "process", A_OPERATION_NAME: "process", A_GROUP: group,
                                 A_CLIENT_ID: consumer, A_EVENT_TYPE: keys.tag, **attributes})
    return span, trace.set_span_in_context(span, parent)


@contextlib.contextmanager
def current(context: Context) -> Iterator[None]:
    """Make `context` the current OpenTelemetry context for the block."""
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def error_type(error: BaseException) -> str:
    """`error.type` as the semantic conventions ask: the exception's fully qualified class name."""
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def mark_failed(span: Span, error: BaseException, event: str | None = None,
                attributes: dict[str, str | float] | None = None) -> None:
    """Record a failure on its span: the exception, `error.type`, an error status and, if given, an event (a
    constant name; what varies goes in its attributes)."""
    span.record_exception(error)
    if event is not None:
        span.add_event(event, attributes)
    span.set_attribute(A_ERROR_TYPE, error_type(error))
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def end_span(span: Span, error: Exception | None) -> None:
    """End a publish span, marked failed with `error` if its event was not appended."""
    if error is not None:
        mark_failed(span, error)
    span.end()
