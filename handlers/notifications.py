"""Group "notifications": tell each follower of a curator about the curator's new card or collection, and tell a
user about their account (AccountNotice: a password reset goes on priority lane 0, ahead of everything else).

Each follower is notified twice over: a push through the `Notifier` (by default an HTTP endpoint, see
notifier.py), and an entry in their in-app notification list, a capped Redis list.

Neither is idempotent, so each (event id, recipient) gets a marker from `ctx.idempotency_key`, set only once the
push has succeeded, by the same Lua call that appends to the list (SET NX, then LPUSH only if the marker was
new). A recipient with a marker is skipped. So when a fan-out stops half way (the endpoint failed for one
recipient, the worker crashed), the retry resumes where it stopped: the recipients already notified are not
notified again, and those that were not get their push and their list entry.

What remains is inherent to at-least-once delivery over HTTP: a push whose answer was lost (a timeout after the
endpoint acted, a crash between the push and the marker) is sent again on retry. HttpNotifier sends an
Idempotency-Key so that the endpoint can drop such copies.
"""

from __future__ import annotations

import asyncio

import msgspec
from redis.commands.core import AsyncScript

from handlers.app import app, services
from handlers.events import AccountNotice, CardAddedToLibrary, CollectionCreated, UnreadNotificationsReminder
from handlers.notifier import Notifier
from handlers.social_graph import followers_of
from streamproc import App, Context, DeadLetter, Outgoing, Published, Retry

# Each user keeps their newest notifications only.
NOTIFICATIONS_KEPT = 100
# Markers outlive any redelivery: retries back off for minutes at most, and an event id re-published within the
# publisher's dedup window (a day by default) is not even appended again.
MARKER_TTL_S = 2 * 86_400
# Pushes in flight at once for one event; the notifier's rate limit applies on top, per process.
PARALLEL_SENDS = 8

# KEYS: marker, notification list. ARGV: marker ttl s, notification, entries kept. 1 if pushed, 0 if seen before.
NOTIFY_ONCE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return 1
"""


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """What a user finds in their notification list (stored as JSON), and what the notifier sends."""

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


def reminders_for(user_ids: list[str]) -> list[Outgoing]:
    """A delayed "you have unread notifications" reminder per user (group "reminders", reminders.py), its event id
    `unread:{user}`: deduplicated, so one waits per user at most, and one is sent per dedup window at most."""
    return [Outgoing(UnreadNotificationsReminder(user_id=u), event_id=f"unread:{u}", delay=services.remind_after)
            for u in user_ids]


async def not_yet_notified(ctx: Context, recipients: list[str]) -> list[str]:
    """The recipients without a marker for this event, in order (one pipelined round trip)."""
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for user_id in recipients:
            pipe.exists(marker_key(ctx, user_id))
        seen: list[int] = await pipe.execute()
    return [user_id for user_id, done in zip(recipients, seen, strict=True) if not done]


async def record_notified(ctx: Context, script: AsyncScript, user_id: str, body: bytes) -> bool:
    """Set the recipient's marker and append to their list, unless the marker exists; True if it did not.
    `script` is NOTIFY_ONCE, registered on ctx.redis."""
    keys = [marker_key(ctx, user_id), notifications_key(ctx.namespace, user_id)]
    return bool(await script(keys=keys, args=[MARKER_TTL_S, body, NOTIFICATIONS_KEPT]))


def most_severe(errors: list[Exception]) -> Exception:
    """The one error to raise for a fan-out: give up if any recipient is hopeless; re-raise an unexpected error
    (it needs its traceback and the handler's backoff); else retry after the longest delay any endpoint asked."""
    for error in errors:
        if isinstance(error, DeadLetter):
            return error
    for error in errors:
        if not isinstance(error, Retry):
            return error
    delays = [e.delay for e in errors if isinstance(e, Retry) and e.delay is not None]
    reasons = "; ".join(sorted({str(e) for e in errors}))
    return Retry(delay=max(delays) if delays else None, reason=f"{len(errors)} push(es) failed: {reasons[:500]}")


async def deliver(ctx: Context, recipients: list[str], note: Notification, notifier: Notifier) -> int:
    """Push `note` to each recipient, then record it; returns how many were recorded now.

    Up to PARALLEL_SENDS pushes run at once. After the first failure no new push starts (the retry resumes from
    there, and a failing endpoint is not hammered with the rest of the fan-out); pushes already in flight finish
    and are recorded, so nothing that was sent goes unmarked.
    """
    payload, body = msgspec.to_builtins(note), msgspec.json.encode(note)
    script = ctx.redis.register_script(NOTIFY_ONCE)
    gate = asyncio.Semaphore(PARALLEL_SENDS)
    errors: list[Exception] = []

    async def one(user_id: str) -> bool:
        async with gate:
            if errors:
                return False
            try:
                await notifier.send(user_id, payload)
                return await record_notified(ctx, script, user_id, body)
            except Exception as exc:  # collected, so that every push in flight is settled before we raise
                errors.append(exc)
                return False

    recorded = sum(await asyncio.gather(*(one(user_id) for user_id in recipients)))
    if errors:
        ctx.log.info("notified %d of %d followers before %d push(es) failed", recorded, len(recipients),
                     len(errors))
        raise most_severe(errors)
    return recorded


async def notify_followers(ctx: Context, actor_id: str, note: Notification, notifier: Notifier) -> int:
    """Notify the actor's followers, at most once per (event id, follower). Returns how many got it now."""
    followers = await followers_of(ctx.redis, ctx.namespace, actor_id)
    if not followers:
        return 0
    todo = await not_yet_notified(ctx, followers)
    if len(todo) < len(followers):
        ctx.log.info("%d of %d followers were already notified (redelivery)", len(followers) - len(todo),
                     len(followers))
    if todo:  # before the pushes, so a failed fan-out loses no reminder; one per user waits at most (reminders.py)
        await services.publish(reminders_for(todo))
    return await deliver(ctx, todo, note, notifier) if todo else 0


@app.handler(CardAddedToLibrary, group="notifications", concurrency=32, max_attempts=5)
async def card_added(event: CardAddedToLibrary, ctx: Context) -> None:
    text = f"{event.curator_id} added {event.title or event.url or event.card_id}"
    note = Notification(event_id=ctx.event_id, type=ctx.event_type, actor_id=event.curator_id, text=text,
                        url=event.url, at_ms=ctx.occurred_at_ms)
    await notify_followers(ctx, event.curator_id, note, services.notifier)


@app.handler(CollectionCreated, group="notifications", concurrency=32, max_attempts=5)
async def collection_created(event: CollectionCreated, ctx: Context) -> None:
    note = Notification(event_id=ctx.event_id, type=ctx.event_type, actor_id=event.owner_id,
                        text=f"{event.owner_id} started the collection {event.name!r}", at_ms=ctx.occurred_at_ms)
    await notify_followers(ctx, event.owner_id, note, services.notifier)


# The lane of each kind of account notice: a password reset must not wait behind a backlog of follower fan-outs.
ACCOUNT_NOTICE_LANES = {"password_reset": 0, "new_sign_in": 1, "tip": 2}


async def send_account_notice(target: App, user_id: str, kind: str, text: str, url: str | None = None,
                              ) -> Published:
    """Publish an account notice on its kind's lane (what the account service calls)."""
    notice = AccountNotice(user_id=user_id, kind=kind, text=text, url=url)
    return await target.publish(notice, priority=ACCOUNT_NOTICE_LANES.get(kind))


@app.handler(AccountNotice, group="notifications", concurrency=32, max_attempts=5)
async def account_notice(event: AccountNotice, ctx: Context) -> None:
    """One recipient, the user: pushed and recorded at most once, as for follower fan-outs. The group reads lane 0
    of `notify.account` before its other lanes (and lanes 1 and 2 keep a floor share of the reads)."""
    note = Notification(event_id=ctx.event_id, type=ctx.event_type, actor_id=event.user_id, text=event.text,
                        url=event.url, at_ms=ctx.occurred_at_ms)
    if await not_yet_notified(ctx, [event.user_id]):
        await deliver(ctx, [event.user_id], note, services.notifier)
