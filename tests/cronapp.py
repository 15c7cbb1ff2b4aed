"""The app the schedule tests run in real processes: `python -m streamproc worker tests.cronapp:app`, and the
`streamproc schedules` commands. Its namespace comes from CRONAPP_NS. Its handler counts runs per event id in
`{ns}:runs` (a hash) and the every-second function its runs per tick in `{ns}:calls`, with the app's own client,
for the test to read back."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from streamproc import App, Context, Event


class Tick(Event, tag="cron.tick"):
    """One tick of a schedule, as its function saw it."""

    schedule: str
    at: str


NS = os.environ.get("CRONAPP_NS", "cronapp")
app = App(NS)


@app.cron(every=timedelta(seconds=1), name="every-second")
async def every_second(tick: datetime) -> Tick:
    await app.redis.hincrby(f"{NS}:calls", tick.isoformat(), 1)  # how many processes evaluated this tick
    return Tick(schedule="every-second", at=tick.isoformat())


@app.cron("0 9 * * mon-fri", name="weekday-digest", tz="Europe/Berlin")
async def weekday_digest(tick: datetime) -> list[Tick]:
    return [Tick(schedule="weekday-digest", at=tick.isoformat()), Tick(schedule="weekday-digest", at="second")]


@app.handler(Tick, group="ticks", concurrency=20)
async def count(event: Tick, ctx: Context) -> None:
    await ctx.redis.hincrby(f"{NS}:runs", ctx.event_id, 1)
