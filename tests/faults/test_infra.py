"""Smoke tests for the test infrastructure itself (real redis-server processes)."""

from __future__ import annotations

import redis.asyncio as aioredis

from tests.helpers import wait_for
from tests.redis_server import RedisServer


async def test_session_server_answers_ping(redis: aioredis.Redis, ns: str) -> None:
    assert await redis.ping() is True
    await redis.set(f"{ns}:k", b"v")
    assert await redis.get(f"{ns}:k") == b"v"


async def test_fresh_redis_aof_survives_restart(fresh_redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(fresh_redis.url)
    try:
        await client.set("durable", b"yes")
        await client.xadd("stream", {"f": "1"})
    finally:
        await client.aclose()

    old_port = fresh_redis.port
    fresh_redis.restart()
    assert fresh_redis.port == old_port

    client = aioredis.Redis.from_url(fresh_redis.url)
    try:
        # start() only returns once PING gets +PONG (not -LOADING), so the AOF
        # has been replayed by now.
        assert await client.get("durable") == b"yes"
        assert await client.xlen("stream") == 1
    finally:
        await client.aclose()


async def test_fresh_redis_aof_survives_crash(fresh_redis: RedisServer) -> None:
    # appendfsync always: an acknowledged write must survive SIGKILL.
    client = aioredis.Redis.from_url(fresh_redis.url)
    try:
        await client.xadd("stream", {"f": "1"})
        fresh_redis.kill()
        fresh_redis.start()
        # The pooled connection died with the old process; redis-py reconnects on retry.
        assert await wait_for(lambda: _xlen(client, "stream")) == 1
    finally:
        await client.aclose()


async def _xlen(client: aioredis.Redis, key: str) -> int:
    try:
        return int(await client.xlen(key))
    except (aioredis.ConnectionError, OSError):
        return 0
