"""faststream (Redis Streams): RedisBroker.publish(stream=...) and a StreamSub consumer group subscriber."""

from __future__ import annotations

import argparse
from typing import Any

import redis.asyncio as aioredis
from faststream.redis import RedisBroker, StreamSub

from bench.peerlibs.common import Counter, main, payload, preload_with, timed, timed_tasks

STREAM = "peer:faststream"
GROUP = "bench"


async def publish(args: argparse.Namespace) -> dict[str, float]:
    broker: Any = RedisBroker(args.redis_url)
    await broker.connect()
    try:
        async def send(i: int) -> object:
            return await broker.publish(payload(i), stream=STREAM)

        return {"publish": await timed(args.events // 10, send), "publish_tasks": await timed_tasks(args.events, send)}
    finally:
        await broker.stop()


async def preload(args: argparse.Namespace) -> dict[str, float]:
    client = aioredis.Redis.from_url(args.redis_url)
    await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    await client.aclose()
    broker: Any = RedisBroker(args.redis_url)
    await broker.connect()
    try:
        await preload_with(args.events, lambda i: broker.publish(payload(i), stream=STREAM))
    finally:
        await broker.stop()
    return {"preloaded": args.events}


async def drain(args: argparse.Namespace) -> dict[str, float]:
    counter = Counter(args.events)
    broker: Any = RedisBroker(args.redis_url)

    async def handle(body: dict[str, object]) -> None:
        counter.hit()

    broker.subscriber(stream=StreamSub(STREAM, group=GROUP, consumer="c1", max_records=100))(handle)
    await broker.start()
    try:
        await counter.done.wait()
    finally:
        await broker.stop()
    return {"drain": counter.rate()}


if __name__ == "__main__":
    main({"publish": publish, "preload": preload, "drain": drain})
