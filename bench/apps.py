"""The streamproc apps the benchmark runs, one per handler behaviour, all in namespace "bench" on `Tick`.

Worker processes load them by path (`bench.apps:noop`); publishers build fresh ones with the factories, so each
measurement starts with a publisher that has no cached state. Each app declares only its own group.

    noop     group "noop"     returns at once (the handler finishes without suspending)
    sleepy   group "sleep"    awaits asyncio.sleep(0.001): I/O-bound
    laned    group "lanes"    noop's handler on LanedTick, a type with three priority lanes (bench/lanes.py)
    timed    group "latency"  records now - event.sent_ns (µs) in LATENCIES_US, dumped by bench.workerproc at stop
    soak     group "soak"     records each handled event id and its latency in a bookkeeping Redis (not the one
                              measured), BENCH_RECORD_URL, so that lost and duplicated events can be counted
"""

from __future__ import annotations

import asyncio
import os
import time
from array import array

import redis.asyncio as aioredis

from bench.events import LANE_STREAMS, NAMESPACE, STREAM, LanedTick, Tick
from streamproc import App, Context, Settings

# This module is the benchmark apps' edge: the only place in bench/ that workers read the environment, once.
RECORD_URL = os.environ.get("BENCH_RECORD_URL", "")
HANDLED_KEY = "soak:handled"  # hash: event id -> handler starts
LATENCY_KEY = "soak:latency_us"  # list of publish -> handler-start latencies

LATENCIES_US: array[int] = array("q")
_recorder: list[aioredis.Redis] = []


def _app(settings: Settings | None) -> App:
    app = App(NAMESPACE, settings=settings or Settings.from_env())
    return app


def noop_app(settings: Settings | None = None) -> App:
    app = _app(settings)

    # eager: it never awaits, the case eager starts are for (no task per event); see App.handler.
    @app.handler(Tick, group="noop", concurrency=100, eager=True)
    async def do_nothing(event: Tick, ctx: Context) -> None:
        return None

    return app


def sleepy_app(settings: Settings | None = None) -> App:
    app = _app(settings)

    @app.handler(Tick, group="sleep", concurrency=100)
    async def sleep_1ms(event: Tick, ctx: Context) -> None:
        await asyncio.sleep(0.001)

    return app


def timed_app(settings: Settings | None = None) -> App:
    app = _app(settings)

    @app.handler(Tick, group="latency", concurrency=100, eager=True)  # never awaits: see noop_app
    async def record_latency(event: Tick, ctx: Context) -> None:
        LATENCIES_US.append((time.time_ns() - event.sent_ns) // 1000)

    return app


def _record_client() -> aioredis.Redis:
    if not _recorder:
        _recorder.append(aioredis.Redis.from_url(RECORD_URL))
    return _recorder[0]


def soak_app(settings: Settings | None = None) -> App:
    app = _app(settings)

    @app.handler(Tick, group="soak", concurrency=100)
    async def record_handled(event: Tick, ctx: Context) -> None:
        latency_us = (time.time_ns() - event.sent_ns) // 1000
        async with _record_client().pipeline(transaction=False) as pipe:
            pipe.hincrby(HANDLED_KEY, ctx.event_id, 1)
            pipe.rpush(LATENCY_KEY, latency_us)
            await pipe.execute()

    return app


def laned_app(settings: Settings | None = None) -> App:
    app = _app(settings)

    @app.handler(LanedTick, group="lanes", concurrency=100, eager=True)  # never awaits: see noop_app
    async def do_nothing(event: LanedTick, ctx: Context) -> None:
        return None

    return app


noop = noop_app()
laned = laned_app()
sleepy = sleepy_app()
timed = timed_app()
soak = soak_app()

assert noop.topology.route(Tick).partitions[0].stream == STREAM, "bench.events.STREAM is out of date"
assert [k.stream for k in laned.topology.route(LanedTick).partitions] == LANE_STREAMS, "LANE_STREAMS is out of date"
