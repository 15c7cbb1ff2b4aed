"""Cron schedules against a real Redis, evaluated by real worker loops in this process: one append per tick with
several evaluators, misfire latest/skip/all (a downtime simulated by an old last-fired record), pause and resume
within a second, trigger, and a failing schedule retried while the others keep firing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
import redis.asyncio as aioredis

from streamproc import App, Event
from streamproc.keys import schedules_key
from streamproc.redis.errors import FatalRedisError
from streamproc.schedule.cron import tick_text
from streamproc.schedule.ops import list_schedules, set_paused, trigger
from streamproc.worker.schedules import run_schedules
from tests.helpers import redis_ms, wait_for
from tests.inproc import fast_settings, running

pytestmark = pytest.mark.timeout(60)
GRACE_MS = 2_000  # the least there is: missed ticks are found 2 s after their time


class Beat(Event, tag="sched.beat"):
    schedule: str
    at: str


def make_app(ns: str, redis_url: str, grace_ms: int = GRACE_MS) -> App:
    return App(ns, settings=fast_settings(redis_url, schedule_grace_ms=grace_ms))


def beat(app: App, name: str, calls: Counter[str] | None = None, **options: object) -> None:
    """A schedule `name` publishing a Beat per tick; `calls` counts its function's runs per tick."""
    options.setdefault("every", timedelta(seconds=1))

    @app.cron(name=name, **options)  # type: ignore[arg-type]
    def fire(tick: datetime) -> Beat:
        if calls is not None:
            calls[tick.isoformat()] += 1
        return Beat(schedule=name, at=tick.isoformat())


async def entries(redis: aioredis.Redis, app: App) -> list[str]:
    """The event ids appended to Beat's stream, in stream order."""
    stream = app.topology.route(Beat).partitions[0].stream
    return [fields[b"event_id"].decode() for _, fields in await redis.xrange(stream)]


def ids_of(all_ids: list[str], name: str) -> list[str]:
    return [i for i in all_ids if i.startswith(f"cron:{name}:")]


async def wait_quiet(redis: aioredis.Redis, every_ms: int, room_ms: int) -> int:
    """Wait until Redis's clock is past the grace of the last tick and `room_ms` before the next one, so that the
    test's ticks are all missed ones; returns the last tick."""
    while True:
        now = await redis_ms(redis)
        into = now % every_ms
        if GRACE_MS + 300 < into < every_ms - room_ms:
            return now - into
        await asyncio.sleep((GRACE_MS + 400 - into) / 1000 if into <= GRACE_MS + 300 else
                            (every_ms - into + GRACE_MS + 400) / 1000)


@contextlib.asynccontextmanager
async def workers(*apps: App) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for app in apps:
            await stack.enter_async_context(running(app))
        yield


async def test_three_evaluators_append_each_tick_exactly_once(redis_url: str, ns: str,
                                                              redis: aioredis.Redis) -> None:
    apps = [make_app(ns, redis_url) for _ in range(3)]
    calls: Counter[str] = Counter()
    for app in apps:
        beat(app, "second", calls)
    try:
        async with workers(*apps):
            await _wait_ids(redis, apps[0], "second", 4)
    finally:
        for app in apps:
            await app.aclose()
    ids = ids_of(await entries(redis, apps[0]), "second")
    counts = Counter(ids)
    print("appended", counts, "function runs per tick", calls)
    assert all(n == 1 for n in counts.values()), counts
    ticks = sorted(datetime.fromisoformat(i.split(":", 2)[2].replace("Z", "+00:00")) for i in counts)
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(ticks)] == [1.0] * (len(ticks) - 1)
    assert len(ticks) >= 4
    record = await redis.hgetall(schedules_key(ns))
    assert record[b"second:fired_event_id"].decode() == max(counts)


async def _wait_ids(redis: aioredis.Redis, app: App, name: str, n: int) -> list[str]:
    """The event ids of schedule `name` once there are at least `n` (within 15 s)."""
    async def enough() -> list[str]:
        ids = ids_of(await entries(redis, app), name)
        return ids if len(ids) >= n else []

    found = await wait_for(enough, 15.0, message=f"{n} events of {name}")
    assert isinstance(found, list)
    return found


async def _downtime(redis: aioredis.Redis, ns: str, name: str, last_tick: int, missed: int) -> None:
    """As if no worker had run since the tick `missed` minutes before `last_tick`."""
    await redis.hset(schedules_key(ns), f"{name}:fired_tick", last_tick - missed * 60_000)


@pytest.mark.parametrize(("misfire", "expected"), [("latest", [0]), ("all", [2, 1, 0])])
async def test_missed_ticks_fire_by_the_misfire_policy(redis_url: str, ns: str, redis: aioredis.Redis,
                                                       misfire: str, expected: list[int]) -> None:
    app = make_app(ns, redis_url)
    beat(app, "minutely", every=timedelta(minutes=1), misfire=misfire, max_catchup=3)
    last = await wait_quiet(redis, 60_000, 8_000)
    await _downtime(redis, ns, "minutely", last, 10)
    try:
        async with running(app):
            ids = await _wait_ids(redis, app, "minutely", len(expected))
            await _wait_recorded(redis, ns, "minutely", last)
    finally:
        await app.aclose()
    assert ids == [f"cron:minutely:{tick_text(last - k * 60_000)}" for k in expected]  # oldest first
    assert ids_of(await entries(redis, app), "minutely") == ids


async def _wait_recorded(redis: aioredis.Redis, ns: str, name: str, tick: int) -> None:
    async def recorded() -> bool:
        return await redis.hget(schedules_key(ns), f"{name}:fired_tick") == str(tick).encode()

    await wait_for(recorded, 10.0, message=f"{name} recording {tick_text(tick)}")


async def test_skip_fires_no_missed_tick_while_another_schedule_keeps_firing(
        redis_url: str, ns: str, redis: aioredis.Redis) -> None:
    app = make_app(ns, redis_url)
    beat(app, "minutely", every=timedelta(minutes=1), misfire="skip")
    beat(app, "second")
    last = await wait_quiet(redis, 60_000, 8_000)
    await _downtime(redis, ns, "minutely", last, 10)
    try:
        async with running(app):
            await _wait_ids(redis, app, "second", 3)  # three evaluations at least, each one finding `last` missed
    finally:
        await app.aclose()
    assert ids_of(await entries(redis, app), "minutely") == []
    assert await redis.hget(schedules_key(ns), "minutely:fired_tick") == str(last - 600_000).encode()


async def test_pause_and_resume_reach_a_running_worker_within_a_second(
        redis_url: str, ns: str, redis: aioredis.Redis) -> None:
    app = make_app(ns, redis_url)
    beat(app, "second")
    beat(app, "clock")  # keeps firing: the worker's evaluations go on while "second" is paused
    try:
        async with running(app):
            await _wait_ids(redis, app, "second", 1)
            assert await set_paused(app, "second", True) is True
            assert await set_paused(app, "second", True) is False  # paused already
            paused_at = await redis_ms(redis)
            clock = len(ids_of(await entries(redis, app), "clock"))
            await _wait_ids(redis, app, "clock", clock + 3)  # 3 s of evaluations
            during = ids_of(await entries(redis, app), "second")
            [row] = [r for r in await list_schedules(app) if r.name == "second"]
            assert row.paused and row.paused_since is not None
            assert await set_paused(app, "second", False) is True
            resumed_at = await redis_ms(redis)
            after = await _wait_ids(redis, app, "second", len(during) + 2)
    finally:
        await app.aclose()
    tick_of = {i: _tick_ms(i) for i in after}
    # nothing fired for a tick more than a poll (1 s) after the pause, nor for one the pause covered
    assert all(tick_of[i] <= paused_at + 1_000 for i in during), (paused_at, during)
    resumed = [i for i in after if i not in during]
    assert all(tick_of[i] > resumed_at for i in resumed), (resumed_at, resumed)
    assert min(tick_of[i] for i in resumed) <= resumed_at + 2_000


def _tick_ms(event_id: str) -> int:
    return round(datetime.fromisoformat(event_id.split(":", 2)[2].replace("Z", "+00:00")).timestamp() * 1000)


async def test_trigger_fires_once_now_with_ids_of_its_own(redis_url: str, ns: str, redis: aioredis.Redis) -> None:
    app = make_app(ns, redis_url)
    beat(app, "daily", every=timedelta(days=1))

    @app.cron("0 9 * * mon-fri", name="digest", tz="Europe/Berlin")
    def digest(tick: datetime) -> list[Beat]:
        return [Beat(schedule="digest", at=tick.isoformat()), Beat(schedule="digest", at="again")]

    try:
        first = await trigger(app, "daily")
        second = await trigger(app, "daily")
        listed = await trigger(app, "digest")
        rows = {r.name: r for r in await list_schedules(app)}
    finally:
        await app.aclose()
    assert first.event_ids != second.event_ids and (first.appended, second.appended) == (1, 1)
    assert first.event_ids[0].startswith("cron:daily:trigger:")
    assert [i.rsplit(":", 1)[1] for i in listed.event_ids] == ["0", "1"] and listed.appended == 2
    assert datetime.fromisoformat(listed.tick).utcoffset() in (timedelta(hours=1), timedelta(hours=2))
    assert Counter(await entries(redis, app)) == Counter([*first.event_ids, *second.event_ids, *listed.event_ids])
    assert rows["daily"].last_fired_tick is None  # a trigger is no tick: the regular ticks fire as before
    assert rows["digest"].expression == "0 9 * * mon-fri" and rows["digest"].tz == "Europe/Berlin"
    assert rows["digest"].next_fire is not None and "T09:00:00+0" in rows["digest"].next_fire


async def test_a_failing_schedule_is_retried_at_the_next_evaluation_while_others_fire(
        redis_url: str, ns: str, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(ns, redis_url, grace_ms=10_000)  # on time (so retried, not coalesced) for 10 evaluations
    beat(app, "steady")
    attempts: Counter[str] = Counter()

    @app.cron(every=timedelta(seconds=1), name="flaky")
    def flaky(tick: datetime) -> Beat:
        attempts[tick.isoformat()] += 1
        if len(attempts) == 1 and attempts[tick.isoformat()] < 3:  # the first tick fails twice
            raise RuntimeError("the database is away")
        return Beat(schedule="flaky", at=tick.isoformat())

    @app.cron(every=timedelta(seconds=1), name="wrong")
    def wrong(tick: datetime):  # unannotated: checked at each tick, not at registration
        return "not an event"

    caplog.set_level(logging.INFO, logger="streamproc.schedule")
    try:
        async with running(app):
            ids = await _wait_ids(redis, app, "flaky", 2)
    finally:
        await app.aclose()
    first = min(attempts)
    assert attempts[first] == 3, attempts
    assert ids[0] == f"cron:flaky:{tick_text(round(datetime.fromisoformat(first).timestamp() * 1000))}"
    assert Counter(ids_of(await entries(redis, app), "flaky")).most_common(1)[0][1] == 1
    assert len(ids_of(await entries(redis, app), "steady")) >= 2  # fired while flaky was failing
    assert ids_of(await entries(redis, app), "wrong") == []
    failures = [r.getMessage() for r in caplog.records if "flaky: tick" in r.getMessage() and "failed" in
                r.getMessage()]
    assert len(failures) == 2 and "RuntimeError: the database is away" in failures[0], failures
    assert any("wrong: tick" in r.getMessage() and "not an Event or a list of Events" in r.getMessage()
               for r in caplog.records)


async def test_a_hung_function_runs_in_one_thread_at_a_time_while_others_fire(
        redis_url: str, ns: str, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(ns, redis_url, grace_ms=30_000)
    beat(app, "steady")
    release = threading.Event()
    lock = threading.Lock()
    runs = {"started": 0, "now": 0, "most": 0}

    @app.cron(every=timedelta(seconds=1), name="hung", timeout=0.2)
    def hung(tick: datetime) -> Beat:
        with lock:
            runs["started"] += 1
            runs["now"] += 1
            runs["most"] = max(runs["most"], runs["now"])
        release.wait(30)  # far past its timeout
        with lock:
            runs["now"] -= 1
        return Beat(schedule="hung", at=tick.isoformat())

    caplog.set_level(logging.INFO, logger="streamproc.schedule")
    try:
        async with running(app):
            await wait_for(lambda: runs["started"] >= 1, 10.0, message="hung started")
            steady = len(ids_of(await entries(redis, app), "steady"))
            await _wait_ids(redis, app, "steady", steady + 4)  # 4 s: about 4 evaluations found hung due
            assert (runs["started"], runs["most"]) == (1, 1), runs
            release.set()
            await _wait_ids(redis, app, "hung", 1)  # its ticks fire again once the thread returned
    finally:
        release.set()
        await app.aclose()
    assert runs["most"] == 1, runs
    waits = [r for r in caplog.records if "hung: its function outlived its timeout" in r.getMessage()]
    assert len(waits) == 1, [r.getMessage() for r in waits]


async def test_a_pause_stops_a_catch_up_under_way(redis_url: str, ns: str, redis: aioredis.Redis) -> None:
    app = make_app(ns, redis_url)
    started, go = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    @app.cron(every=timedelta(minutes=1), name="minutely", misfire="all", max_catchup=5)
    async def minutely(tick: datetime) -> Beat:
        calls.append(tick.isoformat())
        started.set()
        await go.wait()  # the test pauses the schedule while the first tick of the catch-up runs
        return Beat(schedule="minutely", at=tick.isoformat())

    last = await wait_quiet(redis, 60_000, 8_000)
    await _downtime(redis, ns, "minutely", last, 10)
    try:
        async with running(app):
            await asyncio.wait_for(started.wait(), 10)
            assert await set_paused(app, "minutely", True) is True
            go.set()
            await _wait_ids(redis, app, "minutely", 1)
            await _wait_recorded(redis, ns, "minutely", last - 4 * 60_000)
            for _ in range(20):  # 2 s: the rest of the plan fires within milliseconds if the pause is missed
                assert len(calls) == 1, calls
                await asyncio.sleep(0.1)
    finally:
        go.set()
        await app.aclose()
    assert ids_of(await entries(redis, app), "minutely") == [f"cron:minutely:{tick_text(last - 4 * 60_000)}"]


async def test_a_fatal_redis_error_while_firing_stops_the_schedules_loop(redis_url: str, ns: str,
                                                                        redis: aioredis.Redis) -> None:
    app = make_app(ns, redis_url)
    beat(app, "second")
    await redis.set(app.topology.route(Beat).partitions[0].stream, "not a stream")  # WRONGTYPE on XADD
    stopped: list[FatalRedisError] = []
    try:
        await asyncio.wait_for(run_schedules(app, asyncio.Event(), stopped.append), 15)
    finally:
        await app.aclose()
    assert len(stopped) == 1 and "WRONGTYPE" in str(stopped[0]), stopped


async def test_a_transient_redis_error_while_firing_is_retried(redis_url: str, ns: str, redis: aioredis.Redis,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Redis full (maxmemory, noeviction) refuses the tick's append: logged and retried, the loop goes on."""
    app = make_app(ns, redis_url, grace_ms=30_000)
    beat(app, "second")
    stopped: list[FatalRedisError] = []
    stopping = asyncio.Event()
    caplog.set_level(logging.INFO, logger="streamproc.schedule")
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", 1)
    loop = asyncio.create_task(run_schedules(app, stopping, stopped.append))
    try:
        await wait_for(lambda: sum("OutOfMemoryError" in r.getMessage() for r in caplog.records) >= 2, 15,
                       message="two refused ticks")
        await redis.config_set("maxmemory", 0)
        await _wait_ids(redis, app, "second", 1)
    finally:
        await redis.config_set("maxmemory", 0)
        stopping.set()
        await asyncio.wait_for(loop, 15)
        await app.aclose()
    assert stopped == []
