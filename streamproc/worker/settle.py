"""Settling entries: ack (batched), scheduled retry, dead-letter, lease heartbeats and hand-back.

Each outcome leaves the pending list in one atomic Redis call on one hash slot. The calls that follow a handler
run under asyncio.shield, so cancelling a worker cannot leave one half done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rx

from ..redis.resp import pack_command, send_packed
from ..redis.scripts import DEAD_LETTER, HEARTBEAT, RETRY_DONE, SCHEDULE_RETRY
from .consume import Delivery
from .deadletter import deadletter_fields

log = logging.getLogger(__name__)

T = TypeVar("T")
TRANSIENT = (rx.ConnectionError, rx.TimeoutError, rx.BusyLoadingError, OSError)
# XCLAIM IDLE given to handed-back entries, so that any other consumer's XAUTOCLAIM takes them at once.
HANDED_BACK_IDLE_MS = 1_000_000_000


class Settler:
    def __init__(self, redis: aioredis.Redis, group: str, consumer: str, dlq_max_length: int) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.dlq_max_length = dlq_max_length
        self._group_bytes = group.encode()
        self._acks: dict[str, list[bytes]] = {}
        self._retries_done: dict[tuple[str, str], list[bytes]] = {}
        self._wakeup = asyncio.Event()
        self._schedule_retry = redis.register_script(SCHEDULE_RETRY)
        self._dead_letter = redis.register_script(DEAD_LETTER)
        self._retry_done = redis.register_script(RETRY_DONE)
        self._heartbeat = redis.register_script(HEARTBEAT)

    def succeeded(self, d: Delivery) -> None:
        """Queue the ack; a flusher sends all queued acks in one pipeline."""
        if d.from_retry:
            key = (d.keys.retry(self.group), d.keys.attempts(self.group))
            self._retries_done.setdefault(key, []).append(d.entry_id)
        else:
            self._acks.setdefault(d.keys.stream, []).append(d.entry_id)
        self._wakeup.set()

    def wake(self) -> None:
        self._wakeup.set()

    async def flush(self) -> None:
        """Send queued acks. On failure they are queued again (the entries stay pending meanwhile)."""
        acks, done = self._acks, self._retries_done
        self._acks, self._retries_done = {}, {}
        if not acks and not done:
            return
        try:
            await asyncio.shield(self._send_acks(acks, done))
        except BaseException:
            for stream, ids in acks.items():
                self._acks.setdefault(stream, []).extend(ids)
            for key, ids in done.items():
                self._retries_done.setdefault(key, []).extend(ids)
            raise

    async def _send_acks(self, acks: dict[str, list[bytes]], done: dict[tuple[str, str], list[bytes]]) -> None:
        if not done:  # the common case: plain acks, packed by hand (see redis/resp.py)
            await send_packed(self.redis, [pack_command(b"XACK", stream.encode(), self._group_bytes, *ids)
                                           for stream, ids in acks.items()])
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, ids in acks.items():
                pipe.xack(stream, self.group, *ids)
            for (retry_key, attempts_key), ids in done.items():
                await self._retry_done(keys=[retry_key, attempts_key], args=ids, client=pipe)
            await pipe.execute()

    async def run_flusher(self, closed: asyncio.Event) -> None:
        """Flush whenever acks are queued; acks that pile up during one round trip go out together in the next.
        Stops (between flushes, never in the middle of one) once `closed` is set and `wake()` is called."""
        failures = 0
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if closed.is_set():
                return
            try:
                await self.flush()
                failures = 0
            except TRANSIENT as exc:
                failures += 1
                log.warning("acking for %s failed (%s); retrying", self.group, exc)
                self._wakeup.set()
                await asyncio.sleep(min(2.0, 0.05 * 2**failures))

    async def schedule_retry(self, d: Delivery, delay_s: float) -> bool:
        """Pending -> retry schedule for this group only. False if another consumer had already settled it."""
        due = int(time.time() * 1000 + delay_s * 1000)
        keys = [d.keys.stream, d.keys.retry(self.group), d.keys.attempts(self.group)]
        args: list[bytes | str | int] = [self.group, d.entry_id, _source(d), due, d.attempt]
        return bool(await self._settle(lambda: self._schedule_retry(keys=keys, args=args)))

    async def dead_letter(self, d: Delivery, reason: str, error: BaseException | None) -> bool:
        """Pending -> the group's dead-letter stream with the raw entry, reason and error, in one step."""
        keys = [d.keys.stream, d.keys.retry(self.group), d.keys.attempts(self.group), d.keys.deadletter(self.group)]
        record = deadletter_fields(group=self.group, stream=d.keys.stream, stream_id=d.entry_id.decode(),
                                   original=d.fields, reason=reason, attempts=d.attempt, error=error)
        args: list[bytes | str | int] = [self.group, d.entry_id, _source(d), self.dlq_max_length, *record]
        dead_id = await self._settle(lambda: self._dead_letter(keys=keys, args=args))
        if dead_id:
            log.warning("dead-lettered %s %s in %s after %d attempt(s): %s", d.keys.stream, d.entry_id.decode(),
                        self.group, d.attempt, reason)
        return bool(dead_id)

    async def forget_retries(self, gone: list[Delivery]) -> None:
        """Drop scheduled retries whose entry was deleted from the stream (there is nothing left to run)."""
        for d in gone:
            log.warning("retry of %s %s in %s dropped: the entry was deleted from the stream",
                        d.keys.stream, d.entry_id.decode(), self.group)
            await self._retry_done(keys=[d.keys.retry(self.group), d.keys.attempts(self.group)], args=[d.entry_id])

    async def _settle(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """Run one settling call shielded from cancellation, retrying through short Redis outages. If Redis stays
        away the entry is simply left where it is (pending or leased), to be reclaimed: never dropped."""
        for attempt in range(6):
            try:
                return await asyncio.shield(call())
            except TRANSIENT as exc:
                log.warning("settling in %s failed (%s); attempt %d", self.group, exc, attempt + 1)
                await asyncio.sleep(0.1 * 2**attempt)
        log.error("could not settle an entry in %s; it stays pending and will be reclaimed", self.group)
        return None

    async def heartbeat(self, held: list[Delivery], lease_ms: int) -> list[Delivery]:
        """Refresh the lease of every held entry; returns those this consumer no longer owns."""
        by_stream: dict[str, list[Delivery]] = {}
        retries: list[Delivery] = []
        for d in held:
            (retries if d.from_retry else by_stream.setdefault(d.keys.stream, [])).append(d)
        lease_end = int(time.time() * 1000) + lease_ms
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, ds in by_stream.items():
                await self._heartbeat(keys=[stream], args=[self.group, self.consumer, *(d.entry_id for d in ds)],
                                      client=pipe)
            for d in retries:  # GT: never pull back a later due time that a retry just scheduled
                pipe.zadd(d.keys.retry(self.group), {d.entry_id: lease_end}, xx=True, gt=True)
            replies = await pipe.execute()
        lost_ids = {(stream, eid) for stream, reply in zip(by_stream, replies, strict=False) for eid in reply}
        return [d for ds in by_stream.values() for d in ds if d.held_key in lost_ids]

    async def hand_back(self, unstarted: list[Delivery]) -> None:
        """Give entries we hold but will not start back to the group, so others can take them at once."""
        now = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for d in unstarted:
                if d.from_retry:  # due again now; its attempt was counted when taken, so uncount it
                    pipe.zadd(d.keys.retry(self.group), {d.entry_id: now}, xx=True)
                    pipe.hincrby(d.keys.attempts(self.group), d.entry_id.decode(), -1)
                else:
                    # RETRYCOUNT: it never ran here, so the next claim (which counts one) must not count it twice
                    pipe.xclaim(d.keys.stream, self.group, self.consumer, 0, [d.entry_id],
                                idle=HANDED_BACK_IDLE_MS, justid=True, retrycount=max(0, d.attempt - 1))
            await pipe.execute()


def _source(d: Delivery) -> str:
    return "retry" if d.from_retry else "read"
