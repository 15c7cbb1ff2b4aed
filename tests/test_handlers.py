"""The example social handlers against a real Redis: follower fan-out, idempotency under redelivery, capping.

Most tests call the handler functions directly with a hand-made Context (as a worker would), in a unique
namespace; the last one runs the whole app through an in-process worker to check the wiring.
"""

from __future__ import annotations

import msgspec
import pytest
import redis.asyncio as aioredis

from handlers import feeds, notifications, social_graph
from handlers.app import app as social_app
from handlers.events import CardAddedToLibrary, CollectionCreated, UrlShared, UserFollowed
from handlers.feeds import feed_key
from handlers.notifications import Notification, notifications_key
from handlers.social_graph import followers_key
from streamproc import App, Context, DeadLetter, Event, key_slot, new_event_id
from tests.inproc import open_app, running

T0 = 1_700_000_000_000


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
    return [m.decode() for m in await redis.zrevrange(feed_key(ns, user), 0, -1)]


# The app's declaration -----------------------------------------------------------------------------------------


def test_app_declares_its_groups_and_partitioned_card_stream() -> None:
    tags = {group: sorted(h.route.tag for h in hs) for group, hs in social_app.groups().items()}
    assert tags == {
        "feeds": ["card.added", "url.shared"],
        "notifications": ["card.added", "collection.created"],
        "social-graph": ["user.followed"],
    }
    card_route = social_app.topology.route(CardAddedToLibrary)
    assert [k.stream for k in card_route.partitions] == [f"social:ev:{{card.added:{p}}}" for p in range(4)]
    assert "card.removed" in social_app.topology.by_tag  # declared without a handler


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


async def test_card_added_notifies_every_follower_of_the_curator(redis: aioredis.Redis, ns: str) -> None:
    for user in ("bob", "carol"):
        await follow(redis, ns, user, "alice")
    await follow(redis, ns, "dave", "erin")
    card = CardAddedToLibrary(card_id="c1", curator_id="alice", url="https://example.org/a", title="A")
    ctx = context(redis, ns, "notifications", card, at_ms=T0 + 5)

    await notifications.card_added(card, ctx)

    for user in ("bob", "carol"):
        [note] = await notifications_of(redis, ns, user)
        assert note == Notification(event_id=ctx.event_id, type="card.added", actor_id="alice",
                                    text="alice added A", url="https://example.org/a", at_ms=T0 + 5)
    assert await notifications_of(redis, ns, "dave") == []
    assert await notifications_of(redis, ns, "alice") == []


async def test_a_redelivered_event_never_notifies_twice(redis: aioredis.Redis, ns: str) -> None:
    await follow(redis, ns, "bob", "alice")
    card = CardAddedToLibrary(card_id="c1", curator_id="alice")
    event_id = new_event_id()

    for attempt in (1, 2, 3):  # e.g. after a crash before the ack, a lost lease, a re-publish
        await notifications.card_added(card, context(redis, ns, "notifications", card, event_id=event_id,
                                                     attempt=attempt))
    assert [n.event_id for n in await notifications_of(redis, ns, "bob")] == [event_id]

    other = new_event_id()  # the same data under another event id is another event
    await notifications.card_added(card, context(redis, ns, "notifications", card, event_id=other))
    assert [n.event_id for n in await notifications_of(redis, ns, "bob")] == [other, event_id]


async def test_a_retried_half_done_fan_out_reaches_only_the_followers_it_missed(redis: aioredis.Redis,
                                                                               ns: str) -> None:
    for user in ("bob", "carol", "dave"):
        await follow(redis, ns, user, "alice")
    card = CardAddedToLibrary(card_id="c1", curator_id="alice")
    first = context(redis, ns, "notifications", card)
    # The first attempt reached carol, then failed: her marker and her notification exist.
    await redis.set(notifications.marker_key(first, "carol"), b"1")
    await redis.lpush(notifications_key(ns, "carol"), b"{}")

    retry = context(redis, ns, "notifications", card, event_id=first.event_id, attempt=2)
    sent = await notifications.notify_followers(retry, "alice", Notification(
        event_id=retry.event_id, type="card.added", actor_id="alice", text="t", at_ms=T0))

    assert sent == 2
    for user in ("bob", "carol", "dave"):
        assert await redis.llen(notifications_key(ns, user)) == 1


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


# The whole app through a worker --------------------------------------------------------------------------------


def rebound(app: App, target: App) -> App:
    """Register `app`'s handlers, with their options, on `target` (another namespace and Redis)."""
    for h in app.handlers:
        target.handler(h.route.event_type, group=h.group, concurrency=h.concurrency, max_attempts=h.max_attempts,
                       max_deliveries=h.max_deliveries, backoff=h.backoff, timeout=h.timeout, start=h.start)(h.fn)
    return target


async def test_the_app_end_to_end_through_a_worker(redis: aioredis.Redis, ns: str, redis_url: str) -> None:
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

            await worker.wait_for(fanned_out)
        assert set(await feed_of(redis, ns, "bob")) == ids
        assert {n.event_id for n in await notifications_of(redis, ns, "carol")} == ids
