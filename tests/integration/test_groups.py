"""Consumer groups created where they must start and recreated where they were: the registry of declared groups
beside the streams, producer-only apps declaring the groups they feed, checkpoints, and orphans. Tests count runs
(tests/inproc.py Calls), not sets of ids. Redis losing its data: tests/faults/test_group_positions.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import redis
import redis.asyncio as aioredis

from streamproc import BacklogFull, Context, Event
from streamproc.keys import PartitionKeys
from streamproc.observe.metrics import StreamStateCollector
from streamproc.publish.groups import ensure_groups
from streamproc.publish.inventory import delete_orphans, list_groups
from streamproc.worker.retention import maintain_once, trim_stream
from tests.helpers import wait_for
from tests.inproc import Calls, handler_recording, open_app, partition, running, settled
from tests.integration.test_cli import ROOT, streamproc


class CardAdded(Event, tag="card.added"):
    card_id: str
    curator_id: str = "u1"


def cards(n: int, prefix: str = "c") -> list[CardAdded]:
    return [CardAdded(card_id=f"{prefix}{i}") for i in range(n)]


async def noop(event: Event, ctx: Context) -> None:
    return None


async def _group_names(redis: aioredis.Redis, keys: PartitionKeys) -> set[str]:
    return {g["name"].decode() for g in await redis.xinfo_groups(keys.stream)}


# A: declared groups, recorded beside the streams -------------------------------------------------------------------


async def test_producer_only_app_declares_the_groups_it_feeds(ns: str, redis_url: str,
                                                              redis: aioredis.Redis) -> None:
    """The issue's first scenario: a producer-only app publishes before any worker ran; the group created later
    (start="new") used to start at '$' and never saw those events."""
    calls = Calls()
    async with open_app(ns, redis_url) as producer:
        producer.register(CardAdded, groups=["notifications"])
        published = await producer.publish_many(cards(50))
        keys = partition(producer, CardAdded)
        assert await _group_names(redis, keys) == {"notifications"}
        assert await redis.hgetall(keys.groups()) == {b"notifications": b"new"}
    async with open_app(ns, redis_url) as workers:
        workers.handler(CardAdded, group="notifications", start="new")(handler_recording(calls))
        async with running(workers) as worker:
            await worker.wait_for(lambda: calls.total("notifications") == 50)
            await worker.wait_for(lambda: settled(redis, keys, "notifications"))
    assert calls.of("notifications") == {p.event_id: 1 for p in published}


async def test_a_bare_producer_creates_the_groups_the_registry_declares(ns: str, redis_url: str,
                                                                        redis: aioredis.Redis) -> None:
    """A producer that declares nothing still creates every group some app declared on the stream (here: a group
    whose worker ran once, and which an operator destroyed since): its events are not missed."""
    calls = Calls()
    async with open_app(ns, redis_url) as workers:
        workers.handler(CardAdded, group="g", start="new")(handler_recording(calls))
        async with running(workers) as worker:
            first = await workers.publish_many(cards(5, "first"))
            await worker.wait_for(lambda: calls.total("g") == 5)
        keys = partition(workers, CardAdded)
        assert await redis.xgroup_destroy(keys.stream, "g") == 1
        async with open_app(ns, redis_url) as producer:
            producer.register(CardAdded)
            later = await producer.publish_many(cards(7, "later"))
            assert await _group_names(redis, keys) == {"g"}
        async with running(workers) as worker:
            await worker.wait_for(lambda: calls.total("g") >= 12)
            await worker.wait_for(lambda: settled(redis, keys, "g"))
    runs = calls.of("g")
    assert {p.event_id: runs[p.event_id] for p in later} == {p.event_id: 1 for p in later}
    # The group came back at its checkpoint (its creation point, or where maintenance saw it): the 5 it had
    # processed may run again, at most once each.
    assert all(runs[p.event_id] in (1, 2) for p in first)


async def test_registry_start_options_and_declarations(ns: str, redis_url: str, redis: aioredis.Redis,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    async with open_app(ns, redis_url) as one:
        one.handler(CardAdded, group="feeds", start="all")(noop)
        await one.publish(CardAdded(card_id="x"))
        keys = partition(one, CardAdded)
    async with open_app(ns, redis_url) as two:
        two.register(CardAdded, groups={"feeds": "new", "search": "all"})
        with caplog.at_level(logging.WARNING, logger="streamproc.publish.groups"):
            await two.publish(CardAdded(card_id="y"))
    assert await redis.hgetall(keys.groups()) == {b"feeds": b"all", b"search": b"all"}, "the first declaration stays"
    assert any("start=all before" in r.getMessage() for r in caplog.records)
    assert {m for m, _ in await redis.zrange(keys.declared(), 0, -1, withscores=True)} == {b"feeds", b"search"}
    assert await _group_names(redis, keys) == {"feeds", "search"}
    search = next(g for g in await redis.xinfo_groups(keys.stream) if g["name"] == b"search")
    assert search["lag"] == 2, "start='all' on a stream with history: it reads what is retained"


async def test_ensuring_existing_groups_writes_nothing(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="g")(noop)
        await app.publish(CardAdded(card_id="x"))
        keys = partition(app, CardAdded)
    before = await _dirty(redis)
    async with open_app(ns, redis_url) as again:  # a new process: its publisher ensures the groups again
        again.handler(CardAdded, group="g")(noop)
        await ensure_groups(again.redis, [(keys.stream, "g", "new")])
    assert await _dirty(redis) == before, "no write when every group exists and is registered"


async def test_a_running_apps_declarations_stay_fresh(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    """A declaration older than a day is refreshed when the app ensures its groups again (a publisher does daily,
    a worker at every maintenance pass), so the groups of an app that still runs never become orphans."""
    async with open_app(ns, redis_url) as app:
        app.register(CardAdded, groups=["feeds"])
        await app.publish(CardAdded(card_id="x"))
        keys = partition(app, CardAdded)
        await redis.zadd(keys.declared(), {"feeds": 1})  # declared long ago
        await ensure_groups(app.redis, [(keys.stream, "feeds", "new")])
        assert (await redis.zscore(keys.declared(), "feeds") or 0) > 1_000_000_000_000
        await redis.zadd(keys.declared(), {"feeds": 1})
        await maintain_once(app, "me")
        assert (await redis.zscore(keys.declared(), "feeds") or 0) > 1_000_000_000_000


async def _dirty(redis: aioredis.Redis) -> int:
    """Writes the server has applied since its last save (rdb_changes_since_last_save)."""
    return int((await redis.info("persistence"))["rdb_changes_since_last_save"])


# B: a group that vanished while its stream did not -----------------------------------------------------------------


async def test_destroyed_group_is_recreated_at_its_checkpoint(ns: str, redis_url: str, redis: aioredis.Redis,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """XGROUP DESTROY under a running worker, mid-processing: the group comes back at the checkpoint maintenance
    recorded, so only entries after it run again (bounded by the checkpoint's lag), never the whole history."""
    calls = Calls()
    # A long lease: on a loaded machine a 200 ms lease lets finished entries whose ack is still queued be reclaimed
    # and run again, duplicates that have nothing to do with the group's recreation.
    async with open_app(ns, redis_url, trim_interval_ms=50, lease_ms=30_000) as app:
        app.handler(CardAdded, group="g", concurrency=20)(handler_recording(calls))
        old = await app.publish_many(cards(1000, "old"))
        keys = partition(app, CardAdded)
        ids = [p.stream_id for p in old]
        async with running(app) as worker:
            await worker.wait_for(lambda: calls.distinct("g") >= 600)
            await worker.wait_for(lambda: _checkpoint(redis, keys, "g"))
            checkpoint = await _checkpoint(redis, keys, "g")
            with caplog.at_level(logging.ERROR, logger="streamproc.publish.groups"):
                assert await redis.xgroup_destroy(keys.stream, "g") == 1
                new = await app.publish_many(cards(100, "new"))
                await worker.wait_for(lambda: all(calls.of("g")[p.event_id] for p in new), timeout=20)
                await worker.wait_for(lambda: settled(redis, keys, "g"))
        runs = calls.of("g")
        bound = sum(1 for i in ids if _after(i, checkpoint))  # old entries after the checkpoint we read
        reruns = sum(runs[p.event_id] - 1 for p in old)
        print(f"destroyed at checkpoint {checkpoint}: {reruns} re-runs of 1000, bound {bound}")
        assert all(runs[p.event_id] >= 1 for p in old), "nothing lost"
        assert reruns <= bound < 1000
        assert sum(runs[p.event_id] for p in new) == 100, "new events all run, once each"
        assert any("checkpoint" in r.getMessage() and "may run a second time" in r.getMessage()
                   for r in caplog.records if r.levelno == logging.ERROR)


async def _checkpoint(redis: aioredis.Redis, keys: PartitionKeys, group: str) -> str | None:
    value = await redis.hget(keys.checkpoints(), group)
    return value.decode() if value and value != b"0-0" else None


def _after(entry_id: str, checkpoint: str | None) -> bool:
    if checkpoint is None:
        return True
    a, b = (tuple(int(x) for x in i.split("-")) for i in (entry_id, checkpoint))
    return a > b


# C: orphans --------------------------------------------------------------------------------------------------------


async def _orphan_old_group(ns: str, redis_url: str, redis: aioredis.Redis) -> PartitionKeys:
    """Version 1 declared "old" and "g"; "old" read nothing; then nobody declared it for longer than the window."""
    async with open_app(ns, redis_url) as v1:
        v1.handler(CardAdded, group="old")(noop)
        v1.handler(CardAdded, group="g")(noop)
        await v1.publish_many(cards(40, "v1"))
        keys = partition(v1, CardAdded)
    await redis.zadd(keys.declared(), {"old": 0})  # last declared at the epoch: a week and more ago
    return keys


async def test_orphan_group_holds_back_neither_trimming_nor_backpressure(ns: str, redis_url: str,
                                                                         redis: aioredis.Redis,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    keys = await _orphan_old_group(ns, redis_url, redis)
    calls = Calls()
    async with open_app(ns, redis_url, max_backlog=50, retention_ms=0, retention_max_length=0) as v2:
        v2.handler(CardAdded, group="g")(handler_recording(calls))
        async with running(v2) as worker:
            await worker.wait_for(lambda: calls.total("g") == 40)
            await worker.wait_for(lambda: settled(redis, keys, "g"))
            # 40 unread by "old" would count against 50; 40 more are accepted because "old" is an orphan.
            await v2.publish_many(cards(40, "v2"))
            await worker.wait_for(lambda: calls.total("g") == 80)
            with caplog.at_level(logging.WARNING, logger="streamproc.worker.retention"):
                await worker.wait_for(lambda: _xlen(redis, keys, 0), message="trimmed past the orphan")
                await wait_for(lambda: any("no app declares" in r.getMessage() for r in caplog.records))
        assert "old" in await _group_names(redis, keys), "reported, not deleted"


async def test_a_group_another_app_declares_is_not_an_orphan(ns: str, redis_url: str, redis: aioredis.Redis) -> None:
    """A group of another app (fresh in the registry) holds back trimming and counts toward the backlog, even for
    an app that knows nothing of it."""
    async with open_app(ns, redis_url) as other:
        other.register(CardAdded, groups=["theirs"])
        await other.publish_many(cards(30))
        keys = partition(other, CardAdded)
    async with open_app(ns, redis_url, max_backlog=40, retention_ms=0, retention_max_length=0) as app:
        app.handler(CardAdded, group="mine", start="all")(noop)
        await ensure_groups(app.redis, [(keys.stream, "mine", "all")])
        await app.redis.xreadgroup("mine", "c", {keys.stream: ">"})  # read everything
        await maintain_once(app, "me")
        assert await redis.xlen(keys.stream) == 30, "'theirs' has read nothing: nothing trimmed"
        await app.publish_many(cards(10, "more"))
        with pytest.raises(BacklogFull) as refused:
            await app.publish(CardAdded(card_id="one-too-many"))
        assert refused.value.backlog == 40, "'theirs' counts: 40 unread"


async def _xlen(redis: aioredis.Redis, keys: PartitionKeys, n: int) -> bool:
    return int(await redis.xlen(keys.stream)) == n


async def test_orphans_are_listed_and_deleted_only_when_asked(ns: str, redis_url: str,
                                                              redis: aioredis.Redis) -> None:
    keys = await _orphan_old_group(ns, redis_url, redis)
    async with open_app(ns, redis_url) as v2:
        v2.handler(CardAdded, group="g")(noop)
        await v2.redis.xreadgroup("old", "c", {keys.stream: ">"}, count=3)  # "old" holds 3 pending entries
        await redis.zadd(keys.retry("old"), {"1-0": 1})
        rows = {r.group: r for r in await list_groups(v2.redis, v2.topology)}
        assert {g: r.status for g, r in rows.items()} == {"g": "declared", "old": "orphan"}
        assert (rows["old"].exists, rows["old"].pending, rows["old"].lag) == (True, 3, 37)

        state = StreamStateCollector(v2.topology, redis_url)
        try:
            [family] = [f for f in state.collect() if f.name == "streamproc_orphan_groups"]
            assert [(s.labels["stream"], s.value) for s in family.samples] == [(keys.stream, 1)]
        finally:
            state.redis.close()

        deleted = await delete_orphans(v2.redis, v2.topology)
        assert [r.group for r in deleted] == ["old"]
        assert await _group_names(redis, keys) == {"g"}
        assert b"old" not in await redis.hkeys(keys.groups())
        assert await redis.exists(keys.retry("old")) == 0
        assert await trim_stream(redis, keys, retention_ms=0, max_length=0) == 0, "'g' has read nothing"


async def test_delete_orphans_keeps_a_group_declared_meanwhile(ns: str, redis_url: str,
                                                               redis: aioredis.Redis) -> None:
    keys = await _orphan_old_group(ns, redis_url, redis)
    async with open_app(ns, redis_url) as v2:
        v2.handler(CardAdded, group="g")(noop)
        # "old"'s worker starts again (an older version still running): it declares "old" again.
        async with open_app(ns, redis_url) as v1:
            v1.handler(CardAdded, group="old")(noop)
            await maintain_once(v1, "v1")
        assert await delete_orphans(v2.redis, v2.topology) == []
        assert await _group_names(redis, keys) == {"g", "old"}


# The `streamproc groups` command --------------------------------------------------------------------------------


def test_groups_command_lists_and_deletes_orphans_only_with_yes(ns: str, redis_url: str) -> None:
    stream = PartitionKeys(ns, "proc.work", 0).stream
    client = redis.Redis.from_url(redis_url)
    try:
        client.xgroup_create(stream, "work", "0", mkstream=True)
        client.hset(PartitionKeys(ns, "proc.work", 0).groups(), "work", "new")
        client.xgroup_create(stream, "renamed", "0")  # on the stream, declared by no app
        client.xadd(stream, {"x": "1"})
        env = {"PROCAPP_NS": ns}
        listed = streamproc("groups", "list", "tests.procapp:app", "--json", redis_url=redis_url, env=env)
        assert listed.returncode == 0, listed.stderr
        rows = {(r["stream"], r["group"]): r for r in json.loads(listed.stdout)}
        assert rows[(stream, "renamed")]["status"] == "orphan"
        assert rows[(stream, "renamed")]["lag"] == 1
        assert rows[(stream, "work")]["status"] == "declared"
        table = streamproc("groups", "list", "tests.procapp:app", redis_url=redis_url, env=env)
        assert "renamed" in table.stdout and "orphan" in table.stdout

        refused = streamproc("groups", "delete-orphans", "tests.procapp:app", redis_url=redis_url, env=env)
        assert refused.returncode == 2 and "--yes" in refused.stderr, refused.stderr
        assert "would be deleted" in refused.stdout
        assert {g["name"] for g in client.xinfo_groups(stream)} == {b"work", b"renamed"}, "nothing deleted"

        done = streamproc("groups", "delete-orphans", "tests.procapp:app", "--yes", "--json", redis_url=redis_url,
                          env=env)
        assert done.returncode == 0, done.stderr
        assert [r["group"] for r in json.loads(done.stdout)] == ["renamed"]
        assert {g["name"] for g in client.xinfo_groups(stream)} == {b"work"}
        usage = subprocess.run([sys.executable, "-m", "streamproc", "groups"], cwd=ROOT, capture_output=True,
                               text=True, timeout=30, check=False)
        assert usage.returncode == 2
    finally:
        client.close()


async def test_a_worker_running_some_groups_creates_all_its_app_declares(ns: str, redis_url: str) -> None:
    """`streamproc worker --group a`: group b, whose worker is down, exists from the start, so what is published
    now waits for it."""
    calls = Calls()
    async with open_app(ns, redis_url) as app:
        app.handler(CardAdded, group="a")(handler_recording(calls))
        app.handler(CardAdded, group="b")(handler_recording(calls))
        keys = partition(app, CardAdded)
        async with running(app, groups=["a"]) as worker:
            await worker.wait_for(lambda: app.redis.exists(keys.stream))
            assert await _group_names(app.redis, keys) == {"a", "b"}
            await app.publish_many(cards(5))
            await worker.wait_for(lambda: calls.distinct("a") == 5)
        async with running(app, groups=["b"]) as worker:
            await worker.wait_for(lambda: calls.distinct("b") == 5, message="b gets what came before it ran")
    assert calls.total("a") == calls.total("b") == 5
