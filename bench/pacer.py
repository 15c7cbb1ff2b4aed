"""A paced publisher process: `publish_many` on a token schedule at a fixed rate, for scenarios 3 and 6.

Every event is due at start + i / rate; whatever is due is published at once (at most MAX_BATCH per call), so a
slow round trip is caught up by a larger next batch rather than lost. Each event carries time.time_ns() taken
just before its publish call, for the handler's latency measurement.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from bench.apps import soak_app, timed_app
from bench.events import tick
from bench.procs import wait_for_go
from streamproc import Settings, eventloop

MAX_BATCH = 1000


@dataclass(frozen=True, slots=True)
class PacedJob:
    redis_url: str
    rate: int
    seconds: float
    app: str = "timed"  # a factory of bench.apps: "timed" or "soak"
    ids_out: str = ""  # when set, the published event ids are written there, one a line


@dataclass(frozen=True, slots=True)
class Paced:
    published: int
    elapsed: float


def paced_main(job: PacedJob) -> Paced:
    wait_for_go(job.redis_url)
    return eventloop.run(_paced(job))


async def _paced(job: PacedJob) -> Paced:
    app = {"timed": timed_app, "soak": soak_app}[job.app](Settings(redis_url=job.redis_url))
    total = int(job.rate * job.seconds)
    sent = 0
    ids: list[str] = []
    try:
        began = time.perf_counter()
        while sent < total:
            elapsed = time.perf_counter() - began
            due = min(total, int(elapsed * job.rate) + 1) - sent
            if due <= 0:
                await asyncio.sleep((sent + 1) / job.rate - elapsed)
                continue
            batch = min(due, MAX_BATCH)
            now_ns = time.time_ns()
            published = await app.publish_many([tick(sent + i, now_ns) for i in range(batch)])
            if job.ids_out:
                ids.extend(p.event_id for p in published)
            sent += batch
        elapsed = time.perf_counter() - began
        if job.ids_out:
            await asyncio.to_thread(Path(job.ids_out).write_text, "\n".join(ids))
        return Paced(sent, elapsed)
    finally:
        await app.aclose()
