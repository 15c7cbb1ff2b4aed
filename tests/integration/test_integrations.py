"""Web-app integrations with real servers: FastAPI under uvicorn (a real ASGI server on a loopback port, in a thread
with its own event loop, as in production) and aiohttp's own server. Requests publish; the events are in the stream,
each once; the App is connected for the server's lifetime and closed after it; a user's own lifespan composes.
A FastAPI app instrumented by opentelemetry-instrumentation-fastapi carries the request's trace into the stream."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any

import aiohttp
import httpx
import msgspec
import pydantic
import pytest
import redis.asyncio as aioredis
import uvicorn
from aiohttp import web
from fastapi import Depends, FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette

from streamproc import App, Event
from streamproc.integrations import aiohttp as sp_aiohttp
from streamproc.integrations.fastapi import Publishing, lifespan, publisher
from tests.helpers import wait_for
from tests.inproc import fast_settings, partition
from tests.otel import parent_id, recorded_spans
from tests.redis_server import free_port


class OrderPlaced(Event, tag="web.order"):
    order_id: str


class OrderIn(pydantic.BaseModel):
    order_id: str


_decoder = msgspec.msgpack.Decoder(OrderPlaced)


def events_app(ns: str, redis_url: str) -> App:
    app = App(ns, settings=fast_settings(redis_url))
    app.register(OrderPlaced, groups=["billing"])
    return app


async def stream_orders(redis: aioredis.Redis, stream: str) -> Counter[str]:
    return Counter(_decoder.decode(fields[b"data"]).order_id for _, fields in await redis.xrange(stream))


def fastapi_app(events: App, log: list[str]) -> FastAPI:
    @asynccontextmanager
    async def own(web_app: Starlette) -> AsyncIterator[dict[str, Any]]:
        log.append(f"own start, connected: {events._redis is not None}")
        await events.publish(OrderPlaced(order_id="from-startup"))  # the App is usable in the user's lifespan
        yield {"greeting": "hello"}
        log.append("own stop")

    web_app = FastAPI(lifespan=lifespan(events, inner=own))

    @web_app.post("/orders")
    async def place(order: OrderIn, app: Annotated[App, Depends(publisher)]) -> dict[str, str]:
        published = await app.publish(OrderPlaced(order_id=order.order_id))
        return {"event_id": published.event_id, "stream_id": published.stream_id}

    @web_app.post("/batch")
    async def batch(orders: list[OrderIn], app: Publishing) -> dict[str, int]:
        published = await app.publish_many([OrderPlaced(order_id=o.order_id) for o in orders])
        return {"appended": sum(p.appended for p in published)}

    return web_app


@contextmanager
def uvicorn_serving(asgi: FastAPI) -> Iterator[str]:
    """uvicorn on a free loopback port in a thread of its own (its own event loop, as in production); stopped the
    way a SIGTERM stops it (should_exit), which runs the lifespan's shutdown."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = 10.0
        while not server.started and thread.is_alive() and deadline > 0:
            thread.join(0.02)
            deadline -= 0.02
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "uvicorn did not stop"


async def test_fastapi_requests_publish_under_uvicorn(ns: str, redis_url: str, redis: aioredis.Redis,
                                                      client: aiohttp.ClientSession) -> None:
    events = events_app(ns, redis_url)
    log: list[str] = []
    stream = partition(events, OrderPlaced).stream
    with uvicorn_serving(fastapi_app(events, log)) as base:
        assert log == ["own start, connected: True"]
        replies = await asyncio.gather(*(client.post(f"{base}/orders", json={"order_id": f"o{i}"})
                                         for i in range(20)))
        bodies = [await r.json() for r in replies]
        assert [r.status for r in replies] == [200] * 20
        async with client.post(f"{base}/batch", json=[{"order_id": f"b{i}"} for i in range(5)]) as r:
            assert (r.status, await r.json()) == (200, {"appended": 5})
        assert len({b["event_id"] for b in bodies}) == 20
    assert log == ["own start, connected: True", "own stop"]
    assert events._redis is None  # closed by the lifespan's shutdown
    expected = Counter({f"o{i}": 1 for i in range(20)} | {f"b{i}": 1 for i in range(5)} | {"from-startup": 1})
    assert await stream_orders(redis, stream) == expected
    groups = await redis.xinfo_groups(stream)
    assert [(g["name"], g["last-delivered-id"]) for g in groups] == [(b"billing", b"0-0")]  # made before appends


async def test_fastapi_dependency_without_the_lifespan_says_so() -> None:
    web_app = FastAPI()

    @web_app.get("/")
    async def index(app: Publishing) -> str:
        return app.name

    async with httpx.AsyncClient(transport=httpx.ASGITransport(web_app), base_url="http://test") as http:
        with pytest.raises(RuntimeError, match=r"pass lifespan=streamproc\.integrations"):
            await http.get("/")


async def test_aiohttp_requests_publish(ns: str, redis_url: str, redis: aioredis.Redis,
                                        client: aiohttp.ClientSession) -> None:
    events = events_app(ns, redis_url)

    async def place(request: web.Request) -> web.Response:
        order = await request.json()
        published = await request.app[sp_aiohttp.STREAMPROC_APP].publish(OrderPlaced(order_id=order["order_id"]))
        return web.json_response({"event_id": published.event_id})

    async def place_in_sub(request: web.Request) -> web.Response:
        published = await sp_aiohttp.publisher(request).publish(OrderPlaced(order_id="from-sub"))
        return web.json_response({"event_id": published.event_id})

    web_app = web.Application()
    web_app.cleanup_ctx.append(sp_aiohttp.cleanup_ctx(events))
    web_app.router.add_post("/orders", place)
    sub = web.Application()
    sub.router.add_post("/orders", place_in_sub)
    web_app.add_subapp("/v2", sub)
    runner = web.AppRunner(web_app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        replies = await asyncio.gather(*(client.post(f"http://127.0.0.1:{port}/orders", json={"order_id": f"o{i}"})
                                         for i in range(15)))
        assert [r.status for r in replies] == [200] * 15
        async with client.post(f"http://127.0.0.1:{port}/v2/orders") as reply:
            assert reply.status == 200
        assert web_app[sp_aiohttp.STREAMPROC_APP] is events
    finally:
        await runner.cleanup()
    assert events._redis is None  # closed at cleanup
    expected = Counter({f"o{i}": 1 for i in range(15)} | {"from-sub": 1})
    assert await stream_orders(redis, partition(events, OrderPlaced).stream) == expected


def test_importing_streamproc_imports_no_web_framework() -> None:
    script = ("import sys, streamproc, streamproc.testing\n"
              "loaded = [m for m in ('fastapi', 'starlette', 'uvicorn') if m in sys.modules]\n"
              "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


async def test_publish_in_an_instrumented_fastapi_request_joins_its_trace(ns: str, redis_url: str,
                                                                         redis: aioredis.Redis,
                                                                         client: aiohttp.ClientSession) -> None:
    spans = recorded_spans()
    events = events_app(ns, redis_url)
    web_app = FastAPI(lifespan=lifespan(events))

    @web_app.post("/orders/{order_id}")
    async def place(order_id: str, app: Publishing) -> dict[str, str]:
        published = await app.publish(OrderPlaced(order_id=order_id))
        return {"stream_id": published.stream_id}

    FastAPIInstrumentor.instrument_app(web_app)
    with uvicorn_serving(web_app) as base:
        async with client.post(f"{base}/orders/o1") as reply:
            assert reply.status == 200
            stream_id = (await reply.json())["stream_id"]
        await wait_for(lambda: spans.of_kind(SpanKind.SERVER))
    [server] = spans.of_kind(SpanKind.SERVER)
    [producer] = spans.of_kind(SpanKind.PRODUCER)
    assert server.name == "POST /orders/{order_id}"
    assert producer.context.trace_id == server.context.trace_id
    assert parent_id(producer) == server.context.span_id
    stream = partition(events, OrderPlaced).stream
    [(_, fields)] = await redis.xrange(stream, min=stream_id, max=stream_id)
    _version, trace_id, span_id, _flags = fields[b"traceparent"].decode().split("-")
    assert int(trace_id, 16) == server.context.trace_id
    assert int(span_id, 16) == producer.context.span_id
