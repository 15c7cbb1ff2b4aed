"""taskiq with taskiq-redis's RedisStreamBroker: task.kiq() and a Receiver with max_async_tasks."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import redis.asyncio as aioredis
from taskiq.receiver import Receiver
from taskiq_redis import RedisStreamBroker

from bench.peerlibs.common import Counter, main, payload, preload_with, timed, timed_tasks

STREAM = "peer:taskiq"
GROUP = "bench"
COUNTER: list[Counter] = []


async def noop(event: dict[str, object]) -> None:
    if COUNTER:
        COUNTER[0].hit()


def _broker(url: str) -> tuple[Any, Any]:
    broker: Any = RedisStreamBroker(url, queue_name=STREAM, consumer_group_name=GROUP)
    return broker, broker.register_task(noop, task_name="noop")


async def publish(args: argparse.Namespace) -> dict[str, float]:
    broker, task = _broker(args.redis_url)
    await broker.startup()
    try:
        async def send(i: int) -> object:
            return await task.kiq(payload(i))

        return {"publish": await timed(args.events // 10, send), "publish_tasks": await timed_tasks(args.events, send)}
    finally:
        await broker.shutdown()


async def preload(args: argparse.Namespace) -> dict[str, float]:
    client = aioredis.Redis.from_url(args.redis_url)
    await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    await client.aclose()
    broker, task = _broker(args.redis_url)
    await broker.startup()
    try:
        await preload_with(args.events, lambda i: task.kiq(payload(i)))
    finally:
        await broker.shutdown()
    return {"preloaded": args.events}


async def drain(args: argparse.Namespace) -> dict[str, float]:
    COUNTER.append(Counter(args.events))
    broker, _ = _broker(args.redis_url)
    broker.is_worker_process = True
    await broker.startup()
    finish = asyncio.Event()
    receiver = Receiver(broker, max_async_tasks=args.concurrency, run_startup=False)
    listening = asyncio.ensure_future(receiver.listen(finish))
    try:
        await COUNTER[0].done.wait()
    finally:
        finish.set()
        listening.cancel()
        await broker.shutdown()
    return {"drain": COUNTER[0].rate()}


if __name__ == "__main__":
    main({"publish": publish, "preload": preload, "drain": drain})
