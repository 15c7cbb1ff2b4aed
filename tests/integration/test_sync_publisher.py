"""SyncPublisher against a real Redis: from many threads and from forked processes at once, every event lands
exactly once and a worker runs each once; producer-given ids dedup across threads; groups exist before the first
append; the backlog check holds; the entries are the ones App.publish writes."""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from collections.abc import Callable

import msgspec
import pytest
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from streamproc import App, BacklogFull, Context, Event, Outgoing, Published, Settings, SyncPublisher
from tests.helpers import wait_for
from tests.inproc import Calls, handler_recording, open_app, partition, running, settled
from tests.otel import parent_id, recorded_spans
from tests.redis_server import RedisServer

THREADS = 6
PER_THREAD = 150
CHILDREN = 3
PER_CHILD = 120


class Noted(Event, tag="sync.noted"):
    source: str
    n: int


class Sharded(Event, tag="sync.sharded"):
    partitions = 3
    partition_key = "key"
    key: str


_decoder = msgspec.msgpack.Decoder(Noted)


async def stream_pairs(redis: aioredis.Redis, stream: str) -> Counter[tuple[str, int]]:
    """(source, n) of every entry of a stream, counted."""
    counts: Counter[tuple[str, int]] = Counter()
    for _, fields in await redis.xrange(stream):
        event = _decoder.decode(fields[b"data"])
        counts[(event.source, event.n)] += 1
    return counts


def in_threads(count: int, work: Callable[[int], object]) -> list[object]:
    """Run work(i) in `count` threads started together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a publishing thread hung"
    if errors:
        raise errors[0]
    return results


def publish_from_thread(publisher: SyncPublisher, source: str, count: int) -> None:
    """Half one by one, half in batches of 25 (the packed path either way: no event ids given)."""
    half = count // 2
    for n in range(half):
        publisher.publish(Noted(source=source, n=n))
    rest = [Noted(source=source, n=n) for n in range(half, count)]
    for i in range(0, len(rest), 25):
        publisher.publish_many(rest[i : i + 25])


def publish_from_child(publisher: SyncPublisher, child: int) -> None:
    """In a forked child: with event ids (the dedup script's path) and from two threads of its own."""
    def work(t: int) -> None:
        for n in range(t, PER_CHILD, 2):
            publisher.publish(Noted(source=f"child{child}", n=n), event_id=f"child{child}-{n}")

    in_threads(2, work)


async def test_threads_and_forked_children_each_event_once(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    # A long lease: this is not a lease test, and under load the 200 ms test lease would reclaim and rerun events.
    async with open_app(ns, redis_url, lease_ms=10_000) as app:
        calls = Calls()
        app.handler(Noted, group="audit")(handler_recording(calls))
        publisher = SyncPublisher(app)
        publisher.publish(Noted(source="parent", n=-1))  # the parent's pool and caches exist before the forks
        fork = multiprocessing.get_context("fork")
        children = [fork.Process(target=publish_from_child, args=(publisher, c)) for c in range(CHILDREN)]

        def work(i: int) -> None:
            if i == 0:  # forks while the other threads publish, so some may hold the lock or a connection
                for child in children:
                    child.start()
            publish_from_thread(publisher, f"thread{i}", PER_THREAD)

        in_threads(THREADS, work)
        for child in children:
            child.join(timeout=60)
        assert [child.exitcode for child in children] == [0] * CHILDREN
        publisher.close()

        stream = partition(app, Noted).stream
        pairs = await stream_pairs(redis, stream)
        expected = {("parent", -1)} | {(f"thread{i}", n) for i in range(THREADS) for n in range(PER_THREAD)}
        expected |= {(f"child{c}", n) for c in range(CHILDREN) for n in range(PER_CHILD)}
        assert len(expected) == 1 + THREADS * PER_THREAD + CHILDREN * PER_CHILD
        assert set(pairs) == expected
        assert [pair for pair, count in pairs.items() if count != 1] == []
        assert await redis.xlen(stream) == len(expected)

        async with running(app, ["audit"]) as worker:
            await worker.wait_for(lambda: calls.distinct("audit") == len(expected), timeout=30)
            await worker.wait_for(lambda: settled(redis, partition(app, Noted), "audit"))
        assert calls.total("audit") == len(expected)
        assert max(calls.of("audit").values()) == 1


async def test_given_event_ids_are_appended_once_across_threads(ns: str, redis_url: str,
                                                                redis: aioredis.Redis) -> None:
    async with open_app(ns, redis_url) as app:
        app.register(Noted, groups=["audit"])
        ids = [f"order-{n}" for n in range(40)]
        with SyncPublisher(app) as publisher:
            def work(i: int) -> list[Published]:
                out = [publisher.publish(Noted(source=f"thread{i}", n=n), event_id=ids[n]) for n in range(20)]
                return out + publisher.publish_many(
                    [Outgoing(Noted(source=f"thread{i}", n=n), event_id=ids[n]) for n in range(20, 40)])

            results = in_threads(THREADS, work)
        published = [p for batch in results for p in batch]  # type: ignore[attr-defined]
        assert len(published) == THREADS * len(ids)
        appended = Counter(p.event_id for p in published if p.appended)
        assert appended == Counter(dict.fromkeys(ids, 1))
        # Every thread got the stream id of the one append, whether its own call appended or not.
        by_id = {p.event_id: p.stream_id for p in published if p.appended}
        assert all(p.stream_id == by_id[p.event_id] for p in published)
        entries = await redis.xrange(partition(app, Noted).stream)
        assert Counter(fields[b"event_id"].decode() for _, fields in entries) == Counter(dict.fromkeys(ids, 1))


async def test_groups_exist_before_the_first_append_and_entries_match_app_publish(
        ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    async with open_app(ns, redis_url) as app:
        app.register(Sharded, groups={"feeds": "new", "search": "all"})
        with SyncPublisher(app) as publisher:
            sent = publisher.publish_many([Sharded(key=f"k{i}") for i in range(30)], atomic=True)
            one = publisher.publish(Sharded(key="k1"), partition_key="elsewhere")
        async_one = await app.publish(Sharded(key="k1"), partition_key="elsewhere")
        assert one.stream == async_one.stream  # the same routing
        streams = {p.stream for p in sent}
        assert streams == {keys.stream for keys in app.topology.route(Sharded).partitions}
        for stream in streams:
            groups = {g["name"]: g for g in await redis.xinfo_groups(stream)}
            assert sorted(groups) == [b"feeds", b"search"]
            # Made at the stream's start, before the first entry: nothing was skipped.
            assert all(g["last-delivered-id"] == b"0-0" for g in groups.values())
        [(_, sync_fields)] = await redis.xrange(one.stream, min=one.stream_id, max=one.stream_id)
        [(_, async_fields)] = await redis.xrange(async_one.stream, min=async_one.stream_id, max=async_one.stream_id)
        assert sorted(sync_fields) == sorted(async_fields)
        assert sync_fields[b"data"] == async_fields[b"data"]


async def test_backlog_limit_refuses_the_event_past_it(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    async with open_app(ns, redis_url, max_backlog=10) as app:
        app.register(Noted, groups=["audit"])
        with SyncPublisher(app) as publisher:
            publisher.publish_many([Noted(source="a", n=n) for n in range(8)])
            with pytest.raises(BacklogFull) as refused:
                publisher.publish_many([Noted(source="a", n=n) for n in range(8, 11)])
            assert refused.value.backlog == 8 and refused.value.incoming == 3
            publisher.publish_many([Noted(source="a", n=n) for n in range(8, 10)])
            with pytest.raises(BacklogFull):
                publisher.publish(Noted(source="a", n=10))
        assert await redis.xlen(partition(app, Noted).stream) == 10


async def test_a_worker_runs_what_sync_code_published_before_it_started(ns: str, redis_url: str,
                                                                        redis: aioredis.Redis) -> None:
    """Also the App the publisher was made from may be a different object than the worker's (a web process and a
    worker process import the same module)."""
    async with open_app(ns, redis_url) as worker_app:
        calls = Calls()
        worker_app.handler(Noted, group="audit")(handler_recording(calls))
        producer_app = App(ns, settings=worker_app.settings)
        producer_app.handler(Noted, group="audit")(noop)
        with SyncPublisher(producer_app) as publisher:
            for n in range(25):
                publisher.publish(Noted(source="early", n=n))
        async with running(worker_app, ["audit"]) as worker:
            await worker.wait_for(lambda: calls.total("audit") == 25)
            await worker.wait_for(lambda: settled(redis, partition(worker_app, Noted), "audit"))
        assert calls.distinct("audit") == 25


async def noop(event: Noted, ctx: Context) -> None:
    return None


async def test_sync_publish_inside_a_span_carries_its_trace(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    """A Flask or Django request span (here a plain one) is the parent of the sync publish's PRODUCER span."""
    spans = recorded_spans()
    async with open_app(ns, redis_url) as app:
        app.register(Noted, groups=["audit"])
        with SyncPublisher(app) as publisher, trace.get_tracer("tests").start_as_current_span("GET /note") as outer:
            published = publisher.publish(Noted(source="web", n=1))
        [producer] = spans.of_kind(SpanKind.PRODUCER)
        assert parent_id(producer) == outer.get_span_context().span_id
        assert producer.context.trace_id == outer.get_span_context().trace_id
        [(_, fields)] = await redis.xrange(published.stream)
        assert fields[b"traceparent"].decode().split("-")[1] == f"{producer.context.trace_id:032x}"


async def test_closing_the_publisher_closes_its_connections(ns: str, fresh_redis: RedisServer) -> None:
    """close() closes the sockets of the client the publisher made (it owns its pool), not garbage collection."""
    observer = aioredis.Redis.from_url(fresh_redis.url)

    async def clients() -> int:
        return int((await observer.info("clients"))["connected_clients"])

    try:
        alone = await clients()
        app = App(ns, settings=Settings(redis_url=fresh_redis.url))
        app.register(Noted, groups=["audit"])
        publisher = SyncPublisher(app)
        client = publisher.redis  # held, so that garbage collection cannot close its sockets for it
        in_threads(3, lambda i: publisher.publish(Noted(source="close", n=i)))  # a few connections at once
        assert await clients() > alone
        publisher.close()

        async def closed() -> bool:
            return await clients() == alone

        await wait_for(closed, timeout=5, message="the publisher's connections to close")
        assert client.connection_pool is not None
    finally:
        await observer.aclose()
