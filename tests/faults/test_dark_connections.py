"""Connections that go dark (no FIN, no RST: a partition, an idle drop, a host gone silent), injected by a TCP
proxy between the worker or publisher and a real redis-server. Nothing hangs: every call has a deadline, a
stop ends within the grace period plus one read deadline, and after the path heals new events are processed
within a few seconds, without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from streamproc import Backoff, Context, Event, PublishError
from tests.faults.proxy import FaultProxy, fault_proxy
from tests.inproc import Calls, handler_recording, open_app, partition, publish_until_accepted, running, settled
from tests.redis_server import RedisServer

FAST_BACKOFF = Backoff(base=0.01, jitter=False)
# Small deadlines, so that a dark connection is noticed in well under a second.
DEADLINES = {"redis_timeout_ms": 300, "block_ms": 50}


class CardAdded(Event, tag="card.added"):
    card_id: str


def cards(n: int, prefix: str) -> list[CardAdded]:
    return [CardAdded(card_id=f"{prefix}{i}") for i in range(n)]


@pytest.fixture
def proxy(fresh_redis: RedisServer) -> Iterator[FaultProxy]:
    with fault_proxy(fresh_redis.port) as p:
        yield p


async def test_worker_rides_out_a_dark_connection_and_resumes_after_heal(ns: str, proxy: FaultProxy,
                                                                         fresh_redis: RedisServer) -> None:
    calls = Calls()
    async with open_app(ns, proxy.url, **DEADLINES) as app, open_app(ns, fresh_redis.url) as producer:
        app.handler(CardAdded, group="g", backoff=FAST_BACKOFF)(handler_recording(calls))
        producer.handler(CardAdded, group="g")(handler_recording(Calls()))  # declares the same group
        before = await producer.publish_many(cards(20, "before"))
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("g") == 20)
            proxy.blackhole()
            during = await producer.publish_many(cards(20, "during"))  # straight to Redis, not through the proxy
            await asyncio.sleep(1.0)  # several deadlines pass in the dark; nothing may be processed meanwhile
            assert calls.distinct("g") == 20, "a dark connection delivers nothing"
            proxy.heal()
            healed = time.monotonic()
            await worker.wait_for(lambda: calls.distinct("g") == 40, timeout=10,
                                  message="events published in the dark processed after the heal")
            print(f"processing resumed {time.monotonic() - healed:.2f}s after the heal")
            assert time.monotonic() - healed < 5
            keys = partition(app, CardAdded)
            await worker.wait_for(lambda: settled(producer.redis, keys, "g"), timeout=10)
    ids = {p.event_id for p in before + during}
    assert set(calls.of("g")) == ids
    duplicates = calls.total("g") - len(ids)
    print(f"duplicates: {duplicates} (bound: the 20 before the blackhole, whose acks may have gone dark)")
    assert duplicates <= 20


async def test_graceful_stop_ends_in_time_while_the_connection_is_dark(ns: str, proxy: FaultProxy) -> None:
    calls = Calls()
    grace = 0.5
    async with open_app(ns, proxy.url, grace_period_s=grace, **DEADLINES) as app:
        release = asyncio.Event()

        async def slow(event: CardAdded, ctx: Context) -> None:
            calls.record(event, ctx)
            await release.wait()

        app.handler(CardAdded, group="g", concurrency=4)(slow)
        await app.publish_many(cards(10, "c"))
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("g") == 4)
            proxy.blackhole()
            await asyncio.sleep(0.2)
            started = time.monotonic()
            bound = grace + (50 + 300) / 1000 + 300 / 1000 + 1.0  # grace + read deadline + command deadline + slack
            await worker.stop(timeout=bound + 5)
            took = time.monotonic() - started
            print(f"stop took {took:.2f}s with Redis dark (bound {bound:.2f}s)")
            assert took < bound


async def test_publish_fails_within_its_deadline_on_a_dark_connection(ns: str, proxy: FaultProxy) -> None:
    async with open_app(ns, proxy.url, **DEADLINES) as app:
        app.register(CardAdded)
        await app.publish(CardAdded(card_id="before"))
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(PublishError):
            await app.publish(CardAdded(card_id="dark"))
        assert time.monotonic() - started < 2.0, "publish must fail at its deadline, not hang"
        proxy.heal()
        after = await app.publish(CardAdded(card_id="after"))  # a new connection: the dark one was dropped
        assert after.appended


async def test_reset_connections_are_reconnected(ns: str, proxy: FaultProxy) -> None:
    calls = Calls()
    async with open_app(ns, proxy.url, **DEADLINES) as app:
        app.handler(CardAdded, group="g", backoff=FAST_BACKOFF)(handler_recording(calls))
        first = await app.publish_many(cards(10, "a"))
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("g") == 10)
            proxy.reset()
            second = await publish_until_accepted(app, cards(10, "b"))
            await worker.wait_for(lambda: calls.distinct("g") == 20, timeout=10)

            async def settled_now() -> bool:
                try:
                    return await settled(app.redis, partition(app, CardAdded), "g")
                except RedisConnectionError:  # the test's own check drew an idle connection the reset closed
                    return False

            await worker.wait_for(settled_now, timeout=10)
    assert set(calls.of("g")) == {p.event_id for p in first + second}

