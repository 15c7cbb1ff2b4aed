"""Delayed events: kept in their partition's delayed store until due, then appended to their stream by any worker.

`publish(event, delay=...)` or `at=...` builds the event's entry now (its event id, its fields, the trace context
of its PRODUCER span, the stream of its partition and lane), and schedules it instead of appending it:

    {ns}:delayed:{tag:p}         sorted set: event id -> due ms, by Redis's clock (TIME), never the caller's
    {ns}:delayedentries:{tag:p}  hash: event id -> the entry packed (the stream, then field, value, ...)

both with the partition's hash tag, written by one call of redis/lua/schedule_delayed.lua per partition (all of
a partition's events or none; `max_delayed` bounds each store). Worker processes move due events to their
streams with redis/lua/move_delayed.lua (worker/promote.py): one atomic call per batch (due -> XADD -> removed),
so an event is appended once, however many processes move it. Every group of the stream sees it then, never
before: until then it is in no stream.

So that an idle worker polls one key, not every partition, a namespace-wide index (keys.delayed_index: partition ->
at most its earliest due, and a version per partition) tells movers where something is due. Publishers lower it
after scheduling (delayed_touch.lua; a touch also bumps the partition's version); movers set it from what their
move left (in their next poll, delayed_due.lua) only if the version is still the one they polled, so a touch they
did not see always wins: the index never claims a partition is due later than it is. It lives in another slot than the
partitions, so it is a separate call; what can go wrong between the calls is covered in worker/promote.py.

Event ids: a delayed event keeps the id it gets here (returned in Published, for `cancel_delayed`). A producer-given
id is deduplicated like any other: scheduling an id that waits already, or that was appended within the dedup
window, does nothing; and the scheduled id gets its dedup marker at once (valid until the window after its due
time), so that publishing it again, delayed or not, is a no-op while it waits and for the window after.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import redis.asyncio as aioredis

from ..errors import BacklogFull, InvalidEvent
from ..event import Event, check_event_id
from ..keys import PartitionKeys, delayed_index
from ..redis.resp import text
from ..redis.scripts import CANCEL_DELAYED
from ..topology import Topology

log = logging.getLogger(__name__)

Fields = dict[bytes, bytes | str | int]


@dataclass(frozen=True, slots=True)
class Due:
    """When a delayed event is due: `ms` after Redis's now at scheduling (a delay), or at epoch ms (an `at`)."""

    ms: int
    absolute: bool = False


def due_of(delay: float | timedelta | None, at: datetime | None) -> Due | None:
    """The due time of a publish, or None to append at once (no delay, a delay of 0 or less, a past `at`)."""
    if delay is not None and at is not None:
        raise InvalidEvent("give a publish either delay= or at=, not both")
    if at is not None:
        if not isinstance(at, datetime):
            raise InvalidEvent(f"at= must be a datetime, not {type(at).__name__}")
        if at.tzinfo is None or at.utcoffset() is None:
            raise InvalidEvent(f"at={at.isoformat()} is a naive datetime; give one with a time zone (e.g. "
                               "tzinfo=datetime.UTC), so that it means the same instant on every machine")
        epoch_ms = math.ceil(at.timestamp() * 1000)
        return Due(epoch_ms, absolute=True) if epoch_ms > time.time() * 1000 else None
    if delay is None:
        return None
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise InvalidEvent(f"delay= must be finite seconds (a float) or a timedelta, not {delay!r}")
    ms = math.ceil(seconds * 1000)
    return Due(ms) if ms > 0 else None


def _netstring(value: bytes | str | int) -> bytes:
    raw = value if isinstance(value, bytes) else str(value).encode()
    return b"%d:%s" % (len(raw), raw)


def pack_entry(stream: str, fields: Fields) -> bytes:
    """A delayed entry as stored: netstrings of its stream, then each field and value (redis/lua/netstrings.lua)."""
    return b"".join([_netstring(stream), *(_netstring(x) for kv in fields.items() for x in kv)])


class Schedulable(Protocol):
    """What scheduling needs of a prepared event (publisher.Prepared)."""

    @property
    def keys(self) -> PartitionKeys: ...
    @property
    def event_id(self) -> str: ...
    @property
    def fields(self) -> Fields: ...
    @property
    def dedup(self) -> bool: ...
    @property
    def due(self) -> Due | None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What scheduling one event did: 'scheduled' (due at `value` ms), 'waiting' (the id was scheduled before; due
    at `value`) or 'appended' (the id was appended within the dedup window; `value` its entry id, or '')."""

    state: str
    value: str


@dataclass(frozen=True, slots=True)
class ScheduleCall:
    """One schedule_delayed.lua call: the delayed events of one partition, in the order given."""

    keys: PartitionKeys
    indexes: list[int]  # positions of its events in the publisher's batch
    names: list[str]
    args: list[bytes | str | int]


def schedule_calls(items: Sequence[Schedulable], window_ms: int, max_delayed: int) -> list[ScheduleCall]:
    """The calls that schedule `items` (each with a due), one per partition."""
    by_partition: dict[str, list[int]] = {}
    for i, p in enumerate(items):
        by_partition.setdefault(p.keys.member, []).append(i)
    calls = []
    for indexes in by_partition.values():
        keys = items[indexes[0]].keys
        names = [keys.delayed(), keys.delayed_entries(), *(keys.dedup(items[i].event_id) for i in indexes)]
        args: list[bytes | str | int] = [max_delayed, window_ms, len(indexes)]
        for i in indexes:
            p = items[i]
            due = p.due
            assert due is not None
            args += [p.event_id, "at" if due.absolute else "in", due.ms, int(p.dedup), pack_entry(p.keys.stream,
                                                                                                    p.fields)]
        calls.append(ScheduleCall(keys, indexes, names, args))
    return calls


@dataclass(slots=True)
class Scheduled:
    """What a batch of schedule calls did: each event's outcome (by its position in the batch; None where its
    partition was full), per partition the earliest due to put in the index, and the error of a full partition."""

    outcomes: list[Outcome | None]
    touches: dict[str, int]
    full: BacklogFull | None = None


def read_scheduled(calls: Sequence[ScheduleCall], replies: Sequence[Any], count: int, max_delayed: int,
                   ) -> Scheduled:
    """Read the replies of `schedule_calls`. A partition whose store was full scheduled none of its events (the
    others did: the caller touches the index for those, then raises `full`)."""
    done = Scheduled([None] * count, {})
    for call, reply in zip(calls, replies, strict=True):
        if text(reply[0]) == "full":
            done.full = BacklogFull(call.keys.delayed(), int(reply[1]), max_delayed, len(call.indexes))
            continue
        for i, (state, value) in zip(call.indexes, reply, strict=True):
            outcome = done.outcomes[i] = Outcome(text(state), text(value))
            if outcome.state != "appended":  # 'waiting' too: touching again repairs a touch that failed before
                due = int(float(outcome.value))
                done.touches[call.keys.member] = min(due, done.touches.get(call.keys.member, due))
    return done


def atomic_delayed_error(items: Sequence[Schedulable], atomic: bool) -> InvalidEvent | None:
    """The error for an atomic batch that holds delayed events, or None. Such a batch cannot be all or none: its
    appends and its schedules are separate calls, and a partition whose store is full schedules nothing while the
    others do (schedule_delayed.lua replies inside a MULTI, it cannot abort it)."""
    if atomic and any(item.due is not None for item in items):
        return InvalidEvent("publish_many(atomic=True) cannot hold delayed events (delay=/at=): publish them in a "
                            "separate publish_many without atomic")
    return None


def touch_failed(ns: str, touches: dict[str, int], error: Exception) -> None:
    """A publisher's index touch failed after its events were scheduled: the publish stands (failing it would make
    a retry with generated ids schedule them twice). A worker's sweep indexes them when it reaches their partition
    (one partition about every second, worker/promote.py), or its start rebuild: they may be appended late."""
    log.warning("delayed events of %s scheduled, but the index %s was not updated (%s): workers' sweep will find "
                "them, maybe late", ", ".join(sorted(touches)), delayed_index(ns)[0], error)


def touch_call(ns: str, touches: dict[str, int]) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of redis/lua/delayed_touch.lua: lower the index of these partitions to these dues."""
    return list(delayed_index(ns)), [x for kv in touches.items() for x in kv]


def cancel_call(keys: PartitionKeys, event_id: str) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of redis/lua/cancel_delayed.lua."""
    return [keys.delayed(), keys.delayed_entries(), keys.dedup(event_id)], [event_id]


def cancel_targets(topology: Topology, event_type: type[Event], event_id: str, partition_key: str | None,
                   ) -> list[PartitionKeys]:
    """The partitions where a delayed event of `event_type` may wait: the one of `partition_key` (the value its
    publish routed by), or every partition of the type when none is given."""
    check_event_id(event_id)
    route = topology.route(event_type)
    if event_type.partitions == 1:
        return [route.partitions[0]]
    if partition_key is None:
        return [partition_of_member(topology.ns, m) for m in members(route.partitions)]
    # The routing of event.partition_of, from the key's value alone (there is no event to cancel, only its id).
    return [PartitionKeys(topology.ns, route.tag, zlib.crc32(str(partition_key).encode()) % event_type.partitions)]


async def cancel_delayed(redis: aioredis.Redis, topology: Topology, event_type: type[Event], event_id: str,
                         partition_key: str | None = None) -> bool:
    """App.cancel_delayed: remove a waiting delayed event (redis/lua/cancel_delayed.lua, one call per partition it
    may be in, in one round trip); True if one was waiting. Its index entry stays: a hint only (an early poll)."""
    script = redis.register_script(CANCEL_DELAYED)
    targets = cancel_targets(topology, event_type, event_id, partition_key)
    if len(targets) == 1:
        names, args = cancel_call(targets[0], event_id)
        return bool(await script(keys=names, args=args))
    async with redis.pipeline(transaction=False) as pipe:
        for keys in targets:
            names, args = cancel_call(keys, event_id)
            await script(keys=names, args=args, client=pipe)
        return any(await pipe.execute())


def partition_of_member(ns: str, member: str) -> PartitionKeys:
    """The (lane-less) keys of a partition named in the delayed index, "card.added:3"."""
    tag, _, partition = member.rpartition(":")
    return PartitionKeys(ns, tag, int(partition))


def members(keys: Iterable[PartitionKeys]) -> list[str]:
    """The partitions of some streams (lanes of one partition count once), in order."""
    return list(dict.fromkeys(k.member for k in keys))
