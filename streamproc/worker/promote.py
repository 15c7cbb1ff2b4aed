"""Moving delayed events to their streams when due: every worker process does it, there is no leader.

Each process polls the namespace's delayed index (redis/lua/delayed_due.lua: one call, by Redis's clock, whatever
the number of types and partitions) every `delayed_poll_ms`, or sooner when the next due time is nearer. For each
partition with something due it moves a batch (redis/lua/move_delayed.lua: due -> XADD -> removed, atomically, so
two processes moving the same partition append each event once; several batches per round trip while it is behind),
and its next poll first sets the partition's index score to what the move left, by compare-and-set against the
version it polled (in the same call: see publish/delayed.py).

The index is a hint beside the partitions (another slot), so it can be wrong in one direction only, and each way
it can is closed:
- A publisher's touch that comes after a mover's poll changes the version: the mover's compare-and-set does
  nothing, and the index keeps the touch's lower score. A touch that comes before the poll is seen by the move.
- A mover killed (or stopped) between its move and its next poll's compare-and-set leaves the index score as it
  was, lower than or equal to what is left: the partition is polled again at once, and the next mover sets it right.
- A score lower than needed (a cancel, another mover's later move) costs one empty move, never a late event.
- A publisher killed between scheduling and touching the index, or whose touch failed (the publish stands then:
  failing it would make a retry schedule again), or Redis losing the index but not the partitions: each process
  checks one partition every SWEEP_EVERY polls (a constant cost, whatever the number of partitions), in turn
  those of its app and those of other types the index ever named to it, and rebuilds the index for every
  partition of its app at start. A partition of a type no worker's app declares that the index never named is
  not found: finding it would take a SCAN of the keyspace ({ns}:delayed:*), O(keys of the database) per sweep;
  its events wait until a publisher touches its index entry again (any later delayed publish to it does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from .. import eventloop
from ..app import App
from ..keys import PartitionKeys, delayed_index
from ..publish.delayed import partition_of_member, touch_call
from ..publish.groups import Wanted, ensure_declared
from ..redis.connection import redis_client
from ..redis.errors import FatalRedisError
from ..redis.resp import text
from ..redis.scripts import DELAYED_DUE, DELAYED_TOUCH, MOVE_DELAYED
from .loops import Recovery, repeat

log = logging.getLogger(__name__)

# Partitions one poll returns at most (the others are due too, and come with the next poll, at once).
POLL_PARTITIONS = 100
# Polls between two checks of one of the app's partitions against the index (about once a second at 50 ms).
SWEEP_EVERY = 20
# Most move calls pipelined per partition in one round trip while the mover is behind (each one batch).
MAX_BURST = 16
# The shortest pause between polls when the next due time is nearer than the poll interval.
MIN_PAUSE_S = 0.01


@dataclass(slots=True)
class Partition:
    """A partition whose delayed events this process moves: its (lane-less) keys, the streams its events may go
    to (its lanes', learned from the store if this app does not know the type), and whether a stream may be
    created by the move (only when no group is declared on it anywhere: else it is made with its groups first)."""

    keys: PartitionKeys
    streams: list[str] = field(default_factory=list)
    nomkstream: bool = True


@dataclass(frozen=True, slots=True)
class Due:
    """A partition the index says has something due, and the version of its index entry then."""

    member: str
    version: str


class Promoter:
    """One process's mover: the polls, moves and index updates of redis/lua/*delayed*.lua."""

    def __init__(self, app: App, redis: aioredis.Redis | None = None) -> None:
        self.app = app
        self.redis = redis if redis is not None else app.redis
        self.index = list(delayed_index(app.name))
        self.partitions: dict[str, Partition] = {}
        self.sweep_order: list[str] = []  # the app's partitions, then those the index named (learned in _partition)
        for route in app.topology.by_tag.values():
            for keys in route.partitions:
                part = self._partition(keys.member)
                if keys.stream not in part.streams:
                    part.streams.append(keys.stream)
        self.sweep_order.sort()
        self.polls = 0
        self.burst = 1  # move calls per partition per round trip (more while behind)
        self.left: list[str | int] = []  # what the last moves left, for the next poll's compare-and-set
        self.dead = 0  # delayed entries set aside as unappendable (move_delayed.lua), since start
        self._due = self.redis.register_script(DELAYED_DUE)
        self._move = self.redis.register_script(MOVE_DELAYED)
        self._touch = self.redis.register_script(DELAYED_TOUCH)

    def _partition(self, member: str) -> Partition:
        part = self.partitions.get(member)
        if part is None:
            keys = partition_of_member(self.app.name, member)
            part = self.partitions[member] = Partition(keys, [keys.stream])
            self.sweep_order.append(member)
        return part

    async def rebuild(self, chosen: Sequence[str] | None = None) -> int:
        """Put every partition of the app (or those chosen) that holds delayed events into the index, at its
        earliest due (after Redis lost the index, or a publisher died before touching it). Returns how many."""
        names = list(chosen if chosen is not None else self.sweep_order)
        if not names:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for member in names:
                pipe.zrange(self.partitions[member].keys.delayed(), 0, 0, withscores=True)
            firsts = await pipe.execute()
        touches = {m: int(first[0][1]) for m, first in zip(names, firsts, strict=True) if first}
        if touches:
            keys, args = touch_call(self.app.name, touches)
            await self._touch(keys=keys, args=args)
        return len(touches)

    async def step(self) -> float:
        """One poll, and the moves it calls for; returns the pause before the next."""
        settings = self.app.settings
        moved, self.left = self.left, []
        now, later, flat = await self._due(keys=self.index, args=[POLL_PARTITIONS, len(moved) // 3, *moved])
        self.polls += 1
        if self.polls % SWEEP_EVERY == 0 and self.sweep_order:
            await self.rebuild([self.sweep_order[(self.polls // SWEEP_EVERY) % len(self.sweep_order)]])
        next_due = [float(later)] if later else []
        due = [Due(text(flat[i]), text(flat[i + 2])) for i in range(0, len(flat), 3)]
        if due:
            again, left = await self.move(due)
            if again or len(due) >= POLL_PARTITIONS:  # a full list: more partitions are due now, poll at once
                return 0.0
            next_due += left
        pause = settings.delayed_poll_ms / 1000
        if next_due:
            pause = min(pause, max(MIN_PAUSE_S, (min(next_due) - float(now)) / 1000))
        return pause

    async def move(self, due: list[Due]) -> tuple[bool, list[float]]:
        """Move one batch of each due partition, then update their index entries. Returns whether to poll again at
        once (a batch was full, or a stream had to be learned or recreated) and the earliest dues left."""
        batch, burst = self.app.settings.delayed_batch, self.burst
        parts = [self._partition(d.member) for d in due]
        async with self.redis.pipeline(transaction=False) as pipe:
            for part in parts:
                for _ in range(burst):  # each call is atomic on its own; a call that finds nothing due is cheap
                    await self._move(keys=[part.keys.delayed(), part.keys.delayed_entries(),
                                           part.keys.delayed_dead(), *part.streams],
                                     args=[batch, int(part.nomkstream), part.keys.hash_tag], client=pipe)
            replies: list[Any] = await pipe.execute()
        again, left = False, []
        for i, (d, part) in enumerate(zip(due, parts, strict=True)):
            mine = replies[i * burst : (i + 1) * burst]
            self._count_dead(part, mine)
            # A call that stopped early ('unknown', 'missing') made the calls after it stop at the same entry: its
            # state is the one to act on. Whether more is due is told by the last call (its batch was full), and
            # what is left by the first that stopped (the later ones saw the same store).
            _, state, stream, first, *_ = next((r for r in mine if text(r[1]) != "done"), mine[-1])
            again = await self._after_move(part, int(mine[-1][0]), text(state), text(stream)) or again
            if first:
                left.append(float(first))
            self.left += [d.member, d.version, text(first)]  # set by the next poll, in the same call
        # Behind (a full last batch): more calls per round trip next time, up to MAX_BURST; else one again.
        self.burst = min(MAX_BURST, burst * 2) if again else 1
        return again, left

    def _count_dead(self, part: Partition, replies: list[Any]) -> None:
        """Count and log (once: they left the store) the entries the move put in the dead stream."""
        dead = sum(int(r[4]) for r in replies)
        if dead:
            self.dead += dead
            reason = next(text(r[5]) for r in replies if int(r[4]))
            log.error("%d delayed event(s) of %s could not be appended (%s); they are in %s", dead,
                      part.keys.delayed(), reason, part.keys.delayed_dead())

    async def _after_move(self, part: Partition, moved: int, state: str, stream: str) -> bool:
        """Learn a stream the store names (of this slot: the script sets aside any other), or recreate a vanished
        one with its groups; True to move again now."""
        if state == "unknown":
            part.streams.append(stream)
            return True
        if state == "missing":
            await self._recreate(part, stream)
            return True
        return moved >= self.app.settings.delayed_batch

    async def _recreate(self, part: Partition, stream: str) -> None:
        """A stream vanished while delayed events waited for it (Redis lost it): create its declared groups first
        (this app's and the registry's), as a publisher does, so the moved events are not appended to a stream
        without its groups. A stream no group is declared on anywhere is made by the move, as by a publish."""
        keys = PartitionKeys.of_stream(stream)
        route = self.app.topology.by_tag.get(keys.tag)
        wanted = Wanted(keys, route.all_groups() if route is not None else {})
        declared = (await ensure_declared(self.redis, [wanted]))[keys]
        if not declared:  # not a loss: the first delayed event of a type no group is declared on makes its stream
            part.nomkstream = False
            return
        log.warning("stream %s vanished while delayed events waited for it (did Redis lose its data?); created its "
                    "groups %s again before appending them", stream, sorted(declared))


class _Stop:
    """The worker's stop as the mover's thread sees it: its loop's stopping event, set from the worker's loop at once
    (not at the mover's next step: while Redis is away the mover backs off for up to seconds)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = False
        self._target: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def attach(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        """In the mover's thread: the event to set on stop (set at once if the stop came first)."""
        with self._lock:
            self._target = (loop, event)
            if self._stopped:
                event.set()

    def set(self) -> None:
        with self._lock:
            self._stopped = True
            if self._target is not None:
                loop, event = self._target
                with contextlib.suppress(RuntimeError):  # its loop closed already: the thread has ended
                    loop.call_soon_threadsafe(event.set)


async def promote(app: App, stopping: asyncio.Event, on_fatal: Callable[[FatalRedisError], None]) -> None:
    """Move due delayed events until stopped, in a thread of this process with an event loop and Redis connections
    of its own: the worker's loop may be busy with thousands of handler runs a second, and a mover that waits its
    turn among them appends late (measured at 10,000 delayed events/s beside a no-op handler: a p99 of seconds on
    the worker's loop, 27 ms in its own thread; bench/RESULTS.md, section 9). The thread holds the GIL only while
    it works, a few ms per poll."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    stop = _Stop()

    def to_worker(fn: Callable[..., object], *args: object) -> None:  # from the mover's thread to the worker's loop
        with contextlib.suppress(RuntimeError):  # the worker's loop closed (its stop deadline passed): nobody waits
            loop.call_soon_threadsafe(fn, *args)

    def run() -> None:
        try:
            eventloop.run(_promote(app, stop, lambda error: to_worker(on_fatal, error)))
        except BaseException as exc:  # never silent: the worker stops with it
            log.exception("the delayed-event mover failed")
            to_worker(_settle, finished, exc)
        else:
            to_worker(_settle, finished, None)

    # A mover that ends before the stop (a bug: repeat() rides out every Redis failure) stops the worker, loudly.
    finished.add_done_callback(lambda _: stopping.set())
    threading.Thread(target=run, name="streamproc-delayed-mover", daemon=True).start()
    try:
        await stopping.wait()
    finally:
        stop.set()
        await asyncio.shield(finished)  # the thread ends after its call in flight (each has a Redis deadline)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


async def _promote(app: App, stop: _Stop, on_fatal: Callable[[FatalRedisError], None]) -> None:
    """The mover's loop, in its own thread: rebuild the index for the app's partitions, then poll and move."""
    redis = redis_client(app.settings)
    promoter = Promoter(app, redis)
    stopping = asyncio.Event()
    stop.attach(asyncio.get_running_loop(), stopping)
    rebuilt = False

    async def step() -> float:
        nonlocal rebuilt
        if not rebuilt:
            found = await promoter.rebuild()
            rebuilt = True
            if found:
                log.info("delayed events wait in %d partition(s) of %s", found, app.name)
        return await promoter.step()

    async def nothing() -> None:  # the move recreates vanished streams itself (Promoter._recreate)
        return None

    try:
        await repeat("moving delayed events", step, stopping, Recovery(nothing, on_fatal))
    finally:
        await redis.aclose()
