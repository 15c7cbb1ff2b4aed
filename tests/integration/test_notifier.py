"""The HTTP notifier against the real notification sink (aiohttp, on a loopback port) and a real Redis: success,
retryable and permanent failures, timeouts, the rate limit, exactly-once fan-out across a redelivery, the sink
itself, its dev service, and the notifications group end to end through an in-process worker."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis

from handlers import notifications, social_graph
from handlers.app import app as social_app
from handlers.app import services
from handlers.events import CardAddedToLibrary, UserFollowed
from handlers.notifications import Notification, notifications_key
from handlers.notifier import HttpNotifier, NotifierSettings, TokenBucket, retry_after_seconds
from handlers.sink import NotificationSink, SinkSettings, sink_service
from streamproc import ConfigError, Context, DeadLetter, Retry
from tests.inproc import open_app, running
from tests.integration.test_handlers import context, rebound

NOTE = {"event_id": "e1", "type": "card.added", "actor_id": "alice", "text": "alice added A", "at_ms": 1}


class Sink:
    """A running NotificationSink and its URL."""

    def __init__(self, sink: NotificationSink, url: str) -> None:
        self.sink = sink
        self.url = url
        self.faults = sink.faults
        self.stats = sink.stats

    def notifier(self, rate: float = 100_000.0, burst: int = 1000, timeout_s: float = 5.0) -> HttpNotifier:
        """A notifier for this sink; fast by default (no rate limit to speak of)."""
        return HttpNotifier(NotifierSettings(url=f"{self.url}/notify", rate=rate, burst=burst, timeout_s=timeout_s))


@pytest.fixture(autouse=True)
async def handler_publishing(ns: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """notify_followers schedules reminders through `services.publish`: here into this test's namespace on the test
    Redis. The global app's own publisher would talk to the Redis of its settings (localhost:6379), on a client
    bound to the event loop of whichever test used it first."""
    async with open_app(ns, redis_url) as publisher:
        monkeypatch.setattr(services, "publish", publisher.publish_many)
        yield


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    running_sink = NotificationSink(SinkSettings(seed=1))
    async with running_sink.serving() as url:
        yield Sink(running_sink, url)


@pytest.fixture
async def notifier(sink: Sink) -> AsyncIterator[HttpNotifier]:
    http = sink.notifier()
    try:
        yield http
    finally:
        await http.aclose()


# The notifier, one send at a time ------------------------------------------------------------------------------


async def test_a_notification_is_posted_as_json_with_an_idempotency_key(sink: Sink, notifier: HttpNotifier) -> None:
    await notifier.send("bob", NOTE)
    await notifier.send("carol", NOTE)

    assert sink.stats.by_recipient == {"bob": 1, "carol": 1}
    assert sink.stats.answered == {202: 2}
    assert list(sink.stats.seen_keys) == ["e1:bob", "e1:carol"]


async def test_a_5xx_is_retryable_and_its_retry_after_is_honoured(sink: Sink, notifier: HttpNotifier) -> None:
    sink.faults.fail_once["bob"] = 503
    with pytest.raises(Retry, match="answered 503") as raised:
        await notifier.send("bob", NOTE)
    assert raised.value.delay is None  # no Retry-After: the handler's own backoff decides

    sink.faults.fail_once["bob"] = 503
    sink.faults.retry_after = "7"
    with pytest.raises(Retry) as raised:
        await notifier.send("bob", NOTE)
    assert raised.value.delay == 7.0
    assert sink.stats.accepted == 0


async def test_a_4xx_is_permanent(sink: Sink, notifier: HttpNotifier) -> None:
    sink.faults.fail_once["bob"] = 400
    with pytest.raises(DeadLetter, match="answered 400: failing on purpose"):
        await notifier.send("bob", NOTE)
    sink.faults.fail_once["bob"] = 429  # "too many requests" says later, not never
    with pytest.raises(Retry):
        await notifier.send("bob", NOTE)


async def test_a_timeout_or_an_unreachable_endpoint_is_retryable(sink: Sink) -> None:
    slow = sink.notifier(timeout_s=0.2)
    sink.faults.delay_s = 1.0
    try:
        started = time.monotonic()
        with pytest.raises(Retry, match=r"unreachable: .*Timeout"):
            await slow.send("bob", NOTE)
        assert time.monotonic() - started < 0.9
    finally:
        await slow.aclose()

    closed = HttpNotifier(NotifierSettings(url="http://127.0.0.1:9/notify"))  # discard port: nobody listens
    try:
        with pytest.raises(Retry, match="unreachable"):
            await closed.send("bob", NOTE)
    finally:
        await closed.aclose()


async def test_sends_keep_to_the_rate_limit(sink: Sink) -> None:
    limited = sink.notifier(rate=50.0, burst=5)
    try:
        started = time.monotonic()
        for i in range(25):
            await limited.send(f"u{i}", NOTE)
        elapsed = time.monotonic() - started
    finally:
        await limited.aclose()
    # 5 at once, then 20 more at 50/s: at least 0.4 s (a loose bound: no upper limit on a busy machine).
    assert elapsed >= 0.35
    assert sink.stats.accepted == 25


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10.0, burst=3, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert [round(bucket.reserve(), 3) for _ in range(2)] == [0.1, 0.2]  # each waits for its own token
    now[0] = 10.0  # a long quiet spell refills the bucket to its burst, no more
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() > 0


def test_retry_after_is_read_as_seconds_or_as_a_date() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds("Wed, 01 May 2024 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds((now - timedelta(hours=1)).strftime("%a, %d %b %Y %H:%M:%S GMT"), now) == 0.0
    assert retry_after_seconds("86400", now) == 300.0  # clamped
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_notifier_settings_come_from_the_environment() -> None:
    settings = NotifierSettings.from_env({"NOTIFIER_URL": "http://sink/notify", "NOTIFIER_RATE": "5"})
    assert (settings.url, settings.rate, settings.burst) == ("http://sink/notify", 5.0, NotifierSettings().burst)
    assert NotifierSettings.from_env({}).url == "http://127.0.0.1:8787/notify"
    with pytest.raises(ConfigError):
        NotifierSettings.from_env({"NOTIFIER_RATE": "0"})
    with pytest.raises(ConfigError, match="NOTIFIER"):
        NotifierSettings.from_env({"NOTIFIER_RATE": "fast"})


# Fan-out through the notifier ----------------------------------------------------------------------------------


async def follow(redis: aioredis.Redis, ns: str, follower: str, followee: str) -> None:
    event = UserFollowed(follower_id=follower, followee_id=followee)
    await social_graph.record_follow(event, context(redis, ns, "social-graph", event))


def card_note(ctx: Context) -> Notification:
    return Notification(event_id=ctx.event_id, type="card.added", actor_id="alice", text="t", at_ms=0)


async def test_a_5xx_leaves_no_marker_and_a_redelivery_notifies_each_follower_once(
    redis: aioredis.Redis, ns: str, sink: Sink, notifier: HttpNotifier,
) -> None:
    followers = [f"f{i}" for i in range(12)]
    for user in followers:
        await follow(redis, ns, user, "alice")
    card = CardAddedToLibrary(card_id="c1", curator_id="alice")
    first = context(redis, ns, "notifications", card)
    sink.faults.fail_once["f5"] = 503

    with pytest.raises(Retry, match="503"):
        await notifications.notify_followers(first, "alice", card_note(first), notifier)
    assert await redis.exists(notifications.marker_key(first, "f5")) == 0
    reached_first = set(sink.stats.by_recipient)
    assert "f5" not in reached_first

    retry = context(redis, ns, "notifications", card, event_id=first.event_id, attempt=2)
    sent = await notifications.notify_followers(retry, "alice", card_note(retry), notifier)

    assert sent == len(followers) - len(reached_first)
    assert sink.stats.by_recipient == {user: 1 for user in followers}
    assert sink.stats.duplicates == 0
    for user in followers:
        assert await redis.llen(notifications_key(ns, user)) == 1
    third = context(redis, ns, "notifications", card, event_id=first.event_id, attempt=3)
    assert await notifications.notify_followers(third, "alice", card_note(third), notifier) == 0
    assert sink.stats.accepted == len(followers)


async def test_a_4xx_dead_letters_and_keeps_what_was_delivered(redis: aioredis.Redis, ns: str, sink: Sink,
                                                               notifier: HttpNotifier) -> None:
    for user in ("bob", "carol"):
        await follow(redis, ns, user, "alice")
    card = CardAddedToLibrary(card_id="c1", curator_id="alice")
    ctx = context(redis, ns, "notifications", card)
    sink.faults.fail_once["carol"] = 400

    with pytest.raises(DeadLetter, match="400"):
        await notifications.notify_followers(ctx, "alice", card_note(ctx), notifier)
    assert await redis.exists(notifications.marker_key(ctx, "bob")) == 1
    assert await redis.exists(notifications.marker_key(ctx, "carol")) == 0


# The sink ------------------------------------------------------------------------------------------------------


async def test_the_sink_reports_its_counts_and_fails_the_fraction_it_is_told(sink: Sink) -> None:
    async with aiohttp.ClientSession() as http:
        for i in range(20):
            async with http.post(f"{sink.url}/notify?fail_503=1", json={"recipient": f"u{i}", "notification": {}},
                                 headers={"Idempotency-Key": f"k{i}"}) as response:
                assert response.status == 503
        for _ in range(2):
            async with http.post(f"{sink.url}/notify", json={"recipient": "u0", "notification": {}},
                                 headers={"Idempotency-Key": "k0"}) as response:
                assert response.status == 202
        async with http.post(f"{sink.url}/notify", data=b"{}",
                             headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400
        async with http.get(f"{sink.url}/stats") as response:
            stats = await response.json()
    assert stats == {"received": 23, "accepted": 2, "duplicates": 1, "recipients": 1,
                     "answered": {"202": 2, "400": 1, "503": 20}}


async def test_a_sink_failing_half_its_requests_fails_about_half() -> None:
    half = NotificationSink(SinkSettings(fail_503=0.5, seed=3))
    async with half.serving() as url:
        http = HttpNotifier(NotifierSettings(url=f"{url}/notify", rate=100_000.0, burst=1000))
        failed = 0
        try:
            for i in range(200):
                try:
                    await http.send(f"u{i}", NOTE)
                except Retry:
                    failed += 1
        finally:
            await http.aclose()
    assert 60 < failed < 140


def test_sink_settings_come_from_the_environment() -> None:
    settings = SinkSettings.from_env({"SINK_PORT": "8787", "SINK_FAIL_503": "0.1", "SINK_FAIL_400": "0.01"})
    assert (settings.port, settings.fail_503, settings.fail_400) == (8787, 0.1, 0.01)
    with pytest.raises(ConfigError):
        SinkSettings.from_env({"SINK_FAIL_503": "2"})


async def test_the_dev_service_runs_a_sink_and_names_it_for_the_workers() -> None:
    async with sink_service(SinkSettings()) as env:
        url = env["NOTIFIER_URL"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/notify")
        http = HttpNotifier(NotifierSettings(url=url))
        try:
            await http.send("bob", NOTE)
        finally:
            await http.aclose()
        async with aiohttp.ClientSession() as client, client.get(url.replace("/notify", "/stats")) as response:
            assert (await response.json())["accepted"] == 1


# The notifications group through a worker ----------------------------------------------------------------------


async def test_notifications_through_a_worker_reach_each_follower_exactly_once(
    redis: aioredis.Redis, ns: str, redis_url: str, sink: Sink, notifier: HttpNotifier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(services, "notifier", notifier)
    followers = ["bob", "carol", "dave"]
    async with open_app(ns, redis_url) as test_app:
        rebound(social_app, test_app)
        await test_app.publish_many([UserFollowed(follower_id=u, followee_id="alice") for u in followers])
        async with running(test_app, groups=["social-graph", "notifications"]) as worker:
            async def graph_done() -> bool:
                return await redis.zcard(social_graph.followers_key(ns, "alice")) == len(followers)

            await worker.wait_for(graph_done)
            sink.faults.fail_once["carol"] = 503  # her first push fails: that card's event is retried
            published = await test_app.publish_many(
                [CardAddedToLibrary(card_id=f"c{i}", curator_id="alice", title=f"t{i}") for i in range(10)])

            async def everyone_notified() -> bool:
                return sink.stats.by_recipient == {user: 10 for user in followers}

            await worker.wait_for(everyone_notified, timeout=20)
    assert sink.stats.duplicates == 0
    assert sink.stats.answered[503] == 1
    sent_ids = {key.split(":")[0] for key in sink.stats.seen_keys}
    assert sent_ids == {p.event_id for p in published}
    for user in followers:
        notes = [msgspec.json.decode(raw, type=Notification)
                 for raw in await redis.lrange(notifications_key(ns, user), 0, -1)]
        assert sorted(n.event_id for n in notes) == sorted(sent_ids)

