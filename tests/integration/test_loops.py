"""The worker's repeating loop against real Redis errors: a vanished group is recreated inside the loop (an outage
while recreating it is waited out like any other), and a fatal error stops the loop through its recovery, never by
escaping into the worker's TaskGroup."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from streamproc.redis.errors import Failure, FatalRedisError
from streamproc.worker.loops import Recovery, repeat
from tests.redis_server import free_port


async def test_an_outage_while_recreating_a_group_does_not_escape_the_loop(ns: str, redis: aioredis.Redis) -> None:
    stream, done = f"{ns}:stream", asyncio.Event()
    nowhere = aioredis.Redis(port=free_port(), socket_connect_timeout=0.2)  # nothing listens: a real outage
    attempts: list[str] = []
    noted: list[Failure] = []

    async def step() -> float:
        await redis.xreadgroup("g", "c", {stream: ">"}, count=1)  # NOGROUP until the group exists
        done.set()
        return 0.0

    async def recreate() -> None:
        attempts.append("recreate")
        if len(attempts) == 1:
            await nowhere.ping()  # the first recreation meets an outage
        await redis.xgroup_create(stream, "g", id="0", mkstream=True)

    def fatal(error: FatalRedisError) -> None:
        raise AssertionError(f"not fatal: {error}")

    try:
        await asyncio.wait_for(repeat("test", step, done, Recovery(recreate, fatal, noted.append)), timeout=10)
    finally:
        await nowhere.aclose()
    assert attempts == ["recreate", "recreate"]
    assert noted == [Failure.NOGROUP, Failure.OUTAGE]


async def test_a_fatal_error_ends_the_loop_through_its_recovery(ns: str, redis: aioredis.Redis) -> None:
    key, until = f"{ns}:not-a-stream", asyncio.Event()
    await redis.set(key, "a string")
    stopped: list[FatalRedisError] = []

    async def step() -> float:
        await redis.xadd(key, {"f": "v"})  # WRONGTYPE
        return 0.0

    async def recreate() -> None:
        raise AssertionError("not a vanished group")

    await asyncio.wait_for(repeat("writer", step, until, Recovery(recreate, stopped.append)), timeout=10)
    [error] = stopped
    assert "writer" in str(error) and "WRONGTYPE" in str(error)
