"""Scenario 2, drain: N pre-loaded events, consumed by worker processes (streamproc.run_worker on uvloop).

Per case: an empty Redis, the group created at the stream's start, N events appended (not measured), the
consumer processes started and held at a barrier, then released together. The window runs from the release to
the moment Redis reports the group has read everything and nothing is pending (polled every 10 ms), so it counts
the acks too. The raw consume loop (XREADGROUP COUNT 500 + pipelined XACK) runs the same way.
"""

from __future__ import annotations

import asyncio
import multiprocessing.process
import time
from dataclasses import dataclass

from bench import charts, raw
from bench.context import Bench
from bench.events import STREAM
from bench.procs import release, start, stop
from bench.raw import RawConsumeJob, consume_main
from bench.redis_server import Server, create_group, fresh_redis, group_state
from bench.report import Check, Runs, Section, median, rate_table, ratio_text, spread
from bench.workerproc import WorkerJob, worker_main

# Worker settings for every bench worker: a short XREADGROUP block, only so that a worker with nothing left to read
# notices SIGTERM quickly (under load, reads never block). Everything else is streamproc's default.
WORKER_SETTINGS: dict[str, object] = {"block_ms": 100}
POLL_S = 0.01


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    group: str
    app_path: str  # "" for the raw loop
    processes: int = 1
    concurrency: int | None = None
    sleeps: bool = False  # the 1 ms handler: its own (smaller) N
    batch_size: int | None = None  # streamproc's batch_size setting, when not its default


@dataclass(frozen=True, slots=True)
class Sizes:
    events: int
    sleep_events: int
    timeout_s: float


FULL = Sizes(events=200_000, sleep_events=100_000, timeout_s=180.0)
SMOKE = Sizes(events=2_000, sleep_events=1_000, timeout_s=30.0)

RAW_1 = "raw loop, 1 process"
RAW_2 = "raw loop, 2 processes"
CASES = [
    Case(RAW_1, "raw", ""),
    Case("no-op (eager), concurrency 1", "noop", "bench.apps:noop", concurrency=1),
    Case("no-op (eager), concurrency 10", "noop", "bench.apps:noop", concurrency=10),
    Case("no-op (eager), concurrency 100", "noop", "bench.apps:noop", concurrency=100),
    Case("no-op (eager), concurrency 100, batch_size 500", "noop", "bench.apps:noop", concurrency=100, batch_size=500),
    Case(RAW_2, "raw", "", processes=2),
    Case("no-op (eager), concurrency 100, 2 processes", "noop", "bench.apps:noop", processes=2, concurrency=100),
    Case("sleep 1 ms, concurrency 100", "sleep", "bench.apps:sleepy", concurrency=100, sleeps=True),
    Case("sleep 1 ms, concurrency 1000", "sleep", "bench.apps:sleepy", concurrency=1000, sleeps=True),
]
NOOP_100 = "no-op (eager), concurrency 100"


def _baseline(case: Case) -> str:
    if case.app_path == "":
        return ""
    return RAW_2 if case.processes == 2 else RAW_1


def _spawn(case: Case, url: str) -> list[multiprocessing.process.BaseProcess]:
    if not case.app_path:
        return [start(consume_main, RawConsumeJob(url, case.group, f"raw-{i}")) for i in range(case.processes)]
    settings = {**WORKER_SETTINGS, **({"batch_size": case.batch_size} if case.batch_size else {})}
    job = WorkerJob(case.app_path, url, case.concurrency, settings)
    return [start(worker_main, job) for _ in range(case.processes)]


async def measure(server: Server, case: Case, events: int, timeout_s: float) -> float:
    """Events/s for one case on an empty server."""
    client = server.client
    await client.flushall()
    await create_group(client, STREAM, case.group)
    await raw.preload(client, events)
    procs = _spawn(case, server.url)
    try:
        started = await release(client, len(procs), procs)
        deadline = time.monotonic() + timeout_s
        while True:
            state = await group_state(client, STREAM, case.group)
            if state.entries_read >= events and state.pending == 0:
                return events / (time.perf_counter() - started)
            if time.monotonic() > deadline or not any(p.is_alive() for p in procs):
                raise RuntimeError(f"drain {case.name!r} did not finish: {state}")
            await asyncio.sleep(POLL_S)
    finally:
        codes = [await stop(p) for p in procs]
        if any(code not in (0, None) for code in codes) and case.app_path:
            raise RuntimeError(f"drain {case.name!r}: a worker exited with {codes}")


async def run(bench: Bench) -> Section:
    sizes = SMOKE if bench.smoke else FULL
    runs = Runs()
    async with fresh_redis(bench.redis_binary) as server:
        for _ in range(bench.runs):
            for case in CASES:
                n = sizes.sleep_events if case.sleeps else sizes.events
                runs.add(case.name, await measure(server, case, n, sizes.timeout_s))
        await server.client.flushall()
    section = Section("drain", "2. Drain")
    section.lines += [
        f"{sizes.events:,} events pre-loaded ({sizes.sleep_events:,} for the 1 ms handler); one stream, one group. "
        "Workers: `streamproc.run_worker` in spawned processes on uvloop, default settings (`batch_size` 200) "
        "except `block_ms=100` and, where named, `batch_size`; "
        f"the raw loop reads COUNT {raw.READ_COUNT}. Ratios compare with the raw loop of the same run and process "
        "count.", "", *rate_table(runs, [(c.name, _baseline(c)) for c in CASES]), ""]
    path, link = bench.chart("drain.png")
    charts.bars(path, "drain: events/s by concurrency and processes (median, min-max)", "events/s",
                {c.name: runs.get(c.name) for c in CASES})
    section.lines += [f"![drain throughput]({link})", ""]
    rates, ratios = runs.get(NOOP_100), runs.ratios(NOOP_100, RAW_1)
    met = bool(rates) and median(rates) >= 100_000 and median(ratios) >= 0.30
    section.checks.append(Check("drain, 1 process, no-op, concurrency 100: ≥ 100,000 events/s and ≥ 30% of raw",
                                f"{spread(rates)} events/s; {ratio_text(ratios)} of raw", met))
    return section
