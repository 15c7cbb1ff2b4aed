"""`python -m bench.cpu_drain RUNS`: the worker's CPU time per event draining the no-lane stream, in this process.

Not a scenario: a tool for A/B comparisons of two trees on a shared machine (run it from each tree with
`PYTHONPATH=<tree>`, alternating). CPU time (time.process_time) does not count the time the worker waits while
other processes hold the cores, so it varies far less than a wall-clock rate when the machine is busy. Prints one
JSON line: the tree, CPU microseconds per event and events/s per run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import redis.asyncio as aioredis

import streamproc
from bench import raw
from bench.apps import noop_app
from bench.events import STREAM
from bench.redis_server import create_group, fresh_redis, group_state
from streamproc import Settings, eventloop, run_worker

EVENTS = 100_000


async def one(url: str, client: aioredis.Redis) -> tuple[float, float]:
    """(CPU us per event, events/s) of one drain of EVENTS pre-loaded events by run_worker in this process."""
    await client.flushall()
    await create_group(client, STREAM, "noop")
    await raw.preload(client, EVENTS)
    app = noop_app(Settings(redis_url=url, block_ms=100))
    stopping = asyncio.Event()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    task = asyncio.create_task(run_worker(app, stopping, None, 100))
    while True:
        state = await group_state(client, STREAM, "noop")
        if state.entries_read >= EVENTS and state.pending == 0:
            break
        await asyncio.sleep(0.05)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    stopping.set()
    await task
    await app.aclose()
    return cpu / EVENTS * 1e6, EVENTS / wall


async def main(runs: int) -> None:
    async with fresh_redis(None) as server:
        results = [await one(server.url, server.client) for _ in range(runs)]
    print(json.dumps({"tree": streamproc.__file__, "cpu_us_per_event": [r[0] for r in results],
                      "events_per_s": [r[1] for r in results]}))


if __name__ == "__main__":
    eventloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
