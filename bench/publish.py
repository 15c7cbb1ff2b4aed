"""Scenario 1, publish: streamproc's publish and publish_many against raw XADD, from a separate process.

One spawned publisher process per run measures every case in turn (so runs interleave cases); Redis is its own
process. Each case starts on an empty stream with a fresh App (no cached group or backlog state).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from bench import charts, raw
from bench.apps import noop_app
from bench.context import Bench
from bench.events import tick
from bench.procs import call
from bench.redis_server import fresh_redis
from bench.report import Check, Runs, Section, check_at_least, median, rate_table, ratio_text
from streamproc import App, Settings, eventloop

TASKS = 100


@dataclass(frozen=True, slots=True)
class Sizes:
    awaited: int  # events for the one-await-per-event cases
    concurrent: int  # events for the 100-task cases
    batched: int  # events for the pipelined / publish_many cases


FULL = Sizes(awaited=20_000, concurrent=50_000, batched=200_000)
SMOKE = Sizes(awaited=300, concurrent=1_000, batched=2_000)

RAW_AWAITED = "raw XADD, one await per event"
RAW_TASKS = f"raw XADD, {TASKS} concurrent tasks"
RAW_PIPE_100 = "raw XADD pipelined x100"
RAW_PIPE_1000 = "raw XADD pipelined x1000"
RAW_PACKED_1000 = "raw XADD hand-packed RESP x1000"
PUBLISH = "publish, one await per event"
PUBLISH_TASKS = f"publish from {TASKS} concurrent tasks"
MANY_100 = "publish_many x100"
MANY_1000 = "publish_many x1000"

# (case, the raw case it is compared with)
CASES: list[tuple[str, str]] = [
    (RAW_AWAITED, ""), (RAW_TASKS, RAW_AWAITED), (RAW_PIPE_100, ""), (RAW_PIPE_1000, ""),
    (RAW_PACKED_1000, RAW_PIPE_1000), (PUBLISH, RAW_AWAITED), (PUBLISH_TASKS, RAW_AWAITED),
    (MANY_100, RAW_PIPE_100), (MANY_1000, RAW_PIPE_1000),
]
# publish_many x1000 against the hand-packed raw loop too (not a target: the raw limit is redis-py's).
EXTRA_RATIOS = [(MANY_1000, RAW_PACKED_1000)]


@dataclass(frozen=True, slots=True)
class PublishJob:
    redis_url: str
    sizes: Sizes


def publish_main(job: PublishJob) -> dict[str, float]:
    """Child process: every case once; events/s per case."""
    return eventloop.run(_measure_all(job))


async def _publish_awaited(app: App, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await app.publish(tick(i))
    return n / (time.perf_counter() - started)


async def _publish_tasks(app: App, n: int) -> float:
    each = n // TASKS

    async def one(offset: int) -> None:
        for i in range(offset, offset + each):
            await app.publish(tick(i))

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for t in range(TASKS):
            tg.create_task(one(t * each))
    return each * TASKS / (time.perf_counter() - started)


async def _publish_many(app: App, n: int, batch: int) -> float:
    started = time.perf_counter()
    for first in range(0, n, batch):
        await app.publish_many([tick(i) for i in range(first, min(n, first + batch))])
    return n / (time.perf_counter() - started)


async def _measure_all(job: PublishJob) -> dict[str, float]:
    s = job.sizes
    client = aioredis.Redis.from_url(job.redis_url)
    raw_cases: dict[str, Callable[[], Awaitable[float]]] = {
        RAW_AWAITED: lambda: raw.xadd_awaited(client, s.awaited),
        RAW_TASKS: lambda: raw.xadd_concurrent(client, s.concurrent, TASKS),
        RAW_PIPE_100: lambda: raw.xadd_pipelined(client, s.batched, 100),
        RAW_PIPE_1000: lambda: raw.xadd_pipelined(client, s.batched, 1000),
        RAW_PACKED_1000: lambda: raw.xadd_packed(client, s.batched, 1000),
    }
    app_cases: dict[str, Callable[[App], Awaitable[float]]] = {
        PUBLISH: lambda app: _publish_awaited(app, s.awaited),
        PUBLISH_TASKS: lambda app: _publish_tasks(app, s.concurrent),
        MANY_100: lambda app: _publish_many(app, s.batched, 100),
        MANY_1000: lambda app: _publish_many(app, s.batched, 1000),
    }
    out: dict[str, float] = {}
    try:
        for case, _ in CASES:
            await client.flushall()
            if case in raw_cases:
                out[case] = await raw_cases[case]()
                continue
            app = noop_app(Settings(redis_url=job.redis_url))
            try:
                await app.publish(tick(-1))  # connect and create the group: not part of the measurement
                out[case] = await app_cases[case](app)
            finally:
                await app.aclose()
    finally:
        await client.aclose()
    return out


async def run(bench: Bench) -> Section:
    sizes = SMOKE if bench.smoke else FULL
    runs = Runs()
    async with fresh_redis(bench.redis_binary) as server:
        for _ in range(bench.runs):
            for case, value in (await call(publish_main, PublishJob(server.url, sizes))).items():
                runs.add(case, value)
        await server.client.flushall()
    section = Section("publish", "1. Publish")
    section.lines += [
        f"One publisher process (uvloop) per run, every case in turn on an empty stream; Redis in its own process. "
        f"Events: {sizes.awaited:,} per awaited case, {sizes.concurrent:,} per {TASKS}-task case, "
        f"{sizes.batched:,} per batched case. Ratios compare with the raw case of the same run.", "",
        *rate_table(runs, CASES), "",
        *(f"{case}: {ratio_text(runs.ratios(case, base))} of {base}." for case, base in EXTRA_RATIOS), ""]
    path, link = bench.chart("publish.png")
    charts.bars(path, "publish: events/s (median, min-max)", "events/s", {c: runs.get(c) for c, _ in CASES})
    section.lines += [f"![publish throughput]({link})", ""]
    many_100, many_1000 = runs.ratios(MANY_100, RAW_PIPE_100), runs.ratios(MANY_1000, RAW_PIPE_1000)
    section.checks += [
        Check("publish_many ≥ 85% of raw pipelined XADD",
              f"x100: {_pct(many_100)}, x1000: {_pct(many_1000)} of raw",
              bool(many_100 and many_1000) and min(median(many_100), median(many_1000)) >= 0.85),
        check_at_least(f"publish from {TASKS} tasks ≥ 3x one awaited raw XADD per event",
                       runs.ratios(PUBLISH_TASKS, RAW_AWAITED), 3.0, "{:.2f}x"),
    ]
    return section


def _pct(ratios: list[float]) -> str:
    return f"{100 * median(ratios):.0f}%" if ratios else "—"
