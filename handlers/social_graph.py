"""Group "social-graph": keeps, per user, the set of their followers, in the order they followed.

Followers are a sorted set scored by the time of the follow, so "the first N followers" is a stable, bounded
range. Per-user keys carry the user id as their Cluster hash tag: all of one user's keys share one slot.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from handlers.app import app
from handlers.events import UserFollowed
from streamproc import Context, DeadLetter

# Fan-out from one event reaches at most this many followers. Accounts with more followers than this need
# fan-out on read (or chunked fan-out in follow-up events), which this example does not do.
FANOUT_LIMIT = 1000


def followers_key(ns: str, user_id: str) -> str:
    return f"{ns}:followers:{{{user_id}}}"


async def followers_of(redis: aioredis.Redis, ns: str, user_id: str, limit: int | None = None) -> list[str]:
    """The user's followers, earliest first, at most `limit` (default FANOUT_LIMIT)."""
    count = FANOUT_LIMIT if limit is None else limit
    members = await redis.zrange(followers_key(ns, user_id), 0, count - 1)
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


@app.handler(UserFollowed, group="social-graph", concurrency=8)
async def record_follow(event: UserFollowed, ctx: Context) -> None:
    """Idempotent as it stands: ZADD NX keeps the first follow time, so a redelivery changes nothing."""
    if event.follower_id == event.followee_id:
        raise DeadLetter(f"user {event.follower_id!r} cannot follow themselves")
    await ctx.redis.zadd(followers_key(ctx.namespace, event.followee_id), {event.follower_id: ctx.occurred_at_ms},
                         nx=True)
