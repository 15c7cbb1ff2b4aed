"""A fresh redis-server per scenario (free loopback port, no RDB, no AOF; killed after), and what we read from it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

from streamproc.devtools.localredis import LocalRedis


@dataclass(frozen=True, slots=True)
class Server:
    url: str
    client: aioredis.Redis  # decode_responses=False, for the harness's own bookkeeping


@contextlib.asynccontextmanager
async def fresh_redis(binary: str | None = None) -> AsyncIterator[Server]:
    """Start a private redis-server (`--save '' --appendonly no`, see LocalRedis) and stop it afterwards."""
    with LocalRedis(binary=binary) as local:
        client = aioredis.Redis.from_url(local.url)
        try:
            yield Server(local.url, client)
        finally:
            await client.aclose()


async def redis_version(client: aioredis.Redis) -> str:
    info = await client.info("server")
    return str(info.get("redis_version", "?"))


async def used_memory(client: aioredis.Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


@dataclass(frozen=True, slots=True)
class GroupState:
    entries_read: int
    lag: int
    pending: int

    @property
    def backlog(self) -> int:
        return self.lag + self.pending


async def group_state(client: aioredis.Redis, stream: str, group: str) -> GroupState:
    """Entries the group has read, not yet read (lag) and not yet acknowledged (pending). Zeros if it is absent."""
    try:
        groups = await client.xinfo_groups(stream)
    except aioredis.ResponseError:
        return GroupState(0, 0, 0)
    for g in groups:
        name = g["name"]
        if (name.decode() if isinstance(name, bytes) else name) == group:
            lag = g.get("lag")
            return GroupState(int(g.get("entries-read") or 0), int(lag) if lag is not None else 0, int(g["pending"]))
    return GroupState(0, 0, 0)


async def create_group(client: aioredis.Redis, stream: str, group: str) -> None:
    """The group at the stream's start (MKSTREAM), before anything is appended."""
    await client.xgroup_create(stream, group, id="0", mkstream=True)
