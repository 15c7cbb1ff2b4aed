"""Appending events to their streams: partition routing, group creation, dedup, backpressure."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
from opentelemetry.trace import Span
from redis.exceptions import RedisError

from ..errors import BacklogFull, PublishError
from ..event import Event
from ..keys import PartitionKeys
from ..observe.instruments import Instruments
from ..redis.resp import send_packed, text
from ..redis.scripts import BACKLOG, DELAYED_TOUCH, PUBLISH_ONCE, SCHEDULE_DELAYED
from ..settings import Settings
from ..topology import Topology, TypeRoute
from .delayed import (
    Due,
    Outcome,
    atomic_delayed_error,
    due_of,
    read_scheduled,
    schedule_calls,
    touch_call,
    touch_failed,
)
from .entries import (
    exec_replies,
    in_transaction,
    not_confirmed,
    packed_xadd,
    publish_once_call,
    route_entry,
)
from .groups import ensure_declared
from .state import PublisherState, count_by_stream, start_spans

log = logging.getLogger(__name__)


class Published(msgspec.Struct, frozen=True):
    """Where an event went. `appended` is False when its id was already published within the dedup window, and
    for a delayed event: `scheduled` is True when this call scheduled it, `due_ms` when it is due (epoch ms, Redis's
    clock) if it waits now; its `stream_id` is known only once appended ('' until then)."""

    event_id: str
    stream: str
    stream_id: str
    appended: bool = True
    scheduled: bool = False
    due_ms: int | None = None


class Outgoing(msgspec.Struct, frozen=True):
    """An event with the options of its publishing, for `publish_many`."""

    event: Event
    event_id: str | None = None
    partition_key: str | None = None
    priority: int | None = None  # the lane, for a type with priority lanes (0: most urgent); None: its default
    # Append it later: `delay` seconds (or a timedelta) from now, or at an aware datetime (see publish/delayed.py).
    delay: float | timedelta | None = None
    at: datetime | None = None


@dataclass(slots=True)
class Prepared:
    """An event encoded and routed, ready to append."""

    keys: PartitionKeys
    route: TypeRoute
    event_id: str
    fields: dict[bytes, bytes | str | int]
    dedup: bool
    span: Span | None = None
    reserved: bool = False  # counted in its stream's backlog estimate already (Publisher.reserve), with its batch
    # How long its dedup marker lives, when the dedup window is not enough (a cron tick: schedule/misfire.py); 0:
    # the window.
    dedup_ms: int = 0
    due: Due | None = None  # a delayed event: scheduled in its partition's delayed store, not appended now


class Publisher(PublisherState):
    """Appends events; one per App. Remembers which streams have their groups, which groups are declared on each
    (this app's and the registry's, to recreate them all if Redis loses its data), and each stream's backlog."""

    def __init__(self, redis: aioredis.Redis, topology: Topology, settings: Settings,
                 instruments: Instruments | None = None) -> None:
        super().__init__(settings)
        self._redis = redis
        self._instruments = instruments or Instruments()
        self._topology = topology
        self._publish_once = redis.register_script(PUBLISH_ONCE)
        self._backlog_script = redis.register_script(BACKLOG)
        self._schedule_script = redis.register_script(SCHEDULE_DELAYED)
        self._touch_script = redis.register_script(DELAYED_TOUCH)

    async def publish_many(self, items: Iterable[Event | Outgoing], atomic: bool = False) -> list[Published]:
        """Append all events in one pipelined round trip (plus one to create groups on first use)."""
        return await self.send(self.prepare(items), atomic)

    def prepare(self, items: Iterable[Event | Outgoing]) -> list[Prepared]:
        """Encode and route events, then start their publish spans in the caller's trace context (once all are
        encoded: an event that fails to be leaves no span open)."""
        prepared = [self._prepare(item if isinstance(item, Outgoing) else Outgoing(item)) for item in items]
        start_spans(self._instruments.tracing, prepared)
        return prepared

    async def send(self, prepared: list[Prepared], atomic: bool = False) -> list[Published]:
        """Append prepared events. With `atomic`, in one MULTI/EXEC, so that either all or none are appended (a
        batch with delayed events is refused then: see delayed.atomic_delayed_error)."""
        if not prepared:
            return []
        refused = atomic_delayed_error(prepared, atomic)
        if refused is not None:
            self._observe(prepared, refused)
            raise refused
        try:
            await self._ensure_ready(prepared)
            if any(p.due is not None for p in prepared):
                results = await self._send_with_delayed(prepared, atomic)
            else:
                await self.reserve(prepared, mark=False)
                replies = await self._append_all(prepared, atomic)
                results = [published_of(p, reply) for p, reply in zip(prepared, replies, strict=True)]
        except RedisError as exc:
            self._ready.clear()  # Redis may have restarted empty: create groups again before the next append
            error = not_confirmed(exc)
            self._observe(prepared, error)
            raise error from exc
        except PublishError as exc:
            self._observe(prepared, exc)
            raise
        self._observe(prepared, None)
        return results

    async def _send_with_delayed(self, prepared: list[Prepared], atomic: bool) -> list[Published]:
        """Append the events due now, then schedule the delayed ones (publish/delayed.py). Never atomic across
        both (send refuses that); `atomic` is False here."""
        now = [p for p in prepared if p.due is None]
        later = [p for p in prepared if p.due is not None]
        await self.reserve(now, mark=False)
        appended = iter(await self._append_all(now, atomic)) if now else iter(())
        outcomes = iter(await self._schedule(later, atomic))
        return [published_of(p, next(appended)) if p.due is None else published_delayed(p, next(outcomes))
                for p in prepared]

    async def _schedule(self, later: list[Prepared], atomic: bool) -> list[Outcome]:
        """Schedule delayed events, one call per partition, then lower the index for them (after: see
        publish/delayed.py). A full partition raises BacklogFull once the others are indexed."""
        settings = self._settings
        calls = schedule_calls(later, settings.dedup_window_ms, settings.max_delayed)
        async with self._redis.pipeline(transaction=atomic) as pipe:
            for call in calls:
                await self._schedule_script(keys=call.names, args=call.args, client=pipe)
            replies = await pipe.execute()
        done = read_scheduled(calls, replies, len(later), settings.max_delayed)
        if done.touches:
            names, args = touch_call(later[0].keys.ns, done.touches)
            try:
                await self._touch_script(keys=names, args=args)
            except RedisError as exc:  # they are scheduled: failing now would make a retry schedule them twice
                touch_failed(later[0].keys.ns, done.touches, exc)
        if done.full is not None:
            raise done.full
        return [o for o in done.outcomes if o is not None]

    def abandon(self, prepared: list[Prepared], error: Exception) -> None:
        """Close the spans of prepared events that will not be sent."""
        self._observe(prepared, error)

    def _prepare(self, out: Outgoing) -> Prepared:
        route, keys, event_id, fields = route_entry(self._topology, out.event, out.event_id, out.partition_key,
                                                    out.priority)
        prepared = Prepared(keys, route, event_id, fields, dedup=out.event_id is not None)
        if out.delay is not None or out.at is not None:
            prepared.due = due_of(out.delay, out.at)
        return prepared

    async def _ensure_ready(self, prepared: list[Prepared]) -> None:
        """Before the first append to a stream (and again after Redis lost its data), create every group declared on
        it (PublisherState._unready says which)."""
        streams, wanted = self._unready(prepared)
        if wanted:
            self._made_ready(streams, await ensure_declared(self._redis, wanted))

    async def _append_all(self, prepared: list[Prepared], atomic: bool) -> list[object]:
        """Append. Entries whose stream vanished after its groups were made are not appended (PublisherState._vanished):
        make the groups again, then append those."""
        replies = await self._append(prepared, atomic)
        missing = self._vanished(prepared, replies)
        if missing:
            again = [prepared[i] for i in missing]
            await self._ensure_ready(again)
            for i, reply in zip(missing, await self._append(again, atomic), strict=True):
                if reply is None:
                    raise PublishError(f"{prepared[i].keys.stream} vanished again while publishing; publish again")
                replies[i] = reply
        return replies

    async def _append(self, prepared: list[Prepared], atomic: bool) -> list[object]:
        if not any(p.dedup for p in prepared):
            return await self._append_packed(prepared, atomic)
        window = self._settings.dedup_window_ms
        async with self._redis.pipeline(transaction=atomic) as pipe:
            for p in prepared:
                nomkstream = p.keys.stream in self._grouped  # a stream with groups is made with them: _append_all
                if p.dedup:
                    keys, args = publish_once_call(p.keys, p.event_id, p.fields, p.dedup_ms or window, nomkstream)
                    await self._publish_once(keys=keys, args=args, client=pipe)
                else:
                    pipe.xadd(p.keys.stream, p.fields, nomkstream=nomkstream)  # type: ignore[arg-type]
            replies: list[object] = await pipe.execute(raise_on_error=True)
        return replies

    async def _append_packed(self, prepared: list[Prepared], atomic: bool) -> list[object]:
        """Plain appends, packed by hand (see redis/resp.py) and written at once on one pooled connection; with
        `atomic`, inside MULTI/EXEC (all or none: the EXEC reply carries every append's id)."""
        grouped, prefixes = self._grouped, self._prefixes  # NOMKSTREAM iff the stream has groups: _append_all
        commands = [packed_xadd(prefixes, p.keys.stream, p.fields, p.keys.stream in grouped) for p in prepared]
        if not atomic:
            return await send_packed(self._redis, commands)
        return exec_replies(await send_packed(self._redis, in_transaction(commands)))

    async def reserve(self, prepared: list[Prepared], mark: bool = True) -> None:
        """Raise BacklogFull if the events would take a stream's backlog past `max_backlog`; else count them in,
        once: a batch of events reserved before (the coalescer reserves each request, then sends them together;
        `mark` records that on the events) is not counted again.

        Each stream's backlog is read from Redis at most every `backlog_check_ms`; in between, what this publisher
        appends is added to it, so no batch of any size takes it past the limit unseen (no Redis call per batch)."""
        limit = self._settings.max_backlog
        if not limit or not prepared or prepared[0].reserved:
            return
        if len(prepared) == 1:
            await self._reserve_one(prepared[0], limit, mark)
            return
        prepared = due_now(prepared)  # delayed events count against max_delayed instead, when scheduled
        if not prepared:
            return
        streams = {p.keys.stream for p in prepared}
        counts = {s: len(prepared) for s in streams} if len(streams) == 1 else count_by_stream(prepared)
        now = time.monotonic()
        stale = self._stale(counts, now)
        if stale:
            await self._read_backlogs(stale, {p.keys.stream: p for p in prepared}, now)
        self._take(counts, limit)
        if mark:
            for p in prepared:
                p.reserved = True

    async def _reserve_one(self, p: Prepared, limit: int, mark: bool) -> None:
        """`reserve` for one event (App.publish), the common case, without the per-batch bookkeeping."""
        if p.due is not None:
            return
        stream = p.keys.stream
        backlog = self._backlogs.get(stream)
        now = time.monotonic()
        if backlog is None or now - backlog.read_at >= self._backlog_interval:
            await self._read_backlogs([stream], {stream: p}, now)
            backlog = self._backlogs[stream]
        if backlog.estimate >= limit:
            raise BacklogFull(stream, backlog.estimate, limit)
        backlog.estimate += 1
        p.reserved = mark

    async def _read_backlogs(self, streams: list[str], by_stream: dict[str, Prepared], now: float) -> None:
        """One script call per stream (see redis/lua/backlog.lua): alone (one round trip; a pipeline with a script
        first asks SCRIPT EXISTS), or pipelined for several streams."""
        calls = [self._backlog_call(by_stream[stream]) for stream in streams]
        if len(calls) == 1:
            replies = [await self._backlog_script(keys=calls[0][0], args=calls[0][1])]
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    await self._backlog_script(keys=keys, args=args, client=pipe)
                replies = await pipe.execute()
        self._record_backlogs(streams, replies, now)


def due_now(prepared: list[Prepared]) -> list[Prepared]:
    """The events of a batch that are appended now (not delayed): the batch itself when none is delayed."""
    if any(p.due is not None for p in prepared):
        return [p for p in prepared if p.due is None]
    return prepared


def published_delayed(p: Prepared, outcome: Outcome) -> Published:
    """What scheduling one delayed event did (publish/delayed.Outcome)."""
    if outcome.state == "appended":
        return Published(p.event_id, p.keys.stream, outcome.value, appended=False)
    return Published(p.event_id, p.keys.stream, "", appended=False, scheduled=outcome.state == "scheduled",
                     due_ms=int(float(outcome.value)))


def published_of(p: Prepared, reply: object) -> Published:
    """What one append's reply says: a plain XADD's entry id, or publish_once.lua's {appended, id}."""
    if p.dedup:
        appended, stream_id = cast(list[Any], reply)  # the script returns {appended, id}
        return Published(p.event_id, p.keys.stream, text(stream_id), bool(appended))
    return Published(p.event_id, p.keys.stream, text(reply))
