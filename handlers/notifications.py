"""Group "notifications": tell each follower of a curator about the curator's new card or collection.

A notification is a push onto a capped list, which is *not* idempotent: pushing twice shows it twice. So each
(event id, recipient) gets a marker from `ctx.idempotency_key`, and one Lua call sets the marker (SET NX) and
pushes only if the marker was new. Marker and push happen together or not at all, so a redelivered event (after
a crash, a lost lease, a retry of a half-done fan-out, or a re-publish) never notifies anyone twice.
(A MULTI cannot do this: it runs every queued command whatever SET NX answered.)
"""

from __future__ import annotations

import msgspec

from handlers.app import app
from handlers.events import CardAddedToLibrary, CollectionCreated
from handlers.social_graph import followers_of
from streamproc import Context

# Each user keeps their newest notifications only.
NOTIFICATIONS_KEPT = 100
# Markers outlive any redelivery: retries back off for minutes at most, and an event id re-published within the
# publisher's dedup window (a day by default) is not even appended again.
MARKER_TTL_S = 2 * 86_400

# KEYS: marker, notification list. ARGV: marker ttl s, notification, entries kept. 1 if pushed, 0 if seen before.
NOTIFY_ONCE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return 1
"""


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """What a user finds in their notification list (stored as JSON)."""

    event_id: str
    type: str
    actor_id: str
    text: str
    url: str | None = None
    at_ms: int


def notifications_key(ns: str, user_id: str) -> str:
    return f"{ns}:notifications:{{{user_id}}}"


def marker_key(ctx: Context, user_id: str) -> str:
    # The scope ends with the recipient's hash tag, so marker and list share a Cluster slot.
    return ctx.idempotency_key(f"notify:{{{user_id}}}")


async def notify_followers(ctx: Context, actor_id: str, note: Notification) -> int:
    """Push `note` to the actor's followers, at most once per (event id, follower). Returns how many got it now."""
    recipients = await followers_of(ctx.redis, ctx.namespace, actor_id)
    if not recipients:
        return 0
    script = ctx.redis.register_script(NOTIFY_ONCE)
    body = msgspec.json.encode(note)
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for user_id in recipients:
            keys = [marker_key(ctx, user_id), notifications_key(ctx.namespace, user_id)]
            await script(keys=keys, args=[MARKER_TTL_S, body, NOTIFICATIONS_KEPT], client=pipe)
        pushed: list[int] = await pipe.execute()
    sent = sum(pushed)
    if sent < len(recipients):
        ctx.log.info("%d of %d followers were already notified (redelivery)", len(recipients) - sent, len(recipients))
    return sent


@app.handler(CardAddedToLibrary, group="notifications", concurrency=32, max_attempts=5)
async def card_added(event: CardAddedToLibrary, ctx: Context) -> None:
    text = f"{event.curator_id} added {event.title or event.url or event.card_id}"
    note = Notification(event_id=ctx.event_id, type=ctx.event_type, actor_id=event.curator_id, text=text,
                        url=event.url, at_ms=ctx.occurred_at_ms)
    await notify_followers(ctx, event.curator_id, note)


@app.handler(CollectionCreated, group="notifications", concurrency=32, max_attempts=5)
async def collection_created(event: CollectionCreated, ctx: Context) -> None:
    note = Notification(event_id=ctx.event_id, type=ctx.event_type, actor_id=event.owner_id,
                        text=f"{event.owner_id} started the collection {event.name!r}", at_ms=ctx.occurred_at_ms)
    await notify_followers(ctx, event.owner_id, note)
