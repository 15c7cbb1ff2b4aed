"""Redis crashing, restarting or losing its data under a running worker, publisher or ingest server: nothing
accepted is lost, refusals are clear, and processing goes on by itself once Redis is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis

from streamproc import Backoff, Context, Event, Outgoing, PublishError, new_event_id
from streamproc.keys import PartitionKeys
from tests.ingestserver import CardAdded as IngestCard
from tests.ingestserver import assert_problem, card, follow, make_app, post, serving
from tests.inproc import Calls, handler_recording, open_app, partition, publish_until_accepted, running, settled
from tests.redis_server import RedisServer

FAST_BACKOFF = Backoff(base=0.01, jitter=False)


class CardAdded(Event, tag="card.added"):
    card_id: str
    curator_id: str


def cards(n: int, prefix: str = "c") -> list[CardAdded]:
    return [CardAdded(card_id=f"{prefix}{i}", curator_id="u1") for i in range(n)]


async def noop(event: Event, ctx: Context) -> None:
    return None


# The worker ------------------------------------------------------------------------------------------------------


async def test_worker_survives_redis_crash_and_restart(ns: str, fresh_redis: RedisServer) -> None:
    calls = Calls()

    async def slowish(event: CardAdded, ctx: Context) -> None:
        calls.record(event, ctx)
        await asyncio.sleep(0.005)

    async with open_app(ns, fresh_redis.url) as app:
        app.handler(CardAdded, group="g", concurrency=4, backoff=FAST_BACKOFF)(slowish)
        before = await app.publish_many(cards(300, "before"))
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("g") >= 20)
            assert calls.distinct("g") < 300, "the crash must come mid-processing"
            await asyncio.to_thread(fresh_redis.kill)  # SIGKILL: no shutdown, only the fsynced AOF survives
            await asyncio.to_thread(fresh_redis.start)
            after = await publish_until_accepted(app, cards(50, "after"))
            wanted = {p.event_id for p in before + after}
            await worker.wait_for(lambda: wanted <= set(calls.of("g")), timeout=20,
                                  message="every event processed after the restart")
            keys = partition(app, CardAdded)
            await worker.wait_for(lambda: settled(app.redis, keys, "g"), timeout=10)
    assert set(calls.of("g")) == wanted, "nothing lost, nothing invented"



async def test_lost_group_is_recreated_and_processing_goes_on(ns: str, redis_url: str,
                                                              redis: aioredis.Redis) -> None:
    async def destroy_group(keys: PartitionKeys) -> None:
        assert await redis.xgroup_destroy(keys.stream, "g") == 1

    await _survives_data_loss(ns, redis_url, destroy_group)


async def test_flushall_is_survived(ns: str, fresh_redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(fresh_redis.url)
    try:
        async def flushall(keys: PartitionKeys) -> None:
            assert await client.flushall() is True

        await _survives_data_loss(ns, fresh_redis.url, flushall)
    finally:
        await client.aclose()


async def _survives_data_loss(ns: str, url: str, lose: Callable[[PartitionKeys], Awaitable[None]]) -> None:
    """Process, lose the group (and maybe the stream) under the running worker, then publish more: the worker
    recreates its group on NOGROUP and processes the new events."""
    calls = Calls()
    async with open_app(ns, url) as app:
        app.handler(CardAdded, group="g", backoff=FAST_BACKOFF)(handler_recording(calls))
        first = await app.publish_many(cards(10, "first"))
        keys = partition(app, CardAdded)
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("g") == 10)
            await worker.wait_for(lambda: settled(app.redis, keys, "g"))
            await lose(keys)
            second = await app.publish_many(cards(10, "second"))
            await worker.wait_for(lambda: {p.event_id for p in second} <= set(calls.of("g")))
            await worker.wait_for(lambda: settled(app.redis, keys, "g"))
            assert [g["name"] for g in await app.redis.xinfo_groups(keys.stream)] == [b"g"]
    assert set(calls.of("g")) == {p.event_id for p in first + second}


# The publisher --------------------------------------------------------------------------------------------------


async def test_publish_fails_fast_while_redis_is_down(ns: str, fresh_redis: RedisServer) -> None:
    async with open_app(ns, fresh_redis.url) as app:
        app.handler(CardAdded, group="g")(noop)
        await app.publish(CardAdded(card_id="before", curator_id="u1"))
        fresh_redis.kill()
        started = time.monotonic()
        with pytest.raises(PublishError) as failed:
            await asyncio.wait_for(app.publish(CardAdded(card_id="during", curator_id="u1")), timeout=10)
        assert time.monotonic() - started < 5, "publish must fail, not hang"
        assert failed.value.retriable
        fresh_redis.restart()
        after = await app.publish(CardAdded(card_id="after", curator_id="u1"))
        entries = await app.redis.xrange(after.stream)
        assert [fields[b"event_id"].decode() for _, fields in entries][-1] == after.event_id
        assert len(entries) == 2, "the failed publish appended nothing"


async def test_publisher_recreates_groups_after_redis_lost_its_data(ns: str, fresh_redis: RedisServer) -> None:
    """The publisher remembers which streams have their groups; if Redis loses its data, appending must not
    recreate the stream without them (a group made later at '$' would never see those events)."""
    calls = Calls()
    async with open_app(ns, fresh_redis.url, backlog_check_ms=60_000) as app:
        app.handler(CardAdded, group="g")(handler_recording(calls))
        await app.publish(CardAdded(card_id="before", curator_id="u1"))
        await app.redis.flushall()
        lost_data = await app.publish_many([*cards(3), Outgoing(cards(1, "with-id")[0], new_event_id())])
        [group] = await app.redis.xinfo_groups(lost_data[0].stream)
        assert group["name"] == b"g"
        await app.redis.flushall()  # and once more, for an all-or-nothing batch (MULTI/EXEC)
        lost_again = await app.publish_many(cards(3, "atomic"), atomic=True)
        assert [g["name"] for g in await app.redis.xinfo_groups(lost_again[0].stream)] == [b"g"]
        async with running(app) as worker:
            await worker.wait_for(lambda: {p.event_id for p in lost_again} <= set(calls.of("g")))


# The ingest -----------------------------------------------------------------------------------------------------


async def test_redis_down_is_503_with_retry_after_never_500(ns: str, fresh_redis: RedisServer,
                                                           client: aiohttp.ClientSession) -> None:
    # backlog_check_ms=0: the backlog check (the first Redis call of a request) meets the outage too.
    app = make_app(ns, fresh_redis.url, backlog_check_ms=0)
    async with serving(app) as server:
        assert (await post(client, server, card(1)))[0] == 202
        async with client.get(f"{server.url}/readyz") as resp:
            assert resp.status == 200
        fresh_redis.kill()
        for body in (card(2), [card(3), follow(3)], card(4, id="given-id")):
            _, answer, resp = await post(client, server, body)
            assert_problem(resp, answer, 503)
            assert resp.headers["Retry-After"] == "1"
        async with client.get(f"{server.url}/readyz") as resp:
            assert_problem(resp, await resp.json(content_type=None), 503)
            assert resp.headers["Retry-After"] == "1"
        async with client.get(f"{server.url}/healthz") as resp:
            assert resp.status == 200, "the process itself is fine"
        fresh_redis.start()
        assert (await post(client, server, card(5)))[0] == 202
        async with client.get(f"{server.url}/readyz") as resp:
            assert resp.status == 200
        check = aioredis.Redis.from_url(fresh_redis.url)
        try:
            entries = await check.xrange(partition(app, IngestCard).stream)
        finally:
            await check.aclose()
        # AOF with fsync always: the event accepted before the crash survived; none of the refused ones is there.
        assert [msgspec.msgpack.decode(f[b"data"], type=IngestCard).card_id for _, f in entries] == ["c1", "c5"]
