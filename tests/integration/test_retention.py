"""Retention and group hygiene against a real Redis: trimming never removes what a group still needs, fully
acknowledged history is trimmed by age and length, and idle consumers go unless they own pending entries."""

from __future__ import annotations

import redis.asyncio as aioredis

from streamproc import App, Backoff, Context, Event
from streamproc.keys import PartitionKeys
from streamproc.worker.retention import maintain_once, trim_stream
from tests.helpers import wait_for
from tests.inproc import Calls, handler_recording, open_app, partition, pending, running, settled

LONG = 10**12  # a retention age no entry reaches


class CardAdded(Event, tag="card.added"):
    card_id: str
    curator_id: str


def cards(n: int) -> list[CardAdded]:
    return [CardAdded(card_id=f"c{i}", curator_id="u1") for i in range(n)]


async def noop(event: Event, ctx: Context) -> None:
    return None


async def _consume(redis: aioredis.Redis, keys: PartitionKeys, group: str, count: int, ack: int | None = None,
                   ) -> list[bytes]:
    """Read `count` new entries into `group` as consumer "c" and ack the first `ack` of them (default: all)."""
    reply = await redis.xreadgroup(group, "c", {keys.stream: ">"}, count=count)
    ids = [eid for _, entries in reply for eid, _ in entries]
    done = ids if ack is None else ids[:ack]
    if done:
        await redis.xack(keys.stream, group, *done)
    return ids


async def _first_id(redis: aioredis.Redis, stream: str) -> bytes:
    [(eid, _)] = await redis.xrange(stream, count=1)
    return bytes(eid)


async def _trim_all(redis: aioredis.Redis, keys: PartitionKeys) -> int:
    return await trim_stream(redis, keys, retention_ms=0, max_length=1)


async def test_trim_keeps_unread_and_pending_entries(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="done")(noop)
        app.handler(CardAdded, group="behind")(noop)
        published = await app.publish_many(cards(2000))
        keys = partition(app, CardAdded)
        assert len(await _consume(redis, keys, "done", 2000)) == 2000

        assert await _trim_all(redis, keys) == 0, "'behind' has read nothing yet"
        assert await redis.xlen(keys.stream) == 2000

        read = await _consume(redis, keys, "behind", 100, ack=50)
        assert await _trim_all(redis, keys) == 50, "only what every group acked"
        assert await _first_id(redis, keys.stream) == read[50] == published[50].stream_id.encode()
        assert await pending(redis, keys.stream, "behind") == 50

        await redis.xack(keys.stream, "behind", *read[50:])
        assert await _trim_all(redis, keys) == 50
        assert await redis.xlen(keys.stream) == 1900, "the unread backlog of 'behind' stays"

        await _consume(redis, keys, "behind", 1900)
        await wait_for(lambda: _trimmed_to_empty(redis, keys))


async def _trimmed_to_empty(redis: aioredis.Redis, keys: PartitionKeys) -> bool:
    await _trim_all(redis, keys)
    return int(await redis.xlen(keys.stream)) == 0


async def test_trim_keeps_entries_scheduled_for_retry(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="g", backoff=Backoff(base=30, jitter=False))(
            handler_recording(calls, fail=lambda e, ctx: e.card_id == "c5" and ctx.attempt == 1))
        published = await app.publish_many(cards(20))
        keys = partition(app, CardAdded)
        failed = published[5].stream_id.encode()
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("g") == 20)
            await worker.wait_for(lambda: _only_retry_left(redis, keys))
            assert await _trim_all(redis, keys) == 5
            assert await _first_id(redis, keys.stream) == failed
            await redis.zadd(keys.retry("g"), {failed: 0})  # make the retry due now
            await worker.wait_for(lambda: settled(redis, keys, "g"))
        assert calls.attempts[("g", published[5].event_id)] == [1, 2]
        await wait_for(lambda: _trimmed_to_empty(redis, keys))


async def _only_retry_left(redis: aioredis.Redis, keys: PartitionKeys) -> bool:
    return await pending(redis, keys.stream, "g") == 0 and await redis.zcard(keys.retry("g")) == 1


async def test_acked_history_is_trimmed_by_age_and_length_policy(ns: str, redis_url: str,
                                                                 redis: aioredis.Redis) -> None:
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="g")(noop)
        published = await app.publish_many(cards(30))
        keys = partition(app, CardAdded)
        await _consume(redis, keys, "g", 30)
        assert await trim_stream(redis, keys, retention_ms=LONG, max_length=0) == 0, "young and no length limit"
        assert await trim_stream(redis, keys, retention_ms=LONG, max_length=100) == 0
        assert await trim_stream(redis, keys, retention_ms=LONG, max_length=10) == 20
        assert await _first_id(redis, keys.stream) == published[20].stream_id.encode()
        await wait_for(lambda: _trimmed_to_empty(redis, keys))


async def test_worker_maintenance_trims_processed_history(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url, retention_ms=0, retention_max_length=5) as app:
        app.handler(CardAdded, group="g")(handler_recording(calls))
        await app.publish_many(cards(50))
        keys = partition(app, CardAdded)
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("g") == 50)
            await worker.wait_for(lambda: _xlen_is(redis, keys, 0), message="processed history trimmed")
            assert calls.total("g") == 50


async def _xlen_is(redis: aioredis.Redis, keys: PartitionKeys, n: int) -> bool:
    return int(await redis.xlen(keys.stream)) == n


# Idle consumers ---------------------------------------------------------------------------------------------------


async def _consumers(redis: aioredis.Redis, stream: str, group: str) -> dict[str, dict[str, int]]:
    rows = await redis.xinfo_consumers(stream, group)
    return {row["name"].decode(): {"pending": int(row["pending"]), "idle": int(row["idle"])} for row in rows}


async def _all_idle(app: App, keys: PartitionKeys, idle_ms: int) -> bool:
    found = await _consumers(app.redis, keys.stream, "g")
    return all(c["idle"] >= idle_ms for c in found.values())


async def test_idle_consumers_are_removed_unless_they_own_entries(ns: str, redis_url: str,
                                                                  redis: aioredis.Redis) -> None:
    async with open_app(ns, redis_url, consumer_gc_idle_ms=100) as app:
        app.handler(CardAdded, group="g")(noop)
        await app.publish_many(cards(3))
        keys = partition(app, CardAdded)
        for name in ("idle", "me"):
            await redis.xgroup_createconsumer(keys.stream, "g", name)
        await redis.xreadgroup("g", "owner", {keys.stream: ">"}, count=2)  # owns 2 entries, never acks
        await wait_for(lambda: _all_idle(app, keys, 150))
        await redis.xgroup_createconsumer(keys.stream, "g", "fresh")

        await maintain_once(app, "me")

        left = await _consumers(redis, keys.stream, "g")
        assert set(left) == {"owner", "me", "fresh"}, "only the idle consumer without pending entries goes"
        assert left["owner"]["pending"] == 2
        assert await pending(redis, keys.stream, "g") == 2
