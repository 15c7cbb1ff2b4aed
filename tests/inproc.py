"""Helpers for in-process integration tests: apps with tiny timings, a worker running in the test's own loop,
and small Redis inspections (pending counts, retry schedules, dead letters)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis

from streamproc import (
    App,
    Context,
    DeadLettered,
    Event,
    Outgoing,
    Published,
    PublishError,
    Settings,
    new_event_id,
    read_deadletters,
    run_worker,
)
from streamproc.keys import PartitionKeys
from tests.helpers import Predicate, wait_for

# Timings small enough that leases, claims and retries happen within a fraction of a second.
FAST: dict[str, Any] = {
    "lease_ms": 200,
    "block_ms": 50,
    "claim_interval_ms": 50,
    "retry_poll_ms": 20,
    "grace_period_s": 2.0,
    "trim_interval_ms": 100,
    "backlog_check_ms": 0,
}


def fast_settings(redis_url: str, **overrides: Any) -> Settings:
    return Settings(redis_url=redis_url, **{**FAST, **overrides})


@contextlib.asynccontextmanager
async def open_app(ns: str, redis_url: str, **overrides: Any) -> AsyncIterator[App]:
    """An App on namespace `ns` with fast settings; its Redis client is closed at exit."""
    app = App(ns, settings=fast_settings(redis_url, **overrides))
    try:
        yield app
    finally:
        await app.aclose()


@dataclass
class RunningWorker:
    """`streamproc.run_worker` running as a task in the test's loop."""

    task: asyncio.Task[None]
    stopping: asyncio.Event

    def check(self) -> None:
        """Fail fast if the worker died instead of letting a wait time out."""
        if self.task.done():
            exc = None if self.task.cancelled() else self.task.exception()
            raise AssertionError(f"worker stopped unexpectedly: {exc!r}") from exc

    async def wait_for(self, predicate: Predicate, timeout: float = 10.0, message: str | None = None) -> object:  # noqa: ASYNC109
        async def checked() -> object:
            self.check()
            value = predicate()
            return (await value) if isinstance(value, Awaitable) else value

        return await wait_for(checked, timeout, message=message or getattr(predicate, "__qualname__", None))

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Ask for a graceful stop and wait for it; the worker must exit on its own (and without an error)."""
        self.stopping.set()
        done, _ = await asyncio.wait([self.task], timeout=timeout)
        if not done:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            raise AssertionError(f"worker did not stop within {timeout}s")
        self.task.result()


@contextlib.asynccontextmanager
async def running(app: App, groups: list[str] | None = None, concurrency: int | None = None,
                  ) -> AsyncIterator[RunningWorker]:
    """Run a worker for `app` for the duration of the block; stop it gracefully at exit."""
    stopping = asyncio.Event()
    worker = RunningWorker(asyncio.create_task(run_worker(app, stopping, groups, concurrency)), stopping)
    try:
        yield worker
    except BaseException:
        stopping.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(worker.task, timeout=5)
        raise
    await worker.stop()


@dataclass
class Calls:
    """Records handler runs per group: event ids seen and the attempts they ran with."""

    runs: dict[str, Counter[str]] = field(default_factory=dict)
    attempts: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def record(self, event: Event, ctx: Context) -> None:
        self.runs.setdefault(ctx.group, Counter())[ctx.event_id] += 1
        self.attempts.setdefault((ctx.group, ctx.event_id), []).append(ctx.attempt)

    def of(self, group: str) -> Counter[str]:
        return self.runs.get(group, Counter())

    def distinct(self, group: str) -> int:
        return len(self.of(group))

    def total(self, group: str) -> int:
        return sum(self.of(group).values())


def handler_recording(calls: Calls, fail: Callable[[Any, Context], bool] | None = None,
                      ) -> Callable[[Any, Context], Awaitable[None]]:
    """A handler that records each run and raises RuntimeError when `fail(event, ctx)` is true."""

    async def handle(event: Event, ctx: Context) -> None:
        calls.record(event, ctx)
        if fail is not None and fail(event, ctx):
            raise RuntimeError(f"planned failure of {ctx.event_id} (attempt {ctx.attempt})")

    return handle


async def pending(redis: aioredis.Redis, stream: str, group: str) -> int:
    summary = await redis.xpending(stream, group)
    return int(summary["pending"])


async def pending_ids(redis: aioredis.Redis, stream: str, group: str) -> list[bytes]:
    rows = await redis.xpending_range(stream, group, min="-", max="+", count=100_000)
    return [cast(bytes, row["message_id"]) for row in rows]


async def settled(redis: aioredis.Redis, keys: PartitionKeys, group: str) -> bool:
    """Nothing of `group` is pending or scheduled for retry on this partition."""
    return (await pending(redis, keys.stream, group) == 0
            and await redis.zcard(keys.retry(group)) == 0
            and await redis.hlen(keys.attempts(group)) == 0)


async def deadletters(redis: aioredis.Redis, keys: PartitionKeys, group: str) -> list[DeadLettered]:
    return await read_deadletters(redis, [keys.deadletter(group)])


def partition(app: App, event_type: type[Event], index: int = 0) -> PartitionKeys:
    return app.topology.route(event_type).partitions[index]


async def publish_until_accepted(app: App, events: list[Any], attempts: int = 200) -> list[Published]:
    """Publish as a producer would through an outage: retrying PublishError, with the same event ids."""
    outgoing = [Outgoing(e, event_id=new_event_id()) for e in events]
    for _ in range(attempts):
        try:
            return await app.publish_many(outgoing)
        except PublishError:
            await asyncio.sleep(0.05)
    raise AssertionError("Redis did not accept the events again")
