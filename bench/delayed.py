"""Scenario 9, delayed-event lateness: how long after its due time a delayed event is appended to its stream.

Per rate and case: an empty Redis, one or two worker processes (`run_worker`: the mover of worker/promote.py, in a
thread of its own, beside a no-op group; default settings: a poll every 50 ms), or one process that only moves, and
a publisher in the harness that schedules `rate` events per second for `seconds` (every 10 ms, `publish_many` of
what is due then, each with delay=DELAY_S). Lateness of an event = the millisecond time of its stream entry id
(Redis's clock, at the XADD) - its due time (Redis's clock, at scheduling, returned in Published.due_ms): both from
the same clock, so no clock skew enters. The issue's target: p99 within 100 ms while a worker runs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.context import Bench
from bench.procs import release, start, stop
from bench.redis_server import fresh_redis
from bench.report import Check, Section, median, table
from bench.workerproc import WorkerJob, worker_main
from streamproc import App, Context, Event, Outgoing, Published

DELAY_S = 1.0
TICK_S = 0.01
QUANTILES = (0.5, 0.9, 0.99, 1.0)


class Due(Event, tag="bench.due"):
    n: int


app = App("benchdelayed")


@app.handler(Due, group="late", concurrency=100)
async def nothing(event: Due, ctx: Context) -> None:
    return None


# The same namespace with no handler: its worker process only moves delayed events (and maintains).
mover_only = App("benchdelayed")
CASES = (("1 worker: mover + a no-op group handling the events", "bench.delayed:app", 1),
         ("2 workers: each a mover + the no-op group", "bench.delayed:app", 2),
         ("1 mover only (no group in the process)", "bench.delayed:mover_only", 1))


@dataclass(frozen=True, slots=True)
class Sizes:
    rates: tuple[int, ...]
    seconds: float


FULL = Sizes(rates=(1_000, 10_000), seconds=5.0)
SMOKE = Sizes(rates=(200,), seconds=0.5)


def quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def schedule(publisher: App, rate: int, seconds: float) -> list[Published]:
    """Schedule `rate` events per second for `seconds`, on a token schedule (what is due is sent at once)."""
    out: list[Published] = []
    total = int(rate * seconds)
    began = time.monotonic()
    while len(out) < total:
        due = min(total, int((time.monotonic() - began) * rate) + 1)
        if due > len(out):
            batch = [Outgoing(Due(n=i), delay=DELAY_S) for i in range(len(out), due)]
            out += await publisher.publish_many(batch)
        await asyncio.sleep(TICK_S)
    return out


async def measure(bench: Bench, app_path: str, processes: int, rate: int, seconds: float) -> list[float]:
    async with fresh_redis(bench.redis_binary) as server:
        await server.client.flushall()
        workers = [start(worker_main, WorkerJob(app_path, server.url)) for _ in range(processes)]
        publisher = App(app.name, redis_url=server.url)
        publisher.register(Due, groups=["late"])
        try:
            await release(server.client, processes, workers)
            published = await schedule(publisher, rate, seconds)
            stream = publisher.topology.route(Due).partitions[0].stream
            for _ in range(int((DELAY_S + 30) / 0.05)):  # until all are appended, at most 30 s past the last due
                if await server.client.xlen(stream) >= len(published):
                    break
                await asyncio.sleep(0.05)
            entries: list[tuple[bytes, dict[bytes, bytes]]] = await server.client.xrange(stream)  # type: ignore[assignment]
        finally:
            await publisher.aclose()
            for worker in workers:
                await stop(worker)
    appended = {fields[b"event_id"].decode(): int(entry_id.split(b"-")[0]) for entry_id, fields in entries}
    if len(appended) < len(published):
        raise RuntimeError(f"only {len(appended)} of {len(published)} delayed events were appended")
    return sorted(float(appended[p.event_id] - (p.due_ms or 0)) for p in published)


async def run(bench: Bench) -> Section:
    sizes = SMOKE if bench.smoke else FULL
    rows, checks = [], []
    for rate in sizes.rates:
        for case, app_path, processes in CASES:
            if bench.smoke and processes > 1:
                continue
            runs = [await measure(bench, app_path, processes, rate, sizes.seconds) for _ in range(bench.runs)]
            per_q = {q: [quantile(r, q) for r in runs] for q in QUANTILES}
            early = sum(1 for r in runs for x in r if x < 0)
            rows.append([f"{rate:,}", case, f"{sum(len(r) for r in runs) // len(runs):,}",
                         *(f"{median(per_q[q]):.1f}" for q in QUANTILES), str(early)])
            if case == CASES[0][0]:
                p99 = median(per_q[0.99])
                checks.append(Check(f"delayed: p99 lateness <= 100 ms at {rate:,} scheduled/s",
                                    f"p99 {p99:.1f} ms", p99 <= 100 and early == 0))
    lines = [f"{bench.runs} run(s) per row; events scheduled for {sizes.seconds:g} s with delay={DELAY_S:g} s, worker "
             "processes (default settings: delayed_poll_ms 50, delayed_batch 500; the mover runs in a thread "
             "of its own), lateness = stream entry time - due time, both Redis's clock; medians over runs.", "",
             *table(["scheduled/s", "worker process", "events per run", "p50 (ms)", "p90 (ms)", "p99 (ms)",
                     "max (ms)", "appended early"], rows), ""]
    return Section("delayed", "9. Delayed-event lateness", lines, checks)
