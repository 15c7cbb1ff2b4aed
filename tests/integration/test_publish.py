"""Publishing against a real Redis: where events go, producer-given ids, group creation before any worker,
where late groups start and backpressure (Redis being away or losing its data:
tests/faults/test_redis_restarts.py)."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from streamproc import (
    BacklogFull,
    Context,
    Event,
    InvalidEvent,
    Outgoing,
    PublishError,
    partition_of,
)
from tests.inproc import Calls, handler_recording, open_app, partition, running, settled


class CardAdded(Event, tag="card.added"):
    card_id: str
    curator_id: str


class Followed(Event, tag="user.followed"):
    partitions = 4
    partition_key = "follower_id"
    follower_id: str
    followee_id: str


def cards(n: int, prefix: str = "c") -> list[CardAdded]:
    return [CardAdded(card_id=f"{prefix}{i}", curator_id="u1") for i in range(n)]


async def noop(event: Event, ctx: Context) -> None:
    return None


async def test_publish_reports_where_the_event_went(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    async with open_app(ns, redis_url) as app:
        app.register(CardAdded, Followed)
        event = CardAdded(card_id="c1", curator_id="u1")
        published = await app.publish(event)
        assert len(published.event_id) == 32
        assert published.stream == partition(app, CardAdded).stream == f"{ns}:ev:{{card.added:0}}"
        assert published.appended
        [(stream_id, fields)] = await redis.xrange(published.stream)
        assert stream_id.decode() == published.stream_id
        assert fields[b"event_id"] == published.event_id.encode()
        assert fields[b"type"] == b"card.added"
        assert abs(int(fields[b"occurred_at"]) - time.time() * 1000) < 5_000

        follows = [Followed(follower_id=f"u{i}", followee_id="x") for i in range(20)]
        for follow, p in zip(follows, await app.publish_many(follows), strict=True):
            assert p.stream == partition(app, Followed, partition_of(follow)).stream
        streams = {p.stream for p in await app.publish_many(follows)}
        assert len(streams) > 1, "a partitioned type spreads over its partitions"


async def test_producer_event_id_is_appended_once(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="g")(handler_recording(calls))
        event = CardAdded(card_id="c1", curator_id="u1")
        first = await app.publish(event, event_id="order-1")
        again = await app.publish(event, event_id="order-1")
        assert (first.appended, again.appended) == (True, False)
        assert again.stream_id == first.stream_id
        twice_in_one = await app.publish_many([Outgoing(event, "order-2"), Outgoing(event, "order-2")])
        assert [p.appended for p in twice_in_one] == [True, False]
        assert twice_in_one[0].stream_id == twice_in_one[1].stream_id
        keys = partition(app, CardAdded)
        assert await redis.xlen(keys.stream) == 2
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("g") == 2)
            await worker.wait_for(lambda: settled(redis, keys, "g"))
    assert dict(calls.of("g")) == {"order-1": 1, "order-2": 1}


async def test_events_published_before_any_worker_are_processed(ns: str, redis_url: str,
                                                                redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="feeds")(handler_recording(calls))
        app.handler(CardAdded, group="notifications")(handler_recording(calls))
        published = await app.publish_many(cards(25))
        keys = partition(app, CardAdded)
        groups = {g["name"] for g in await redis.xinfo_groups(keys.stream)}
        assert groups == {b"feeds", b"notifications"}, "the publisher made the groups"
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("feeds") == calls.distinct("notifications") == 25)
    ids = {p.event_id for p in published}
    assert set(calls.of("feeds")) == set(calls.of("notifications")) == ids


async def test_late_group_starts_where_its_start_option_says(ns: str, redis_url: str,
                                                             redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as old:
        old.handler(CardAdded, group="first")(noop)
        history = await old.publish_many(cards(5, "old"))
    async with open_app(ns, redis_url) as app:  # a later deploy adds two groups to a stream with history
        app.handler(CardAdded, group="first")(noop)
        app.handler(CardAdded, group="only-new", start="new")(handler_recording(calls))
        app.handler(CardAdded, group="replay", start="all")(handler_recording(calls))
        fresh = await app.publish_many(cards(3, "new"))
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("replay") == 8 and calls.distinct("only-new") == 3)
            keys = partition(app, CardAdded)
            await worker.wait_for(lambda: settled(redis, keys, "replay"))
            await worker.wait_for(lambda: settled(redis, keys, "only-new"))
    assert set(calls.of("only-new")) == {p.event_id for p in fresh}
    assert set(calls.of("replay")) == {p.event_id for p in history + fresh}


async def test_full_backlog_refuses_publish_until_drained(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url, max_backlog=100) as app:
        app.handler(CardAdded, group="g")(handler_recording(calls))
        await app.publish_many(cards(100))
        with pytest.raises(BacklogFull) as refused:
            await app.publish(CardAdded(card_id="one-too-many", curator_id="u1"))
        keys = partition(app, CardAdded)
        assert isinstance(refused.value, PublishError)
        assert refused.value.retriable
        assert (refused.value.stream, refused.value.backlog, refused.value.limit) == (keys.stream, 100, 100)
        assert keys.stream in str(refused.value) and "100" in str(refused.value)
        assert await redis.xlen(keys.stream) == 100, "nothing appended"
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("g") == 100)
            await worker.wait_for(lambda: settled(redis, keys, "g"))
        accepted = await app.publish(CardAdded(card_id="one-too-many", curator_id="u1"))
        assert accepted.appended






async def test_producer_event_id_with_braces_or_spaces_is_refused(ns: str, redis_url: str,
                                                                  redis: aioredis.Redis) -> None:
    async with open_app(ns, redis_url) as app:
        app.register(CardAdded)
        for bad in ("a{b}", "two words", ""):
            with pytest.raises(InvalidEvent, match="event id"):
                await app.publish(CardAdded(card_id="c", curator_id="u"), event_id=bad)
        assert (await app.publish(CardAdded(card_id="c", curator_id="u"), event_id="order-1:v2")).appended


async def test_type_without_groups_is_published_and_read_back(ns: str, redis_url: str,
                                                              redis: aioredis.Redis) -> None:
    """A type nobody consumes yet still gets its stream (plain XADD; NOMKSTREAM is only for streams with groups)."""
    async with open_app(ns, redis_url) as app:
        published = await app.publish_many(cards(3))
        entries = await redis.xrange(published[0].stream)
        assert [e[0].decode() for e in entries] == [p.stream_id for p in published]
        assert [e[1][b"event_id"].decode() for e in entries] == [p.event_id for p in published]
