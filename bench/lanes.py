"""Scenario lanes: the drain rate of one type with three priority lanes against the same type without lanes.

Each case as in drain.py: an empty Redis, the group created at each stream's start, N events appended (not
measured), one worker process (`streamproc.run_worker`, the eager no-op handler at concurrency 100) released at a
barrier; the window ends when Redis reports every stream read and nothing pending. Cases:

    no lanes                 Tick on its one stream: the path of every type without lanes (read as always)
    3 lanes, all in lane 1   LanedTick, every event in its default lane: lane_lags.lua finds lanes 0 and 2 empty
    3 lanes, spread evenly   a third of the events in each lane: every read takes from several lanes

Ratios compare with "no lanes" of the same run. Whether the lane machinery costs anything when a type has none
is the drain scenario's job, run against the parent commit (see RESULTS.md).
"""

from __future__ import annotations

import asyncio
import multiprocessing.process
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from bench.context import Bench
from bench.drain import WORKER_SETTINGS
from bench.events import LANE_STREAMS, LANED_TAG, STREAM, LanedTick, raw_fields, tick
from bench.procs import release, start, stop
from bench.redis_server import Server, create_group, fresh_redis, group_state
from bench.report import Runs, Section, rate_table
from bench.workerproc import WorkerJob, worker_main

POLL_S = 0.01
NO_LANES = "no lanes"


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    app_path: str
    group: str
    streams: tuple[str, ...]  # the streams its events are spread over, evenly


CASES = [
    Case(NO_LANES, "bench.apps:noop", "noop", (STREAM,)),
    Case("3 lanes, all in lane 1", "bench.apps:laned", "lanes", (LANE_STREAMS[1],)),
    Case("3 lanes, spread evenly", "bench.apps:laned", "lanes", tuple(LANE_STREAMS)),
]


async def _preload(client: aioredis.Redis, case: Case, events: int, batch: int = 1_000) -> None:
    laned = case.group == "lanes"
    for first in range(0, events, batch):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(first, min(events, first + batch)):
                t = tick(i)
                event = LanedTick(seq=t.seq, user_id=t.user_id, url=t.url) if laned else t
                fields = raw_fields(event, LANED_TAG) if laned else raw_fields(t)
                pipe.xadd(case.streams[i % len(case.streams)], fields)  # type: ignore[arg-type]
            await pipe.execute()


async def _drained(client: aioredis.Redis, case: Case, events: int) -> bool:
    states = [await group_state(client, s, case.group) for s in case.streams]
    return sum(s.entries_read for s in states) >= events and not any(s.pending for s in states)


async def measure(server: Server, case: Case, events: int, timeout_s: float) -> float:
    """Events/s for one case on an empty server."""
    client = server.client
    await client.flushall()
    every = LANE_STREAMS if case.group == "lanes" else [STREAM]
    for stream in every:  # every lane has the group, as a publisher would make it
        await create_group(client, stream, case.group)
    await _preload(client, case, events)
    procs: list[multiprocessing.process.BaseProcess] = [
        start(worker_main, WorkerJob(case.app_path, server.url, 100, dict(WORKER_SETTINGS)))]
    try:
        started = await release(client, len(procs), procs)
        deadline = time.monotonic() + timeout_s
        while not await _drained(client, case, events):
            if time.monotonic() > deadline or not any(p.is_alive() for p in procs):
                raise RuntimeError(f"lanes {case.name!r} did not finish")
            await asyncio.sleep(POLL_S)
        return events / (time.perf_counter() - started)
    finally:
        codes = [await stop(p) for p in procs]
        if any(code not in (0, None) for code in codes):
            raise RuntimeError(f"lanes {case.name!r}: a worker exited with {codes}")


async def run(bench: Bench) -> Section:
    events, timeout_s = (1_500, 30.0) if bench.smoke else (150_000, 180.0)
    runs = Runs()
    async with fresh_redis(bench.redis_binary) as server:
        for _ in range(bench.runs):
            for case in CASES:
                runs.add(case.name, await measure(server, case, events, timeout_s))
        await server.client.flushall()
    section = Section("lanes", "Priority lanes: drain rate")
    section.lines += [
        f"{events:,} events pre-loaded on one partition; one worker process, the eager no-op handler at "
        "concurrency 100, default settings (`batch_size` 200, `priority_floor` 0.1) except `block_ms=100`. "
        "Ratios compare with the type without lanes in the same run.", "",
        *rate_table(runs, [(c.name, "" if c.name == NO_LANES else NO_LANES) for c in CASES]), ""]
    return section
