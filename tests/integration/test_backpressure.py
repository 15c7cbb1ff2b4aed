"""Backpressure that counts what is really unread: entries behind a deleted one are counted (not the whole stream),
scheduled retries count, and no batch of any size takes a stream past its limit unseen. Counts, not timings."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from streamproc import BacklogFull, Backoff, Context, Event, Outgoing
from streamproc.keys import PartitionKeys
from streamproc.publish.groups import ensure_groups
from tests.inproc import Calls, handler_recording, open_app, partition, pending, running


class CardAdded(Event, tag="card.added"):
    card_id: str
    curator_id: str = "u1"


def cards(n: int, prefix: str = "c") -> list[CardAdded]:
    return [CardAdded(card_id=f"{prefix}{i}") for i in range(n)]


async def noop(event: Event, ctx: Context) -> None:
    return None


async def _read_and_ack(redis: aioredis.Redis, keys: PartitionKeys, group: str, count: int) -> None:
    reply = await redis.xreadgroup(group, "c", {keys.stream: ">"}, count=count)
    ids = [eid for _, entries in reply for eid, _ in entries]
    await redis.xack(keys.stream, group, *ids)


async def test_unread_entries_are_counted_when_redis_does_not_know_the_lag(ns: str, redis_url: str,
                                                                          redis: aioredis.Redis) -> None:
    """100 appended, 40 read and acked (history kept), 30 of the unread deleted (XDEL): Redis reports no lag.
    The backlog is the 30 really unread, not the 70 still in the stream (nor 60 from the read counter)."""
    async with open_app(ns, redis_url, max_backlog=0) as unlimited:
        unlimited.handler(CardAdded, group="g")(noop)
        published = await unlimited.publish_many(cards(100))
    async with open_app(ns, redis_url, max_backlog=50) as app:
        app.handler(CardAdded, group="g")(noop)
        keys = partition(app, CardAdded)
        await _read_and_ack(redis, keys, "g", 40)
        assert await redis.xdel(keys.stream, *(p.stream_id for p in published[50:80])) == 30
        [group] = await redis.xinfo_groups(keys.stream)
        assert group["lag"] is None and await redis.xlen(keys.stream) == 70
        await app.publish_many(cards(20, "more"))  # 30 + 20 = 50: at the limit, not past it
        with pytest.raises(BacklogFull) as refused:
            await app.publish(CardAdded(card_id="one-too-many"))
        assert refused.value.backlog == 50
        assert await redis.xlen(keys.stream) == 90


async def test_scheduled_retries_count_toward_the_backlog(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url, max_backlog=10) as app:
        app.handler(CardAdded, group="g", backoff=Backoff(base=60, jitter=False))(
            handler_recording(calls, fail=lambda e, ctx: True))
        await app.publish_many(cards(10))
        keys = partition(app, CardAdded)
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.total("g") == 10)
            await worker.wait_for(lambda: _scheduled(redis, keys, 10))
        assert await pending(redis, keys.stream, "g") == 0, "nothing pending, nothing unread: only retries"
        with pytest.raises(BacklogFull) as refused:
            await app.publish(CardAdded(card_id="one-too-many"))
        assert refused.value.backlog == 10


async def _scheduled(redis: aioredis.Redis, keys: PartitionKeys, n: int) -> bool:
    return int(await redis.zcard(keys.retry("g"))) == n


async def test_no_batch_overshoots_the_limit_between_checks(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    """The backlog is read once a minute here; what this publisher appends in between counts, so neither a big
    publish_many nor a stream of single publishes passes the limit (it once let 54,200 through a limit of 100)."""
    async with open_app(ns, redis_url, max_backlog=100, backlog_check_ms=60_000) as app:
        app.handler(CardAdded, group="g")(noop)
        keys = partition(app, CardAdded)
        with pytest.raises(BacklogFull):
            await app.publish_many(cards(101))
        await app.publish_many(cards(60))
        with pytest.raises(BacklogFull) as refused:
            await app.publish_many(cards(60, "second"))
        assert (refused.value.backlog, refused.value.limit) == (60, 100)
        accepted = 0
        for i in range(200):
            try:
                await app.publish(CardAdded(card_id=f"single{i}"))
                accepted += 1
            except BacklogFull:
                pass
        assert accepted == 40
        assert await redis.xlen(keys.stream) == 100


async def test_many_concurrent_publishes_stop_at_the_limit(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    """Coalesced App.publish calls (one flush carries many requests): each request is counted as it is accepted."""
    async with open_app(ns, redis_url, max_backlog=100, backlog_check_ms=60_000) as app:
        app.handler(CardAdded, group="g")(noop)
        keys = partition(app, CardAdded)
        results = await asyncio.gather(*(app.publish(CardAdded(card_id=f"c{i}")) for i in range(500)),
                                       return_exceptions=True)
        assert sum(1 for r in results if not isinstance(r, BaseException)) == 100
        assert all(isinstance(r, BacklogFull) for r in results if isinstance(r, BaseException))
        assert await redis.xlen(keys.stream) == 100


async def test_backlog_counts_only_declared_groups_and_learns_new_ones(ns: str, redis_url: str,
                                                                      redis: aioredis.Redis) -> None:
    """A producer that declares nothing counts the groups the registry declares, also one declared after its
    first append (it learns it at the next check)."""
    async with open_app(ns, redis_url, max_backlog=20) as producer:
        producer.register(CardAdded)
        await producer.publish_many(cards(15))
        keys = partition(producer, CardAdded)
        async with open_app(ns, redis_url) as workers:
            workers.handler(CardAdded, group="late", start="all")(noop)
            await ensure_groups(workers.redis, [(keys.stream, "late", "all")])
        await producer.publish_many([Outgoing(e) for e in cards(5, "more")])
        with pytest.raises(BacklogFull) as refused:
            await producer.publish(CardAdded(card_id="one-too-many"))
        assert refused.value.backlog == 20


async def test_a_batch_larger_than_the_limit_is_refused_for_good(ns: str, redis_url: str) -> None:
    async with open_app(ns, redis_url, max_backlog=10) as app:
        app.handler(CardAdded, group="g")(noop)
        with pytest.raises(BacklogFull) as refused:
            await app.publish_many(cards(11))
        assert not refused.value.retriable, "it can never fit: retrying would not help"
        assert "smaller batches" in str(refused.value)
        await app.publish_many(cards(10))  # one that fits goes in
        with pytest.raises(BacklogFull) as full:
            await app.publish_many(cards(1))
        assert full.value.retriable, "this one fits once consumers catch up"
