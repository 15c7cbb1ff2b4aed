"""Scenario 4, HTTP ingest: `streamproc ingest` (one process, auth off) against a bare aiohttp 202 server.

Both servers run side by side (one is loaded at a time); the load generator is its own process (wrk if
installed, else an aiohttp client). Single-event POSTs use many keep-alive connections; batch POSTs carry 100
events each. Ratios compare with the bare server under the same load in the same run.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from bench import charts, loadgen
from bench.context import Bench
from bench.events import json_event
from bench.loadgen import Load
from bench.redis_server import fresh_redis
from bench.report import Check, Runs, Section, check_at_least, median, rate_table, ratio_text, spread
from bench.servers import free_port, python_process

BATCH = 100


@dataclass(frozen=True, slots=True)
class Sizes:
    seconds: float
    single_connections: int
    batch_connections: int


FULL = Sizes(seconds=5.0, single_connections=64, batch_connections=16)
SMOKE = Sizes(seconds=1.0, single_connections=16, batch_connections=4)

BARE_SINGLE = "bare aiohttp 202, single-event POSTs"
INGEST_SINGLE = "streamproc ingest, single-event POSTs"
BARE_BATCH = f"bare aiohttp 202, batch POSTs x{BATCH}"
INGEST_BATCH = f"streamproc ingest, batch POSTs x{BATCH}"


async def run(bench: Bench) -> Section:
    sizes = SMOKE if bench.smoke else FULL
    single, batch = bench.work_dir / "single.json", bench.work_dir / "batch.json"
    single.write_bytes(msgspec.json.encode(json_event(1)))
    batch.write_bytes(msgspec.json.encode([json_event(i) for i in range(BATCH)]))
    requests, events, failures = Runs(), Runs(), Runs()
    ingest_port, bare_port = free_port(), free_port()
    env = {"STREAMPROC_INGEST_AUTH_DISABLED": "1"}
    async with fresh_redis(bench.redis_binary) as server:
        ingest_args = ["-m", "streamproc", "ingest", "bench.apps:noop", "--host", "127.0.0.1", "--port",
                       str(ingest_port), "--redis-url", server.url, "--log-level", "WARNING"]
        async with python_process(ingest_args, bench.log_path("ingest"), env, ingest_port), \
                python_process(["-m", "bench.http_ceiling", "--port", str(bare_port)], bench.log_path("bare"),
                               None, bare_port):
            cases = [(BARE_SINGLE, bare_port, single, 1, sizes.single_connections),
                     (INGEST_SINGLE, ingest_port, single, 1, sizes.single_connections),
                     (BARE_BATCH, bare_port, batch, BATCH, sizes.batch_connections),
                     (INGEST_BATCH, ingest_port, batch, BATCH, sizes.batch_connections)]
            for _ in range(bench.runs):
                for name, port, body, per_request, connections in cases:
                    await server.client.flushall()
                    load = Load(f"http://127.0.0.1:{port}/v1/events", str(body), connections, sizes.seconds)
                    result = await loadgen.run_load(load, bench.work_dir)
                    requests.add(name, result.requests_per_s)
                    events.add(name, result.requests_per_s * per_request)
                    failures.add(name, result.failed)
        await server.client.flushall()
    return _section(bench, sizes, requests, events, failures)


def _section(bench: Bench, sizes: Sizes, requests: Runs, events: Runs, failures: Runs) -> Section:
    section = Section("ingest", "4. HTTP ingest")
    order = [(BARE_SINGLE, ""), (INGEST_SINGLE, BARE_SINGLE), (BARE_BATCH, ""), (INGEST_BATCH, BARE_BATCH)]
    failed = {name: int(sum(failures.get(name))) for name, _ in order}
    section.lines += [
        f"Load: {loadgen.tool()} ({loadgen.shape()}), {sizes.single_connections} keep-alive connections for "
        f"single-event POSTs, {sizes.batch_connections} for batches of {BATCH}; {sizes.seconds:g} s per run. Ingest: "
        "`streamproc ingest bench.apps:noop` (one process, uvloop, auth off); events are JSON. "
        f"Non-2xx answers or socket errors over all runs: {failed}.", "",
        "Requests/s:", "", *rate_table(requests, order, "requests/s"), "",
        "Events/s:", "", *rate_table(events, order), ""]
    path, link = bench.chart("ingest.png")
    charts.bars(path, "HTTP ingest: events/s (median, min-max)", "events/s",
                {name: events.get(name) for name, _ in order}, highlight="bare")
    section.lines += [f"![ingest throughput]({link})", ""]
    ratios = requests.ratios(INGEST_SINGLE, BARE_SINGLE)
    section.checks += [
        Check("HTTP ingest single-event POSTs ≥ 70% of the bare aiohttp ceiling",
              f"{ratio_text(ratios)} ({spread(requests.get(INGEST_SINGLE))} requests/s)",
              bool(ratios) and median(ratios) >= 0.70 and failed[INGEST_SINGLE] == 0),
        check_at_least("HTTP ingest batch POSTs ≥ 50,000 events/s from one process", events.get(INGEST_BATCH),
                       50_000, "{:,.0f} events/s"),
    ]
    return section
