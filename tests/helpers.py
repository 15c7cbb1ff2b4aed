"""Shared test helpers. Poll for conditions instead of sleeping blindly."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

Predicate = Callable[[], object] | Callable[[], Awaitable[object]]


async def wait_for(
    predicate: Predicate,
    timeout: float = 10.0,  # noqa: ASYNC109 - a deadline checked between polls, not a cancel scope
    interval: float = 0.02,
    message: str | None = None,
) -> object:
    """Poll a sync or async predicate until it returns something truthy.

    Returns that truthy value, so callers can ``x = await wait_for(lambda: get())``.
    Raises AssertionError on timeout, naming the predicate and its last value.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(interval)


async def redis_ms(redis: aioredis.Redis) -> int:
    """Redis's clock (TIME) in ms: due times and schedules are on it, never on the test's."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def appended_ids(redis: aioredis.Redis, stream: str) -> Counter[str]:
    """How often each event id is in the stream."""
    return Counter(fields[b"event_id"].decode() for _, fields in await redis.xrange(stream))
