"""One OpenTelemetry SDK TracerProvider for the whole test session, recording finished spans in memory.

A process can set its global TracerProvider only once (later calls are ignored with a warning), and streamproc, as
a library, only ever uses the global one. So every in-process tracing test shares one provider, installed on first
use by `recorded_spans()`, which also forgets the spans earlier tests left:

    from opentelemetry.trace import SpanKind
    from tests.otel import recorded_spans

    async def test_something_traced(ns: str, redis_url: str) -> None:
        spans = recorded_spans()          # installs the provider (first call in the process) and clears it
        ...                               # publish, run handlers, serve requests
        await wait_for(lambda: len(spans.of_kind(SpanKind.CONSUMER)) == 1)
        [consumer] = spans.of_kind(SpanKind.CONSUMER)

Or as a fixture in your test module: `@pytest.fixture def spans() -> Spans: return recorded_spans()`.

Spans are exported as they end (SimpleSpanProcessor), so a span is visible as soon as its `end()` returned. Once
installed, tracing stays on for the rest of the session: later tests see trace context stored in entries (none of
them depends on its absence). What happens with no provider at all is tested in subprocesses (test_tracing.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

SERVICE = "streamproc-tests"


class _OpenSpans(SpanProcessor):
    """Remembers which spans started and have not ended yet."""

    def __init__(self) -> None:
        self._open: dict[int, ReadableSpan] = {}
        self._lock = threading.Lock()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        with self._lock:
            self._open[span.context.span_id] = span

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            if span.context is not None:  # on_end gets a ReadableSpan copy: matched by span id
                self._open.pop(span.context.span_id, None)

    def unended(self) -> list[ReadableSpan]:
        with self._lock:
            return list(self._open.values())

    def clear(self) -> None:
        with self._lock:
            self._open.clear()


@dataclass(frozen=True)
class Spans:
    """The session's recorder: what spans ended since the last `recorded_spans()`."""

    exporter: InMemorySpanExporter
    provider: TracerProvider
    opened: _OpenSpans

    def unended(self) -> list[ReadableSpan]:
        """Spans started since the last `recorded_spans()` and not ended (a leak, once the code is done)."""
        return self.opened.unended()

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def of_kind(self, kind: SpanKind) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.kind == kind]

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def clear(self) -> None:
        self.exporter.clear()
        self.opened.clear()


_lock = threading.Lock()
_installed: Spans | None = None


def recorded_spans() -> Spans:
    """The session-wide recorder, installed as the global TracerProvider on first use, with no spans yet."""
    global _installed
    with _lock:
        if _installed is None:
            exporter = InMemorySpanExporter()
            provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
            opened = _OpenSpans()  # first: a span is no longer open by the time the exporter shows it ended
            provider.add_span_processor(opened)
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
            if trace.get_tracer_provider() is not provider:
                raise RuntimeError("another global TracerProvider was set before tests/otel.py could install its "
                                   f"own ({trace.get_tracer_provider()!r}); use recorded_spans() for every "
                                   "in-process tracing test")
            _installed = Spans(exporter, provider, opened)
    _installed.clear()
    return _installed


def parent_id(span: ReadableSpan) -> int | None:
    """The span id of a span's parent (None for a root span)."""
    return span.parent.span_id if span.parent is not None else None
