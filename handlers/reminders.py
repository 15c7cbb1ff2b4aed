"""Group "reminders": a delayed "you have unread notifications" push, at most one per user a day.

When the notifications group notifies followers, it also schedules `UnreadNotificationsReminder` for each of them,
`services.remind_after` later (an hour, or REMIND_AFTER_S; notifications.reminders_for). The event id is
`unread:{user_id}`, so the dedup that every producer-given id gets does the rest: while a user's reminder waits,
their next notifications schedule no other, and once it was appended no new one is scheduled within the dedup window
after its due time (a day by default). When it comes due, this handler counts the user's notifications newer than
the last time they read them (`mark_read`, called by the product when they open the list) and pushes one reminder
if there are any.

The push is marked done (after it succeeded) with a marker keyed on the event id, so a redelivered reminder is not
pushed twice; what remains is a push whose answer was lost, as for every notification (notifications.py).
"""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis

from handlers.app import app, services
from handlers.events import UnreadNotificationsReminder
from handlers.notifications import MARKER_TTL_S, NOTIFICATIONS_KEPT, Notification, notifications_key
from streamproc import Context


def read_key(ns: str, user_id: str) -> str:
    """When the user last read their notifications (ms); same hash tag as their list, so one slot holds both."""
    return f"{ns}:notifications-read:{{{user_id}}}"


async def mark_read(redis: aioredis.Redis, ns: str, user_id: str, at_ms: int) -> None:
    """The product calls this when the user opens their notification list."""
    await redis.set(read_key(ns, user_id), at_ms)


async def unread_count(redis: aioredis.Redis, ns: str, user_id: str) -> int:
    """Notifications in the user's list newer than their last read (the list keeps the newest only)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(read_key(ns, user_id))
        pipe.lrange(notifications_key(ns, user_id), 0, NOTIFICATIONS_KEPT - 1)
        read_at, items = await pipe.execute()
    since = int(read_at or 0)
    return sum(1 for raw in items if msgspec.json.decode(raw, type=Notification).at_ms > since)


@app.handler(UnreadNotificationsReminder, group="reminders", concurrency=16, max_attempts=5)
async def remind_unread(event: UnreadNotificationsReminder, ctx: Context) -> None:
    marker = ctx.idempotency_key(f"remind:{{{event.user_id}}}")
    if await ctx.redis.exists(marker):
        return  # pushed already (a redelivery)
    count = await unread_count(ctx.redis, ctx.namespace, event.user_id)
    if count == 0:
        return
    noun = "notification" if count == 1 else "notifications"
    await services.notifier.send(event.user_id, {"event_id": ctx.event_id, "type": ctx.event_type,
                                                 "text": f"You have {count} unread {noun}", "unread": count})
    await ctx.redis.set(marker, b"1", ex=MARKER_TTL_S)
