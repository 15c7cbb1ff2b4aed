"""One handler group in a worker process: a GroupWorker, a small set of structured tasks.

    reader ──► waiting ──► handler task (<= concurrency; eager handlers start inline) ──► settler (acks in pipelines)
    claimer (XAUTOCLAIM stalled entries) ──┘
    retry poller (due retries) ────────────┘
    heartbeat: keeps the lease of every held entry fresh
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis

from ..app import App, Handler
from ..publish.groups import recreate_group
from ..redis.connection import command_deadline_s
from ..redis.errors import Failure, FatalRedisError
from ..settings import Settings
from .consume import Delivery, Reader, Source
from .loops import Recovery, repeat
from .run import HandlerRun
from .settle import Settler

log = logging.getLogger(__name__)


# After the grace period, how long cancelled handlers get to unwind before that is logged as an error.
CANCEL_WAIT_S = 5.0
# A reclaimed entry estimated at this attempt or later (or at its handler's max_deliveries, if lower) may have been
# started more than once by workers that died or froze: a suspect. Suspects run one at a time, so that if one kills
# its worker again, it takes no entry running beside it down with it (nor its recorded starts up): an innocent
# entry's count stops growing before it can reach max_deliveries.
SUSPECT_ATTEMPT = 3


class GroupWorker:
    """Runs one handler group in this process: each delivery in a task of its own, at most `concurrency` at once
    (handlers registered with `eager=True` start inline and get a task only if they suspend)."""

    def __init__(self, app: App, group: str, handlers: list[Handler[Any]], consumer: str,
                 concurrency: int | None = None, on_fatal: Callable[[FatalRedisError], None] | None = None) -> None:
        self.app = app
        self.group = group
        self.settings: Settings = app.settings
        self.redis: aioredis.Redis = app.redis
        self.concurrency = concurrency or max(h.concurrency for h in handlers)
        sources = [Source(h, keys) for h in handlers for keys in h.route.partitions]
        self.reader = Reader(self.redis, group, consumer, sources, command_deadline_s(self.settings),
                             self.settings.priority_floor)
        self.settler = Settler(self.redis, group, consumer, self.settings.deadletter_max_length)
        self.run_one = HandlerRun(self.settler, self.redis, app.name, app.instruments)
        # Entries this consumer holds (waiting or running), for heartbeats and capacity.
        self.held: dict[tuple[str, bytes], Delivery] = {}
        self.waiting: deque[Delivery] = deque()
        self.suspects: deque[Delivery] = deque()
        self._suspect: tuple[str, bytes] | None = None  # the suspect running now
        self.running: set[asyncio.Task[None]] = set()
        self.capacity = self.concurrency + self.settings.batch_size
        self._space = asyncio.Event()
        self._space.set()
        self._tasks: asyncio.TaskGroup | None = None
        self.stopping = asyncio.Event()  # stop taking new work
        self._closed = asyncio.Event()  # stop the background loops (after in-flight work is settled)
        self.recovery = Recovery(self._recreate_groups, on_fatal or self._stop_on_fatal, self._note_failure)
        self.settler.on_fatal = self.recovery.fatal

    @property
    def free(self) -> int:
        return self.capacity - len(self.held)

    def _take(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            if d.held_key in self.held:
                continue  # already ours (a reclaim raced our own heartbeat); one run is enough
            self.held[d.held_key] = d
            suspect = d.deliveries and d.attempt >= min(SUSPECT_ATTEMPT, d.handler.max_deliveries)
            (self.suspects if suspect else self.waiting).append(d)
        if self.free <= 0:
            self._space.clear()
        self._pump()

    def _not_done(self, reclaimed: list[Delivery]) -> list[Delivery]:
        """Drop reclaimed entries whose ack is queued here: they ran, and the flusher is waiting out an outage
        (their lease ran out meanwhile). Running them again would be a needless duplicate."""
        queued = self.settler.queued()
        return [d for d in reclaimed if d.held_key not in queued] if queued else reclaimed

    def _pump(self) -> None:
        """Start waiting deliveries while fewer than `concurrency` handlers are suspended (suspects one at a
        time, beside the others)."""
        while self.waiting and len(self.running) < self.concurrency and not self.stopping.is_set():
            self._start(self.waiting.popleft())
        if (self.suspects and self._suspect is None and len(self.running) < self.concurrency
                and not self.stopping.is_set()):
            d = self.suspects.popleft()
            self._suspect = d.held_key
            self._start(d)

    def _start(self, d: Delivery) -> None:
        started = self.run_one.start(d)
        if started is None:
            self._release(d)
        else:
            assert self._tasks is not None
            task = self._tasks.create_task(self._finish(d, started.rest), context=started.context)
            self.running.add(task)

    async def _finish(self, d: Delivery, rest: Coroutine[Any, Any, None]) -> None:
        try:
            await rest
        finally:
            task = asyncio.current_task()
            if task is not None:
                self.running.discard(task)
            self._release(d)
            if not self._closed.is_set() and task is not None and not task.cancelling():
                self._pump()  # not while the group is going down: its TaskGroup takes no new tasks then

    def _release(self, d: Delivery) -> None:
        held = self.held
        held.pop(d.held_key, None)
        if d.held_key == self._suspect:
            self._suspect = None
        if len(held) < self.capacity:
            self._space.set()

    def _stop_on_fatal(self, error: FatalRedisError) -> None:
        log.error("%s", error)
        self.stopping.set()

    def _note_failure(self, kind: Failure) -> None:
        metrics = self.app.instruments.metrics
        if metrics is not None:
            metrics.redis_errors.labels(kind.value).inc()

    async def _recreate_groups(self) -> None:
        for stream in {s.keys.stream for s in self.reader.sources.values()}:
            await recreate_group(self.redis, stream, self.group)

    async def run(self) -> None:
        """Process until `stopping` is set, then drain within the grace period (counted from the stop) and flush
        acks. Every Redis call has a deadline, so the stop ends within the grace period plus about one read
        deadline whatever Redis does."""
        async with asyncio.TaskGroup() as tg:
            self._tasks = tg
            flusher = tg.create_task(self.settler.run_flusher(self._closed))
            heartbeat = tg.create_task(repeat(f"{self.group} heartbeat", self._heartbeat_step, self._closed,
                                              self.recovery))
            feeders = [tg.create_task(repeat(f"{self.group} {name}", step, self.stopping, self.recovery))
                       for name, step in (("reader", self._read_step), ("claimer", self._claim_step),
                                          ("retries", self._retry_step))]
            await self.stopping.wait()
            grace_ends = asyncio.get_running_loop().time() + self.settings.grace_period_s
            self.settler.stopping = True  # settle calls are tried once from now on
            await asyncio.wait(feeders)
            await self._drain(grace_ends)
            if self.running:  # handlers that ignored cancellation: keep their leases fresh until they are gone
                await asyncio.wait(set(self.running))
            # Stop the flusher between two flushes (never mid-flush), then send whatever it left.
            self._closed.set()
            self.settler.wake()
            await flusher
            heartbeat.cancel()
            await _quietly(self.settler.flush(), "flushing acks at stop")

    async def _drain(self, grace_ends: float) -> None:
        unstarted = [*self.waiting, *self.suspects]
        self.waiting.clear()
        self.suspects.clear()
        if unstarted:
            await _quietly(self.settler.hand_back(unstarted), "handing back unstarted entries")
            for d in unstarted:
                self._release(d)
        if not self.running:
            return
        left = max(0.0, grace_ends - asyncio.get_running_loop().time())
        _, late = await asyncio.wait(set(self.running), timeout=left)
        if late:
            log.warning("%s: %d handler(s) still running after the grace period; leaving their entries pending",
                        self.group, len(late))
            for task in late:
                task.cancel()
            # A handler may swallow its cancellation (code under asyncio.wait_for on Python 3.11 can): give it a
            # moment, then stop anyway. Its entry stays pending either way, so nothing is lost by not waiting.
            _, stubborn = await asyncio.wait(late, timeout=CANCEL_WAIT_S)
            if stubborn:
                log.error("%s: %d handler(s) ignored cancellation; waiting for them to end", self.group,
                          len(stubborn))

    async def _read_step(self) -> float:
        if not self._space.is_set():
            try:
                async with asyncio.timeout(self.settings.block_ms / 1000):
                    await self._space.wait()
            except TimeoutError:
                return 0.0
        if self.stopping.is_set():
            return 0.0
        count = min(self.settings.batch_size, self.free)
        if count <= 0:
            # The claimer or the retry poller may fill the space between `_space` being set and this step resuming;
            # XREADGROUP COUNT 0 would raise DataError and take the whole worker down (seen under load).
            return 0.0
        self._take(await self.reader.read_new(count, self.settings.block_ms))
        return 0.0

    async def _claim_step(self) -> float:
        if self.free > 0:
            self._take(self._not_done(await self.reader.claim_stalled(self.settings.lease_ms, self.free)))
        return self.settings.claim_interval_ms / 1000

    async def _retry_step(self) -> float:
        if self.free > 0:
            ready, gone = await self.reader.take_retries(self.settings.lease_ms, self.free)
            self._take(self._not_done(ready))
            if gone:
                await self.settler.forget_retries(gone)
        return self.settings.retry_poll_ms / 1000

    async def _heartbeat_step(self) -> float:
        if self.held:
            lost = await self.settler.heartbeat(list(self.held.values()), self.settings.lease_ms)
            for d in lost:
                if d.held_key not in self.held:
                    continue  # settled while the heartbeat was on its way: not lost, just done
                log.warning("%s lost the lease of %s %s (another consumer took it); it may run twice",
                            self.group, d.keys.stream, d.entry_id.decode())
        return self.settings.lease_ms / 3000


async def _quietly(work: Any, what: str) -> None:
    try:
        await work
    except Exception as exc:  # Redis is away at stop: entries stay pending and are reclaimed later
        log.warning("%s failed (%s); the affected entries stay pending", what, exc)
