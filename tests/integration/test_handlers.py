"""The example social handlers against a real Redis: follower fan-out, idempotency under redelivery, capping.

Most tests call the handler functions directly with a hand-made Context (as a worker would), in a unique
namespace; the last one runs the whole app through an in-process worker to check the wiring. Notifications are
pushed to an in-memory notifier here; tests/test_notifier.py covers the HTTP notifier against a real sink.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from handlers import analytics, feeds, notifications, reminders, social_graph
from handlers.analytics import counters_key
from handlers.app import app as social_app
from handlers.app import services
from handlers.events import (
    CardAddedToLibrary,
    CardRemoved,
    CollectionCreated,
    UnreadNotificationsReminder,
    UrlShared,
    UserFollowed,
)
from handlers.feeds import feed_key
from handlers.notifications import Notification, notifications_key
from handlers.social_graph import followers_key
from streamproc import App, Context, DeadLetter, Event, Outgoing, Retry, key_slot, new_event_id
from tests.inproc import open_app, running

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
DAY0 = "2023-11-14"
DAY_MS = 86_400_000


class RecordingNotifier:
    """A Notifier that remembers what it sent, and fails for the recipients in `failing` (with that error)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Mapping[str, object]]] = []
        self.failing: dict[str, Exception] = {}

    async def send(self, recipient: str, payload: Mapping[str, object]) -> None:
        error = self.failing.get(recipient)
        if error is not None:
            raise error
        self.sent.append((recipient, payload))

    def recipients(self) -> Counter[str]:
        return Counter(recipient for recipient, _ in self.sent)


@pytest.fixture(autouse=True)
def notifier(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingNotifier]:
    recording = RecordingNotifier()
    monkeypatch.setattr(services, "notifier", recording)
    yield recording


@pytest.fixture(autouse=True)
def published(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Outgoing]]:
    """What handlers publish through `services.publish` (the global app's publisher would talk to its own Redis)."""
    seen: list[Outgoing] = []

    async def record(items: list[Outgoing]) -> None:
        seen.extend(items)

    monkeypatch.setattr(services, "publish", record)
    yield seen


def context(redis: aioredis.Redis, ns: str, group: str, event: Event, *, event_id: str | None = None,
            attempt: int = 1, at_ms: int = T0) -> Context:
    """The Context a worker would build for this event (stream fields are not used by these handlers)."""
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return Context(event_id=event_id or new_event_id(), event_type=tag, group=group, attempt=attempt,
                   stream=f"{ns}:ev:{{{tag}:0}}", stream_id="1-0", occurred_at_ms=at_ms, redis=redis, namespace=ns)


async def follow(redis: aioredis.Redis, ns: str, follower: str, followee: str, at_ms: int = T0) -> None:
    event = UserFollowed(follower_id=follower, followee_id=followee)
    await social_graph.record_follow(event, context(redis, ns, "social-graph", event, at_ms=at_ms))


async def notifications_of(redis: aioredis.Redis, ns: str, user: str) -> list[Notification]:
    raw = await redis.lrange(notifications_key(ns, user), 0, -1)
    return [msgspec.json.decode(item, type=Notification) for item in raw]


async def feed_of(redis: aioredis.Redis, ns: str, user: str) -> list[str]:
    """Newest first."""
    return [text(m) for m in await redis.zrevrange(feed_key(ns, user), 0, -1)]


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# The app's declaration -----------------------------------------------------------------------------------------


def test_app_declares_its_groups_and_partitioned_card_stream() -> None:
    tags = {group: sorted(h.route.tag for h in hs) for group, hs in social_app.groups().items()}
    assert tags == {
        "analytics": ["card.added", "card.removed", "collection.created", "url.shared", "user.followed"],
        "digest": ["digest.due"],
        "feeds": ["card.added", "url.shared"],
        "notifications": ["card.added", "collection.created", "notify.account"],
        "reminders": ["reminder.unread"],
        "social-graph": ["user.followed"],
    }
    card_route = social_app.topology.route(CardAddedToLibrary)
    assert [k.stream for k in card_route.partitions] == [f"social:ev:{{card.added:{p}}}" for p in range(4)]
    assert "card.removed" in social_app.topology.by_tag
    assert len(social_app.dev_services) == 1  # the notification sink, for `streamproc dev`
    assert sorted(social_app.schedules) == ["daily-digest"]


# social-graph --------------------------------------------------------------------------------------------------


async def test_follows_are_kept_in_follow_order_and_a_redelivery_changes_nothing(redis: aioredis.Redis,
                                                                                 ns: str) -> None:
    await follow(redis, ns, "bob", "alice", at_ms=T0 + 2)
    await follow(redis, ns, "carol", "alice", at_ms=T0 + 1)
    await follow(redis, ns, "bob", "alice", at_ms=T0 + 9)  # the same follow delivered again, later

    assert await social_graph.followers_of(redis, ns, "alice") == ["carol", "bob"]
    assert await redis.zscore(followers_key(ns, "alice"), "bob") == T0 + 2


async def test_following_yourself_is_dead_lettered(redis: aioredis.Redis, ns: str) -> None:
    with pytest.raises(DeadLetter, match="cannot follow themselves"):
        await follow(redis, ns, "alice", "alice")
    assert await redis.exists(followers_key(ns, "alice")) == 0


# notifications -------------------------------------------------------------------------------------------------


async def test_card_added_notifies_every_follower_of_the_curator(redis: aioredis.Redis, ns: str,
                                                                 notifier: RecordingNotifier) -> None:
    for user in ("bob", "carol"):
        await follow(redis, ns, user, "alice")
    await follow(redis, ns, "dave", "erin")
    card = CardAddedToLibrary(card_id="c1", curator_id="alice", url="https://example.org/a", title="A")
    ctx = context(redis, ns, "notifications", card, at_ms=T0 + 5)

    await notifications.card_added(card, ctx)

    expected = Notification(event_id=ctx.event_id, type="card.added", actor_id="alice", text="alice added A",
                            url="https://example.org/a", at_ms=T0 + 5)
    for user in ("bob", "carol"):
        assert await notifications_of(redis, ns, user) == [expected]
    assert await notifications_of(redis, ns, "dave") == []
    assert await notifications_of(redis, ns, "alice") == []
    assert sorted(notifier.sent, key=lambda sent: sent[0]) == [
        ("bob", msgspec.to_builtins(expected)), ("carol", msgspec.to_builtins(expected))]


async def test_a_redelivered_event_never_notifies_twice(redis: aioredis.Redis, ns: str,
                                                       notifier: RecordingNotifier) -> None:
    await follow(redis, ns, "bob", "alice")
    card = CardAddedToLibrary(card_id="c1", curator_id="alice")
    event_id = new_event_id()

    for attempt in (1, 2, 3):  # e.g. after a crash before the ack, a lost lease, a re-publish
        await notifications.card_added(card, context(redis, ns, "notifications", card, event_id=event_id,
                                                     attempt=attempt))
    assert [n.event_id for n in await notifications_of(redis, ns, "bob")] == [event_id]
    assert notifier.recipients() == {"bob": 1}

    other = new_event_id()  # the same data under another event id is another event
    await notifications.card_added(card, context(redis, ns, "notifications", card, event_id=other))
    assert [n.event_id for n in await notifications_of(redis, ns, "bob")] == [other, event_id]
    assert notifier.recipients() == {"bob": 2}


async def test_a_retried_half_done_fan_out_reaches_only_the_followers_it_missed(
    redis: aioredis.Redis, ns: str, notifier: RecordingNotifier,
) -> None:
    for user in ("bob", "carol", "dave"):
        await follow(redis, ns, user, "alice")
    card = CardAddedToLibrary(card_id="c1", curator_id="alice")
    first = context(redis, ns, "notifications", card)
    # The first attempt reached carol, then failed: her marker and her notification exist.
    await redis.set(notifications.marker_key(first, "carol"), b"1")
    await redis.lpush(notifications_key(ns, "carol"), b"{}")

    retry = context(redis, ns, "notifications", card, event_id=first.event_id, attempt=2)
    sent = await notifications.notify_followers(retry, "alice", Notification(
        event_id=retry.event_id, type="card.added", actor_id="alice", text="t", at_ms=T0), notifier)

    assert sent == 2
    assert notifier.recipients() == {"bob": 1, "dave": 1}
    for user in ("bob", "carol", "dave"):
        assert await redis.llen(notifications_key(ns, user)) == 1


async def test_a_failed_push_leaves_no_trace_and_the_retry_resumes_there(redis: aioredis.Redis, ns: str,
                                                                        notifier: RecordingNotifier) -> None:
    for user in ("bob", "carol", "dave"):
        await follow(redis, ns, user, "alice")
    card = CardAddedToLibrary(card_id="c1", curator_id="alice")
    first = context(redis, ns, "notifications", card)
    notifier.failing["carol"] = Retry(delay=2.0, reason="503")

    with pytest.raises(Retry) as raised:
        await notifications.card_added(card, first)
    assert raised.value.delay == 2.0
    assert await redis.exists(notifications.marker_key(first, "carol")) == 0
    assert await redis.llen(notifications_key(ns, "carol")) == 0

    del notifier.failing["carol"]
    await notifications.card_added(card, context(redis, ns, "notifications", card, event_id=first.event_id,
                                                 attempt=2))
    assert notifier.recipients() == {"bob": 1, "carol": 1, "dave": 1}
    for user in ("bob", "carol", "dave"):
        assert await redis.llen(notifications_key(ns, user)) == 1


async def test_a_hopeless_push_dead_letters_the_event(redis: aioredis.Redis, ns: str,
                                                      notifier: RecordingNotifier) -> None:
    await follow(redis, ns, "bob", "alice")
    await follow(redis, ns, "carol", "alice")
    notifier.failing["bob"] = DeadLetter("notifier answered 400")
    notifier.failing["carol"] = Retry(delay=1.0)
    event = CollectionCreated(collection_id="col1", owner_id="alice", name="Jazz")
    # Giving up wins over trying later: a retry would fail for bob again.
    with pytest.raises(DeadLetter, match="answered 400"):
        await notifications.collection_created(event, context(redis, ns, "notifications", event))


def test_the_most_severe_error_decides_the_outcome() -> None:
    boom = RuntimeError("redis went away")
    assert notifications.most_severe([Retry(delay=1.0), boom]) is boom
    merged = notifications.most_severe([Retry(delay=1.0), Retry(delay=3.0), Retry()])
    assert isinstance(merged, Retry) and merged.delay == 3.0
    merged = notifications.most_severe([Retry(), Retry()])
    assert isinstance(merged, Retry) and merged.delay is None  # no endpoint asked: the handler's backoff decides


async def test_markers_share_their_recipients_cluster_slot_and_expire(redis: aioredis.Redis, ns: str) -> None:
    card = CardAddedToLibrary(card_id="c1", curator_id="alice")
    ctx = context(redis, ns, "notifications", card)
    assert key_slot(notifications.marker_key(ctx, "bob")) == key_slot(notifications_key(ns, "bob"))
    assert key_slot(notifications.marker_key(ctx, "bob")) != key_slot(notifications.marker_key(ctx, "carol"))
    await follow(redis, ns, "bob", "alice")
    await notifications.card_added(card, ctx)
    marker_ttl = await redis.ttl(notifications.marker_key(ctx, "bob"))
    assert 0 < marker_ttl <= notifications.MARKER_TTL_S


async def test_fan_out_is_bounded_to_the_earliest_followers(redis: aioredis.Redis, ns: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(social_graph, "FANOUT_LIMIT", 3)
    users = [f"u{i}" for i in range(5)]
    for i, user in enumerate(users):
        await follow(redis, ns, user, "star", at_ms=T0 + i)
    event = CollectionCreated(collection_id="col1", owner_id="star", name="Jazz")

    await notifications.collection_created(event, context(redis, ns, "notifications", event))

    reached = [u for u in users if await redis.llen(notifications_key(ns, u))]
    assert reached == ["u0", "u1", "u2"]
    [note] = await notifications_of(redis, ns, "u0")
    assert note.text == "star started the collection 'Jazz'"


async def test_notification_lists_keep_only_the_newest(redis: aioredis.Redis, ns: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notifications, "NOTIFICATIONS_KEPT", 3)
    await follow(redis, ns, "bob", "alice")
    ids = []
    for i in range(5):
        card = CardAddedToLibrary(card_id=f"c{i}", curator_id="alice")
        ctx = context(redis, ns, "notifications", card)
        ids.append(ctx.event_id)
        await notifications.card_added(card, ctx)

    assert [n.event_id for n in await notifications_of(redis, ns, "bob")] == ids[:1:-1]


# feeds ---------------------------------------------------------------------------------------------------------


async def test_cards_and_links_land_in_followers_feeds_by_time_and_redelivery_is_harmless(
    redis: aioredis.Redis, ns: str,
) -> None:
    await follow(redis, ns, "bob", "alice")
    await follow(redis, ns, "bob", "carol")
    card = CardAddedToLibrary(card_id="c1", curator_id="alice")
    link = UrlShared(url="https://example.org", sharer_id="carol")
    card_ctx = context(redis, ns, "feeds", card, at_ms=T0 + 10)
    link_ctx = context(redis, ns, "feeds", link, at_ms=T0 + 5)

    await feeds.card_added(card, card_ctx)
    await feeds.url_shared(link, link_ctx)
    await feeds.card_added(card, context(redis, ns, "feeds", card, event_id=card_ctx.event_id, attempt=2,
                                         at_ms=T0 + 10))

    assert await feed_of(redis, ns, "bob") == [card_ctx.event_id, link_ctx.event_id]
    assert await feed_of(redis, ns, "alice") == []  # authors' own feeds are not written; alice follows no one


async def test_feeds_keep_only_the_newest_items(redis: aioredis.Redis, ns: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feeds, "FEED_KEPT", 3)
    await follow(redis, ns, "bob", "alice")
    ids = []
    for i in range(5):
        card = CardAddedToLibrary(card_id=f"c{i}", curator_id="alice")
        ctx = context(redis, ns, "feeds", card, at_ms=T0 + i)
        ids.append(ctx.event_id)
        await feeds.card_added(card, ctx)

    assert await feed_of(redis, ns, "bob") == ids[:1:-1]


async def test_a_shared_link_that_is_not_a_web_address_is_dead_lettered(redis: aioredis.Redis, ns: str) -> None:
    await follow(redis, ns, "bob", "alice")
    link = UrlShared(url="javascript:alert(1)", sharer_id="alice")
    with pytest.raises(DeadLetter, match="not a web address"):
        await feeds.url_shared(link, context(redis, ns, "feeds", link))
    assert await feed_of(redis, ns, "bob") == []


# analytics -----------------------------------------------------------------------------------------------------


async def counters(redis: aioredis.Redis, ns: str, name: str, day: str = DAY0) -> dict[str, int]:
    raw = await redis.hgetall(counters_key(ns, day, name))
    return {text(k): int(v) for k, v in raw.items()}


async def test_analytics_counts_each_type_and_user_per_day(redis: aioredis.Redis, ns: str) -> None:
    runs: list[tuple[Callable[[Any, Context], Awaitable[None]], Event, int]] = [
        (analytics.card_added, CardAddedToLibrary(card_id="c1", curator_id="alice"), T0),
        (analytics.card_added, CardAddedToLibrary(card_id="c2", curator_id="alice"), T0 + 1),
        (analytics.card_added, CardAddedToLibrary(card_id="c3", curator_id="bob"), T0 + 2),
        (analytics.card_removed, CardRemoved(card_id="c1", curator_id="alice"), T0 + 3),
        (analytics.url_shared, UrlShared(url="https://example.org", sharer_id="bob"), T0 + 4),
        (analytics.collection_created, CollectionCreated(collection_id="k", owner_id="carol", name="Jazz"), T0 + 5),
        (analytics.user_followed, UserFollowed(follower_id="bob", followee_id="alice"), T0 + 6),
        (analytics.user_followed, UserFollowed(follower_id="carol", followee_id="carol"), T0 + 7),
        (analytics.card_added, CardAddedToLibrary(card_id="c4", curator_id="alice"), T0 + DAY_MS),  # the next day
    ]
    for handler, event, at_ms in runs:
        await handler(event, context(redis, ns, "analytics", event, at_ms=at_ms))

    assert await counters(redis, ns, "events") == {"card.added": 3, "card.removed": 1, "url.shared": 1,
                                                    "collection.created": 1, "user.followed": 2}
    assert await counters(redis, ns, "card.added") == {"alice": 2, "bob": 1}
    assert await counters(redis, ns, "card.removed") == {"alice": 1}
    assert await counters(redis, ns, "url.shared") == {"bob": 1}
    assert await counters(redis, ns, "collection.created") == {"carol": 1}
    assert await counters(redis, ns, "user.followed") == {"bob": 1, "carol": 1}
    assert await counters(redis, ns, "followers-gained") == {"alice": 1}  # a self-follow gains nobody anything
    assert await counters(redis, ns, "events", day="2023-11-15") == {"card.added": 1}
    assert await counters(redis, ns, "card.added", day="2023-11-15") == {"alice": 1}
    ttl = await redis.ttl(counters_key(ns, DAY0, "card.added"))
    assert analytics.KEPT_DAYS * 86_400 - 60 < ttl <= analytics.KEPT_DAYS * 86_400


async def test_analytics_counts_a_redelivered_event_once(redis: aioredis.Redis, ns: str) -> None:
    follow_event = UserFollowed(follower_id="bob", followee_id="alice")
    event_id = new_event_id()
    for attempt in (1, 2, 3):  # a crash before the ack, a lost lease, a re-publish: same event id
        ctx = context(redis, ns, "analytics", follow_event, event_id=event_id, attempt=attempt)
        assert await analytics.count_once(ctx, "bob", [(analytics.FOLLOWERS_GAINED, "alice")]) is (attempt == 1)
    await analytics.user_followed(follow_event, context(redis, ns, "analytics", follow_event))  # another event

    assert await counters(redis, ns, "events") == {"user.followed": 2}
    assert await counters(redis, ns, "user.followed") == {"bob": 2}
    assert await counters(redis, ns, "followers-gained") == {"alice": 2}


async def test_analytics_keys_of_one_event_share_a_cluster_slot(redis: aioredis.Redis, ns: str) -> None:
    event = UserFollowed(follower_id="bob", followee_id="alice")
    ctx = context(redis, ns, "analytics", event)
    slots = {key_slot(ctx.idempotency_key(f"{{{DAY0}}}"))}
    slots |= {key_slot(counters_key(ns, DAY0, name)) for name in ("events", "user.followed", "followers-gained")}
    assert len(slots) == 1


# The whole app through a worker --------------------------------------------------------------------------------


def rebound(app: App, target: App) -> App:
    """Register `app`'s handlers, with their options, on `target` (another namespace and Redis)."""
    for h in app.handlers:
        target.handler(h.route.event_type, group=h.group, concurrency=h.concurrency, max_attempts=h.max_attempts,
                       max_deliveries=h.max_deliveries, backoff=h.backoff, timeout=h.timeout, start=h.start)(h.fn)
    return target


async def test_the_app_end_to_end_through_a_worker(redis: aioredis.Redis, ns: str, redis_url: str,
                                                   notifier: RecordingNotifier) -> None:
    async with open_app(ns, redis_url) as test_app:
        rebound(social_app, test_app)
        await test_app.publish_many([UserFollowed(follower_id=u, followee_id="alice") for u in ("bob", "carol")])
        async with running(test_app) as worker:
            async def graph_done() -> bool:
                return await redis.zcard(followers_key(ns, "alice")) == 2

            await worker.wait_for(graph_done)
            cards = [CardAddedToLibrary(card_id=f"c{i}", curator_id="alice", title=f"t{i}") for i in range(20)]
            ids = {p.event_id for p in await test_app.publish_many(cards)}

            async def fanned_out() -> bool:
                sizes = [await redis.zcard(feed_key(ns, u)) for u in ("bob", "carol")]
                sizes += [await redis.llen(notifications_key(ns, u)) for u in ("bob", "carol")]
                return sizes == [20, 20, 20, 20]

            async def counted() -> bool:
                return (await counters(redis, ns, "card.added", day=today)).get("alice") == 20

            today = datetime.now(UTC).date().isoformat()
            await worker.wait_for(fanned_out)
            await worker.wait_for(counted)
        assert set(await feed_of(redis, ns, "bob")) == ids
        assert {n.event_id for n in await notifications_of(redis, ns, "carol")} == ids
        assert notifier.recipients() == {"bob": 20, "carol": 20}
        assert await counters(redis, ns, "followers-gained", day=today) == {"alice": 2}


# reminders -----------------------------------------------------------------------------------------------------


async def test_notified_followers_get_one_delayed_unread_reminder_each(redis: aioredis.Redis, ns: str,
                                                                       published: list[Outgoing]) -> None:
    for user in ("bob", "carol"):
        await follow(redis, ns, user, "alice")
    for i in range(3):
        card = CardAddedToLibrary(card_id=f"c{i}", curator_id="alice", title=f"t{i}")
        await notifications.card_added(card, context(redis, ns, "notifications", card, at_ms=T0 + i))
    assert [(o.event_id, o.delay, type(o.event).__name__) for o in published] == [
        (f"unread:{user}", services.remind_after, "UnreadNotificationsReminder")
        for _ in range(3) for user in ("bob", "carol")]  # the same ids each time: the dedup keeps one waiting


async def test_an_unread_reminder_counts_what_was_not_read_and_is_pushed_once(
        redis: aioredis.Redis, ns: str, notifier: RecordingNotifier) -> None:
    await follow(redis, ns, "bob", "alice")
    for i in range(3):
        card = CardAddedToLibrary(card_id=f"c{i}", curator_id="alice", title=f"t{i}")
        await notifications.card_added(card, context(redis, ns, "notifications", card, at_ms=T0 + i))
    notifier.sent.clear()
    await reminders.mark_read(redis, ns, "bob", T0)  # bob read the first one
    event = UnreadNotificationsReminder(user_id="bob")
    ctx = context(redis, ns, "reminders", event, event_id="unread:bob")
    await reminders.remind_unread(event, ctx)
    await reminders.remind_unread(event, ctx)  # redelivered
    assert [(user, payload["unread"], payload["text"]) for user, payload in notifier.sent] == [
        ("bob", 2, "You have 2 unread notifications")]
    await reminders.mark_read(redis, ns, "bob", T0 + 10)
    later = UnreadNotificationsReminder(user_id="bob")
    await reminders.remind_unread(later, context(redis, ns, "reminders", later, event_id="unread:bob:2"))
    assert len(notifier.sent) == 1, "nothing unread: no reminder"
