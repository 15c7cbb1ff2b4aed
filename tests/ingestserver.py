"""Running the ingest server in the test's own event loop, on a free loopback port, for a real HTTP client; the
events, request bodies and checks that ingest tests share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import redis.asyncio as aioredis

from streamproc import App, Context, Event
from streamproc.http.auth import token_digest
from streamproc.http.ingest import serve_ingest
from streamproc.http.problems import PROBLEM_TYPES, problem_type
from tests.inproc import fast_settings, partition

TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}
PROBLEM = "application/problem+json"


class CardAdded(Event, tag="card.added"):
    card_id: str
    curator_id: str
    url: str
    title: str | None = None
    position: int = 0


class UserFollowed(Event, tag="user.followed"):
    follower_id: str
    followee_id: str


async def noop(event: Event, ctx: Context) -> None:
    return None


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


def card(i: int = 1, **extra: Any) -> dict[str, Any]:
    return {"type": "card.added", "card_id": f"c{i}", "curator_id": "u1", "url": f"https://example.com/{i}",
            **extra}


def follow(i: int = 1) -> dict[str, Any]:
    return {"type": "user.followed", "follower_id": f"u{i}", "followee_id": "u1"}


def make_app(ns: str, redis_url: str, **overrides: Any) -> App:
    """card.added is consumed by group "feeds" (so it has a backlog); user.followed has no consumer here."""
    app = ingest_app(ns, redis_url, **overrides)
    app.handler(CardAdded, group="feeds")(noop)
    app.register(UserFollowed)
    return app




async def post(client: aiohttp.ClientSession, server: IngestServer, body: Any, headers: dict[str, str] | None = None,
               ) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    """POST a JSON body (or bytes as given); returns the status, the decoded JSON answer and the response."""
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    async with client.post(server.events_url, data=data, headers=JSON if headers is None else headers) as resp:
        answer = msgspec.json.decode(await resp.read())
        return resp.status, answer, resp


async def xlen(redis: aioredis.Redis, app: App, event_type: type[Event]) -> int:
    return int(await redis.xlen(partition(app, event_type).stream))


def assert_problem(resp: aiohttp.ClientResponse, answer: dict[str, Any], status: int) -> None:
    """An RFC 9457 problem document with the response's status, of a documented type of the ingest."""
    assert resp.status == status, answer
    assert resp.content_type == PROBLEM
    assert answer["status"] == status
    slug = answer["title"].lower().replace(" ", "-")
    assert answer["type"] == problem_type(slug) and PROBLEM_TYPES[slug][0] == status, answer
    assert answer["title"] and answer["detail"]
