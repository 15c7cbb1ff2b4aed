"""saq: Queue.enqueue() and a Worker with `concurrency`."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from saq import Queue, Worker

from bench.peerlibs.common import Counter, main, payload, preload_with, timed, timed_tasks

COUNTER: list[Counter] = []


async def noop(ctx: object, **event: object) -> None:
    if COUNTER:
        COUNTER[0].hit()


async def publish(args: argparse.Namespace) -> dict[str, float]:
    queue: Any = Queue.from_url(args.redis_url, name="peer")
    await queue.connect()
    try:
        async def send(i: int) -> object:
            return await queue.enqueue("noop", **payload(i))

        return {"publish": await timed(args.events // 10, send), "publish_tasks": await timed_tasks(args.events, send)}
    finally:
        await queue.disconnect()


async def preload(args: argparse.Namespace) -> dict[str, float]:
    queue: Any = Queue.from_url(args.redis_url, name="peer")
    await queue.connect()
    try:
        await preload_with(args.events, lambda i: queue.enqueue("noop", **payload(i)))
    finally:
        await queue.disconnect()
    return {"preloaded": args.events}


async def drain(args: argparse.Namespace) -> dict[str, float]:
    COUNTER.append(Counter(args.events))
    queue: Any = Queue.from_url(args.redis_url, name="peer")
    worker: Any = Worker(queue, functions=[noop], concurrency=args.concurrency)
    running = asyncio.ensure_future(worker.start())
    try:
        await COUNTER[0].done.wait()
    finally:
        await worker.stop()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await queue.disconnect()
    return {"drain": COUNTER[0].rate()}


if __name__ == "__main__":
    main({"publish": publish, "preload": preload, "drain": drain})
