"""Settling changes only what the consumer still holds, against a real Redis: a consumer whose entry was taken
over (its lease ran out, another reclaimed it) cannot retry, dead-letter or hand back that entry, nor count
attempts against it; a heartbeat that arrives after a short retry was scheduled cannot stretch it; and the times
all of this uses come from Redis's clock."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from streamproc import App, Context, Event
from streamproc.keys import PartitionKeys
from streamproc.worker.consume import Delivery, Reader, Source
from streamproc.worker.settle import Settler
from tests.helpers import wait_for
from tests.inproc import open_app, partition


class CardAdded(Event, tag="card.added"):
    card_id: str


async def noop(event: CardAdded, ctx: Context) -> None:
    return None


def pair(app: App, keys: PartitionKeys, names: tuple[str, ...] = ("a", "b"),
         ) -> list[tuple[Reader, Settler]]:
    [handler] = app.handlers
    return [(Reader(app.redis, "g", name, [Source(handler, keys)]), Settler(app.redis, "g", name, 1000))
            for name in names]


async def owner(redis: aioredis.Redis, keys: PartitionKeys, entry_id: bytes) -> tuple[str, int]:
    [row] = await redis.xpending_range(keys.stream, "g", min=entry_id, max=entry_id, count=1)
    return row["consumer"].decode(), int(row["times_delivered"])


async def setup(app: App) -> PartitionKeys:
    app.handler(CardAdded, group="g")(noop)
    await app.publish(CardAdded(card_id="c1"))
    return partition(app, CardAdded)


async def test_a_consumer_that_lost_its_entry_cannot_settle_it(ns: str, redis_url: str) -> None:
    async with open_app(ns, redis_url) as app:
        keys = await setup(app)
        (reader_a, settler_a), (reader_b, _) = pair(app, keys)
        [mine] = await reader_a.read_new(10, 10)
        [theirs] = await reader_b.claim_stalled(0, 10)  # b reclaims it: a's lease ran out
        assert theirs.entry_id == mine.entry_id
        assert not await settler_a.schedule_retry(mine, 0.0)
        assert not await settler_a.dead_letter(mine, "late", None)
        await settler_a.hand_back([mine])
        assert await owner(app.redis, keys, mine.entry_id) == ("b", 2), "b still holds it, counts untouched"
        assert await app.redis.zcard(keys.retry("g")) == 0
        assert await app.redis.hlen(keys.attempts("g")) == 0
        assert await app.redis.xlen(keys.deadletter("g")) == 0


async def test_retries_leased_to_another_consumer_are_left_alone(ns: str, redis_url: str) -> None:
    async with open_app(ns, redis_url) as app:
        keys = await setup(app)
        (reader_a, settler_a), (reader_b, settler_b) = pair(app, keys)
        [first] = await reader_a.read_new(10, 10)
        assert await settler_a.schedule_retry(first, 0.0)
        assert await app.redis.zcard(keys.retried("g")) == 1, "the retried index holds what is scheduled"
        [taken_a], _ = await reader_a.take_retries(lease_ms=20, count=10)
        await asyncio.sleep(0.05)  # a's lease runs out (by Redis's clock)
        [taken_b], _ = await reader_b.take_retries(lease_ms=60_000, count=10)
        assert (taken_a.attempt, taken_b.attempt) == (2, 3)
        lease_b = await app.redis.zscore(keys.retry("g"), taken_b.entry_id)
        await settler_a.hand_back([taken_a])
        assert not await settler_a.schedule_retry(taken_a, 0.0)
        assert await settler_a.heartbeat([taken_a], 1) == [taken_a], "a learns it lost the lease"
        assert await app.redis.zscore(keys.retry("g"), taken_b.entry_id) == lease_b, "b's lease untouched"
        assert await app.redis.hget(keys.attempts("g"), taken_b.entry_id) == b"3", "no stray attempt counts"
        assert await app.redis.hget(keys.leases("g"), taken_b.entry_id) == b"b"
        settler_b.succeeded(taken_b)
        await settler_b.flush()
        for key in (keys.retry("g"), keys.attempts("g"), keys.leases("g"), keys.retried("g")):
            assert await app.redis.exists(key) == 0, f"{key} forgotten after success"


async def test_a_late_heartbeat_does_not_stretch_a_short_retry(ns: str, redis_url: str) -> None:
    async with open_app(ns, redis_url) as app:
        keys = await setup(app)
        [(reader, settler)] = pair(app, keys, ("a",))
        [first] = await reader.read_new(10, 10)
        assert await settler.schedule_retry(first, 0.0)
        [taken], _ = await reader.take_retries(lease_ms=60_000, count=10)
        assert await settler.schedule_retry(taken, 0.05)  # fails again: retry in 50 ms
        await settler.heartbeat([taken], 60_000)  # the heartbeat sent before that retry arrives after it
        due = await app.redis.zscore(keys.retry("g"), taken.entry_id)
        now_ms = (await app.redis.time())[0] * 1000
        assert due is not None and due < now_ms + 5_000, "still due in about 50 ms, not at the lease end"

        async def retaken() -> list[Delivery]:
            ready, _ = await reader.take_retries(lease_ms=60_000, count=10)
            return ready

        [again] = await wait_for(retaken, timeout=2)  # type: ignore[misc]
        assert again.attempt == 3


async def test_handed_back_entries_keep_their_counts_and_go_to_the_next_taker(ns: str, redis_url: str) -> None:
    async with open_app(ns, redis_url) as app:
        keys = await setup(app)
        (reader_a, settler_a), (reader_b, _) = pair(app, keys)
        [mine] = await reader_a.read_new(10, 10)
        await settler_a.hand_back([mine])
        [theirs] = await reader_b.claim_stalled(60_000, 10)  # at once, though the lease is long
        assert theirs.attempt == 1, "it never ran: the hand-back took back its delivery"


class Followed(Event, tag="user.followed"):
    partitions = 16
    partition_key = "follower_id"
    follower_id: str


async def test_one_read_never_takes_more_than_the_room_it_is_given(ns: str, redis_url: str) -> None:
    """XREADGROUP's COUNT applies per stream: over 16 partitions a read for 25 must still take at most 25."""
    async with open_app(ns, redis_url) as app:
        app.handler(Followed, group="g")(noop)
        await app.publish_many([Followed(follower_id=f"u{i}") for i in range(800)])
        [handler] = app.handlers
        reader = Reader(app.redis, "g", "a", [Source(handler, keys) for keys in handler.route.partitions])
        sizes = [len(await reader.read_new(room, 10)) for room in (25, 25, 5, 3, 200)]
        assert sizes[0] <= 25 and sizes[1] <= 25 and sizes[2] <= 5 and sizes[3] <= 3 and sizes[4] <= 200
        assert all(sizes), f"every read found something: {sizes}"
        seen: set[int] = set()
        for _ in range(16):  # with room for fewer entries than streams, the streams take turns
            seen.update(d.keys.partition for d in await reader.read_new(3, 10))
        assert seen == set(range(16))
        total = int((await app.redis.xinfo_consumers(handler.route.partitions[0].stream, "g"))[0]["pending"])
        assert total <= 200
