"""What every peer program shares: the payload, a handled-events counter, the command line and the JSON answer.

    python -m bench.peerlibs.NAME publish --redis-url URL --events N     {"publish": e/s, "publish_tasks": e/s}
    python -m bench.peerlibs.NAME preload --redis-url URL --events N     {"preloaded": N}
    python -m bench.peerlibs.NAME drain   --redis-url URL --events N --concurrency C    {"drain": e/s}

Drain is timed inside the consumer process from its first handler start to its N-th: start-up and the ack tail
are outside the window (which favours the peer a little against streamproc's release-to-all-acked window).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

TASKS = 100


def payload(seq: int) -> dict[str, object]:
    """The same fields as bench.events.Tick."""
    return {"seq": seq, "sent_ns": 0, "user_id": f"u{seq % 1000:04d}", "url": f"https://example.org/cards/{seq}"}


class Counter:
    """Counts handler starts; `done` is set at the target, and the window from the first to the last is kept."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()

    def hit(self) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
        self.count += 1
        if self.count == self.target:
            self.last = now
            self.done.set()

    def rate(self) -> float:
        return (self.target - 1) / (self.last - self.first) if self.last > self.first else 0.0


async def timed(n: int, send: Callable[[int], Awaitable[object]]) -> float:
    """Events/s of one awaited send per event."""
    began = time.perf_counter()
    for i in range(n):
        await send(i)
    return n / (time.perf_counter() - began)


async def timed_tasks(n: int, send: Callable[[int], Awaitable[object]]) -> float:
    """Events/s of TASKS tasks each awaiting one send per event."""
    each = n // TASKS

    async def one(offset: int) -> None:
        for i in range(offset, offset + each):
            await send(i)

    began = time.perf_counter()
    await asyncio.gather(*(one(t * each) for t in range(TASKS)))
    return each * TASKS / (time.perf_counter() - began)


async def preload_with(n: int, send: Callable[[int], Awaitable[object]]) -> None:
    """Enqueue n events as fast as the peer's own client allows (not measured)."""
    each = -(-n // TASKS)

    async def one(offset: int) -> None:
        for i in range(offset, min(n, offset + each)):
            await send(i)

    await asyncio.gather(*(one(t * each) for t in range(TASKS)))


Modes = dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, float]]]]


def main(modes: Modes) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=sorted(modes))
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    try:
        import uvloop

        result = uvloop.run(modes[args.mode](args))
    except ImportError:
        result = asyncio.run(modes[args.mode](args))
    sys.stdout.write(json.dumps(result) + "\n")
