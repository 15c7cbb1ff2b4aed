"""streaq: Worker.task(...).enqueue() and Worker.run_async() with `concurrency`."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from streaq import Worker

from bench.peerlibs.common import Counter, main, payload, preload_with, timed, timed_tasks

COUNTER: list[Counter] = []


async def noop(event: dict[str, object]) -> None:
    if COUNTER:
        COUNTER[0].hit()


def _worker(url: str, concurrency: int) -> tuple[Any, Any]:
    worker: Any = Worker(redis_url=url, concurrency=concurrency, queue_name="peer", handle_signals=False)
    return worker, worker.task(noop)


async def publish(args: argparse.Namespace) -> dict[str, float]:
    worker, task = _worker(args.redis_url, args.concurrency)
    async with worker:
        async def send(i: int) -> object:
            return await task.enqueue(payload(i))

        return {"publish": await timed(args.events // 10, send), "publish_tasks": await timed_tasks(args.events, send)}


async def preload(args: argparse.Namespace) -> dict[str, float]:
    worker, task = _worker(args.redis_url, args.concurrency)
    async with worker:
        await preload_with(args.events, lambda i: task.enqueue(payload(i)))
    return {"preloaded": args.events}


async def drain(args: argparse.Namespace) -> dict[str, float]:
    COUNTER.append(Counter(args.events))
    worker, _ = _worker(args.redis_url, args.concurrency)
    running = asyncio.ensure_future(worker.run_async())
    try:
        await COUNTER[0].done.wait()
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    return {"drain": COUNTER[0].rate()}


if __name__ == "__main__":
    main({"publish": publish, "preload": preload, "drain": drain})
