"""OpenTelemetry end to end with an in-memory exporter: one trace from the HTTP request (continuing the caller's
traceparent) through the publish to every handler run, with the messaging semantic conventions; failures as span
status and events; and how the exporter and resource are chosen from settings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from streamproc import App, Backoff, ConfigError, Context, DeadLetter, Event, Settings
from streamproc.observe.telemetry import tracing_from_settings
from tests.helpers import wait_for
from tests.ingestserver import AUTH, ingest_app, serving
from tests.inproc import Calls, handler_recording, open_app, partition, running

# A made-up caller: the trace the HTTP request belongs to, and the caller's span.
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"


class CardAdded(Event, tag="card.added"):
    card_id: str
    curator_id: str


class Doomed(Event, tag="card.doomed"):
    card_id: str
    give_up: bool = False


def card(i: int) -> dict[str, Any]:
    return {"type": "card.added", "card_id": f"c{i}", "curator_id": "u1"}


def traced(app: App, service: str = "svc") -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    app.instruments.tracing = tracing_from_settings(app.settings, service, exporter=exporter)
    return exporter


def of_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == kind]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def post(client: aiohttp.ClientSession, url: str, body: Any, **headers: str) -> dict[str, Any]:
    async with client.post(url, data=msgspec.json.encode(body),
                           headers={**AUTH, "Content-Type": "application/json", **headers}) as resp:
        assert resp.status == 202, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_one_trace_from_http_request_to_every_group(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    app = ingest_app(ns, redis_url)
    for group in ("feeds", "notifications"):
        app.handler(CardAdded, group=group)(handler_recording(calls))
    exporter = traced(app)
    async with serving(app) as server, running(app) as worker, aiohttp.ClientSession() as client:
        answer = await post(client, server.events_url, card(1), traceparent=TRACEPARENT)
        await worker.wait_for(lambda: len(of_kind(exporter, SpanKind.CONSUMER)) == 2)

    [accepted] = answer["events"]
    stream = partition(app, CardAdded).stream
    [server_span] = of_kind(exporter, SpanKind.SERVER)
    [producer] = of_kind(exporter, SpanKind.PRODUCER)
    consumers = of_kind(exporter, SpanKind.CONSUMER)
    for span in (server_span, producer, *consumers):
        assert span.context.trace_id == TRACE_ID, f"{span.name} left the caller's trace"
        assert span.resource.attributes["service.name"] == "svc"

    assert server_span.name == "POST /v1/events"
    assert parent_id(server_span) == CALLER_SPAN_ID
    assert server_span.parent is not None and server_span.parent.is_remote
    assert server_span.attributes is not None and server_span.attributes["http.response.status_code"] == 202

    assert producer.name == f"send {stream}"
    assert parent_id(producer) == server_span.context.span_id
    assert dict(producer.attributes or {}).items() >= {
        "messaging.system": "redis", "messaging.destination.name": stream, "messaging.operation.type": "send",
        "messaging.message.id": accepted["id"], "streamproc.event.type": "card.added"}.items()

    # The producer's context travels with the entry.
    [(_, fields)] = await redis.xrange(stream)
    assert fields[b"traceparent"].decode() == f"00-{TRACE_ID:032x}-{producer.context.span_id:016x}-01"

    assert sorted(dict(s.attributes or {})["messaging.consumer.group.name"] for s in consumers) == [
        "feeds", "notifications"]
    for consumer in consumers:
        assert consumer.name == f"process {stream}"
        assert parent_id(consumer) == producer.context.span_id
        assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
        assert dict(consumer.attributes or {}).items() >= {
            "messaging.system": "redis", "messaging.destination.name": stream, "messaging.operation.type": "process",
            "messaging.message.id": accepted["id"], "messaging.redis.stream.entry_id": accepted["stream_id"],
            "streamproc.attempt": 1}.items()
        assert consumer.status.status_code != StatusCode.ERROR


async def test_batch_request_is_one_server_span_parenting_each_publish(ns: str, redis_url: str) -> None:
    app = ingest_app(ns, redis_url)
    app.register(CardAdded)
    exporter = traced(app)
    async with serving(app) as server, aiohttp.ClientSession() as client:
        answer = await post(client, server.events_url, [card(1), card(2), card(3)])
        await wait_for(lambda: of_kind(exporter, SpanKind.SERVER))
    [server_span] = of_kind(exporter, SpanKind.SERVER)
    assert server_span.parent is None, "no traceparent sent: the request starts a trace"
    producers = of_kind(exporter, SpanKind.PRODUCER)
    assert sorted(dict(p.attributes or {})["messaging.message.id"] for p in producers) == sorted(
        e["id"] for e in answer["events"])
    assert {parent_id(p) for p in producers} == {server_span.context.span_id}
    assert {p.context.trace_id for p in producers} == {server_span.context.trace_id}


def _events(span: ReadableSpan) -> list[str]:
    return [e.name for e in span.events]


async def test_retries_and_dead_letters_show_on_the_consumer_spans(ns: str, redis_url: str) -> None:
    async def doomed(event: Doomed, ctx: Context) -> None:
        if event.give_up:
            raise DeadLetter("not worth it")
        raise RuntimeError(f"failure {ctx.attempt}")

    async with open_app(ns, redis_url) as app:
        app.handler(Doomed, group="fragile", max_attempts=2, backoff=Backoff(base=0.01, jitter=False))(doomed)
        exporter = traced(app)
        async with running(app) as worker:
            retried = await app.publish(Doomed(card_id="c1"))
            given_up = await app.publish(Doomed(card_id="c2", give_up=True))
            await worker.wait_for(lambda: len(of_kind(exporter, SpanKind.CONSUMER)) == 3)

    producers = {dict(p.attributes or {})["messaging.message.id"]: p for p in of_kind(exporter, SpanKind.PRODUCER)}
    runs: dict[str, list[ReadableSpan]] = {}
    for span in of_kind(exporter, SpanKind.CONSUMER):
        runs.setdefault(str(dict(span.attributes or {})["messaging.message.id"]), []).append(span)
        assert span.status.status_code == StatusCode.ERROR

    first, second = sorted(runs[retried.event_id], key=lambda s: dict(s.attributes or {})["streamproc.attempt"])
    assert [e for e in _events(first) if e != "exception"] == ["retry scheduled in 0.010s"]
    assert first.status.description == "RuntimeError: failure 1"
    assert "exception" in _events(first)
    assert [e for e in _events(second) if e != "exception"] == ["dead-lettered"]
    assert second.status.description == "RuntimeError: failure 2"
    for run in (first, second):  # a retry is parented on the original publish, like the first run
        assert parent_id(run) == producers[retried.event_id].context.span_id

    [gave_up] = runs[given_up.event_id]
    assert [e for e in _events(gave_up) if e != "exception"] == ["dead-lettered"]
    assert gave_up.status.description == "DeadLetter: not worth it"


async def test_tracing_off_by_default_stores_no_trace_context(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    app = ingest_app(ns, redis_url)
    app.register(CardAdded)
    assert app.instruments.tracing.enabled is False
    async with serving(app) as server, aiohttp.ClientSession() as client:
        await post(client, server.events_url, card(1), traceparent=TRACEPARENT)
    [(_, fields)] = await redis.xrange(partition(app, CardAdded).stream)
    assert b"traceparent" not in fields
    assert set(fields) == {b"event_id", b"type", b"occurred_at", b"data"}


@pytest.mark.parametrize("exporter", ["console", "CONSOLE", "otlp"])
def test_exporter_chosen_by_settings(exporter: str) -> None:
    tracing = tracing_from_settings(Settings(traces_exporter=exporter), "svc")
    try:
        assert tracing.enabled
        assert isinstance(tracing.provider, TracerProvider)
    finally:
        tracing.shutdown()


@pytest.mark.parametrize("exporter", ["none", "", " None "])
def test_no_exporter_means_no_tracing(exporter: str) -> None:
    tracing = tracing_from_settings(Settings(traces_exporter=exporter), "svc")
    assert not tracing.enabled
    assert tracing.provider is None


def test_unknown_exporter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'bogus' is not supported"):
        tracing_from_settings(Settings.from_env({"OTEL_TRACES_EXPORTER": "bogus"}), "svc")


def test_console_exporter_prints_spans() -> None:
    """OTEL_TRACES_EXPORTER=console, read from the environment as the CLI does, prints finished spans."""
    script = ("from streamproc import Settings; from streamproc.observe.telemetry import tracing_from_settings; "
              "t = tracing_from_settings(Settings.from_env(), 'svc'); t.start_send('s:ev:{x:0}', 'e1', 'x')[0].end(); "
              "t.shutdown()")
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30,
                         check=True)
    assert '"name": "send s:ev:{x:0}"' in out.stdout
    assert '"kind": "SpanKind.PRODUCER"' in out.stdout


def _resource(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    assert spans
    return dict(spans[0].resource.attributes)


async def test_region_and_instance_become_resource_attributes(ns: str, redis_url: str) -> None:
    settings = Settings.from_env({"FLY_REGION": "ams", "FLY_MACHINE_ID": "148e21ea7e4268", "REDIS_URL": redis_url,
                                  "OTEL_SERVICE_NAME": "social-ingest"})
    assert (settings.region, settings.instance, settings.service_name) == ("ams", "148e21ea7e4268", "social-ingest")
    app = App(ns, settings=settings)
    try:
        app.register(CardAdded)
        exporter = traced(app, service="social-worker")
        await app.publish(CardAdded(card_id="c1", curator_id="u1"))
    finally:
        await app.aclose()
    attributes = _resource(exporter.get_finished_spans())
    assert attributes["cloud.region"] == "ams"
    assert attributes["service.instance.id"] == "148e21ea7e4268"
    assert attributes["service.name"] == "social-ingest", "OTEL_SERVICE_NAME wins over the default name"


def test_without_fly_variables_there_are_no_region_attributes() -> None:
    exporter = InMemorySpanExporter()
    tracing = tracing_from_settings(Settings.from_env({}), "svc", exporter=exporter)
    tracing.start_send("s", "e", "t")[0].end()
    attributes = _resource(exporter.get_finished_spans())
    assert attributes["service.name"] == "svc"
    assert "cloud.region" not in attributes
    assert attributes["service.instance.id"] != "", "the SDK's own random instance id stands in"
