"""`await drain(app)`: run an app's handlers in this process, against its real Redis, until nothing is left to do,
and say what happened to each event: processed, retried, dead-lettered.

The handlers run in a real worker (`run_worker`: the same reading, settling, retries and dead letters as in
production), with short polling intervals. "Nothing left" is read from Redis in one MULTI (so on a single Redis,
not a Cluster): for every drained group on every stream of its event types, no unread entry, none pending (read
and not settled: running, or its ack not flushed yet) and no scheduled retry. A handler that publishes follow-up
events for a drained group keeps the drain going until those are done too.

Retries with a backoff delay are made due at once (see due_now.lua), so a test never waits out a backoff; pass
`wait_retries=True` to wait for them as production does. Delayed events of the drained types (`publish(...,
delay=...)`, by the test or by a handler) are likewise made due at once (due_now_delayed.lua) and count as work
left until they are handled; `wait_delayed=True` waits for their due times instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import redis.asyncio as aioredis

from ..app import App, Handler, HandlerFn
from ..context import Context
from ..event import Event
from ..keys import PartitionKeys
from ..publish.delayed import partition_of_member, touch_call
from ..redis.resp import text
from ..redis.scripts import DELAYED_TOUCH
from ..worker.deadletter import DeadLettered, parse_deadletter
from ..worker.process import run_worker

DUE_NOW = files(__package__).joinpath("due_now.lua").read_text(encoding="utf-8")
DUE_NOW_DELAYED = files(__package__).joinpath("due_now_delayed.lua").read_text(encoding="utf-8")
# Timings of the drain's worker: it notices new entries, due retries and its stop within a few milliseconds.
DRAIN_TIMINGS: dict[str, Any] = {"block_ms": 20, "retry_poll_ms": 10, "claim_interval_ms": 100,
                                 "backlog_check_ms": 0, "grace_period_s": 5.0}
POLL_S = 0.01
# The worker's graceful stop gets what is left of the drain's timeout, but at least STOP_MIN_S (an idle worker stops
# in milliseconds); then it is cancelled, and must be gone within CANCEL_WAIT_S.
STOP_MIN_S = 1.0
CANCEL_WAIT_S = 2.0


class DrainTimeout(AssertionError):
    """The handlers did not finish within the drain's timeout; the message says what was left where."""


@dataclass(frozen=True, slots=True)
class Run:
    """One run of a handler: its group, the event id, which attempt it was, and the error it raised (None: it
    succeeded). A run the handler's timeout cut short shows the CancelledError the handler saw."""

    group: str
    event_id: str
    attempt: int
    error: BaseException | None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Drained:
    """What one drain did. Counters are by event id, summed over the drained groups:

    processed[id]      runs that succeeded (1 per group that handled the event)
    retried[id]        failed runs that were run again (a retry was scheduled)
    dead_lettered[id]  entries that went to a dead-letter stream (handler gave up, attempts exhausted,
                       max_deliveries, undecodable)

    `runs` lists every handler run in order; `dead_letters` the dead-letter records with their reasons."""

    runs: tuple[Run, ...]
    dead_letters: tuple[DeadLettered, ...]
    processed: Counter[str]
    retried: Counter[str]
    dead_lettered: Counter[str]

    @classmethod
    def of(cls, runs: Iterable[Run], dead_letters: Iterable[DeadLettered]) -> Drained:
        runs, dead_letters = tuple(runs), tuple(dead_letters)
        processed = Counter(r.event_id for r in runs if r.ok)
        retried: Counter[str] = Counter()
        last_failed: dict[tuple[str, str], bool] = {}
        for r in runs:  # a failed run followed by another run of the same event in the same group was retried
            key = (r.group, r.event_id)
            if last_failed.get(key):
                retried[r.event_id] += 1
            last_failed[key] = not r.ok
        return cls(runs, dead_letters, processed, retried, Counter(d.event_id for d in dead_letters))

    def in_group(self, group: str) -> Drained:
        """The same, for one group only."""
        return Drained.of([r for r in self.runs if r.group == group],
                          [d for d in self.dead_letters if d.group == group])

    def errors(self, event_id: str) -> list[BaseException]:
        """The errors the event's failed runs raised, in order."""
        return [r.error for r in self.runs if r.event_id == event_id and r.error is not None]


@dataclass(frozen=True, slots=True)
class _Watched:
    """One (stream, group) the drain waits on."""

    keys: PartitionKeys
    group: str


async def drain(app: App, groups: Iterable[str] | None = None, *, timeout: float = 30.0,  # noqa: ASYNC109
                wait_retries: bool = False, wait_delayed: bool = False) -> Drained:
    """Run the app's handlers (all groups, or those named) until nothing is left for them, then stop them
    gracefully and return what happened. Raises DrainTimeout if that takes longer than `timeout` seconds, and
    whatever stopped the worker (a fatal Redis error) if it stopped."""
    chosen = sorted(app.groups()) if groups is None else sorted(set(groups))
    unknown = set(chosen) - set(app.groups())
    if unknown:
        raise ValueError(f"no handlers for group(s) {sorted(unknown)}; known: {sorted(app.groups())}")
    runs: list[Run] = []
    running: Counter[str] = Counter()  # "group handler event_id" of the runs in progress, for the stop's error
    worker_app = _recording_app(app, runs, running)
    deadline = time.monotonic() + timeout
    watched = [_Watched(keys, h.group) for h in app.handlers if h.group in chosen for keys in h.route.partitions]
    try:
        marks = await _deadletter_marks(worker_app.redis, watched)
        stopping = asyncio.Event()
        task = asyncio.create_task(run_worker(worker_app, stopping, chosen))
        try:
            await _until_idle(worker_app.redis, watched, task, timeout, _Waits(wait_retries, wait_delayed))
        finally:
            stopping.set()
            await _stopped(task, max(deadline - time.monotonic(), STOP_MIN_S), running)
        dead = await _deadletters_since(worker_app.redis, marks)
    finally:
        await worker_app.aclose()
    return Drained.of(runs, dead)


def _recording_app(app: App, runs: list[Run], running: Counter[str]) -> App:
    """The app's handlers, each recording its runs, on the app's streams (the same topology) with a client of
    their own (ctx.redis) and the drain's timings."""
    worker_app = App(app.name, settings=app.settings.replace(**DRAIN_TIMINGS))
    worker_app.topology = app.topology
    worker_app.instruments = app.instruments
    worker_app.worker_resources = list(app.worker_resources)
    worker_app.handlers = [dataclasses.replace(h, fn=_recording(h, runs, running)) for h in app.handlers]
    return worker_app


def _recording(handler: Handler[Any], runs: list[Run], running: Counter[str]) -> HandlerFn[Any]:
    fn = handler.fn

    @functools.wraps(fn)
    async def run(event: Event, ctx: Context) -> None:
        name = f"{ctx.group} {getattr(fn, '__qualname__', fn)} {ctx.event_id}"
        running[name] += 1
        try:
            await fn(event, ctx)
        except BaseException as exc:
            runs.append(Run(ctx.group, ctx.event_id, ctx.attempt, exc))
            raise
        finally:
            running[name] -= 1
        runs.append(Run(ctx.group, ctx.event_id, ctx.attempt, None))

    return run


@dataclass(frozen=True, slots=True)
class _Waits:
    """What the drain waits out as production would, instead of making it due at once."""

    retries: bool
    delayed: bool


async def _until_idle(redis: aioredis.Redis, watched: list[_Watched], task: asyncio.Task[None], timeout: float,  # noqa: ASYNC109
                      waits: _Waits) -> None:
    due_now = redis.register_script(DUE_NOW)
    deadline = time.monotonic() + timeout
    while True:
        if task.done():
            task.result()  # raises what stopped the worker
            raise RuntimeError("the drain's worker stopped before its handlers were done")
        if not waits.retries:
            async with redis.pipeline(transaction=False) as pipe:
                for w in watched:
                    await due_now(keys=[w.keys.retry(w.group), w.keys.leases(w.group)], client=pipe)
                await pipe.execute()
        if not waits.delayed:
            await _delayed_due_now(redis, watched)
        left = await _left(redis, watched)
        if not left:
            return
        if time.monotonic() >= deadline:
            raise DrainTimeout(f"handlers were not done after {timeout}s; left: {'; '.join(left)}")
        await asyncio.sleep(POLL_S)


async def _delayed_due_now(redis: aioredis.Redis, watched: list[_Watched]) -> None:
    """Make the drained types' delayed events due now, and lower the delayed index to now where any were moved
    (the worker's mover then appends them at its next poll)."""
    parts = {w.keys.member: w.keys for w in watched}
    script = redis.register_script(DUE_NOW_DELAYED)
    async with redis.pipeline(transaction=False) as pipe:
        for keys in parts.values():
            await script(keys=[keys.delayed()], client=pipe)
        nows = await pipe.execute()
    touches = {member: int(now) for member, now in zip(parts, nows, strict=True) if int(now)}
    if touches:
        names, args = touch_call(next(iter(parts.values())).ns, touches)
        await redis.register_script(DELAYED_TOUCH)(keys=names, args=args)


async def _left(redis: aioredis.Redis, watched: list[_Watched]) -> list[str]:
    """What is left to do, per (stream, group), read in one MULTI so that it is one moment's state: an entry
    moves from unread to pending to settled (or to a retry, or a follow-up event is appended) within it or not."""
    streams = sorted({w.keys.stream for w in watched})
    members = sorted({w.keys.member for w in watched})
    async with redis.pipeline(transaction=True) as pipe:
        for stream in streams:
            pipe.xinfo_stream(stream)
            pipe.xinfo_groups(stream)
        for w in watched:
            pipe.zcard(w.keys.retry(w.group))
        for member in members:
            pipe.zcard(partition_of_member(watched[0].keys.ns, member).delayed())
        replies = await pipe.execute(raise_on_error=False)
    info = {s: (replies[2 * i], replies[2 * i + 1]) for i, s in enumerate(streams)}
    retries = replies[2 * len(streams): 2 * len(streams) + len(watched)]
    waiting = dict(zip(members, replies[2 * len(streams) + len(watched):], strict=True))
    left = [why for w, scheduled in zip(watched, retries, strict=True)
            if (why := _left_in(w, *info[w.keys.stream], scheduled))]
    return left + [f"{n} delayed event(s) waiting in partition {m}" for m, n in waiting.items() if n]


def _left_in(w: _Watched, stream: Any, groups: Any, scheduled: Any) -> str:
    where = f"{w.group} on {w.keys.stream}"
    if isinstance(stream, Exception) or isinstance(groups, Exception):
        return f"{where}: no stream or group yet"
    group = next((g for g in groups if text(g["name"]) == w.group), None)
    if group is None:
        return f"{where}: no group yet"
    unread = _entry_id(stream["last-generated-id"]) > _entry_id(group["last-delivered-id"])
    parts = [("unread entries" if unread else ""), (f"{group['pending']} pending" if group["pending"] else ""),
             (f"{scheduled} scheduled retries" if scheduled else "")]
    return f"{where}: {', '.join(p for p in parts if p)}" if any(parts) else ""


def _entry_id(value: object) -> tuple[int, int]:
    ms, _, seq = text(value).partition("-")
    return int(ms), int(seq or 0)


async def _stopped(task: asyncio.Task[None], within: float, running: Counter[str]) -> None:
    """Wait `within` seconds for the worker's graceful stop, then cancel it; raise what stopped it, if anything did,
    and a RuntimeError naming the handler runs still going if even cancelling does not stop it (a handler that
    swallows CancelledError), rather than wait forever."""
    await asyncio.wait([task], timeout=within)
    if not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=CANCEL_WAIT_S)
        if not task.done():
            left = sorted(name for name, n in running.items() if n > 0)
            raise RuntimeError(f"the drain's worker did not stop within {CANCEL_WAIT_S:g}s of being cancelled; "
                               f"handler runs still going (do they swallow CancelledError?): "
                               f"{', '.join(left) or 'none'}")
        if task.cancelled():
            return
    task.result()  # raises what stopped the worker


async def _deadletter_marks(redis: aioredis.Redis, watched: list[_Watched]) -> dict[str, str]:
    """The last entry of each watched dead-letter stream now: the drain reports only those after it."""
    keys = sorted({w.keys.deadletter(w.group) for w in watched})
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.xrevrange(key, count=1)
        replies = await pipe.execute()
    return {key: (text(last[0][0]) if last else "0-0") for key, last in zip(keys, replies, strict=True)}


async def _deadletters_since(redis: aioredis.Redis, marks: dict[str, str]) -> list[DeadLettered]:
    async with redis.pipeline(transaction=False) as pipe:
        for key, mark in marks.items():
            pipe.xrange(key, min=f"({mark}")
        replies = await pipe.execute()
    found = [parse_deadletter(eid, raw) for entries in replies for eid, raw in entries]
    return sorted(found, key=lambda d: (d.dead_at_ms, d.id))
