"""Redis losing its data while a group's worker is down: the publisher creates every declared group again before
its next append, so the down group misses nothing published after the loss. Counted runs, not sets of ids."""

from __future__ import annotations

import redis.asyncio as aioredis

from streamproc import App, Event
from streamproc.keys import PartitionKeys
from tests.inproc import Calls, handler_recording, open_app, partition, running, settled
from tests.redis_server import RedisServer


class CardAdded(Event, tag="card.added"):
    card_id: str
    curator_id: str = "u1"


def cards(n: int, prefix: str = "c") -> list[CardAdded]:
    return [CardAdded(card_id=f"{prefix}{i}") for i in range(n)]


def workers_app(app: App, calls: Calls) -> App:
    app.handler(CardAdded, group="feeds")(handler_recording(calls))
    app.handler(CardAdded, group="notifications", start="new")(handler_recording(calls))
    return app


async def test_group_whose_worker_is_down_misses_nothing_after_redis_lost_its_data(
        ns: str, fresh_redis: RedisServer) -> None:
    """The issue's second scenario. Only "feeds" runs; Redis loses everything (FLUSHALL); a producer-only app that
    started after the loss (nothing in its memory) publishes; "notifications" starts later and must see it all."""
    calls = Calls()
    async with open_app(ns, fresh_redis.url) as workers:
        workers_app(workers, calls)
        keys = partition(workers, CardAdded)
        async with running(workers, groups=["feeds"]) as worker:
            before = await workers.publish_many(cards(10, "before"))
            await worker.wait_for(lambda: calls.total("feeds") == 10)
            assert await workers.redis.flushall() is True
            async with open_app(ns, fresh_redis.url) as producer:
                producer.register(CardAdded, groups=["feeds", "notifications"])
                after = await producer.publish_many(cards(30, "after"))
            await worker.wait_for(lambda: calls.total("feeds") == 40)
        async with running(workers, groups=["notifications"]) as worker:
            await worker.wait_for(lambda: calls.total("notifications") >= 30)
            await worker.wait_for(lambda: settled(workers.redis, keys, "notifications"))
    assert calls.of("notifications") == {p.event_id: 1 for p in after}, "the 10 before went with the data"
    assert calls.of("feeds") == {p.event_id: 1 for p in before + after}


async def test_a_publisher_recreates_the_groups_it_learned_from_the_registry(ns: str,
                                                                             fresh_redis: RedisServer) -> None:
    """A producer that declares nothing learned the declared groups when it first wrote; after FLUSHALL took the
    registry too, its next append recreates them all, so the down group's worker later runs every new event."""
    calls = Calls()
    async with open_app(ns, fresh_redis.url) as workers, open_app(ns, fresh_redis.url) as producer:
        workers_app(workers, calls)
        keys = partition(workers, CardAdded)
        async with running(workers, groups=["feeds"]) as worker:
            # The worker declares all of its app's groups (also those it does not run) with its first maintenance.
            await worker.wait_for(lambda: _registered(workers.redis, keys, {b"feeds", b"notifications"}))
            producer.register(CardAdded)
            await producer.publish_many(cards(5, "first"))  # learns "feeds" and "notifications" from the registry
        client = aioredis.Redis.from_url(fresh_redis.url)
        try:
            assert await client.flushall() is True
        finally:
            await client.aclose()
        after = await producer.publish_many(cards(20, "after"))
        assert {g["name"] for g in await producer.redis.xinfo_groups(keys.stream)} == {b"feeds", b"notifications"}
        async with running(workers) as worker:
            await worker.wait_for(lambda: calls.total("notifications") >= 20)
            await worker.wait_for(lambda: settled(workers.redis, keys, "notifications"))
    runs = calls.of("notifications")
    assert {p.event_id: runs[p.event_id] for p in after} == {p.event_id: 1 for p in after}


async def _registered(redis: aioredis.Redis, keys: PartitionKeys, groups: set[bytes]) -> bool:
    return set(await redis.hkeys(keys.groups())) == groups
