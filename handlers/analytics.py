"""Group "analytics": daily activity counters, per event type and per user.

Counters live in hashes bucketed by the UTC day the event occurred (not the day it was processed, so a late
redelivery counts in the right day), and expire after KEPT_DAYS:

    social:analytics:{2024-05-01}:events              event type -> events that day
    social:analytics:{2024-05-01}:card.added          user id -> cards they added that day (one hash per type)
    social:analytics:{2024-05-01}:followers-gained    user id -> new followers that day

An increment is not idempotent, so each event's counters are written by one Lua call that first sets the event's
marker (SET NX) and increments only if the marker was new: one round trip per event, and a redelivery counts
nothing. (A pipeline or MULTI cannot skip its increments on the marker's answer; checking the marker in an earlier
round trip could let two overlapping deliveries both count.) Every key of one call, marker included, carries the
day as its hash tag, so the call stays in one Cluster slot.
"""

from __future__ import annotations

from collections.abc import Sequence

from handlers.app import app
from handlers.events import CardAddedToLibrary, CardRemoved, CollectionCreated, UrlShared, UserFollowed
from streamproc import Context

KEPT_DAYS = 35
MARKER_TTL_S = 2 * 86_400  # outlives any redelivery; see notifications.py
TOTALS = "events"
FOLLOWERS_GAINED = "followers-gained"

# KEYS: marker, then one hash per increment. ARGV: marker ttl s, hash ttl s, then one field per hash.
# 1 if counted, 0 if this event was counted before.
COUNT_ONCE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for i = 2, #KEYS do
  redis.call('HINCRBY', KEYS[i], ARGV[i + 1], 1)
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
return 1
"""


def counters_key(ns: str, day: str, name: str) -> str:
    """`name` is TOTALS, an event type, or FOLLOWERS_GAINED; `day` is YYYY-MM-DD (UTC)."""
    return f"{ns}:analytics:{{{day}}}:{name}"


async def count_once(ctx: Context, actor_id: str, extra: Sequence[tuple[str, str]] = ()) -> bool:
    """Count this event for its type and its actor, plus `extra` (hash name, field) pairs, on the event's day.
    False if it was counted before (a redelivery)."""
    day = ctx.occurred_at.date().isoformat()
    increments = [(TOTALS, ctx.event_type), (ctx.event_type, actor_id), *extra]
    keys = [ctx.idempotency_key(f"{{{day}}}"), *(counters_key(ctx.namespace, day, name) for name, _ in increments)]
    args: list[str | int] = [MARKER_TTL_S, KEPT_DAYS * 86_400, *(field for _, field in increments)]
    counted = bool(await ctx.redis.register_script(COUNT_ONCE)(keys=keys, args=args))
    if not counted:
        ctx.log.info("already counted (redelivery)")
    return counted


@app.handler(CardAddedToLibrary, group="analytics", concurrency=32)
async def card_added(event: CardAddedToLibrary, ctx: Context) -> None:
    await count_once(ctx, event.curator_id)


@app.handler(CardRemoved, group="analytics", concurrency=16)
async def card_removed(event: CardRemoved, ctx: Context) -> None:
    await count_once(ctx, event.curator_id)


@app.handler(UrlShared, group="analytics", concurrency=16)
async def url_shared(event: UrlShared, ctx: Context) -> None:
    await count_once(ctx, event.sharer_id)


@app.handler(CollectionCreated, group="analytics", concurrency=16)
async def collection_created(event: CollectionCreated, ctx: Context) -> None:
    await count_once(ctx, event.owner_id)


@app.handler(UserFollowed, group="analytics", concurrency=16)
async def user_followed(event: UserFollowed, ctx: Context) -> None:
    # A self-follow is refused by the social graph: it happened (it is counted), but nobody gained a follower.
    gained = [(FOLLOWERS_GAINED, event.followee_id)] if event.follower_id != event.followee_id else []
    await count_once(ctx, event.follower_id, gained)
