"""Delivery guarantees of an in-process worker against a real Redis: fan-out, batching, retries, atomic
settling, dead letters, stall recovery and heartbeats (Redis restarts: tests/faults/test_redis_restarts.py)."""

from __future__ import annotations

import asyncio
import logging

import msgspec
import pytest
import redis.asyncio as aioredis

from streamproc import Backoff, Context, DeadLetter, Event, Retry
from streamproc.keys import PartitionKeys
from streamproc.worker.consume import Delivery
from tests.inproc import (
    Calls,
    deadletters,
    handler_recording,
    open_app,
    partition,
    pending,
    pending_ids,
    running,
    settled,
)

FAST_BACKOFF = Backoff(base=0.01, jitter=False)


class CardAdded(Event, tag="card.added"):
    card_id: str
    curator_id: str


def cards(n: int, prefix: str = "c") -> list[CardAdded]:
    return [CardAdded(card_id=f"{prefix}{i}", curator_id="u1") for i in range(n)]


async def all_settled(redis: aioredis.Redis, keys: PartitionKeys, *groups: str) -> bool:
    return all([await settled(redis, keys, g) for g in groups])


# 1. Fan-out ----------------------------------------------------------------------------------------------------


async def test_two_groups_each_process_every_event_exactly_once(ns: str, redis_url: str,
                                                               redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="feeds", backoff=FAST_BACKOFF)(handler_recording(calls))
        app.handler(CardAdded, group="notifications", backoff=FAST_BACKOFF)(handler_recording(calls))
        published = await app.publish_many(cards(200))
        async with running(app) as worker:
            keys = partition(app, CardAdded)
            await worker.wait_for(lambda: calls.distinct("feeds") == calls.distinct("notifications") == 200)
            await worker.wait_for(lambda: all_settled(redis, keys, "feeds", "notifications"))
    ids = {p.event_id for p in published}
    for group in ("feeds", "notifications"):
        assert set(calls.of(group)) == ids
        assert set(calls.of(group).values()) == {1}, f"{group} ran some event more than once"
        assert await deadletters(redis, keys, group) == []


async def test_failing_group_does_not_affect_other_group(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="good")(handler_recording(calls))
        app.handler(CardAdded, group="bad", max_attempts=2, backoff=FAST_BACKOFF)(
            handler_recording(calls, fail=lambda e, c: True))
        published = await app.publish_many(cards(20))
        keys = partition(app, CardAdded)
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("good") == 20)
            await worker.wait_for(lambda: _dlq_len(redis, keys, "bad", 20))
            await worker.wait_for(lambda: all_settled(redis, keys, "good", "bad"))
    assert set(calls.of("good").values()) == {1}
    assert set(calls.of("bad").values()) == {2}
    assert await deadletters(redis, keys, "good") == []
    dead = await deadletters(redis, keys, "bad")
    assert sorted(d.event_id for d in dead) == sorted(p.event_id for p in published)


async def _dlq_len(redis: aioredis.Redis, keys: PartitionKeys, group: str, n: int) -> bool:
    return int(await redis.xlen(keys.deadletter(group))) >= n


async def test_slow_group_backlog_does_not_block_fast_group(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    release = asyncio.Event()

    async def slow(event: CardAdded, ctx: Context) -> None:
        calls.record(event, ctx)
        await release.wait()

    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="fast")(handler_recording(calls))
        app.handler(CardAdded, group="slow", concurrency=1)(slow)
        await app.publish_many(cards(100))
        keys = partition(app, CardAdded)
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("fast") == 100)
            await worker.wait_for(lambda: settled(redis, keys, "fast"))
            assert calls.total("slow") == 1, "the slow group runs one event at a time and is still stuck on it"
            release.set()
            await worker.wait_for(lambda: calls.distinct("slow") == 100)
            await worker.wait_for(lambda: settled(redis, keys, "slow"))


# 2. Batching and codecs -------------------------------------------------------------------------------------------


async def test_batches_run_concurrently_up_to_the_limit(ns: str, redis_url: str, redis: aioredis.Redis,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from streamproc.worker.consume import Reader

    batches: list[int] = []
    read_new = Reader.read_new

    async def recording_read_new(self: Reader, count: int, block_ms: int) -> list[Delivery]:
        got = await read_new(self, count, block_ms)
        batches.append(len(got))
        return got

    monkeypatch.setattr(Reader, "read_new", recording_read_new)
    in_flight = 0
    peak = 0
    done: set[str] = set()

    async def handle(event: CardAdded, ctx: Context) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.01)
        finally:
            in_flight -= 1
        done.add(ctx.event_id)

    async with open_app(ns, redis_url, batch_size=50) as app:
        app.handler(CardAdded, group="g", concurrency=8)(handle)
        await app.publish_many(cards(500))
        async with running(app) as worker:
            await worker.wait_for(lambda: len(done) == 500)
            await worker.wait_for(lambda: settled(redis, partition(app, CardAdded), "g"))
    assert 1 < peak <= 8
    assert max(batches) > 1, "reads are batched"
    assert max(batches) <= 50, "a read takes at most batch_size entries"


async def test_codecs_are_built_once_at_registration(ns: str, redis_url: str, redis: aioredis.Redis,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[CardAdded] = []

    async def handle(event: CardAdded, ctx: Context) -> None:
        seen.append(event)

    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="g")(handle)
        codec = app.handlers[0].codec
        assert codec.event_type is CardAdded

        def no_new_codecs(*args: object, **kwargs: object) -> None:
            raise AssertionError("a msgspec codec was built while publishing or processing")

        monkeypatch.setattr(msgspec.msgpack, "Decoder", no_new_codecs)
        monkeypatch.setattr(msgspec.msgpack, "Encoder", no_new_codecs)
        await app.publish_many(cards(30))
        async with running(app) as worker:
            await worker.wait_for(lambda: len(seen) == 30)
            await worker.wait_for(lambda: settled(redis, partition(app, CardAdded), "g"))
        assert app.handlers[0].codec is codec
    assert sorted(e.card_id for e in seen) == sorted(f"c{i}" for i in range(30))
    assert all(type(e) is CardAdded for e in seen)


# 3. Retries belong to one group -----------------------------------------------------------------------------------


async def test_retry_is_scoped_to_the_failing_group(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="a", max_attempts=5, backoff=FAST_BACKOFF)(
            handler_recording(calls, fail=lambda e, ctx: ctx.attempt < 3))
        app.handler(CardAdded, group="b", backoff=FAST_BACKOFF)(handler_recording(calls))
        published = await app.publish_many(cards(10))
        keys = partition(app, CardAdded)
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.total("a") == 30 and calls.distinct("b") == 10)
            await worker.wait_for(lambda: all_settled(redis, keys, "a", "b"))
    for p in published:
        assert calls.of("b")[p.event_id] == 1
        assert calls.attempts[("a", p.event_id)] == [1, 2, 3]
    assert await redis.zcard(keys.retry("a")) == 0
    assert await redis.hlen(keys.attempts("a")) == 0
    assert await redis.exists(keys.retry("b"), keys.attempts("b")) == 0
    assert await pending(redis, keys.stream, "a") == await pending(redis, keys.stream, "b") == 0
    assert await deadletters(redis, keys, "a") == []


async def test_handler_can_ask_for_a_retry_or_give_up(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()

    async def handle(event: CardAdded, ctx: Context) -> None:
        calls.record(event, ctx)
        if event.card_id == "retry-me" and ctx.attempt == 1:
            raise Retry(delay=0.05)
        if event.card_id == "give-up":
            raise DeadLetter("x: the card was deleted")

    async with open_app(ns, redis_url) as app:
        # A long backoff: only the handler's own Retry(delay=0.05) can bring the event back quickly.
        app.handler(CardAdded, group="g", max_attempts=5, backoff=Backoff(base=30, jitter=False))(handle)
        retried = await app.publish(CardAdded(card_id="retry-me", curator_id="u1"))
        given_up = await app.publish(CardAdded(card_id="give-up", curator_id="u1"))
        keys = partition(app, CardAdded)
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.attempts.get(("g", retried.event_id)) == [1, 2])
            await worker.wait_for(lambda: settled(redis, keys, "g"))
    assert calls.attempts[("g", given_up.event_id)] == [1], "DeadLetter is not retried"
    [dead] = await deadletters(redis, keys, "g")
    assert dead.event_id == given_up.event_id
    assert "x: the card was deleted" in dead.reason
    assert dead.attempts == 1
    assert dead.error_type == "DeadLetter"


# 4. Settling is one atomic transition -----------------------------------------------------------------------------


async def test_failure_moves_entry_from_pending_to_retry_schedule(ns: str, redis_url: str,
                                                                  redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="g", backoff=Backoff(base=30, jitter=False))(
            handler_recording(calls, fail=lambda e, ctx: e.card_id == "c1"))
        published = await app.publish_many(cards(3))
        keys = partition(app, CardAdded)
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.total("g") == 3)
            await worker.wait_for(lambda: _pending_is(redis, keys, 0))
            failed = published[1].stream_id.encode()
            schedule = await redis.zrange(keys.retry("g"), 0, -1, withscores=True)
            assert [eid for eid, _ in schedule] == [failed]
            assert schedule[0][1] > (await redis.time())[0] * 1000 + 20_000, "due after the 30 s backoff"
            assert await redis.hgetall(keys.attempts("g")) == {failed: b"1"}
            assert await pending_ids(redis, keys.stream, "g") == []
            assert await redis.xlen(keys.stream) == 3, "nothing appended or duplicated"
            assert await redis.xlen(keys.deadletter("g")) == 0
            assert calls.total("g") == 3, "not run again while its retry is not due"


async def _pending_is(redis: aioredis.Redis, keys: PartitionKeys, n: int) -> bool:
    return await pending(redis, keys.stream, "g") == n and await redis.zcard(keys.retry("g")) == 1


# 5. Dead letters --------------------------------------------------------------------------------------------------


async def test_exhausted_attempts_dead_letter_once_with_details(ns: str, redis_url: str,
                                                               redis: aioredis.Redis) -> None:
    calls = Calls()

    async def always_fails(event: CardAdded, ctx: Context) -> None:
        calls.record(event, ctx)
        raise ValueError(f"boom on attempt {ctx.attempt}")

    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="g", max_attempts=3, backoff=FAST_BACKOFF)(always_fails)
        event = CardAdded(card_id="c1", curator_id="u9")
        published = await app.publish(event)
        keys = partition(app, CardAdded)
        async with running(app) as worker:
            await worker.wait_for(lambda: _dlq_len(redis, keys, "g", 1))
            await worker.wait_for(lambda: settled(redis, keys, "g"))
    assert calls.attempts[("g", published.event_id)] == [1, 2, 3]
    [dead] = await deadletters(redis, keys, "g")
    assert dead.event_id == published.event_id
    assert dead.type == "card.added"
    assert dead.group == "g"
    assert "max_attempts=3" in dead.reason
    assert dead.attempts == 3
    assert dead.error_type == "ValueError"
    assert dead.error_message == "boom on attempt 3"
    assert "ValueError: boom on attempt 3" in dead.traceback
    assert "always_fails" in dead.traceback
    assert dead.stream == keys.stream
    assert dead.stream_id == published.stream_id
    assert msgspec.msgpack.decode(dead.payload or b"", type=CardAdded) == event
    assert dead.fields[b"event_id"] == published.event_id.encode()
    assert set(dead.fields) >= {b"event_id", b"type", b"occurred_at", b"data"}


async def test_undecodable_entries_are_dead_lettered_at_once(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="g", backoff=FAST_BACKOFF)(handler_recording(calls))
        keys = partition(app, CardAdded)
        envelope = {b"event_id": b"e" * 32, b"occurred_at": b"1700000000000"}
        garbage = [
            {b"data": b"\xff\xfe garbage"},
            {**envelope, b"type": b"no.such.type", b"data": msgspec.msgpack.encode({"type": "no.such.type"})},
            {**envelope, b"type": b"card.added", b"data": msgspec.msgpack.encode({"type": "card.added", "card_id": 5})},
            {**envelope, b"type": b"card.added", b"data": b"\xc1\xc1 not msgpack"},
        ]
        async with running(app) as worker:
            await worker.wait_for(lambda: redis.exists(keys.stream))  # the worker created the group
            raw_ids = [await redis.xadd(keys.stream, fields) for fields in garbage]  # type: ignore[arg-type]
            await worker.wait_for(lambda: _dlq_len(redis, keys, "g", len(garbage)))
            good = await app.publish(CardAdded(card_id="after", curator_id="u1"))
            await worker.wait_for(lambda: calls.of("g")[good.event_id] == 1)
            await worker.wait_for(lambda: settled(redis, keys, "g"))
    assert calls.total("g") == 1, "the handler never saw the garbage"
    dead = {d.stream_id.encode(): d for d in await deadletters(redis, keys, "g")}
    assert set(dead) == set(raw_ids)
    for raw_id, fields, reason in zip(raw_ids, garbage, ["event_id", "unknown type", "schema mismatch",
                                                         "undecodable data"], strict=True):
        assert dead[raw_id].fields == fields, "the raw bytes are kept whole"
        assert dead[raw_id].attempts == 1
        assert "undecodable" in dead[raw_id].reason
        assert reason in dead[raw_id].reason
        assert dead[raw_id].error_type == "DecodeError"


# 6. Stalled entries, heartbeats, deleted entries ------------------------------------------------------------------


async def _read_as_dead_consumer(redis: aioredis.Redis, keys: PartitionKeys, group: str, count: int,
                                 ) -> list[bytes]:
    """Take entries into `group` as a consumer that then dies: read, never ack."""
    reply = await redis.xreadgroup(group, "dead-consumer", {keys.stream: ">"}, count=count)
    return [eid for _, entries in reply for eid, _ in entries]


async def test_entries_of_a_dead_consumer_are_reclaimed_after_the_lease(ns: str, redis_url: str,
                                                                        redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="g", backoff=FAST_BACKOFF)(handler_recording(calls))
        published = await app.publish_many(cards(5))
        keys = partition(app, CardAdded)
        loop = asyncio.get_running_loop()
        started = loop.time()
        stolen = await _read_as_dead_consumer(redis, keys, "g", 5)
        assert len(stolen) == 5
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("g") == 5)
            elapsed = loop.time() - started
            await worker.wait_for(lambda: settled(redis, keys, "g"))
    assert elapsed >= 0.15, "not reclaimed before the 200 ms lease ran out"
    for p in published:
        assert calls.attempts[("g", p.event_id)] == [2], "the second delivery of each entry"


async def test_entry_started_too_often_is_dead_lettered(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="g", max_attempts=3, backoff=FAST_BACKOFF)(handler_recording(calls))
        keys = partition(app, CardAdded)
        poison = await app.publish(CardAdded(card_id="poison", curator_id="u1"))
        [eid] = await _read_as_dead_consumer(redis, keys, "g", 1)
        for _ in range(5):  # as crashing workers would: reclaim it (a delivery) and record a start each time
            await redis.xclaim(keys.stream, "g", "dead-consumer", 0, [eid])
            await redis.hincrby(keys.starts("g"), eid.decode(), 1)
        [row] = await redis.xpending_range(keys.stream, "g", min=eid, max=eid, count=1)
        assert row["times_delivered"] == 6
        fine = await app.publish(CardAdded(card_id="fine", curator_id="u1"))
        async with running(app) as worker:
            await worker.wait_for(lambda: _dlq_len(redis, keys, "g", 1))
            await worker.wait_for(lambda: calls.distinct("g") == 1)
            await worker.wait_for(lambda: settled(redis, keys, "g"))
    assert poison.event_id not in calls.of("g"), "a poison entry is not run again"
    assert calls.of("g")[fine.event_id] == 1
    [dead] = await deadletters(redis, keys, "g")
    assert dead.event_id == poison.event_id
    assert "max_deliveries=5" in dead.reason
    assert dead.attempts == 7
    assert await redis.exists(keys.starts("g")) == 0, "its recorded starts went with it"


async def test_an_entry_held_but_never_started_by_crashed_workers_is_not_blamed(ns: str, redis_url: str,
                                                                               redis: aioredis.Redis) -> None:
    """Workers that died while the entry only waited in their memory (read in a batch, not yet started) delivered
    it without starting it: those deliveries do not count against max_deliveries."""
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="g", max_attempts=3, backoff=FAST_BACKOFF)(handler_recording(calls))
        keys = partition(app, CardAdded)
        innocent = await app.publish(CardAdded(card_id="innocent", curator_id="u1"))
        [eid] = await _read_as_dead_consumer(redis, keys, "g", 1)
        for _ in range(9):  # nine crashed holders, none of which started it
            await redis.xclaim(keys.stream, "g", "dead-consumer", 0, [eid])
        async with running(app) as worker:
            await worker.wait_for(lambda: settled(redis, keys, "g"))
    assert calls.of("g")[innocent.event_id] == 1
    assert calls.attempts[("g", innocent.event_id)] == [2], "its first delivery may have started: attempt 2"
    assert await redis.xlen(keys.deadletter("g")) == 0
    assert await redis.exists(keys.starts("g")) == 0, "its recorded start went with the ack"


async def test_heartbeat_keeps_a_long_handler_from_running_twice(ns: str, redis_url: str,
                                                                 redis: aioredis.Redis) -> None:
    calls = Calls()
    release = asyncio.Event()

    async def long_running(event: CardAdded, ctx: Context) -> None:
        calls.record(event, ctx)
        await release.wait()

    async with open_app(ns, redis_url) as one, open_app(ns, redis_url) as two:
        for app in (one, two):  # two processes' worth of apps on one namespace
            app.handler(CardAdded, group="g")(long_running)
        keys = partition(one, CardAdded)
        async with running(one) as w1, running(two) as w2:
            published = await one.publish(CardAdded(card_id="slow", curator_id="u1"))
            await w1.wait_for(lambda: calls.total("g") == 1)
            deadline = asyncio.get_running_loop().time() + 0.6  # three leases
            while asyncio.get_running_loop().time() < deadline:
                w1.check()
                w2.check()
                assert calls.total("g") == 1, "the entry was taken from a live consumer and run again"
                await asyncio.sleep(0.02)
            [row] = await redis.xpending_range(keys.stream, "g", min="-", max="+", count=10)
            assert row["times_delivered"] == 1
            release.set()
            await w1.wait_for(lambda: settled(redis, keys, "g"))
    assert calls.attempts[("g", published.event_id)] == [1]


async def test_deleted_pending_entry_is_noticed_and_skipped(ns: str, redis_url: str, redis: aioredis.Redis,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="streamproc.worker.consume")
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="g", backoff=FAST_BACKOFF)(handler_recording(calls))
        published = await app.publish_many(cards(3))
        keys = partition(app, CardAdded)
        stolen = await _read_as_dead_consumer(redis, keys, "g", 3)
        assert await redis.xdel(keys.stream, stolen[1]) == 1
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("g") == 2)
            await worker.wait_for(lambda: "were deleted before" in caplog.text)
            later = await app.publish(CardAdded(card_id="later", curator_id="u1"))
            await worker.wait_for(lambda: later.event_id in calls.of("g"))
            await worker.wait_for(lambda: settled(redis, keys, "g"))
    assert set(calls.of("g")) == {published[0].event_id, published[2].event_id, later.event_id}
    assert stolen[1].decode() in caplog.text
    assert await redis.xlen(keys.deadletter("g")) == 0
