"""Retention and group hygiene against a real Redis: trimming never removes what a group still needs, fully
acknowledged history is trimmed by age and length, and idle consumers go unless they own pending entries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from streamproc import App, Backoff, Context, Event, PublishError
from streamproc.keys import PartitionKeys
from streamproc.publish.groups import ensure_groups
from streamproc.worker.retention import Trimmed, TrimPass, maintain_once, trim_partition, trim_stream
from tests.helpers import wait_for
from tests.inproc import Calls, handler_recording, open_app, partition, pending, running, settled
from tests.redis_server import RedisServer

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


# Trimming that scales: bounded reads, every key declared, one trimmer at a time, room to run when Redis is full ------


async def _retry_index(redis: aioredis.Redis, keys: PartitionKeys, group: str, ids: list[bytes]) -> None:
    """Put entries into a group's retry schedule as the settle scripts keep it: the retry set, and the retried
    index (entry id -> its millisecond) that trimming reads."""
    await redis.zadd(keys.retry(group), {i: 10**13 for i in ids})
    await redis.zadd(keys.retried(group), {i: int(i.split(b"-")[0]) for i in ids})


async def _lua_commands(redis_url: str, work: Callable[[], Awaitable[object]]) -> list[list[str]]:
    """The commands scripts ran on the server while `work` ran (MONITOR), each as its words."""
    watcher = aioredis.Redis.from_url(redis_url)
    try:
        async with watcher.monitor() as monitor:
            await work()
            await watcher.echo("end-of-work")
            seen: list[list[str]] = []
            while True:
                command = await monitor.next_command()
                if "end-of-work" in command["command"]:
                    return seen
                if command.get("client_type") == "lua":
                    seen.append(command["command"].split())
    finally:
        await watcher.aclose()


@pytest.mark.parametrize("retries", [300, 3000])
async def test_trim_reads_the_head_of_the_retry_index_only(ns: str, redis_url: str, redis: aioredis.Redis,
                                                          retries: int) -> None:
    """With hundreds or thousands of scheduled retries, one trim call runs the same few commands: it never reads a
    whole retry set (a million retries once blocked Redis 2.4 s per call)."""
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="g")(noop)
        app.handler(CardAdded, group="h")(noop)
        published = await app.publish_many(cards(retries + 100))
        keys = partition(app, CardAdded)
        for group in ("g", "h"):
            await _consume(redis, keys, group, retries + 100)
        scheduled = [p.stream_id.encode() for p in published[100:]]  # every entry from the 101st is in retry
        await _retry_index(redis, keys, "g", scheduled)
        trimmed: list[int] = []

        async def trim() -> None:
            trimmed.append(await _trim_all(redis, keys))

        commands = await _lua_commands(redis_url, trim)
        # Everything before the oldest scheduled retry; or, when its millisecond holds 100 retries or more (too many
        # to read), everything before that millisecond.
        ms = [int(p.stream_id.split("-")[0]) for p in published]
        crowded = sum(1 for m in ms[100:] if m == ms[100]) >= 100
        assert trimmed == [sum(1 for m in ms if m < ms[100]) if crowded else 100]
        assert crowded or await _first_id(redis, keys.stream) == scheduled[0]
        reads = [c for c in commands if c[0].strip('"').upper() == "ZRANGE"]
        print(f"{retries} retries: {len(commands)} commands in the trim script, ZRANGE calls {reads}")
        assert len(commands) <= 25, commands
        assert len(reads) == 3, "the head of each group's index (g, h), then (at most 100 of) g's oldest millisecond"
        assert not any('"-1"' in c for c in reads), "no ZRANGE 0 -1"
        named = {c[2 if c[0].strip('"').upper() == "XINFO" else 1].strip('"') for c in commands
                 if c[0].strip('"').upper() != "TIME"}
        assert named <= {keys.stream, keys.groups(), keys.declared(), keys.checkpoints(), keys.retried("g"),
                         keys.retried("h")}, "only keys the call declared"


async def test_one_process_trims_a_stream_at_a_time(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="g")(noop)
        await app.publish_many(cards(30))
        keys = partition(app, CardAdded)
        await _consume(redis, keys, "g", 10)

        def by(owner: str) -> TrimPass:
            return TrimPass(keys, retention_ms=0, max_length=0, own=("g",), owner=owner, lock_ms=60_000)

        assert await trim_partition(redis, by("a")) == Trimmed(10, "trimmed")
        await _consume(redis, keys, "g", 10)
        assert await trim_partition(redis, by("b")) == Trimmed(0, "locked"), "a holds the stream for its interval"
        assert await redis.xlen(keys.stream) == 20
        assert await trim_partition(redis, by("a")) == Trimmed(10, "trimmed"), "the holder trims again"
        assert await redis.get(keys.trim_lock()) == b"a"
        assert 0 < await redis.pttl(keys.trim_lock()) <= 60_000


async def test_trim_and_group_creation_run_while_redis_is_full(ns: str) -> None:
    """maxmemory with noeviction: appends are refused, but a worker still starts (its groups exist: no write) and
    trimming (allow-oom) frees memory, after which appends are accepted again."""
    server = RedisServer(extra=["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"])
    server.start()
    try:
        async with open_app(ns, server.url) as app:
            app.handler(CardAdded, group="g")(noop)
            keys = partition(app, CardAdded)
            big = "x" * 2000
            with pytest.raises(PublishError, match="maxmemory"):
                for _ in range(10_000):
                    await app.publish_many([CardAdded(card_id=big, curator_id=str(i)) for i in range(20)])
            filled = int(await app.redis.xlen(keys.stream))
            await _consume(app.redis, keys, "g", filled)
            await ensure_groups(app.redis, [(keys.stream, "g", "new")])  # a worker starting now
            assert await _trim_all(app.redis, keys) >= filled - 1
            accepted = await app.publish(CardAdded(card_id="after", curator_id="u1"))
            assert accepted.appended
    finally:
        server.cleanup()
