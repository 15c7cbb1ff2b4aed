"""The daily digest: a cron schedule, and group "digest" that writes the digest it asks for.

Every day at 06:00 UTC the schedule "daily-digest" publishes one DigestDue for the day before. Every worker process
evaluates the schedule, and the event id derived from the tick (cron:daily-digest:{tick}) makes it one append a
day, whatever the number of workers; after a night with no worker running, the most recent missed day is
digested when one starts (misfire="latest"). Its handler reads that day's analytics counters (analytics.py) and
writes the digest, a hash that a redelivery overwrites with the same content (naturally idempotent):

    social:digest:{2024-05-01}     "events" -> JSON {type: count}, "top_curator" -> the user who added most cards
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from handlers.analytics import KEPT_DAYS, TOTALS, counters_key
from handlers.app import app
from streamproc import Context, Event


class DigestDue(Event, tag="digest.due"):
    """Time to write the digest of `day` (YYYY-MM-DD, UTC)."""

    day: str


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def digest_key(ns: str, day: str) -> str:
    return f"{ns}:digest:{{{day}}}"


@app.cron("0 6 * * *", name="daily-digest", tz="UTC")
def daily_digest(tick: datetime) -> DigestDue:
    return DigestDue(day=(tick - timedelta(days=1)).date().isoformat())


@app.handler(DigestDue, group="digest", concurrency=1)
async def write_digest(event: DigestDue, ctx: Context) -> None:
    redis, ns = ctx.redis, ctx.namespace
    totals = await redis.hgetall(counters_key(ns, event.day, TOTALS))
    cards = await redis.hgetall(counters_key(ns, event.day, "card.added"))
    top = max(cards.items(), key=lambda kv: (int(kv[1]), kv[0]))[0] if cards else b""
    events = {_text(k): int(v) for k, v in sorted(totals.items())}
    key = digest_key(ns, event.day)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"events": msgspec.json.encode(events), "top_curator": top})
        pipe.expire(key, KEPT_DAYS * 86_400)
        await pipe.execute()
    ctx.log.info("digest of %s: %d events", event.day, sum(events.values()))
