"""The app that metrics and `streamproc dev` tests run in real processes: `python -m streamproc worker
tests.metricsapp:app`. Its namespace comes from METRICSAPP_NS, so every test gets its own keys.

Group "count" handles `metrics.tick`: it sleeps `pause` seconds and records which process ran it in the set
`{ns}:pids`, so a test can tell that several worker processes shared the work.
"""

from __future__ import annotations

import asyncio
import os

from streamproc import App, Context, Event, Settings


class Tick(Event, tag="metrics.tick"):
    n: int
    pause: float = 0.0


def make_app(ns: str, settings: Settings | None = None) -> App:
    app = App(ns, settings=settings)

    @app.handler(Tick, group="count", concurrency=2)
    async def count(event: Tick, ctx: Context) -> None:
        await asyncio.sleep(event.pause)
        await ctx.redis.sadd(f"{ctx.namespace}:pids", os.getpid())

    return app


app = make_app(os.environ.get("METRICSAPP_NS", "metricsapp"))
