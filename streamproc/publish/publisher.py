"""Appending events to their streams: partition routing, group creation, dedup, backpressure."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
from opentelemetry.trace import Span, Status, StatusCode
from redis.exceptions import RedisError

from ..codec import TRACEPARENT, encode_event, entry_fields
from ..errors import BacklogFull, PublishError
from ..event import Event, check_event_id, new_event_id, partition_of
from ..keys import PartitionKeys
from ..observe.instruments import Instruments
from ..redis.resp import EXEC, MULTI, pack_fields, send_packed, xadd_prefix
from ..redis.scripts import PUBLISH_ONCE
from ..settings import Settings
from ..topology import Topology, TypeRoute
from .groups import ensure_groups

log = logging.getLogger(__name__)


class Published(msgspec.Struct, frozen=True):
    """Where an event went. `appended` is False when its id was already published within the dedup window."""

    event_id: str
    stream: str
    stream_id: str
    appended: bool = True


class Outgoing(msgspec.Struct, frozen=True):
    """An event with the options of its publishing, for `publish_many`."""

    event: Event
    event_id: str | None = None
    partition_key: str | None = None


@dataclass(slots=True)
class Prepared:
    """An event encoded and routed, ready to append."""

    keys: PartitionKeys
    route: TypeRoute
    event_id: str
    fields: dict[bytes, bytes | str | int]
    dedup: bool
    span: Span | None = None


class Publisher:
    """Appends events; one per App. Remembers which streams have their groups and recent backlog checks."""

    def __init__(self, redis: aioredis.Redis, topology: Topology, settings: Settings,
                 instruments: Instruments | None = None) -> None:
        self._redis = redis
        self._instruments = instruments or Instruments()
        self._topology = topology
        self._settings = settings
        self._ready: set[str] = set()
        self._backlog_checked: dict[str, tuple[float, int]] = {}
        self._prefixes: dict[tuple[str, int, bool], bytes] = {}
        self._publish_once = redis.register_script(PUBLISH_ONCE)

    async def publish_many(self, items: Iterable[Event | Outgoing], atomic: bool = False) -> list[Published]:
        """Append all events in one pipelined round trip (plus one to create groups on first use)."""
        return await self.send(self.prepare(items), atomic)

    def prepare(self, items: Iterable[Event | Outgoing]) -> list[Prepared]:
        """Encode and route events, and start their publish spans in the caller's trace context."""
        return [self._prepare(item if isinstance(item, Outgoing) else Outgoing(item)) for item in items]

    async def send(self, prepared: list[Prepared], atomic: bool = False) -> list[Published]:
        """Append prepared events. With `atomic`, in one MULTI/EXEC, so that either all or none are appended."""
        if not prepared:
            return []
        try:
            await self._ensure_ready(prepared)
            await self.check_backlog({p.keys.stream for p in prepared})
            replies = await self._append_all(prepared, atomic)
        except RedisError as exc:
            self._ready.clear()  # Redis may have restarted empty: create groups again before the next append
            error = PublishError(f"Redis did not accept the events ({type(exc).__name__}: {exc}); nothing "
                                 "is confirmed appended, publish again with the same event ids")
            self._observe(prepared, error)
            raise error from exc
        except PublishError as exc:
            self._observe(prepared, exc)
            raise
        self._observe(prepared, None)
        return [_published(p, reply) for p, reply in zip(prepared, replies, strict=True)]

    def abandon(self, prepared: list[Prepared], error: Exception) -> None:
        """Close the spans of prepared events that will not be sent."""
        self._observe(prepared, error)

    def _observe(self, prepared: list[Prepared], error: Exception | None) -> None:
        """End the publish spans and count what was appended."""
        metrics = self._instruments.metrics
        for p in prepared:
            if p.span is not None:
                if error is not None:
                    p.span.record_exception(error)
                    p.span.set_status(Status(StatusCode.ERROR, str(error)))
                p.span.end()
            if metrics is not None and error is None:
                metrics.published.labels(p.route.tag).inc()

    def _prepare(self, out: Outgoing) -> Prepared:
        route = self._topology.route(type(out.event))
        keys = route.partitions[partition_of(out.event, out.partition_key)]
        event_id = check_event_id(out.event_id) if out.event_id is not None else new_event_id()
        fields = entry_fields(event_id, route.tag, time.time_ns() // 1_000_000, encode_event(out.event))
        prepared = Prepared(keys, route, event_id, fields, dedup=out.event_id is not None)
        tracing = self._instruments.tracing
        if tracing.enabled:
            prepared.span, fields[TRACEPARENT] = tracing.start_send(keys.stream, event_id, route.tag)
        return prepared

    async def _ensure_ready(self, prepared: list[Prepared]) -> None:
        todo = {p.keys.stream: p.route for p in prepared if p.keys.stream not in self._ready}
        if not todo:
            return
        wanted = [(stream, g, start) for stream, route in todo.items() for g, start in route.groups.items()]
        await ensure_groups(self._redis, wanted)
        self._ready.update(todo)

    async def _append_all(self, prepared: list[Prepared], atomic: bool) -> list[object]:
        """Append. Entries whose stream vanished after its groups were made (Redis lost its data while this publisher
        kept `_ready`) are not appended (NOMKSTREAM, reply nil): make the groups again, then append those. A plain
        XADD would recreate the stream without groups, and a group made later at '$' (start="new") would miss them."""
        replies = await self._append(prepared, atomic)
        missing = [i for i, reply in enumerate(replies) if reply is None]
        if missing:
            again = [prepared[i] for i in missing]
            self._ready.difference_update(p.keys.stream for p in again)
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
                nomkstream = bool(p.route.groups)  # a stream with groups is made by ensure_groups: see _append_all
                if p.dedup:
                    args = [window, int(nomkstream), *(x for kv in p.fields.items() for x in kv)]
                    await self._publish_once(keys=[p.keys.stream, p.keys.dedup(p.event_id)], args=args, client=pipe)
                else:
                    pipe.xadd(p.keys.stream, p.fields, nomkstream=nomkstream)  # type: ignore[arg-type]
            replies: list[object] = await pipe.execute(raise_on_error=True)
        return replies

    async def _append_packed(self, prepared: list[Prepared], atomic: bool) -> list[object]:
        """Plain appends, packed by hand (see redis/resp.py) and written at once on one pooled connection; with
        `atomic`, inside MULTI/EXEC (all or none: the EXEC reply carries every append's id)."""
        commands = [self._prefix(p) + pack_fields(p.fields) for p in prepared]
        if not atomic:
            return await send_packed(self._redis, commands)
        replies = (await send_packed(self._redis, [MULTI, *commands, EXEC]))[-1]
        if not isinstance(replies, list):  # nil: the transaction was aborted
            raise PublishError("Redis aborted the transaction; nothing was appended")
        return replies

    def _prefix(self, p: Prepared) -> bytes:
        key = (p.keys.stream, len(p.fields), bool(p.route.groups))  # NOMKSTREAM iff it has groups: _append_all
        prefix = self._prefixes.get(key)
        if prefix is None:
            prefix = self._prefixes[key] = xadd_prefix(*key)
        return prefix

    async def check_backlog(self, streams: set[str]) -> None:
        """Raise BacklogFull if any of the streams is over its backlog limit (checks are cached briefly)."""
        limit = self._settings.max_backlog
        if not limit:
            return
        now = time.monotonic()
        interval = self._settings.backlog_check_ms / 1000
        stale = [s for s in streams if now - self._backlog_checked.get(s, (-1e9, 0))[0] >= interval]
        if stale:
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream in stale:
                    pipe.xinfo_groups(stream)
                    pipe.xlen(stream)
                replies = await pipe.execute(raise_on_error=False)
            for i, stream in enumerate(stale):
                groups = replies[2 * i]
                # A stream that vanished (Redis lost its data) has no backlog; _append_all recreates it with its
                # groups. Only that error is ignored ("no such key"); connection errors raise from execute().
                if isinstance(groups, Exception) and "no such key" not in str(groups):
                    raise groups
                backlog = 0 if isinstance(groups, Exception) else _backlog(groups, replies[2 * i + 1])
                self._backlog_checked[stream] = (now, backlog)
        for stream in streams:
            backlog = self._backlog_checked[stream][1]
            if backlog >= limit:
                raise BacklogFull(stream, backlog, limit)


def _backlog(groups: list[dict[str, object]], length: int) -> int:
    """Entries the slowest group has not finished: not yet read (lag) plus read but not acked (pending)."""
    worst = 0
    for g in groups:
        lag = g.get("lag")
        pending = g.get("pending")
        unread = lag if isinstance(lag, int) else length  # lag is unknown after some deletions: assume the worst
        worst = max(worst, unread + (pending if isinstance(pending, int) else 0))
    return worst


def _published(p: Prepared, reply: object) -> Published:
    if p.dedup:
        appended, stream_id = cast(list[Any], reply)  # the script returns {appended, id}
        return Published(p.event_id, p.keys.stream, _text(stream_id), bool(appended))
    return Published(p.event_id, p.keys.stream, _text(reply))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
