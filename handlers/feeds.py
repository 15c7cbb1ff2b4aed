"""Group "feeds": fan-out on write of cards and shared links into each follower's home feed.

A feed is a sorted set: member = event id, score = when the event occurred (ms). Adding the same event again
sets the same member to the same score, so this group needs no markers: a redelivery is harmless by design.
Each feed keeps only its newest FEED_KEPT items.
"""

from __future__ import annotations

from handlers.app import app
from handlers.events import CardAddedToLibrary, UrlShared
from handlers.social_graph import followers_of
from streamproc import Context, DeadLetter

FEED_KEPT = 500


def feed_key(ns: str, user_id: str) -> str:
    return f"{ns}:feed:{{{user_id}}}"


async def add_to_followers_feeds(ctx: Context, author_id: str) -> int:
    """Put this event at its time in the feed of each follower of `author_id`; returns how many feeds."""
    followers = await followers_of(ctx.redis, ctx.namespace, author_id)
    if not followers:
        return 0
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for user_id in followers:
            key = feed_key(ctx.namespace, user_id)
            pipe.zadd(key, {ctx.event_id: ctx.occurred_at_ms})
            pipe.zremrangebyrank(key, 0, -FEED_KEPT - 1)
        await pipe.execute()
    return len(followers)


@app.handler(CardAddedToLibrary, group="feeds", concurrency=32)
async def card_added(event: CardAddedToLibrary, ctx: Context) -> None:
    await add_to_followers_feeds(ctx, event.curator_id)


@app.handler(UrlShared, group="feeds", concurrency=32)
async def url_shared(event: UrlShared, ctx: Context) -> None:
    if not event.url.startswith(("https://", "http://")):
        # Retrying cannot fix the event: send it to the dead-letter stream at once, for a human to look at.
        raise DeadLetter(f"not a web address: {event.url[:100]!r}")
    await add_to_followers_feeds(ctx, event.sharer_id)
