"""Settling entries: ack (batched), scheduled retry, dead-letter, lease heartbeats and hand-back.

Each outcome leaves the pending list in one atomic Redis call on one hash slot. The calls that follow a handler
run under asyncio.shield, so cancelling a worker cannot leave one half done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis

from ..redis.errors import Failure, FatalRedisError, classify, is_transient
from ..redis.resp import pack_command, send_packed
from ..redis.scripts import (
    DEAD_LETTER,
    HAND_BACK,
    HAND_BACK_RETRIES,
    HEARTBEAT,
    REFRESH_LEASES,
    RETRY_DONE,
    SCHEDULE_RETRY,
)
from .consume import Delivery
from .deadletter import deadletter_fields
from .loops import MAX_PAUSE_S, REDIS_FAILURES, backoff_s

log = logging.getLogger(__name__)

T = TypeVar("T")
# How often one settle call is tried through a short outage before the entry is left where it is, for reclaim.
SETTLE_TRIES = 6
# XCLAIM IDLE given to handed-back entries, so that any other consumer's XAUTOCLAIM takes them at once.
HANDED_BACK_IDLE_MS = 1_000_000_000


def _raise(error: FatalRedisError) -> None:
    raise error


class Settler:
    def __init__(self, redis: aioredis.Redis, group: str, consumer: str, dlq_max_length: int,
                 on_fatal: Callable[[FatalRedisError], None] = _raise) -> None:
        self.redis = redis
        self.on_fatal = on_fatal  # a fatal Redis error while settling stops the worker; the entry stays pending
        self.group = group
        self.consumer = consumer
        self.dlq_max_length = dlq_max_length
        self._group_bytes = group.encode()
        self._acks: dict[str, list[bytes]] = {}
        self._retries_done: dict[tuple[str, ...], list[bytes]] = {}
        self._starts_done: dict[str, list[bytes]] = {}  # starts hash -> reclaimed entries acked
        self._wakeup = asyncio.Event()
        self._schedule_retry = redis.register_script(SCHEDULE_RETRY)
        self._dead_letter = redis.register_script(DEAD_LETTER)
        self._retry_done = redis.register_script(RETRY_DONE)
        self._heartbeat = redis.register_script(HEARTBEAT)
        self._refresh_leases = redis.register_script(REFRESH_LEASES)
        self._hand_back = redis.register_script(HAND_BACK)
        self._hand_back_retries = redis.register_script(HAND_BACK_RETRIES)
        self.stopping = False  # at stop, settle calls are tried once: the stop must end within its deadline

    def succeeded(self, d: Delivery) -> None:
        """Queue the ack; a flusher sends all queued acks in one pipeline."""
        if d.from_retry:
            self._retries_done.setdefault((d.keys.stream, *self._retry_keys(d)), []).append(d.entry_id)
        else:
            self._acks.setdefault(d.keys.stream, []).append(d.entry_id)
            if d.deliveries:  # reclaimed: its recorded starts go with the ack
                self._starts_done.setdefault(d.keys.starts(self.group), []).append(d.entry_id)
        self._wakeup.set()

    async def record_start(self, d: Delivery) -> int | None:
        """Count a start of a reclaimed entry before it runs; returns the starts recorded so far (None if Redis
        did not answer: the entry then runs on its estimated attempt)."""
        try:
            return int(await self.redis.hincrby(d.keys.starts(self.group), d.entry_id.decode(), 1))
        except REDIS_FAILURES as exc:
            log.warning("recording a start in %s failed (%s); running it on its delivery count", self.group, exc)
            return None

    def wake(self) -> None:
        self._wakeup.set()

    def queued(self) -> set[tuple[str, bytes]]:
        """The entries whose ack is queued, by (stream, entry id): done here, even if an outage holds the ack up."""
        acked = {(stream, eid) for stream, ids in self._acks.items() for eid in ids}
        return acked | {(keys[0], eid) for keys, ids in self._retries_done.items() for eid in ids}

    async def flush(self) -> None:
        """Send queued acks. On failure they are queued again (the entries stay pending meanwhile)."""
        acks, done, starts = self._acks, self._retries_done, self._starts_done
        self._acks, self._retries_done, self._starts_done = {}, {}, {}
        if not acks and not done:
            return
        try:
            await asyncio.shield(self._send_acks(acks, done, starts))
        except BaseException:
            _requeue(self._acks, acks)
            _requeue(self._retries_done, done)
            _requeue(self._starts_done, starts)
            raise

    def _retry_keys(self, d: Delivery) -> tuple[str, str, str, str]:
        """The retry set, attempts hash, leases hash and retried index of the entry's partition, for this group."""
        g = self.group
        return d.keys.retry(g), d.keys.attempts(g), d.keys.leases(g), d.keys.retried(g)

    async def _send_acks(self, acks: dict[str, list[bytes]], done: dict[tuple[str, ...], list[bytes]],
                         starts: dict[str, list[bytes]]) -> None:
        if not done and not starts:  # the common case: plain acks, packed by hand (see redis/resp.py)
            await send_packed(self.redis, [pack_command(b"XACK", stream.encode(), self._group_bytes, *ids)
                                           for stream, ids in acks.items()])
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, ids in acks.items():
                pipe.xack(stream, self.group, *ids)
            for keys, ids in done.items():  # (stream, retry set, attempts, leases, retried)
                await self._retry_done(keys=list(keys[1:]), args=ids, client=pipe)
            for key, ids in starts.items():
                pipe.hdel(key, *ids)
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
            except REDIS_FAILURES as exc:
                if not is_transient(exc):
                    self.on_fatal(FatalRedisError(f"{self.group} acks", exc))
                    return
                failures += 1
                log.warning("acking for %s failed (%s: %s); retrying", self.group, classify(exc).value, exc)
                self._wakeup.set()
                await asyncio.sleep(backoff_s(failures))

    async def schedule_retry(self, d: Delivery, delay_s: float) -> bool:
        """Pending -> retry schedule for this group only, due `delay_s` after now by Redis's clock. False if this
        consumer no longer holds the entry (another took it over, or it was settled)."""
        keys = [d.keys.stream, *self._retry_keys(d), d.keys.starts(self.group)]
        args: list[bytes | str | int] = [self.group, d.entry_id, _source(d), int(delay_s * 1000), d.attempt,
                                         self.consumer]
        return bool(await self._settle(lambda: self._schedule_retry(keys=keys, args=args)))

    async def dead_letter(self, d: Delivery, reason: str, error: BaseException | None) -> bool:
        """Pending -> the group's dead-letter stream with the raw entry, reason and error, in one step."""
        keys = [d.keys.stream, *self._retry_keys(d), d.keys.deadletter(self.group), d.keys.starts(self.group)]
        record = deadletter_fields(group=self.group, stream=d.keys.stream, stream_id=d.entry_id.decode(),
                                   original=d.fields, reason=reason, attempts=d.attempt, error=error)
        args: list[bytes | str | int] = [self.group, d.entry_id, _source(d), self.dlq_max_length, self.consumer,
                                         *record]
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
            await self._retry_done(keys=list(self._retry_keys(d)), args=[d.entry_id])

    async def _settle(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """Run one settling call shielded from cancellation, retrying through short outages (or once, at stop).

        While Redis is full (maxmemory, noeviction) the call is retried until memory is back or the worker stops,
        holding the entry (its lease stays fresh): letting it go would run it again and again, and count
        deliveries against an innocent entry. If Redis stays away, the entry is left where it is (pending or
        leased), to be reclaimed: never dropped. A fatal error stops the worker (`on_fatal`); the entry stays."""
        outages = 0
        while True:
            try:
                return await asyncio.shield(call())
            except REDIS_FAILURES as exc:
                kind = classify(exc)
                if kind is Failure.NOGROUP:  # the group went with its pending list; the readers recreate it
                    log.warning("settling in %s: the group is gone (%s); nothing left to settle", self.group, exc)
                    return None
                if kind is Failure.FATAL:
                    self.on_fatal(FatalRedisError(f"{self.group} settling", exc))
                    return None
                outages += kind is Failure.OUTAGE
                if self.stopping or outages >= SETTLE_TRIES:
                    break
                log.warning("settling in %s failed (%s: %s); trying again", self.group, kind.value, exc)
                await asyncio.sleep(backoff_s(outages) if kind is Failure.OUTAGE else MAX_PAUSE_S / 5)
        log.error("could not settle an entry in %s; it stays pending and will be reclaimed", self.group)
        return None

    async def heartbeat(self, held: list[Delivery], lease_ms: int) -> list[Delivery]:
        """Refresh the lease of every held entry (by Redis's clock); returns those this consumer no longer holds."""
        by_stream: dict[str, list[Delivery]] = {}
        by_retry_set: dict[tuple[str, str], list[Delivery]] = {}
        for d in held:
            if d.from_retry:
                by_retry_set.setdefault((d.keys.retry(self.group), d.keys.leases(self.group)), []).append(d)
            else:
                by_stream.setdefault(d.keys.stream, []).append(d)
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, ds in by_stream.items():
                await self._heartbeat(keys=[stream], args=[self.group, self.consumer, *(d.entry_id for d in ds)],
                                      client=pipe)
            for keys, ds in by_retry_set.items():
                await self._refresh_leases(keys=list(keys), args=[lease_ms, self.consumer,
                                                                  *(d.entry_id for d in ds)], client=pipe)
            replies = await pipe.execute()
        lost = {(ds[0].keys.stream if ds else "", eid) for ds, reply in
                zip([*by_stream.values(), *by_retry_set.values()], replies, strict=True) for eid in reply}
        return [d for d in held if d.held_key in lost]

    async def hand_back(self, unstarted: list[Delivery]) -> None:
        """Give entries we hold but will not start back to the group, so others can take them at once (only those
        this consumer still holds; their attempt and delivery counts stay what they were before we took them)."""
        reads: dict[str, list[Delivery]] = {}
        retries: dict[tuple[str, ...], list[Delivery]] = {}
        for d in unstarted:
            if d.from_retry:
                retries.setdefault(self._retry_keys(d)[:3], []).append(d)
            else:
                reads.setdefault(d.keys.stream, []).append(d)
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, ds in reads.items():
                pairs = [x for d in ds for x in (d.entry_id, max(0, d.attempt - 1))]
                await self._hand_back(keys=[stream], args=[self.group, self.consumer, HANDED_BACK_IDLE_MS, *pairs],
                                      client=pipe)
            for keys, ds in retries.items():
                await self._hand_back_retries(keys=list(keys), args=[self.consumer, *(d.entry_id for d in ds)],
                                              client=pipe)
            await pipe.execute()


K = TypeVar("K")


def _requeue(queue: dict[K, list[bytes]], failed: dict[K, list[bytes]]) -> None:
    for key, ids in failed.items():
        queue.setdefault(key, []).extend(ids)


def _source(d: Delivery) -> str:
    return "retry" if d.from_retry else "read"
