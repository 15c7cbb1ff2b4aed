"""App and worker resources: the App's connections close with it; worker resources are opened before the first
handler runs and closed only after in-flight handlers have finished."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from streamproc import Backoff, Context, Event
from streamproc.observe.metrics import StreamStateCollector
from tests.helpers import wait_for
from tests.ingestserver import ingest_app, serving
from tests.inproc import deadletters, open_app, partition, running
from tests.redis_server import RedisServer


class Ping(Event, tag="ping"):
    n: int


async def test_worker_resources_span_the_whole_run(ns: str, redis_url: str) -> None:
    timeline: list[str] = []
    release = asyncio.Event()

    @contextlib.asynccontextmanager
    async def session() -> AsyncIterator[None]:
        timeline.append("open")
        yield
        timeline.append("close")

    async with open_app(ns, redis_url) as app:
        app.worker_resources.append(session)

        @app.handler(Ping, group="g")
        async def slow(event: Ping, ctx: Context) -> None:
            timeline.append("start")
            await release.wait()
            timeline.append("end")

        await app.publish(Ping(n=1))
        async with running(app) as worker:
            await worker.wait_for(lambda: "start" in timeline)
            stopping = asyncio.create_task(worker.stop())
            await asyncio.sleep(0)  # the stop has begun; the handler is still in flight
            assert "close" not in timeline
            release.set()
            await stopping
    assert timeline == ["open", "start", "end", "close"]


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


@pytest.mark.parametrize("eager", [False, True])
async def test_handlers_see_only_their_own_context_variables(ns: str, redis_url: str, eager: bool) -> None:
    """Eager handlers start inline (no task until they wait), yet each runs in a context of its own, as in a task."""
    seen: dict[int, tuple[str, str]] = {}

    async with open_app(ns, redis_url) as app:

        @app.handler(Ping, group="g", concurrency=4, eager=eager)
        async def handler(event: Ping, ctx: Context) -> None:
            before = request_id.get()
            request_id.set(f"ping-{event.n}")
            if event.n % 2:
                await asyncio.sleep(0.01)  # suspends: the rest runs in a task, in the same context
            seen[event.n] = (before, request_id.get())

        await app.publish_many([Ping(n=n) for n in range(6)])
        async with running(app) as worker:
            await worker.wait_for(lambda: len(seen) == 6)
    assert seen == {n: ("unset", f"ping-{n}") for n in range(6)}


@pytest.mark.parametrize("eager", [False, True])
async def test_timeout_cancels_a_handler_that_waits(ns: str, redis_url: str, eager: bool) -> None:
    runs: list[int] = []
    async with open_app(ns, redis_url) as app:

        @app.handler(Ping, group="g", timeout=0.05, max_attempts=2, backoff=Backoff(base=0.01, jitter=False),
                     eager=eager)
        async def hangs(event: Ping, ctx: Context) -> None:
            runs.append(ctx.attempt)
            await asyncio.Event().wait()

        await app.publish(Ping(n=1))
        async with running(app) as worker:
            dead = await worker.wait_for(lambda: deadletters(app.redis, partition(app, Ping), "g"))
    assert runs == [1, 2]
    assert isinstance(dead, list) and dead[0].error_type == "TimeoutError"


@pytest.mark.parametrize("protocol", [2, 3])
async def test_worker_reads_with_either_redis_protocol(ns: str, redis_url: str, protocol: int) -> None:
    """Reads are packed and parsed by hand: RESP2 answers lists where RESP3 answers maps."""
    seen: list[int] = []
    async with open_app(ns, f"{redis_url}?protocol={protocol}") as app:

        @app.handler(Ping, group="g")
        async def record(event: Ping, ctx: Context) -> None:
            seen.append(event.n)

        await app.publish_many([Ping(n=n) for n in range(5)])
        async with running(app) as worker:
            await worker.wait_for(lambda: sorted(seen) == list(range(5)))


async def test_a_handlers_own_timeout_does_not_touch_the_worker(ns: str, redis_url: str) -> None:
    """A handler that enters asyncio.timeout before its first await gets its own TimeoutError, and the worker
    keeps reading (with eager starts, that timeout would bind to the reading task: hence eager is opt-in)."""
    outcomes: list[str] = []
    async with open_app(ns, redis_url) as app:

        @app.handler(Ping, group="g", max_attempts=1)
        async def bounded(event: Ping, ctx: Context) -> None:
            try:
                async with asyncio.timeout(0.05):
                    await asyncio.sleep(10 if event.n == 0 else 0)
            except TimeoutError:
                outcomes.append("timed out")
                return
            outcomes.append(f"done {event.n}")

        await app.publish(Ping(n=0))
        async with running(app) as worker:
            await worker.wait_for(lambda: outcomes == ["timed out"])
            await app.publish_many([Ping(n=1), Ping(n=2)])
            await worker.wait_for(lambda: sorted(outcomes) == ["done 1", "done 2", "timed out"])


async def test_closing_the_app_closes_its_connections(ns: str, fresh_redis: RedisServer) -> None:
    """aclose() closes the App's sockets (its client owns its pool), not garbage collection some time later."""
    observer = aioredis.Redis.from_url(fresh_redis.url)

    async def clients() -> int:
        return int((await observer.info("clients"))["connected_clients"])

    try:
        alone = await clients()
        async with open_app(ns, fresh_redis.url) as app:
            client = app.redis  # held, so that garbage collection cannot close its sockets for it
            await asyncio.gather(*(client.ping() for _ in range(3)))  # a few connections at once
            assert await clients() > alone

        async def closed() -> bool:
            return await clients() == alone

        await wait_for(closed, timeout=5, message="the App's connections to close")
        assert client.connection_pool is not None
    finally:
        await observer.aclose()


async def test_stopping_the_ingest_closes_the_metrics_connection(ns: str, fresh_redis: RedisServer) -> None:
    """/metrics reads Redis with a sync client of its own (at scrape time): stopping the ingest closes it too."""
    observer = aioredis.Redis.from_url(fresh_redis.url)

    async def clients() -> int:
        return int((await observer.info("clients"))["connected_clients"])

    try:
        alone = await clients()
        app = ingest_app(ns, fresh_redis.url)
        app.register(Ping)
        async with serving(app) as server, aiohttp.ClientSession() as client:
            async with client.get(f"{server.url}/metrics") as resp:
                assert resp.status == 200
                assert "streamproc_redis_up 1.0" in await resp.text()
            # Held, so that garbage collection cannot close its socket for it once the ingest is gone.
            [state] = [o for o in gc.get_objects() if isinstance(o, StreamStateCollector)
                       and o.redis.connection_pool.connection_kwargs.get("port") == fresh_redis.port]
            assert await clients() > alone

        async def closed() -> bool:
            return await clients() == alone

        await wait_for(closed, timeout=5, message="the ingest's connections to close")
        assert state.redis.connection_pool is not None
    finally:
        await observer.aclose()
