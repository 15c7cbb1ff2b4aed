"""Running the ingest server in the test's own event loop, on a free loopback port, for a real HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from streamproc import App
from streamproc.auth import token_digest
from streamproc.ingest import serve_ingest
from tests.inproc import fast_settings

TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def ingest_app(ns: str, redis_url: str, **overrides: Any) -> App:
    """An App with fast settings that accepts the bearer token TOKEN (its digest, as configured in production)."""
    return App(ns, settings=fast_settings(redis_url, **{"ingest_token_hashes": token_digest(TOKEN), **overrides}))


@dataclass
class IngestServer:
    port: int
    stopping: asyncio.Event
    task: asyncio.Task[None]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def events_url(self) -> str:
        return f"{self.url}/v1/events"

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Ask for a graceful stop and wait for serve_ingest to return (raising what it raised)."""
        self.stopping.set()
        await asyncio.wait_for(asyncio.shield(self.task), timeout)


@contextlib.asynccontextmanager
async def serving(app: App) -> AsyncIterator[IngestServer]:
    """`serve_ingest(app, "127.0.0.1", 0, ...)` as a task; stopped gracefully at exit (which closes app's Redis)."""
    stopping = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_ingest(app, "127.0.0.1", 0, stopping, started=bound.set_result))
    await asyncio.wait([task, bound], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # it failed to start: raise why
        raise AssertionError("serve_ingest returned before it started")
    if not bound.done():
        task.cancel()
        raise AssertionError("ingest did not start within 10s")
    server = IngestServer(bound.result(), stopping, task)
    try:
        yield server
    finally:
        if not task.done():
            await server.stop()
