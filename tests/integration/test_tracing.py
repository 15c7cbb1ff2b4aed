"""OpenTelemetry, the library way: streamproc uses the API and the global TracerProvider (here tests/otel.py's, one
per session, recording to memory). One trace runs from the HTTP request (continuing the caller's headers) through
the publish to every handler run, with everything the propagator writes stored in the entry; a handler's own spans
nest under its CONSUMER span; failures carry error.type and constant event names; JSON logs carry the trace ids.

The edge (`streamproc worker|ingest|dev`, observe/sdk.py) and the world with no provider at all are tested in
subprocesses: a process can set its global provider only once."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from streamproc import App, Backoff, Context, DeadLetter, Event, InvalidEvent, Outgoing, SyncPublisher
from streamproc.codec import encode_event, entry_fields
from streamproc.observe.logs import JsonFormatter
from tests.helpers import wait_for
from tests.ingestserver import AUTH, ingest_app, serving
from tests.inproc import Calls, handler_recording, open_app, partition, running
from tests.otel import SERVICE, Spans, parent_id, recorded_spans

# A made-up caller: the trace the HTTP request belongs to, and the caller's span.
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"


class CardAdded(Event, tag="card.added"):
    card_id: str
    curator_id: str


class Placed(Event, tag="card.placed"):
    card_id: str
    position: int


class Doomed(Event, tag="card.doomed"):
    card_id: str
    give_up: bool = False


@pytest.fixture
def spans() -> Spans:
    return recorded_spans()


def card(i: int) -> dict[str, Any]:
    return {"type": "card.added", "card_id": f"c{i}", "curator_id": "u1"}


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def post(client: aiohttp.ClientSession, url: str, body: Any, status: int = 202, **headers: str) -> Any:
    async with client.post(url, data=msgspec.json.encode(body),
                           headers={**AUTH, "Content-Type": "application/json", **headers}) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json(content_type=None)


async def test_one_trace_from_http_request_to_every_group(ns: str, redis_url: str, redis: aioredis.Redis,
                                                          spans: Spans) -> None:
    seen: list[tuple[int, object]] = []

    async def handle(event: CardAdded, ctx: Context) -> None:
        seen.append((trace.get_current_span().get_span_context().trace_id, baggage.get_baggage("tenant")))

    app = ingest_app(ns, redis_url)
    for group in ("feeds", "notifications"):
        app.handler(CardAdded, group=group)(handle)
    headers = {"TraceParent": TRACEPARENT, "TRACESTATE": "vendor=abc", "Baggage": "tenant=t1"}  # any case
    async with serving(app) as server, running(app) as worker, aiohttp.ClientSession() as client:
        answer = await post(client, server.events_url, card(1), **headers)
        await worker.wait_for(lambda: len(spans.of_kind(SpanKind.CONSUMER)) == 2)
        consumer_names = {c["name"].decode() for g in ("feeds", "notifications")
                          for c in await redis.xinfo_consumers(partition(app, CardAdded).stream, g)}

    [accepted] = answer["events"]
    keys = partition(app, CardAdded)
    [server_span] = spans.of_kind(SpanKind.SERVER)
    [producer] = spans.of_kind(SpanKind.PRODUCER)
    consumers = spans.of_kind(SpanKind.CONSUMER)
    for span in (server_span, producer, *consumers):
        assert span.context.trace_id == TRACE_ID, f"{span.name} left the caller's trace"
        assert span.resource.attributes["service.name"] == SERVICE, "the application's provider, not one of ours"
        assert span.instrumentation_scope is not None and span.instrumentation_scope.name == "streamproc"

    assert server_span.name == "POST /v1/events"
    assert parent_id(server_span) == CALLER_SPAN_ID
    assert server_span.parent is not None and server_span.parent.is_remote
    assert attrs(server_span).items() >= {
        "http.request.method": "POST", "http.route": "/v1/events", "url.scheme": "http", "url.path": "/v1/events",
        "http.response.status_code": 202, "server.address": "127.0.0.1", "server.port": server.port}.items()
    assert server_span.status.status_code == StatusCode.UNSET

    assert producer.name == f"send {keys.stream}"
    assert parent_id(producer) == server_span.context.span_id
    assert attrs(producer).items() >= {
        "messaging.system": "redis", "messaging.destination.name": keys.stream, "messaging.operation.type": "send",
        "messaging.destination.partition.id": "0", "messaging.message.id": accepted["id"],
        "streamproc.event.type": "card.added"}.items()

    # Everything the propagator writes travels with the entry, under its own whole-word field.
    [(_, fields)] = await redis.xrange(keys.stream)
    assert fields[b"traceparent"].decode() == f"00-{TRACE_ID:032x}-{producer.context.span_id:016x}-01"
    assert fields[b"tracestate"] == b"vendor=abc"
    assert fields[b"baggage"] == b"tenant=t1"
    assert sorted(seen, key=str) == [(TRACE_ID, "t1")] * 2, "handlers run in the trace, with the baggage"

    assert sorted(attrs(s)["messaging.consumer.group.name"] for s in consumers) == ["feeds", "notifications"]
    assert {attrs(s)["messaging.client.id"] for s in consumers} == consumer_names
    for consumer in consumers:
        assert consumer.name == f"process {keys.stream}"
        assert parent_id(consumer) == producer.context.span_id
        assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
        assert attrs(consumer).items() >= {
            "messaging.system": "redis", "messaging.destination.name": keys.stream,
            "messaging.destination.partition.id": "0", "messaging.operation.type": "process",
            "messaging.message.id": accepted["id"], "streamproc.stream.entry_id": accepted["stream_id"],
            "streamproc.attempt": 1}.items()
        assert not any(k.startswith("messaging.redis.") for k in attrs(consumer))
        assert consumer.status.status_code != StatusCode.ERROR


async def test_a_handlers_own_span_is_a_child_of_its_consumer_span(ns: str, redis_url: str, spans: Spans) -> None:
    async def handle(event: CardAdded, ctx: Context) -> None:
        with trace.get_tracer("my.handlers").start_as_current_span("enrich card"):
            pass

    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="feeds")(handle)
        async with running(app) as worker:
            await app.publish(CardAdded(card_id="c1", curator_id="u1"))
            await worker.wait_for(lambda: len(spans.of_kind(SpanKind.CONSUMER)) == 1)
    [consumer] = spans.of_kind(SpanKind.CONSUMER)
    [own] = spans.named("enrich card")
    assert parent_id(own) == consumer.context.span_id
    assert own.context.trace_id == consumer.context.trace_id


async def test_publish_inside_an_active_span_continues_its_trace(ns: str, redis_url: str, spans: Spans) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="feeds")(handler_recording(calls))
        async with running(app) as worker:
            with trace.get_tracer("my.web").start_as_current_span("GET /cards", kind=SpanKind.SERVER) as request:
                published = await app.publish(CardAdded(card_id="c1", curator_id="u1"))
            await worker.wait_for(lambda: len(spans.of_kind(SpanKind.CONSUMER)) == 1)
    assert calls.runs["feeds"][published.event_id] == 1
    [producer] = spans.of_kind(SpanKind.PRODUCER)
    [consumer] = spans.of_kind(SpanKind.CONSUMER)
    assert parent_id(producer) == request.get_span_context().span_id
    assert parent_id(consumer) == producer.context.span_id
    assert {producer.context.trace_id, consumer.context.trace_id} == {request.get_span_context().trace_id}


async def test_entries_with_only_a_traceparent_still_join_their_trace(ns: str, redis_url: str, redis: aioredis.Redis,
                                                                      spans: Spans) -> None:
    """Entries appended by earlier versions carry only `traceparent`."""
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="feeds")(handler_recording(Calls()))
        keys = partition(app, CardAdded)
        await app.publish(CardAdded(card_id="c0", curator_id="u1"))  # creates the stream and its group
        fields = entry_fields("e" * 32, "card.added", 1_700_000_000_000,
                              encode_event(CardAdded(card_id="c1", curator_id="u1")))
        await redis.xadd(keys.stream, {**fields, "traceparent": TRACEPARENT})  # type: ignore[dict-item]
        async with running(app) as worker:
            await worker.wait_for(lambda: len(spans.of_kind(SpanKind.CONSUMER)) == 2)
    [old] = [s for s in spans.of_kind(SpanKind.CONSUMER) if attrs(s)["messaging.message.id"] == "e" * 32]
    assert old.context.trace_id == TRACE_ID
    assert parent_id(old) == CALLER_SPAN_ID


async def test_batch_request_is_one_server_span_parenting_each_publish(ns: str, redis_url: str,
                                                                       spans: Spans) -> None:
    app = ingest_app(ns, redis_url)
    app.register(CardAdded)
    async with serving(app) as server, aiohttp.ClientSession() as client:
        answer = await post(client, server.events_url, [card(1), card(2), card(3)])
        await wait_for(lambda: spans.of_kind(SpanKind.SERVER))
    [server_span] = spans.of_kind(SpanKind.SERVER)
    assert server_span.parent is None, "no traceparent sent: the request starts a trace"
    producers = spans.of_kind(SpanKind.PRODUCER)
    assert sorted(attrs(p)["messaging.message.id"] for p in producers) == sorted(e["id"] for e in answer["events"])
    assert {parent_id(p) for p in producers} == {server_span.context.span_id}
    assert {p.context.trace_id for p in producers} == {server_span.context.trace_id}


async def test_a_batch_that_fails_to_prepare_part_way_leaves_no_span_open(ns: str, redis_url: str,
                                                                          spans: Spans) -> None:
    """An event that cannot be encoded or routed (a bad event id, an integer the stream's msgpack cannot carry)
    fails its whole batch before anything is sent: no PRODUCER span is left unended for the events before it. Also
    through the ingest, whose fast path fails on the wide integer and prepares the body again by the general path
    (which names the field)."""
    batch = [Outgoing(Placed(card_id="c1", position=1)), Outgoing(Placed(card_id="c2", position=2)),
             Outgoing(Placed(card_id="c3", position=3), event_id="not an id!")]
    async with open_app(ns, redis_url) as events:
        events.register(Placed)
        with pytest.raises(InvalidEvent):
            await events.publish_many(batch)
        with SyncPublisher(events) as publisher, pytest.raises(InvalidEvent):
            publisher.publish_many(batch)
    app = ingest_app(ns, redis_url)
    app.register(Placed)
    body = [{"type": "card.placed", "card_id": f"c{i}", "position": i} for i in range(3)]
    body.append({"type": "card.placed", "card_id": "wide", "position": 1e300})  # integral, but too wide
    async with serving(app) as server, aiohttp.ClientSession() as client:
        answer = await post(client, server.events_url, body, status=422)
        await wait_for(lambda: spans.of_kind(SpanKind.SERVER))
    assert [e["path"] for e in answer["errors"]] == ["$[3].position"]
    assert [s.name for s in spans.unended()] == []
    assert spans.of_kind(SpanKind.PRODUCER) == [], "nothing was sent"
    async with open_app(ns, redis_url) as events:  # and a good batch's spans all end
        events.register(Placed)
        await events.publish_many(batch[:2])
    assert len(spans.of_kind(SpanKind.PRODUCER)) == 2
    assert spans.unended() == []


async def test_client_errors_leave_the_server_span_status_unset(ns: str, redis_url: str, spans: Spans) -> None:
    app = ingest_app(ns, redis_url)
    app.register(CardAdded)
    async with serving(app) as server, aiohttp.ClientSession() as client:
        await post(client, server.events_url, {"type": "card.added"}, status=422)  # fields missing
        async with client.get(f"{server.url}/no/such/path/42") as resp:
            assert resp.status == 404
        async with client.request("PURGE", server.events_url, headers=AUTH) as resp:
            assert resp.status == 405
        await wait_for(lambda: len(spans.of_kind(SpanKind.SERVER)) == 3)
    invalid, missing, purge = sorted(spans.of_kind(SpanKind.SERVER), key=lambda s: s.start_time or 0)
    assert invalid.name == "POST /v1/events"
    assert attrs(invalid)["http.response.status_code"] == 422
    assert missing.name == "GET", "no route matched: the method alone, never the raw path"
    assert "http.route" not in attrs(missing)
    assert attrs(missing).items() >= {"http.response.status_code": 404, "url.path": "/no/such/path/42"}.items()
    assert purge.name == "_OTHER", "an unknown method does not mint span names"
    assert attrs(purge).items() >= {"http.request.method": "_OTHER", "http.request.method_original": "PURGE",
                                   "http.response.status_code": 405}.items()
    for span in (invalid, missing, purge):
        assert span.status.status_code == StatusCode.UNSET
        assert "error.type" not in attrs(span)


async def test_server_errors_mark_the_server_and_publish_spans(ns: str, spans: Spans) -> None:
    app = ingest_app(ns, "redis://127.0.0.1:1/0", redis_timeout_ms=200)  # nothing listens on port 1
    app.register(CardAdded)
    async with serving(app) as server, aiohttp.ClientSession() as client:
        await post(client, server.events_url, card(1), status=503)
        await wait_for(lambda: spans.of_kind(SpanKind.SERVER))
    [server_span] = spans.of_kind(SpanKind.SERVER)
    [producer] = spans.of_kind(SpanKind.PRODUCER)
    assert server_span.status.status_code == StatusCode.ERROR
    assert attrs(server_span).items() >= {"http.response.status_code": 503, "error.type": "503"}.items()
    assert producer.status.status_code == StatusCode.ERROR
    assert attrs(producer)["error.type"] == "streamproc.errors.PublishError"


async def test_retries_and_dead_letters_show_on_the_consumer_spans(ns: str, redis_url: str, spans: Spans) -> None:
    async def doomed(event: Doomed, ctx: Context) -> None:
        if event.give_up:
            raise DeadLetter("not worth it")
        raise RuntimeError(f"failure {ctx.attempt}")

    async with open_app(ns, redis_url) as app:
        app.handler(Doomed, group="fragile", max_attempts=2, backoff=Backoff(base=0.01, jitter=False))(doomed)
        async with running(app) as worker:
            retried = await app.publish(Doomed(card_id="c1"))
            given_up = await app.publish(Doomed(card_id="c2", give_up=True))
            await worker.wait_for(lambda: len(spans.of_kind(SpanKind.CONSUMER)) == 3)

    producers = {attrs(p)["messaging.message.id"]: p for p in spans.of_kind(SpanKind.PRODUCER)}
    runs: dict[str, list[ReadableSpan]] = {}
    for span in spans.of_kind(SpanKind.CONSUMER):
        runs.setdefault(str(attrs(span)["messaging.message.id"]), []).append(span)
        assert span.status.status_code == StatusCode.ERROR

    first, second = sorted(runs[retried.event_id], key=lambda s: attrs(s)["streamproc.attempt"])
    assert [e.name for e in first.events] == ["exception", "streamproc.retry_scheduled"]
    assert dict(first.events[1].attributes or {}) == {"streamproc.retry.delay_s": 0.01}
    assert first.status.description == "RuntimeError: failure 1"
    assert attrs(first)["error.type"] == "RuntimeError"
    assert [e.name for e in second.events] == ["exception", "streamproc.dead_lettered"]
    assert dict(second.events[1].attributes or {}) == {
        "streamproc.dead_letter.reason": "failed 2 of max_attempts=2"}
    assert second.status.description == "RuntimeError: failure 2"
    for run in (first, second):  # a retry is parented on the original publish, like the first run
        assert parent_id(run) == producers[retried.event_id].context.span_id

    [gave_up] = runs[given_up.event_id]
    assert [e.name for e in gave_up.events] == ["exception", "streamproc.dead_lettered"]
    assert dict(gave_up.events[1].attributes or {}) == {"streamproc.dead_letter.reason": "handler gave up: "
                                                        "not worth it"}
    assert gave_up.status.description == "DeadLetter: not worth it"
    assert attrs(gave_up)["error.type"] == "streamproc.errors.DeadLetter"


def test_json_logs_carry_the_trace_and_an_iso_time(spans: Spans) -> None:
    formatter = JsonFormatter()

    def line(message: str) -> dict[str, Any]:
        record = logging.LogRecord("streamproc.test", logging.INFO, __file__, 1, message, (), None)
        out: dict[str, Any] = json.loads(formatter.format(record))
        return out

    with trace.get_tracer("t").start_as_current_span("work") as span:
        inside = line("inside")
    outside = line("outside")
    context = span.get_span_context()
    assert (inside["trace_id"], inside["span_id"]) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
    assert "trace_id" not in outside and "span_id" not in outside
    logged_at = datetime.fromisoformat(outside["time"])
    assert logged_at.utcoffset() is not None and logged_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((datetime.now(UTC) - logged_at).total_seconds()) < 60


async def test_app_built_before_the_provider_is_set_still_traces(ns: str, redis_url: str) -> None:
    """Here the session's provider is set whenever this runs; that no provider means no trace context, and a
    provider set after the App was built turns tracing on, is tested in a process of its own (test_tracing_edge)."""
    app = App(ns, redis_url=redis_url)
    try:
        assert app.instruments.tracing.tracer() is not None
    finally:
        await app.aclose()
