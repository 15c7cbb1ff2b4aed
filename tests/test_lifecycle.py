"""Worker resources: opened before the first handler runs, closed only after in-flight handlers have finished."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from streamproc import Context, Event
from tests.inproc import open_app, running


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
