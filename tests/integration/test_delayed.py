"""Delayed events against a real redis-server: appended at their due time (never before) to their partition's
stream, once, seen by every group; deduplicated, cancellable, bounded by max_delayed; traced from the publish to
every handler run; moved by any number of movers once each; and the index that lets an idle worker poll one key is
rebuilt when lost, and costs the same whatever the number of partitions."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from streamproc import App, BacklogFull, Context, Event, InvalidEvent, Outgoing, SyncPublisher, partition_of
from streamproc.keys import PartitionKeys, delayed_index
from streamproc.observe.metrics import StreamStateCollector
from streamproc.publish.delayed import pack_entry
from streamproc.redis.errors import FatalRedisError
from streamproc.testing import drain
from streamproc.worker.promote import POLL_PARTITIONS, SWEEP_EVERY, Promoter, promote
from tests.helpers import appended_ids, redis_ms, wait_for
from tests.inproc import Calls, fast_settings, handler_recording, open_app, partition, running
from tests.otel import Spans, parent_id, recorded_spans
from tests.redis_server import RedisServer


class Reminder(Event, tag="reminder.due"):
    user_id: str


class Sharded(Event, tag="sharded.due"):
    partitions: ClassVar[int] = 4
    partition_key: ClassVar[str | None] = "user_id"

    user_id: str


class Urgent(Event, tag="urgent.due"):
    partitions: ClassVar[int] = 2
    partition_key: ClassVar[str | None] = "user_id"
    priorities: ClassVar[int] = 3

    user_id: str


class WideA(Event, tag="wide.a"):
    partitions: ClassVar[int] = 200
    partition_key: ClassVar[str | None] = "k"

    k: str


class WideB(WideA, tag="wide.b"):
    pass


def fatal(error: FatalRedisError) -> None:
    raise AssertionError(f"the mover stopped: {error}")


async def nothing_waits(redis: aioredis.Redis, partitions: list[PartitionKeys]) -> bool:
    """No delayed event waits in any of these partitions (moved, or cancelled)."""
    for keys in partitions:
        if await redis.zcard(keys.delayed()) or await redis.hlen(keys.delayed_entries()):
            return False
    return True


async def test_not_handled_before_due_and_once_by_each_group(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    handled_at: dict[tuple[str, str], list[int]] = {}

    def recorder(group: str):  # type: ignore[no-untyped-def]
        async def handle(event: Reminder, ctx: Context) -> None:
            handled_at.setdefault((group, ctx.event_id), []).append(await redis_ms(ctx.redis))
        return handle

    async with open_app(ns, redis_url) as app:
        app.handler(Reminder, group="email")(recorder("email"))
        app.handler(Reminder, group="push")(recorder("push"))
        stream = partition(app, Reminder).stream
        async with running(app) as worker:
            published = await app.publish_many([Outgoing(Reminder(user_id=f"u{i}"), delay=0.6) for i in range(20)])
            assert all(p.scheduled and not p.appended and p.stream_id == "" and p.due_ms for p in published)
            assert await redis.xlen(stream) == 0, "no group may see a delayed event before it is due"
            await worker.wait_for(lambda: len(handled_at) == 40, timeout=10)
            entries = {f[b"event_id"].decode(): int(i.split(b"-")[0]) for i, f in await redis.xrange(stream)}
        for p in published:
            assert p.due_ms is not None
            assert entries[p.event_id] >= p.due_ms, "appended before its due time"
            for group in ("email", "push"):
                runs = handled_at[(group, p.event_id)]
                assert len(runs) == 1, f"{p.event_id} ran {len(runs)} times in {group}"
                assert runs[0] >= p.due_ms, f"{p.event_id} handled {p.due_ms - runs[0]} ms early in {group}"
        assert await appended_ids(redis, stream) == Counter({p.event_id: 1 for p in published})


async def test_at_delay_zero_and_invalid_due_times(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    async with open_app(ns, redis_url) as app:
        app.register(Reminder, groups=["g"])
        soon = datetime.now(UTC) + timedelta(seconds=30)
        at = await app.publish(Reminder(user_id="u1"), at=soon)
        assert at.scheduled and at.due_ms == pytest.approx(soon.timestamp() * 1000, abs=1)
        later = await app.publish(Reminder(user_id="u1"), delay=timedelta(minutes=5))
        assert later.scheduled and later.due_ms is not None and later.due_ms > at.due_ms
        now = await app.publish(Reminder(user_id="u1"), delay=0)
        past = await app.publish(Reminder(user_id="u1"), at=datetime.now(UTC) - timedelta(hours=1))
        assert now.appended and past.appended and now.stream_id and not now.scheduled
        assert await redis.xlen(partition(app, Reminder).stream) == 2
        with pytest.raises(InvalidEvent, match="naive datetime"):
            await app.publish(Reminder(user_id="u1"), at=datetime(2030, 1, 1, 9))
        with pytest.raises(InvalidEvent, match="not both"):
            await app.publish(Reminder(user_id="u1"), delay=1.0, at=soon)
        with pytest.raises(InvalidEvent, match="finite"):
            await app.publish(Reminder(user_id="u1"), delay=float("nan"))
        assert await redis.zcard(partition(app, Reminder).delayed()) == 2


async def test_producer_given_id_is_scheduled_once(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(Reminder, group="g")(handler_recording(calls))
        keys = partition(app, Reminder)
        first = await app.publish(Reminder(user_id="u1"), event_id="remind-u1", delay=0.4)
        again = await app.publish(Reminder(user_id="u1"), event_id="remind-u1", delay=30)
        plain = await app.publish(Reminder(user_id="u1"), event_id="remind-u1")
        assert first.scheduled and not again.scheduled and again.due_ms == first.due_ms
        assert not plain.appended, "a plain publish of an id that waits is deduplicated too"
        assert await redis.zcard(keys.delayed()) == 1
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.total("g") == 1)
            after = await app.publish(Reminder(user_id="u1"), event_id="remind-u1", delay=0.1)
            assert not after.scheduled and not after.appended, "appended within the dedup window: not again"
            sentinel = await app.publish(Reminder(user_id="u2"), delay=0.2)
            await worker.wait_for(lambda: calls.of("g")[sentinel.event_id] == 1)
        assert calls.of("g") == Counter({"remind-u1": 1, sentinel.event_id: 1})
        assert await appended_ids(redis, keys.stream) == Counter({"remind-u1": 1, sentinel.event_id: 1})


async def test_cancel_before_and_after_due(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(Reminder, group="g")(handler_recording(calls))
        keys = partition(app, Reminder)
        await app.publish(Reminder(user_id="u1"), event_id="c1", delay=0.3)
        generated = await app.publish(Reminder(user_id="u1"), delay=0.3)
        kept = await app.publish(Reminder(user_id="u2"), delay=0.5)
        assert await app.cancel_delayed(Reminder, "c1") is True
        assert await app.cancel_delayed(Reminder, generated.event_id) is True
        assert await app.cancel_delayed(Reminder, "c1") is False, "cancelled already"
        assert await app.cancel_delayed(Reminder, "never-scheduled") is False
        again = await app.publish(Reminder(user_id="u1"), event_id="c1", delay=0.4)
        assert again.scheduled, "a cancelled id may be scheduled again (its dedup marker went with it)"
        assert await app.cancel_delayed(Reminder, "c1") is True
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.of("g")[kept.event_id] == 1)  # due after both cancelled ones
            assert await app.cancel_delayed(Reminder, kept.event_id) is False, "appended already"
        assert calls.of("g") == Counter({kept.event_id: 1}), "a cancelled event must never run"
        assert await redis.zcard(keys.delayed()) == 0 and await redis.hlen(keys.delayed_entries()) == 0


async def test_max_delayed_refuses_at_publish_time(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    async with open_app(ns, redis_url, max_delayed=5) as app:
        app.register(Reminder, groups=["g"])
        keys = partition(app, Reminder)
        await app.publish_many([Outgoing(Reminder(user_id=f"u{i}"), delay=60) for i in range(4)])
        with pytest.raises(BacklogFull) as full:
            await app.publish_many([Outgoing(Reminder(user_id=f"v{i}"), delay=60) for i in range(2)])
        assert full.value.limit == 5 and full.value.backlog == 4 and full.value.retriable
        assert await redis.zcard(keys.delayed()) == 4, "a partition's events are scheduled all or none"
        await app.publish(Reminder(user_id="w"), delay=60)
        with pytest.raises(BacklogFull):
            await app.publish(Reminder(user_id="x"), delay=60)
        assert (await app.publish(Reminder(user_id="now"))).appended, "appending now is not limited by the store"
        assert await redis.zcard(keys.delayed()) == 5
        app.register(Sharded, groups=["g"])
        full_one, other = await asyncio.gather(app.publish(Reminder(user_id="y"), delay=60),
                                               app.publish(Sharded(user_id="z"), delay=60), return_exceptions=True)
        assert isinstance(full_one, BacklogFull), "concurrent publishes: only the full partition's call fails"
        assert not isinstance(other, BaseException) and other.scheduled


async def test_an_atomic_batch_with_delayed_events_is_refused_and_sends_nothing(ns: str, redis_url: str,
                                                                                 redis: aioredis.Redis) -> None:
    """Appends and schedules cannot be one all-or-none step (a full partition's script replies inside the MULTI
    while the others commit): such a batch is refused before anything is sent, by both publishers."""
    async with open_app(ns, redis_url) as app:
        app.register(Reminder, Sharded, groups=["g"])
        keys = partition(app, Reminder)
        batch = [Outgoing(Reminder(user_id="now")), Outgoing(Sharded(user_id="later"), delay=60)]
        with pytest.raises(InvalidEvent, match="atomic"):
            await app.publish_many(batch, atomic=True)
        with SyncPublisher(app) as sync, pytest.raises(InvalidEvent, match="atomic"):
            await asyncio.to_thread(sync.publish_many, batch, atomic=True)
        assert await redis.exists(keys.stream) == 0, "nothing appended"
        assert await redis.zcard(delayed_index(ns)[0]) == 0, "nothing scheduled"
        done = await app.publish_many([Outgoing(Reminder(user_id="a")), Outgoing(Reminder(user_id="b"))],
                                      atomic=True)
        assert [p.appended for p in done] == [True, True], "an atomic batch of events due now still works"
        assert len(await app.publish_many(batch)) == 2, "without atomic the mixed batch is sent"


async def test_a_failed_index_touch_does_not_fail_the_publish(ns: str, redis_url: str, redis: aioredis.Redis,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The events are scheduled before the touch: raising then would make a retry with generated ids schedule them
    twice. The publish stands, warns, and the workers index the partition themselves."""
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(Reminder, group="g")(handler_recording(calls))
        keys = partition(app, Reminder)
        await redis.set(delayed_index(ns)[0], "not a sorted set")  # the touch script fails with WRONGTYPE
        first = await app.publish(Reminder(user_id="u1"), delay=0.05)
        with SyncPublisher(app) as sync:
            second = await asyncio.to_thread(sync.publish, Reminder(user_id="u2"), delay=0.05)
        assert first.scheduled and second.scheduled
        assert await redis.zcard(keys.delayed()) == 2, "each scheduled once"
        assert sum("index" in r.getMessage() and "WRONGTYPE" in r.getMessage() for r in caplog.records) == 2
        await redis.delete(delayed_index(ns)[0])
        async with running(app) as worker:  # its start rebuild (or its sweep) indexes the partition
            await worker.wait_for(lambda: calls.total("g") == 2)
        assert calls.of("g") == Counter({first.event_id: 1, second.event_id: 1})


async def test_the_sweep_covers_partitions_of_types_the_app_does_not_declare(ns: str, redis_url: str,
                                                                             redis: aioredis.Redis) -> None:
    """A partition the index named to a mover is swept by it too: a lost touch there is found within one turn of
    the sweep (SWEEP_EVERY polls per partition it sweeps)."""
    async with open_app(ns, redis_url) as mover_app, open_app(ns, redis_url) as producer:
        mover_app.register(Reminder, groups=["g"])
        producer.register(Sharded, groups=["g"])
        promoter = Promoter(mover_app)
        event = Sharded(user_id="u")
        keys = partition(producer, Sharded, partition_of(event))
        await producer.publish(event, delay=0.01)

        async def moved(count: int) -> bool:
            await promoter.step()
            return bool(await redis.xlen(keys.stream) == count)

        await wait_for(lambda: moved(1), message="moved by the other app's mover")
        assert keys.member in promoter.sweep_order
        await redis.set(delayed_index(ns)[0], "not a sorted set")
        await producer.publish(Sharded(user_id="u"), delay=0.01)  # its touch fails
        await redis.delete(delayed_index(ns)[0])
        bound = len(promoter.sweep_order) * SWEEP_EVERY + 1
        polls = 1
        while not await moved(2):
            assert polls < bound, f"not swept within {bound} polls"
            polls += 1


async def test_partitioned_type_lands_in_its_partition(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(Sharded, group="g")(handler_recording(calls))
        events = [Sharded(user_id=f"user{i}") for i in range(12)]
        published = await app.publish_many([Outgoing(e, delay=0.3) for e in events])
        parts = [partition_of(e) for e in events]
        assert len(set(parts)) > 1
        for p, part in zip(published, parts, strict=True):
            assert p.stream == partition(app, Sharded, part).stream
        cancel_by_key = await app.publish(Sharded(user_id="user99"), delay=0.3)
        cancel_any = await app.publish(Sharded(user_id="user98"), delay=0.3)
        assert await app.cancel_delayed(Sharded, cancel_by_key.event_id, partition_key="user99") is True
        assert await app.cancel_delayed(Sharded, cancel_any.event_id) is True, "found in any partition"
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.total("g") == 12)
        for p, part in zip(published, parts, strict=True):
            assert (await appended_ids(redis, partition(app, Sharded, part).stream))[p.event_id] == 1
        assert calls.of("g") == Counter({p.event_id: 1 for p in published})


async def test_consumer_spans_join_the_publishers_trace(ns: str, redis_url: str) -> None:
    spans: Spans = recorded_spans()
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(Reminder, group="g")(handler_recording(calls))
        app.handler(Reminder, group="h")(handler_recording(calls))
        with trace.get_tracer("test").start_as_current_span("request") as request:
            published = await app.publish(Reminder(user_id="u1"), delay=0.2)
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.total("g") + calls.total("h") == 2)
            await wait_for(lambda: len(spans.of_kind(SpanKind.CONSUMER)) == 2)
    producer = next(s for s in spans.of_kind(SpanKind.PRODUCER)
                    if (s.attributes or {}).get("messaging.message.id") == published.event_id)
    assert producer.context.trace_id == request.get_span_context().trace_id
    for consumer in spans.of_kind(SpanKind.CONSUMER):
        assert consumer.context.trace_id == producer.context.trace_id
        assert parent_id(consumer) == producer.context.span_id


async def test_many_movers_append_each_due_event_once(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    """Five movers (each with its own connections) on 5,000 events due at once, small batches so they interleave."""
    apps = [App(ns, settings=fast_settings(redis_url, delayed_batch=50)) for _ in range(5)]
    try:
        for app in apps:
            app.register(Sharded, groups=["g"])
        published = await apps[0].publish_many([Outgoing(Sharded(user_id=f"u{i}"), delay=0.05)
                                                for i in range(5_000)])
        stopping = asyncio.Event()
        movers = [asyncio.create_task(promote(app, stopping, fatal)) for app in apps]
        await wait_for(lambda: nothing_waits(redis, apps[0].topology.route(Sharded).partitions), timeout=30)
        stopping.set()
        await asyncio.gather(*movers)
        counts: Counter[str] = Counter()
        for keys in apps[0].topology.route(Sharded).partitions:
            counts += await appended_ids(redis, keys.stream)
        assert counts == Counter({p.event_id: 1 for p in published})
    finally:
        for app in apps:
            await app.aclose()


async def test_lost_index_is_rebuilt_at_worker_start(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(Sharded, group="g")(handler_recording(calls))
        published = await app.publish_many([Outgoing(Sharded(user_id=f"u{i}"), delay=0.1) for i in range(8)])
        assert await redis.delete(*delayed_index(ns)) == 2  # as if Redis lost the index but not the partitions
        waiting = {partition_of(Sharded(user_id=f"u{i}")) for i in range(8)}
        assert await Promoter(app).rebuild() == len(waiting)  # what every worker does at start
        assert await redis.zcard(delayed_index(ns)[0]) == len(waiting)
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.total("g") == 8)
        assert calls.of("g") == Counter({p.event_id: 1 for p in published})


async def test_vanished_stream_gets_its_groups_before_the_move(ns: str, redis_url: str, redis: aioredis.Redis,
                                                               ) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(Reminder, group="g")(handler_recording(calls))
        keys = partition(app, Reminder)
        published = await app.publish(Reminder(user_id="u1"), delay=0.3)
        assert await redis.delete(keys.stream, keys.checkpoints()) == 2  # Redis lost the stream, not the store
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.total("g") == 1)
        assert calls.of("g") == Counter({published.event_id: 1})
        assert [g["name"] for g in await redis.xinfo_groups(keys.stream)] == [b"g"]


async def test_entries_that_cannot_be_appended_are_set_aside_and_the_rest_moves(ns: str, redis_url: str,
                                                                                redis: aioredis.Redis) -> None:
    """Hand-written bad entries, due before good ones: each is moved to the partition's dead stream with its
    reason (once), the good ones behind them are appended, and the mover keeps going (it used to stop every worker,
    or log an entry naming another slot's stream 20 times a second and block the partition)."""
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(Reminder, group="g")(handler_recording(calls))
        keys = partition(app, Reminder)
        wrong = f"{keys.stream}:string"  # a key of this slot holding a string: XADD fails with WRONGTYPE
        await redis.set(wrong, "x")
        fields = {b"event_id": b"bad", b"data": b""}
        bad = {"garbled": b"no netstrings", "odd": pack_entry(keys.stream, fields) + b"4:more",
               "elsewhere": pack_entry(f"{ns}:ev:{{elsewhere:0}}", fields), "wrongtype": pack_entry(wrong, fields)}
        for i, (event_id, packed) in enumerate(bad.items()):
            await redis.hset(keys.delayed_entries(), event_id, packed)
            await redis.zadd(keys.delayed(), {event_id: i + 1})  # due long ago, before the good ones
        good = await app.publish_many([Outgoing(Reminder(user_id=f"u{i}"), delay=0.05) for i in range(3)])
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.total("g") == 3)
            dead = await redis.xrange(keys.delayed_dead())
            late = await app.publish(Reminder(user_id="late"), delay=0.05)
            await worker.wait_for(lambda: calls.total("g") == 4, message="the mover goes on after them")
        assert calls.of("g") == Counter({p.event_id: 1 for p in [*good, late]})
        reasons = {f[b"event_id"].decode(): f[b"reason"].decode() for _, f in dead}
        assert len(dead) == len(bad) and set(reasons) == set(bad), reasons
        assert reasons["garbled"] == "unreadable entry" and "another slot" in reasons["elsewhere"]
        assert "odd" in reasons["odd"] and "WRONGTYPE" in reasons["wrongtype"], reasons
        assert {f[b"entry"] for _, f in dead} == set(bad.values()), "each is kept as it was stored"
        assert await nothing_waits(redis, [keys]) and await redis.xlen(keys.delayed_dead()) == len(bad)
        collector = StreamStateCollector(app.topology, redis_url)
        try:
            families = {f.name: f.samples for f in await asyncio.to_thread(lambda: list(collector.collect()))}
        finally:
            collector.close()
        assert [(s.labels, s.value) for s in families["streamproc_delayed_dead_entries"]] == [
            ({"type": "reminder.due", "partition": "0"}, len(bad))]


async def test_more_due_partitions_than_one_poll_returns_are_polled_again_at_once(ns: str, redis_url: str,
                                                                                  redis: aioredis.Redis) -> None:
    async with open_app(ns, redis_url) as app:
        app.register(WideA, groups=["g"])
        keys = {partition_of(WideA(k=str(i))): str(i) for i in reversed(range(5000))}
        await app.publish_many([WideA(k=k) for k in keys.values()])  # the streams exist: no move has to make one
        await app.publish_many([Outgoing(WideA(k=k), delay=0.01) for k in keys.values()])
        promoter = Promoter(app)

        async def all_due() -> bool:  # by Redis's clock, as the mover sees it
            return bool(await redis.zcount(delayed_index(ns)[0], 0, await redis_ms(redis)) == len(keys))

        await wait_for(all_due)
        # 200 due partitions: two full lists of POLL_PARTITIONS, each followed at once by the next poll, then a poll
        # that finds nothing due and pauses as usual.
        pauses = [await promoter.step() for _ in range(3)]
        assert len(keys) == 2 * POLL_PARTITIONS and pauses[:2] == [0.0, 0.0] and pauses[2] > 0, pauses
        assert await nothing_waits(redis, [partition(app, WideA, p) for p in keys])


async def test_first_delayed_event_of_a_type_without_groups_makes_its_stream_quietly(
        ns: str, redis_url: str, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    async with open_app(ns, redis_url) as app:
        app.register(Reminder)  # no group declared anywhere: the move makes the stream, as a plain publish would
        keys = partition(app, Reminder)
        await app.publish(Reminder(user_id="u"), delay=0.01)
        promoter = Promoter(app)

        async def moved() -> bool:
            await promoter.step()
            return bool(await redis.xlen(keys.stream) == 1)

        await wait_for(moved)
    assert not [r.getMessage() for r in caplog.records if "vanished" in r.getMessage()]


async def test_idle_cost_does_not_grow_with_partitions(ns: str, fresh_redis: RedisServer) -> None:
    """Redis commands per poll of an idle mover (nothing due; two turns of the sweep included), every command
    counted, a script's inner ones too: the same for 1 partition and for 400, and the polls are as far apart."""
    polls = 2 * SWEEP_EVERY

    async def commands_per_poll(app: App) -> float:
        promoter = Promoter(app)
        await promoter.rebuild()  # what a worker does at start (its cost grows with partitions, once)
        await promoter.step()  # and its first poll loads the script
        client = aioredis.Redis.from_url(fresh_redis.url)
        try:
            await client.config_resetstat()
            pauses = {await promoter.step() for _ in range(polls)}
            assert pauses == {app.settings.delayed_poll_ms / 1000}, f"idle pauses {pauses}"
            stats = await client.info("commandstats")
            counted = {name: int(v["calls"]) for name, v in stats.items()
                       if name not in ("cmdstat_info", "cmdstat_config|resetstat")}
            print(app.name, counted)
            return sum(counted.values()) / polls
        finally:
            await client.aclose()

    async with open_app(ns, fresh_redis.url) as small, open_app(ns + "w", fresh_redis.url) as wide:
        small.register(Reminder, groups=["g"])
        await small.publish(Reminder(user_id="u"), delay=3600)  # waiting, not due
        wide.register(WideA, WideB, groups=["g"])
        # One waiting event in every partition, as in the small app's one: each sweep finds one to index.
        keys = {partition_of(WideA(k=str(i))): str(i) for i in reversed(range(5000))}
        assert len(keys) == WideA.partitions
        await wide.publish_many([Outgoing(e(k=k), delay=3600) for k in keys.values() for e in (WideA, WideB)])
        one, many = await commands_per_poll(small), await commands_per_poll(wide)
    print(f"idle commands per poll: {one} for 1 partition, {many} for 400")
    assert many == one, f"idle commands per poll: {one} for 1 partition, {many} for 400"
    assert one <= 8, f"idle commands per poll: {one}"


async def test_sync_publisher_schedules_and_cancels(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(Reminder, group="g")(handler_recording(calls))
        with SyncPublisher(app) as sync:
            first = await asyncio.to_thread(sync.publish, Reminder(user_id="u1"), event_id="s1", delay=0.3)
            again = await asyncio.to_thread(sync.publish, Reminder(user_id="u1"), event_id="s1", delay=0.3)
            dropped, now = await asyncio.to_thread(sync.publish_many, [
                Outgoing(Reminder(user_id="u2"), delay=timedelta(seconds=0.3)), Outgoing(Reminder(user_id="u3"))])
            assert first.scheduled and not again.scheduled and again.due_ms == first.due_ms
            assert dropped.scheduled and now.appended and now.stream_id
            assert await asyncio.to_thread(sync.cancel_delayed, Reminder, dropped.event_id) is True
            assert await asyncio.to_thread(sync.cancel_delayed, Reminder, dropped.event_id) is False
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.total("g") == 2)
        assert calls.of("g") == Counter({"s1": 1, now.event_id: 1})
        assert await appended_ids(redis, partition(app, Reminder).stream) == Counter({"s1": 1, now.event_id: 1})


async def test_a_delayed_event_lands_in_the_lane_it_was_published_to(ns: str, redis_url: str,
                                                                   redis: aioredis.Redis) -> None:
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(Urgent, group="g")(handler_recording(calls))
        route = app.topology.route(Urgent)
        events = [(Urgent(user_id=f"u{i}"), i % 3) for i in range(9)]
        published = await app.publish_many([Outgoing(e, priority=lane, delay=0.2) for e, lane in events])
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.total("g") == 9)
        for (event, lane), p in zip(events, published, strict=True):
            stream = route.keys_for(partition_of(event), lane).stream
            assert p.stream == stream and stream.endswith(f":lane{lane}")
            assert (await appended_ids(redis, stream))[p.event_id] == 1
        assert calls.of("g") == Counter({p.event_id: 1 for p in published})


async def test_drain_makes_delayed_events_due_at_once_or_waits_for_them(ns: str, redis_url: str) -> None:
    """The pytest plugin's drain(): a delayed event (also one a handler publishes) is work left to do."""

    async def follow_up(event: Reminder, ctx: Context) -> None:
        if event.user_id == "first":
            await app.publish(Reminder(user_id="second"), delay=3600)

    async with open_app(ns, redis_url) as app:
        app.handler(Reminder, group="g")(follow_up)
        first = await app.publish(Reminder(user_id="first"), delay=3600)
        done = await drain(app, timeout=10)
        assert done.processed[first.event_id] == 1 and len(done.processed) == 2, "the follow-up ran too"
        soon = await app.publish(Reminder(user_id="soon"), delay=0.3)
        waited = await drain(app, timeout=10, wait_delayed=True)
        assert waited.processed == Counter({soon.event_id: 1})
