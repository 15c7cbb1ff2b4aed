"""Scenario 6, soak with faults: a fixed rate for a while, with the worker process SIGKILLed every few seconds.

`streamproc worker bench.apps:soak --processes 1` (the supervisor restarts its child, with its backoff) consumes
a paced publisher's events. Every KILL_EVERY seconds the harness SIGKILLs the current worker child. The handler
records each event id it starts, and its latency, in a second, bookkeeping redis-server, so that the measured
Redis holds only streamproc's data. Afterwards: lost = published ids never handled (must be 0), duplicates =
handler starts beyond the first per id, and the worker's RSS and Redis' used_memory at the start and the end.
Short leases (LEASE_MS) let the restarted worker reclaim what the killed one held; the length policy of
retention (RETENTION_MAX_LENGTH) bounds the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.apps import HANDLED_KEY, LATENCY_KEY
from bench.context import Bench
from bench.events import STREAM
from bench.pacer import Paced, PacedJob, paced_main
from bench.procs import call, children_of, release, rss_kb
from bench.redis_server import Server, fresh_redis, group_state, used_memory
from bench.report import Check, Section, table
from bench.servers import python_process

GROUP = "soak"
LEASE_MS = 2_000
WARMUP_S = 2.0
# The supervisor's worker children (multiprocessing spawn), not its resource tracker.
WORKER_MARKER = b"spawn_main"


@dataclass(frozen=True, slots=True)
class Sizes:
    rate: int
    seconds: float
    kill_every_s: float
    retention_max_length: int


FULL = Sizes(rate=2_000, seconds=60.0, kill_every_s=10.0, retention_max_length=10_000)
SMOKE = Sizes(rate=300, seconds=5.0, kill_every_s=2.0, retention_max_length=500)


@dataclass(slots=True)
class Incarnation:
    """One worker child between its start and its death: RSS samples (seconds since it was first seen, KiB)."""

    pid: int
    samples: list[tuple[float, int]] = field(default_factory=list)

    def warm(self) -> list[int]:
        return [rss for age, rss in self.samples if age >= WARMUP_S]

    def growth(self) -> float | None:
        """RSS at its last sample over RSS after warm-up, minus one."""
        later = self.warm()
        return later[-1] / later[0] - 1 if len(later) >= 2 else None


@dataclass(slots=True)
class Soak:
    published: int = 0
    achieved: float = 0.0
    kills: int = 0
    lost: int = 0
    handled: int = 0
    duplicates: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    memory_start: int = 0
    memory_end: int = 0
    stream_length_end: int = 0
    incarnations: list[Incarnation] = field(default_factory=list)


async def _current_child(supervisor: int, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        children = children_of(supervisor, WORKER_MARKER)
        if children:
            return children[0]
        await asyncio.sleep(0.02)
    raise RuntimeError("the supervisor started no worker process")


async def _wait_consuming(server: Server) -> None:
    """Until a worker is reading (a client waits in XREADGROUP; a consumer joins the group only once it reads)."""
    for _ in range(1500):
        if any(c.get("cmd") == "xreadgroup" for c in await server.client.client_list()):
            return
        await asyncio.sleep(0.02)
    raise RuntimeError("the soak worker never started reading")


async def _fault_loop(supervisor: int, sizes: Sizes, publishing: asyncio.Future[Paced], soak: Soak) -> None:
    """Sample the worker's RSS twice a second, SIGKILL it every kill_every_s, until publishing is done."""
    began = time.monotonic()
    next_kill = began + sizes.kill_every_s
    seen: dict[int, Incarnation] = {}
    first_seen: dict[int, float] = {}
    while not publishing.done():
        for pid in children_of(supervisor, WORKER_MARKER):
            if pid not in seen:
                seen[pid] = Incarnation(pid)
                first_seen[pid] = time.monotonic()
                soak.incarnations.append(seen[pid])
            rss = rss_kb(pid)
            if rss:
                seen[pid].samples.append((time.monotonic() - first_seen[pid], rss))
            if time.monotonic() >= next_kill and time.monotonic() < began + sizes.seconds - 1:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                soak.kills += 1
                next_kill += sizes.kill_every_s
        await asyncio.wait({publishing}, timeout=0.5)


async def _settled(server: Server, record: Server, published: int, timeout_s: float) -> None:
    """Until every published event was handled and the group has nothing pending."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = await group_state(server.client, STREAM, GROUP)
        if int(await record.client.hlen(HANDLED_KEY)) >= published and state.backlog == 0:
            return
        await asyncio.sleep(0.2)


async def _tally(record: Server, ids_file: Path, soak: Soak) -> None:
    published = set((await asyncio.to_thread(ids_file.read_text)).split())
    handled = {k.decode() if isinstance(k, bytes) else k: int(v)
               for k, v in (await record.client.hgetall(HANDLED_KEY)).items()}
    soak.lost = len(published - handled.keys())
    soak.handled = len(handled)
    soak.duplicates = sum(v - 1 for v in handled.values())
    soak.latencies_ms = sorted(int(x) / 1000 for x in await record.client.lrange(LATENCY_KEY, 0, -1))


async def _soak(bench: Bench, sizes: Sizes, server: Server, record: Server) -> Soak:
    soak = Soak()
    env = {"BENCH_RECORD_URL": record.url, "STREAMPROC_LEASE_MS": str(LEASE_MS),
           "STREAMPROC_CLAIM_INTERVAL_MS": "500", "STREAMPROC_TRIM_INTERVAL_MS": "1000",
           "STREAMPROC_RETENTION_MAX_LENGTH": str(sizes.retention_max_length), "STREAMPROC_GRACE_PERIOD_S": "5"}
    argv = ["-m", "streamproc", "worker", "bench.apps:soak", "--processes", "1", "--redis-url", server.url,
            "--log-level", "WARNING"]
    ids_file = bench.work_dir / "soak-ids.txt"
    async with python_process(argv, bench.log_path("soak-worker"), env) as supervisor:
        await _current_child(supervisor.pid)
        await _wait_consuming(server)
        soak.memory_start = await used_memory(server.client)
        job = PacedJob(server.url, sizes.rate, sizes.seconds, app="soak", ids_out=str(ids_file))
        publishing = asyncio.ensure_future(call(paced_main, job))
        await release(server.client, 1, [])
        await _fault_loop(supervisor.pid, sizes, publishing, soak)
        paced = publishing.result()
        soak.published, soak.achieved = paced.published, paced.published / paced.elapsed
        await _settled(server, record, soak.published, 60.0)
        await asyncio.sleep(2.5)  # two trim passes
        soak.memory_end = await used_memory(server.client)
        soak.stream_length_end = int(await server.client.xlen(STREAM))
        await _tally(record, ids_file, soak)
    return soak


async def run(bench: Bench) -> Section:
    sizes = SMOKE if bench.smoke else FULL
    async with fresh_redis(bench.redis_binary) as server, fresh_redis(bench.redis_binary) as record:
        soak = await _soak(bench, sizes, server, record)
    return _section(sizes, soak)


def _q(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _section(sizes: Sizes, soak: Soak) -> Section:
    section = Section("soak", "6. Soak with faults")
    first, last = soak.incarnations[0] if soak.incarnations else None, soak.incarnations[-1] if soak.incarnations \
        else None
    growths = [g for i in soak.incarnations if (g := i.growth()) is not None]
    rss = (f"first worker after {WARMUP_S:g} s {first.warm()[0] / 1024:.1f} MiB; last worker at end "
           f"{last.warm()[-1] / 1024:.1f} MiB" if first and last and first.warm() and last.warm() else "—")
    l99 = _q(soak.latencies_ms, 0.99)
    section.lines += [
        f"{sizes.rate:,} events/s for {sizes.seconds:g} s (one run), the worker child SIGKILLed every "
        f"{sizes.kill_every_s:g} s (the supervisor restarts it with backoff 0.25 s, 0.5 s, 1 s, ...); lease "
        f"{LEASE_MS} ms, claim interval 500 ms, retention_max_length {sizes.retention_max_length:,}.", "",
        *table(["measure", "value"], [
            ["published (achieved rate)", f"{soak.published:,} ({soak.achieved:,.0f}/s)"],
            ["worker kills", str(soak.kills)],
            ["distinct events handled", f"{soak.handled:,}"],
            ["lost (published, never handled)", f"{soak.lost:,}"],
            ["duplicates (handler starts beyond the first)", f"{soak.duplicates:,}"],
            ["latency p50 / p99 / p99.9 / max (ms)", " / ".join(f"{_q(soak.latencies_ms, q):,.1f}"
                                                             for q in (0.5, 0.99, 0.999, 1.0))],
            ["worker RSS", rss],
            [f"worker RSS growth per incarnation after {WARMUP_S:g} s (max)",
             f"{100 * max(growths):.1f}% over {len(growths)} incarnations" if growths else "—"],
            ["Redis used_memory start → end",
             f"{soak.memory_start / 2**20:.1f} MiB → {soak.memory_end / 2**20:.1f} MiB"],
            ["stream length at end", f"{soak.stream_length_end:,}"],
        ]), "",
        "Latency here includes the outages: events published while no worker ran wait for the restart and, if the "
        "killed worker had read them, for its lease to run out.", ""]
    section.checks += [
        Check("soak: 0 lost", f"{soak.lost} lost of {soak.published:,} ({soak.duplicates:,} duplicates, p99 "
              f"{l99:,.0f} ms)", soak.published > 0 and soak.lost == 0),
        Check("soak: worker RSS growth ≤ 10% after warm-up",
              f"max {100 * max(growths):.1f}% per incarnation" if growths else "not measured",
              (max(growths) <= 0.10) if growths else None),
        Check("soak: Redis memory bounded by the retention policy",
              f"stream length {soak.stream_length_end:,} (policy {sizes.retention_max_length:,}); used_memory "
              f"{soak.memory_start / 2**20:.1f} → {soak.memory_end / 2**20:.1f} MiB",
              soak.stream_length_end <= sizes.retention_max_length * 1.1),
    ]
    return section
