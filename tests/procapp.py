"""The app that process-level fault tests run in real worker processes: `python -m streamproc worker tests.procapp:app`.

Its namespace comes from PROCAPP_NS, so every test gets its own keys. Each event type has its own group, so a test
picks the behaviours it wants with `--group`. Handlers record what they did in Redis (with the app's own client), for
the test to read back:

    {ns}:runs         hash  event id -> handler starts
    {ns}:inflight     hash  event id -> handler runs in progress now (a SIGKILLed run never decrements)
    {ns}:maxinflight  hash  event id -> most runs in progress at once
    {ns}:started      list  "{event id}:{pid}" per handler start, in order
    {ns}:done         set   event ids whose handler finished successfully
    {ns}:release      key   when it exists, every Hold handler finishes; {ns}:release:{event id} releases one
"""

from __future__ import annotations

import asyncio
import os
import signal

import redis.asyncio as aioredis

from streamproc import App, Backoff, Context, Event, Retry, Settings

# KEYS: runs, inflight, maxinflight, started. ARGV: event id, pid. One atomic step, so the max is exact.
_START = """
local runs = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local now = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if now > tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0') then redis.call('HSET', KEYS[3], ARGV[1], now) end
redis.call('RPUSH', KEYS[4], ARGV[1] .. ':' .. ARGV[2])
return runs
"""


class Work(Event, tag="proc.work"):
    """Ordinary work: `pause` seconds of pretend I/O."""

    n: int = 0
    pause: float = 0.001


class Slow(Event, tag="proc.slow"):
    """Takes `seconds` (longer than the lease) while its process stays alive."""

    seconds: float


class Hold(Event, tag="proc.hold"):
    """Runs until the test releases it (see the module docstring), asking Redis every `poll` seconds (0: without
    pause, so that the handler is nearly always in the middle of a Redis command)."""

    poll: float = 0.01


class Fail(Event, tag="proc.fail"):
    """Always raises."""


class Later(Event, tag="proc.later"):
    """Fails its first attempt asking for a retry in `delay` seconds; each attempt records Redis's time
    (`{ns}:attempted:{n}` hash event id -> ms), so a test can tell whether a retry ran before it was due."""

    delay: float


class Crash(Event, tag="proc.crash"):
    """SIGKILLs the worker process that runs it."""


FAIL_MAX_ATTEMPTS = 3
CRASH_MAX_DELIVERIES = 2


class Mixed(Event, tag="proc.mixed"):
    """Group "mixed": ordinary work of `pause` seconds, or (poison) a SIGKILL of the worker running it, among the
    others of its batch."""

    poison: bool = False
    pause: float = 0.2


class Recorder:
    """The Redis bookkeeping shared by all handlers."""

    def __init__(self, ns: str) -> None:
        self.ns = ns

    def key(self, name: str) -> str:
        return f"{self.ns}:{name}"

    async def start(self, ctx: Context) -> int:
        keys = [self.key("runs"), self.key("inflight"), self.key("maxinflight"), self.key("started")]
        return int(await ctx.redis.eval(_START, len(keys), *keys, ctx.event_id, os.getpid()))

    async def end(self, redis: aioredis.Redis, event_id: str, ok: bool) -> None:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(self.key("inflight"), event_id, -1)
            if ok:
                pipe.sadd(self.key("done"), event_id)
            await pipe.execute()

    async def released(self, redis: aioredis.Redis, event_id: str) -> bool:
        return bool(await redis.exists(self.key("release"), self.key(f"release:{event_id}")))


def make_app(ns: str, settings: Settings | None = None) -> App:
    app = App(ns, settings=settings)
    rec = Recorder(ns)

    @app.handler(Work, group="work", concurrency=20)
    async def work(event: Work, ctx: Context) -> None:
        await rec.start(ctx)
        ok = False
        try:
            await asyncio.sleep(event.pause)
            ok = True
        finally:
            await rec.end(ctx.redis, ctx.event_id, ok)

    @app.handler(Slow, group="slow", concurrency=4, timeout=None)
    async def slow(event: Slow, ctx: Context) -> None:
        await rec.start(ctx)
        ok = False
        try:
            await asyncio.sleep(event.seconds)
            ok = True
        finally:
            await rec.end(ctx.redis, ctx.event_id, ok)

    @app.handler(Hold, group="hold", concurrency=4, timeout=None)
    async def hold(event: Hold, ctx: Context) -> None:
        await rec.start(ctx)
        ok = False
        try:
            while True:  # polls Redis: the release comes from another process
                if await rec.released(ctx.redis, ctx.event_id):
                    break
                await asyncio.sleep(event.poll)
            ok = True
        finally:
            await rec.end(ctx.redis, ctx.event_id, ok)

    @app.handler(Fail, group="fail", concurrency=2, max_attempts=FAIL_MAX_ATTEMPTS,
                 backoff=Backoff(base=0.01, cap=0.05, jitter=False))
    async def fail(event: Fail, ctx: Context) -> None:
        await rec.start(ctx)
        await rec.end(ctx.redis, ctx.event_id, False)
        raise RuntimeError(f"always fails (attempt {ctx.attempt})")

    @app.handler(Crash, group="crash", concurrency=2, max_attempts=5, max_deliveries=CRASH_MAX_DELIVERIES)
    async def crash(event: Crash, ctx: Context) -> None:
        await rec.start(ctx)
        os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(60)  # never reached: the process is gone; never let it look like a success

    _add_fault_handlers(app, rec)
    return app


def _add_fault_handlers(app: App, rec: Recorder) -> None:
    """Handlers of the fault tests that need more than one process (a skewed clock, a crash loop)."""

    @app.handler(Later, group="later", concurrency=20)
    async def later(event: Later, ctx: Context) -> None:
        await rec.start(ctx)
        seconds, micros = await ctx.redis.time()
        await ctx.redis.hset(rec.key(f"attempted:{ctx.attempt}"), ctx.event_id, seconds * 1000 + micros // 1000)
        await rec.end(ctx.redis, ctx.event_id, ctx.attempt > 1)
        if ctx.attempt == 1:
            raise Retry(delay=event.delay)

    @app.handler(Mixed, group="mixed", concurrency=20, max_deliveries=CRASH_MAX_DELIVERIES)
    async def mixed(event: Mixed, ctx: Context) -> None:
        await rec.start(ctx)
        if event.poison:
            os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(event.pause)
        await rec.end(ctx.redis, ctx.event_id, True)


app = make_app(os.environ.get("PROCAPP_NS", "procapp"))

