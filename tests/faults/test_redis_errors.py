"""Redis errors really injected into a running worker: a long script (BUSY), a flushed script cache (NOSCRIPT),
a demoted primary (READONLY/UNBLOCKED), maxmemory with noeviction (OOM), and a fatal one (WRONGTYPE). Transient
ones are waited out without stopping any group; a fatal one stops the worker gracefully with a clear error.
Every test counts runs: nothing lost, duplicates bounded."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from streamproc import Backoff, Context, DeadLetter, Event
from streamproc.redis.errors import FatalRedisError
from tests.faults.redis_faults import fill_memory, in_sync, noeviction_server, replicated_pair, switch_primary
from tests.helpers import wait_for
from tests.inproc import Calls, handler_recording, open_app, partition, publish_until_accepted, running, settled
from tests.redis_server import RedisServer

FAST_BACKOFF = Backoff(base=0.01, jitter=False)


class CardAdded(Event, tag="card.added"):
    card_id: str


def cards(n: int, prefix: str = "c") -> list[CardAdded]:
    return [CardAdded(card_id=f"{prefix}{i}") for i in range(n)]


def fails_first(event: CardAdded, ctx: Context) -> bool:
    return ctx.attempt == 1 and event.card_id.endswith(("0", "5"))


async def test_a_long_script_elsewhere_is_waited_out_by_every_group(ns: str, fresh_redis: RedisServer) -> None:
    calls = Calls()
    async with open_app(ns, fresh_redis.url, lease_ms=5_000) as app:
        for group in ("a", "b"):
            app.handler(CardAdded, group=group, backoff=FAST_BACKOFF)(handler_recording(calls))
        await app.publish_many(cards(20, "before"))
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("a") == 20 and calls.distinct("b") == 20)
            busy = threading.Thread(target=_busy_script, args=(fresh_redis.port, 1.5))
            busy.start()
            await wait_for(lambda: _answers_busy(fresh_redis.port), timeout=5, message="Redis answers BUSY")
            later = await publish_until_accepted(app, cards(20, "later"))
            await asyncio.to_thread(busy.join)
            for group in ("a", "b"):
                await worker.wait_for(lambda g=group: calls.distinct(g) == 40, timeout=10)  # type: ignore[misc]
                await worker.wait_for(lambda g=group: settled(app.redis, partition(app, CardAdded), g))  # type: ignore[misc]
    assert len(later) == 20
    for group in ("a", "b"):
        assert calls.total(group) == 40, f"{group} ran each event once: {calls.total(group)} runs"


async def _answers_busy(port: int) -> bool:
    probe = aioredis.Redis(port=port)
    try:
        await probe.ping()
        return False
    except redis.exceptions.ResponseError as exc:
        return "BUSY" in str(exc)
    finally:
        await probe.aclose()


def _busy_script(port: int, seconds: float) -> None:
    """Run a script that keeps Redis busy for `seconds` (past busy-reply-threshold, others get BUSY)."""
    client = redis.Redis(port=port, socket_timeout=seconds + 10)
    try:
        client.config_set("busy-reply-threshold", 100)
        client.eval("local t = redis.call('TIME'); local stop = t[1] * 1e6 + t[2] + tonumber(ARGV[1]) "
                    "while true do local n = redis.call('TIME'); if n[1] * 1e6 + n[2] > stop then break end end",
                    0, int(seconds * 1e6))
    finally:
        client.close()



async def test_a_flushed_script_cache_is_reloaded(ns: str, fresh_redis: RedisServer) -> None:
    calls = Calls()
    async with open_app(ns, fresh_redis.url) as app:
        app.handler(CardAdded, group="g", backoff=FAST_BACKOFF)(handler_recording(calls, fails_first))
        events = await app.publish_many(cards(40))
        async with running(app) as worker:
            for _ in range(10):  # flush while entries fail, retry and succeed
                await app.redis.script_flush()
                await asyncio.sleep(0.05)
            await worker.wait_for(lambda: settled(app.redis, partition(app, CardAdded), "g"), timeout=10)
    failing = {p.event_id for e, p in zip(cards(40), events, strict=True) if e.card_id.endswith(("0", "5"))}
    runs = calls.of("g")
    assert set(runs) == {p.event_id for p in events}
    assert all(runs[i] == 2 for i in failing), "each failing event ran twice: once failing, once retried"
    assert sum(runs.values()) == 40 + len(failing)


@pytest.fixture
def replicated() -> Iterator[tuple[RedisServer, RedisServer]]:
    with replicated_pair() as pair:
        yield pair


@pytest.fixture
def full_redis() -> Iterator[RedisServer]:
    with noeviction_server() as server:
        yield server


async def test_a_demoted_primary_is_waited_out_until_it_is_primary_again(
        ns: str, replicated: tuple[RedisServer, RedisServer]) -> None:
    primary, replica = replicated
    await wait_for(lambda: in_sync(replica), timeout=15, message="replica in sync")
    calls = Calls()
    async with open_app(ns, primary.url, lease_ms=5_000) as app:
        app.handler(CardAdded, group="g", backoff=FAST_BACKOFF)(handler_recording(calls, fails_first))
        first = await app.publish_many(cards(20, "first"))
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("g") == 20)
            await switch_primary(replica, primary)  # the worker's node is a read-only replica now: READONLY, UNBLOCKED
            await asyncio.sleep(0.5)
            await switch_primary(primary, replica)  # and primary again, with what the other one had
            second = await publish_until_accepted(app, cards(20, "second"))
            await worker.wait_for(lambda: calls.distinct("g") == 40, timeout=15)
            await worker.wait_for(lambda: settled(app.redis, partition(app, CardAdded), "g"), timeout=15)
    ids = {p.event_id for p in first} | {p.event_id for p in second}  # type: ignore[attr-defined]
    assert set(calls.of("g")) == ids
    extra = calls.total("g") - 40 - 8  # 8 of the 40 fail once and run twice
    print(f"runs beyond the planned ones: {extra} (bound: the 20 held while the node was demoted)")
    assert 0 <= extra <= 20


async def test_at_maxmemory_acks_go_on_retries_wait_and_everything_resumes(ns: str, full_redis: RedisServer) -> None:
    calls = Calls()
    async with open_app(ns, full_redis.url, lease_ms=1_000) as app:
        app.handler(CardAdded, group="g", backoff=FAST_BACKOFF)(handler_recording(calls, fails_first))
        events = await app.publish_many(cards(40))
        await fill_memory(app.redis)
        async with running(app) as worker:  # a worker can start while Redis is full
            await worker.wait_for(lambda: calls.distinct("g") == 40, timeout=10)
            keys = partition(app, CardAdded)
            # Successes are acked at maxmemory (XACK needs no memory); failures cannot be scheduled for retry.
            await worker.wait_for(lambda: _pending_is(app.redis, keys.stream, 8), timeout=10)
            await asyncio.sleep(1.5)  # past the lease: the held failures must not be run again meanwhile
            assert calls.total("g") == 40, "nothing ran again while Redis was full"
            await app.redis.delete("filler")
            await worker.wait_for(lambda: settled(app.redis, keys, "g"), timeout=15)
    runs = calls.of("g")
    assert set(runs) == {p.event_id for p in events}
    assert sum(runs.values()) == 48, "32 ran once; the 8 failing ones ran twice: once failing, once retried"
    assert await app.redis.xlen(keys.deadletter("g")) == 0


async def _pending_is(client: aioredis.Redis, stream: str, n: int) -> bool:
    return int((await client.xpending(stream, "g"))["pending"]) == n


async def test_a_fatal_error_stops_the_worker_gracefully_and_keeps_the_entry(ns: str, redis_url: str) -> None:
    calls = Calls()
    other_done = asyncio.Event()

    async def other(event: CardAdded, ctx: Context) -> None:
        calls.record(event, ctx)
        other_done.set()

    async def gives_up(event: CardAdded, ctx: Context) -> None:
        calls.record(event, ctx)
        await other_done.wait()  # the other group has run: its ack must still be sent by the graceful stop
        raise DeadLetter("poison")

    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="g")(gives_up)
        app.handler(CardAdded, group="other")(other)
        keys = partition(app, CardAdded)
        await app.redis.set(keys.deadletter("g"), "not a stream")  # an operator's mistake: WRONGTYPE on XADD
        await app.publish_many(cards(1))
        async with running(app) as worker:
            await wait_for(lambda: worker.task.done(), timeout=10, message="the worker stopped by itself")
            with pytest.raises(FatalRedisError, match=r"WRONGTYPE"):
                worker.task.result()
            worker.task = asyncio.create_task(asyncio.sleep(0))  # already stopped: nothing more to stop
        assert await _pending_is(app.redis, keys.stream, 1), "the entry it could not settle stays pending"
        assert calls.total("g") == calls.total("other") == 1
        assert int((await app.redis.xpending(keys.stream, "other"))["pending"]) == 0, "other groups drained"
