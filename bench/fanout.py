"""Scenario 5, fan-out: card.added consumed by three groups of the real example domain (handlers/).

Per run: an empty Redis, a follow graph written straight into the social-graph keys (every user has FOLLOWERS
followers), N cards pre-loaded with handlers.app's own publisher (4 partitions, groups created first), then one
`streamproc worker handlers.app:app --inline` process running notifications, feeds and analytics, which pushes
each notification to the sink (handlers.sink in its own process). Each group's rate is N over the time from its
first read to the moment it has read and acknowledged everything. The notifier's per-process rate limit is lifted
(NOTIFIER_RATE) so that the framework, not the limiter, is measured.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import aiohttp

from bench import charts
from bench.context import Bench
from bench.redis_server import Server, fresh_redis, group_state
from bench.report import Check, Runs, Section, spread, table
from bench.servers import free_port, python_process
from handlers.app import app as social
from handlers.events import CardAddedToLibrary
from handlers.social_graph import followers_key

GROUPS = ("notifications", "feeds", "analytics")
FOLLOWERS = 5
USERS = 200
POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class Sizes:
    cards: int
    timeout_s: float


FULL = Sizes(cards=5_000, timeout_s=300.0)
SMOKE = Sizes(cards=100, timeout_s=60.0)


async def _prepare(server: Server, cards: int) -> None:
    client = server.client
    await client.flushall()
    rng = random.Random(11)
    users = [f"u{i:04d}" for i in range(USERS)]
    async with client.pipeline(transaction=False) as pipe:
        for user in users:
            others = rng.sample([u for u in users if u != user], FOLLOWERS)
            pipe.zadd(followers_key(social.name, user), {f: i for i, f in enumerate(others)})
        await pipe.execute()
    social.settings = social.settings.replace(redis_url=server.url)
    try:
        for first in range(0, cards, 1000):
            await social.publish_many([
                CardAddedToLibrary(card_id=f"c{i}", curator_id=users[i % USERS], url=f"https://example.org/{i}",
                                   title=f"card {i}") for i in range(first, min(cards, first + 1000))])
    finally:
        await social.aclose()


async def _progress(server: Server, group: str) -> tuple[int, int]:
    """(entries read, pending) of a group over every partition of card.added."""
    route = social.topology.by_type[CardAddedToLibrary]
    states = [await group_state(server.client, keys.stream, group) for keys in route.partitions]
    return sum(s.entries_read for s in states), sum(s.pending for s in states)


async def _accepted(sink_port: int) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{sink_port}/stats") as r:
        return int((await r.json())["accepted"])


async def _measure(server: Server, cards: int, timeout_s: float) -> dict[str, float]:
    """Seconds from the first read to each group's end, and to all of them."""
    began = 0.0
    finished: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(finished) < len(GROUPS):
        now = time.perf_counter()
        for group in GROUPS:
            read, pending = await _progress(server, group)
            if read and not began:
                began = now
            if group not in finished and read >= cards and pending == 0:
                finished[group] = now
        if time.monotonic() > deadline:
            raise RuntimeError(f"fan-out did not finish in {timeout_s}s; finished: {sorted(finished)}")
        await asyncio.sleep(POLL_S)
    return {g: t - began for g, t in finished.items()}


async def run(bench: Bench) -> Section:
    sizes = SMOKE if bench.smoke else FULL
    runs, pushes = Runs(), Runs()
    sink_port = free_port()
    async with fresh_redis(bench.redis_binary) as server, python_process(
            ["-m", "bench.sinkproc", "--port", str(sink_port)], bench.log_path("sink"), None, sink_port):
        env = {"NOTIFIER_URL": f"http://127.0.0.1:{sink_port}/notify", "NOTIFIER_RATE": "1000000",
               "NOTIFIER_BURST": "100000"}
        worker = ["-m", "streamproc", "worker", "handlers.app:app", "--inline", "--redis-url", server.url,
                  "--log-level", "WARNING", *(x for g in GROUPS for x in ("--group", g))]
        for i in range(bench.runs):
            await _prepare(server, sizes.cards)
            accepted_before = await _accepted(sink_port)
            async with python_process(worker, bench.log_path(f"fanout-worker-{i}"), env):
                seconds = await _measure(server, sizes.cards, sizes.timeout_s)
            for group, s in seconds.items():
                runs.add(group, sizes.cards / s)
            runs.add("all three groups", sizes.cards / max(seconds.values()))
            pushes.add("pushes", (await _accepted(sink_port)) - accepted_before)
        await server.client.flushall()
    return _section(bench, sizes, runs, pushes)


def _section(bench: Bench, sizes: Sizes, runs: Runs, pushes: Runs) -> Section:
    section = Section("fanout", "5. Fan-out (handlers/ domain)")
    expected = sizes.cards * FOLLOWERS
    names = [*GROUPS, "all three groups"]
    section.lines += [
        f"{sizes.cards:,} `card.added` events (4 partitions) by {USERS} curators with {FOLLOWERS} followers each: "
        f"per card, notifications makes {FOLLOWERS} HTTP pushes to the sink plus {FOLLOWERS} Lua calls, feeds one "
        f"pipeline of {2 * FOLLOWERS} commands, analytics one Lua call. One worker process runs the three groups "
        "with their declared concurrency (32 each). There is no raw loop for this domain work; the raw limits of "
        "reading and acking are in the drain scenario.", "",
        *table(["group", "cards/s: median (min-max)"], [[n, spread(runs.get(n))] for n in names]), "",
        f"Pushes the sink accepted per run: {spread(pushes.get('pushes'))} (expected {expected:,}: one per card "
        "and follower, none twice).", ""]
    path, link = bench.chart("fanout.png")
    charts.bars(path, "fan-out: card.added events/s per group (median, min-max)", "events/s",
                {n: runs.get(n) for n in names})
    section.lines += [f"![fan-out throughput]({link})", ""]
    got = pushes.get("pushes")
    section.checks.append(Check("fan-out: every follower notified exactly once (sink accepted = cards x followers)",
                                f"{spread(got)} of {expected:,}", bool(got) and all(p == expected for p in got)))
    return section
