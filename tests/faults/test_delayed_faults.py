"""Delayed events under real faults: the worker process that was moving due events SIGKILLed mid-move, three worker
processes moving one burst of due events at once, and redis-server SIGKILLed and restarted from its AOF with events
scheduled. Each event is appended exactly once (counted per event id in the stream) and handled (counted per event id
by the handlers, tests/procapp.py's runs hash), and no scheduled event is lost."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from streamproc import Context, Event, Outgoing, Published
from tests.faults.test_processes import Procs
from tests.helpers import appended_ids
from tests.inproc import open_app, partition, publish_until_accepted, running
from tests.procapp import Work, make_app
from tests.redis_server import RedisServer

# Events per move in the SIGKILL test: one, so the 3,000-event burst takes at least 3000 / MAX_BURST (16) round trips
# (hundreds of ms), while the test kills within one poll (20 ms) of the first append: the kill lands mid-move.
KILLED_BATCH = 1


@pytest.fixture
def workers(ns: str, redis_url: str, tmp_path: Path) -> Iterator[Procs]:
    """Worker processes of tests/procapp.py on namespace `ns`, all killed at the end."""
    started = Procs(ns, redis_url, tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


async def schedule_work(procs: Procs, count: int, delay: float) -> list[Published]:
    async with open_app(procs.ns, procs.redis_url) as client:
        app = make_app(procs.ns, client.settings)
        try:
            return await app.publish_many([Outgoing(Work(n=i, pause=0.0), delay=delay) for i in range(count)])
        finally:
            await app.aclose()


async def runs(redis: aioredis.Redis, ns: str) -> Counter[str]:
    return Counter({k.decode(): int(v) for k, v in (await redis.hgetall(f"{ns}:runs")).items()})


async def test_sigkill_of_the_moving_process_loses_no_delayed_event(workers: Procs, redis: aioredis.Redis) -> None:
    stream = partition(make_app(workers.ns), Work).stream
    env = {"STREAMPROC_DELAYED_BATCH": str(KILLED_BATCH)}
    mover = workers.worker("--inline", "--group", "work", env=env)
    await workers.ready(mover)
    published = await schedule_work(workers, 3_000, delay=0.3)
    await workers.wait(lambda: redis.xlen(stream), 10, "the first due events appended", alive=[mover])
    os.kill(mover.pid, signal.SIGKILL)
    at_kill = await redis.xlen(stream)
    assert 0 < at_kill < 3_000, f"the kill must come mid-move: {at_kill} of 3000 were appended"
    successor = workers.worker("--inline", "--group", "work")
    wanted = {p.event_id for p in published}

    async def all_handled() -> bool:
        return set(await runs(redis, workers.ns)) >= wanted

    await workers.wait(all_handled, 30, "every delayed event handled after the kill", alive=[successor])
    assert await appended_ids(redis, stream) == Counter(dict.fromkeys(wanted, 1)), "each appended exactly once"
    handled = await runs(redis, workers.ns)
    duplicates = sum(handled.values()) - len(wanted)
    print(f"killed with {at_kill} of 3000 appended; {duplicates} handler runs beyond the first (bound {at_kill})")
    assert duplicates <= at_kill, "only events the killed process had read may run twice"


async def test_three_processes_append_a_due_burst_once(workers: Procs, redis: aioredis.Redis) -> None:
    stream = partition(make_app(workers.ns), Work).stream
    env = {"STREAMPROC_DELAYED_BATCH": "50"}
    supervisor = workers.worker("--processes", "3", "--group", "work", env=env)
    await workers.ready(supervisor, workers=3)
    published = await schedule_work(workers, 5_000, delay=0.5)
    wanted = {p.event_id for p in published}

    async def all_handled() -> bool:
        return set(await runs(redis, workers.ns)) >= wanted

    await workers.wait(all_handled, 40, "5,000 due events handled", alive=[supervisor])
    assert await appended_ids(redis, stream) == Counter(dict.fromkeys(wanted, 1)), "each appended exactly once"
    handled = await runs(redis, workers.ns)
    duplicates = sum(handled.values()) - len(wanted)
    # No process dies: a run is repeated only when its lease (LEASE_MS, 250 ms) lapsed in a process the machine
    # stalled, and another process claimed the entry. 1% allows for a loaded machine; more is a bug.
    bound = len(wanted) // 100
    print(f"{duplicates} handler runs beyond the first (bound {bound})")
    assert all(handled[e] >= 1 for e in wanted) and duplicates <= bound


class Reminder(Event, tag="reminder.due"):
    user_id: str


async def test_redis_restart_with_aof_loses_no_scheduled_event(ns: str, fresh_redis: RedisServer) -> None:
    handled: Counter[str] = Counter()
    handled_at: dict[str, int] = {}

    async def handle(event: Reminder, ctx: Context) -> None:
        handled[ctx.event_id] += 1
        seconds, micros = await ctx.redis.time()
        handled_at.setdefault(ctx.event_id, seconds * 1000 + micros // 1000)

    async with open_app(ns, fresh_redis.url) as app:
        app.handler(Reminder, group="g")(handle)
        async with running(app) as worker:
            soon = await app.publish_many([Outgoing(Reminder(user_id=f"s{i}"), delay=0.3) for i in range(100)])
            later = await app.publish_many([Outgoing(Reminder(user_id=f"l{i}"), delay=2.0) for i in range(100)])
            assert handled.total() == 0
            await asyncio.to_thread(fresh_redis.kill)  # SIGKILL: only the fsynced AOF survives
            await asyncio.to_thread(fresh_redis.start)
            # The worker rides out the outage; publishing again is the proof that Redis is back to publish to.
            after = await publish_until_accepted(app, [Reminder(user_id="after")])
            wanted = {p.event_id for p in soon + later + after}
            await worker.wait_for(lambda: set(handled) >= wanted, timeout=20, message="every event handled")
            stream = partition(app, Reminder).stream
            assert await appended_ids(app.redis, stream) == Counter(dict.fromkeys(wanted, 1))
    # At-least-once across one outage: a run whose ack the AOF lost, or whose read the restart cut short, runs
    # again once. Seen: 0 to 2 of 201 (among any of the three groups); 10% and twice each is the bound.
    twice = {name: sum(handled[p.event_id] - 1 for p in group)
             for name, group in (("soon", soon), ("later", later), ("after", after))}
    bound = len(wanted) // 10
    print(f"handler runs beyond the first: {twice} (bound {bound} in all, each event at most twice)")
    assert set(handled) == wanted and sum(twice.values()) <= bound and max(handled.values()) <= 2, twice
    for p in soon + later:
        assert p.due_ms is not None and handled_at[p.event_id] >= p.due_ms, "handled before its due time"
