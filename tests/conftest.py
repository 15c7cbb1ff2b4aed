"""Fixtures: every test talks to a real, private redis-server started here."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Protocol
from uuid import uuid4

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.redis_server import RedisServer

# A Redis nobody configured is a closed port, not the machine's own Redis on 6379: code that reaches for its default
# (the example app's module-level App, a subprocess given no --redis-url) fails at once instead of writing there.
os.environ["REDIS_URL"] = "redis://127.0.0.1:9/0"
os.environ.pop("STREAMPROC_REDIS_URL", None)


class HasUrl(Protocol):
    @property
    def url(self) -> str: ...


@dataclass(frozen=True)
class ExternalRedis:
    """A Redis we did not start (STREAMPROC_TEST_REDIS_URL); we never stop it."""

    url: str


@pytest.fixture(scope="session")
def redis_server() -> Iterator[HasUrl]:
    """One shared, non-persistent server for the whole session.

    Tests isolate themselves by key namespace (see ``ns``), not by FLUSHALL, so
    they stay safe when pointed at an external server.
    """
    external = os.environ.get("STREAMPROC_TEST_REDIS_URL")
    if external:
        yield ExternalRedis(external)
        return
    server = RedisServer(appendonly=False)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: HasUrl) -> str:
    return redis_server.url


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A private AOF-backed server per test, for tests that kill/restart Redis."""
    server = RedisServer(appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def ns() -> str:
    """Unique key/stream namespace so tests sharing a server don't collide."""
    return f"t{uuid4().hex[:8]}"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client without a connection limit."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session
