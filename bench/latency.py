"""Scenario 3, end-to-end latency: publish -> handler start, at fixed offered rates.

A publisher process paces `publish_many` on a token schedule (every event is due at start + i / rate; whatever is
due is published at once, so a slow round trip is caught up by a larger next batch), stamping each event with
time.time_ns() just before its publish call. One worker process (run_worker, uvloop, concurrency 100) records
now - sent_ns when each handler starts. The first half second of events is dropped as warm-up.

A run "fell behind" when the publisher achieved less than 95% of the offered rate, or when the group's backlog
(unread + unacknowledged) at the end of publishing exceeded a quarter second of events: its latencies measure the
queue, not the path, and are not reported as latencies.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from bench import charts
from bench.context import Bench
from bench.drain import WORKER_SETTINGS
from bench.events import STREAM
from bench.pacer import PacedJob, paced_main
from bench.procs import call, release, start, stop
from bench.redis_server import Server, create_group, fresh_redis, group_state
from bench.report import Check, Section, median, spread, table
from bench.workerproc import WorkerJob, worker_main

GROUP = "latency"
WARMUP_S = 0.5
QUANTILES = (0.5, 0.9, 0.99, 0.999)


@dataclass(frozen=True, slots=True)
class Sizes:
    rates: tuple[int, ...]  # measured with every run
    ladder: tuple[int, ...]  # tried upwards, one run each, for the highest sustained rate
    seconds: float


FULL = Sizes(rates=(1_000, 5_000, 20_000), ladder=(30_000, 40_000, 50_000, 65_000, 80_000, 100_000), seconds=5.0)
SMOKE = Sizes(rates=(1_000, 5_000), ladder=(), seconds=1.5)


@dataclass(slots=True)
class Outcome:
    rate: int
    achieved: float
    backlog_end: int
    backlog_max: int
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def fell_behind(self) -> bool:
        return self.achieved < 0.95 * self.rate or self.backlog_end > self.rate // 4

    def quantile(self, q: float) -> float:
        ordered = self.latencies_ms
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def measure(server: Server, bench: Bench, rate: int, seconds: float, tag: str) -> Outcome:
    client = server.client
    await client.flushall()
    await create_group(client, STREAM, GROUP)
    dump = bench.work_dir / f"latency-{tag}.bin"
    worker = start(worker_main, WorkerJob("bench.apps:timed", server.url, 100, WORKER_SETTINGS, str(dump)))
    try:
        await release(client, 1, [worker])
        publishing = asyncio.ensure_future(call(paced_main, PacedJob(server.url, rate, seconds)))
        await release(client, 1, [])
        backlog_max = 0
        while not publishing.done():
            backlog_max = max(backlog_max, (await group_state(client, STREAM, GROUP)).backlog)
            await asyncio.wait({publishing}, timeout=0.25)
        paced = publishing.result()
        backlog_end = (await group_state(client, STREAM, GROUP)).backlog
        await _drained(server, paced.published, 60.0)
    finally:
        await stop(worker)
    latencies = _load(dump)[int(WARMUP_S * rate):]
    return Outcome(rate, paced.published / paced.elapsed, backlog_end, max(backlog_max, backlog_end),
                   sorted(us / 1000 for us in latencies))


async def _drained(server: Server, published: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        state = await group_state(server.client, STREAM, GROUP)
        if state.entries_read >= published and state.pending == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the latency worker did not catch up: {state}, published {published}")
        await asyncio.sleep(0.05)


def _load(path: Path) -> array[int]:
    values: array[int] = array("q")
    if path.exists():
        values.frombytes(path.read_bytes())
        path.unlink()
    return values


def _why(o: Outcome) -> str:
    if o.achieved < 0.95 * o.rate:
        return f"the publisher reached only {o.achieved:,.0f}/s"
    return f"backlog {o.backlog_end:,} at the end of publishing"


def _row(label: str, outcomes: list[Outcome]) -> list[str]:
    """Percentiles over the runs that kept up; the runs that fell behind are named, not measured."""
    kept = [o for o in outcomes if not o.fell_behind]
    behind = [o for o in outcomes if o.fell_behind]
    cells = [spread([o.quantile(q) for o in kept], "{:.2f}") for q in QUANTILES]
    note = ""
    if behind:
        note = f"**fell behind** in {len(behind)} of {len(outcomes)} run(s) ({'; '.join(map(_why, behind))})"
        note += "; percentiles from the other runs" if kept else ""
    return [label, spread([o.achieved for o in outcomes]), *cells, note]


async def _search(server: Server, bench: Bench, sizes: Sizes, known: dict[int, list[Outcome]]) -> int:
    """The highest rate of the ladder (or of the fixed rates) that one run sustains; 0 if none does."""
    best = max((r for r, os in known.items() if os and not any(o.fell_behind for o in os)), default=0)
    if best < max(sizes.rates, default=0):
        return best
    for rate in sizes.ladder:
        outcome = await measure(server, bench, rate, sizes.seconds, f"search-{rate}")
        known[rate] = [outcome]
        if outcome.fell_behind:
            break
        best = rate
    return best


async def run(bench: Bench) -> Section:
    sizes = SMOKE if bench.smoke else FULL
    results: dict[int, list[Outcome]] = {r: [] for r in sizes.rates}
    async with fresh_redis(bench.redis_binary) as server:
        for i in range(bench.runs):
            for rate in sizes.rates:
                results[rate].append(await measure(server, bench, rate, sizes.seconds, f"{rate}-{i}"))
        best = await _search(server, bench, sizes, results) if sizes.ladder else 0
        while best and len(results[best]) < bench.runs:
            results[best].append(await measure(server, bench, best, sizes.seconds, f"best-{len(results[best])}"))
        await server.client.flushall()
    return _section(bench, sizes, results, best)


def _section(bench: Bench, sizes: Sizes, results: dict[int, list[Outcome]], best: int) -> Section:
    section = Section("latency", "3. End-to-end latency")
    rows = [_row(f"{rate:,}/s" + (" (highest sustained in the search)" if rate == best else ""), os)
            for rate, os in sorted(results.items()) if os]
    section.lines += [
        f"Publisher process → Redis → one worker process (concurrency 100); {sizes.seconds:g} s per run, first "
        f"{WARMUP_S} s dropped. Latency = handler start - publish call (wall clock, µs resolution), in ms: median "
        "(min-max) over runs of each run's percentile. Rates above the fixed ones were tried once each, upwards, "
        "until one fell behind; the highest sustained was then run as often as the others.", "",
        *table(["offered", "achieved events/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", ""], rows), ""]
    path, link = bench.chart("latency-cdf.png")
    charts.cdfs(path, "publish → handler start, by offered rate (all runs)",
                {f"{r:,}/s" + (" (fell behind)" if any(o.fell_behind for o in os) else ""):
                 [x for o in os for x in o.latencies_ms] for r, os in sorted(results.items()) if os})
    section.lines += [f"![latency CDFs]({link})", ""]
    section.checks += [_check(results.get(5_000, []), 5.0, "latency at 5,000 events/s offered: p99 ≤ 5 ms"),
                       _check(results.get(20_000, []), 25.0, "latency at 20,000 events/s: sustained, p99 ≤ 25 ms")]
    return section


def _check(outcomes: list[Outcome], limit_ms: float, target: str) -> Check:
    if not outcomes:
        return Check(target, "not measured", None)
    if any(o.fell_behind for o in outcomes):
        return Check(target, f"fell behind in {sum(o.fell_behind for o in outcomes)} run(s)", False)
    p99 = median([o.quantile(0.99) for o in outcomes])
    return Check(target, f"p99 {p99:.2f} ms", p99 <= limit_ms)
