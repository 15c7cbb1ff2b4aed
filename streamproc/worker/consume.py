"""Getting entries to a group's workers: new reads, stalled entries of dead consumers, and due retries."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from ..app import Handler
from ..keys import PartitionKeys
from ..redis.resp import pack_command, send_packed
from ..redis.scripts import LANE_LAGS, TAKE_RETRIES
from .lanes import LaneSet, group_lanes, plan, refill

log = logging.getLogger(__name__)


class Delivery:
    """One entry handed to this consumer, from a read, a reclaim or a retry. (A plain slotted class: one is made
    per entry on the hot path, and `held_key`, used several times, is computed once.)

    A reclaimed entry (its consumer died or froze) carries `deliveries`, how often Redis handed it out, and its
    `attempt` is an estimate until it starts: its start is recorded in Redis first (see HandlerRun), and only
    recorded starts count against max_deliveries, so entries a crashed worker held without starting them are not
    blamed for the crash."""

    __slots__ = ("attempt", "deliveries", "entry_id", "fields", "from_retry", "handler", "held_key", "keys")

    def __init__(self, handler: Handler[Any], keys: PartitionKeys, entry_id: bytes, fields: dict[bytes, bytes],
                 attempt: int, from_retry: bool = False, deliveries: int = 0) -> None:
        self.handler = handler
        self.keys = keys
        self.entry_id = entry_id
        self.fields = fields
        self.attempt = attempt
        self.from_retry = from_retry
        self.deliveries = deliveries  # 0 unless reclaimed
        self.held_key = (keys.stream, entry_id)

    @property
    def reclaimed(self) -> bool:
        return self.deliveries > 0


@dataclass(frozen=True, slots=True)
class Source:
    """A stream this group reads, with the handler for its entries."""

    handler: Handler[Any]
    keys: PartitionKeys


class Reader:
    """Reads for one group and one consumer. Each method returns deliveries; none of them settles anything."""

    def __init__(self, redis: aioredis.Redis, group: str, consumer: str, sources: list[Source],
                 deadline_s: float = 5.0, priority_floor: float = 0.1) -> None:
        self.redis = redis
        self.deadline_s = deadline_s  # a blocking read may take its BLOCK plus this before it counts as an outage
        self.group = group
        self.consumer = consumer
        self.sources = {s.keys.stream.encode(): s for s in sources}  # every stream, each lane of a partition too
        self._group = group.encode()
        self._consumer = consumer.encode()
        self._streams = [stream for stream, s in self.sources.items() if s.keys.lane is None]
        self._next = 0  # where the next partial read starts (fewer free places than streams)
        # Partitions with priority lanes, read lane by lane (see lanes.py); none: reads are as they always were.
        self._lanes = group_lanes([(s.handler, s.keys) for s in sources])
        self._floor = priority_floor
        self._lane_lags_sha = hashlib.sha1(LANE_LAGS.encode()).hexdigest().encode()
        self._claim_cursor = {s.keys.stream: "0-0" for s in sources}
        self._take_retries = redis.register_script(TAKE_RETRIES)
        self.deleted_seen = 0

    async def read_new(self, count: int, block_ms: int) -> list[Delivery]:
        """XREADGROUP over all of the group's streams at once: one round trip for a whole batch. Packed by hand
        and read as the raw nested reply: redis-py's reply parsing (a dict per entry) was a fifth of the worker's
        time when draining. COUNT applies per stream, so it is split over the streams: one read never takes more
        than `count` entries in all. (A group with priority lanes reads by `_read_with_lanes`.)"""
        if self._lanes:
            return await self._read_with_lanes(count, block_ms)
        streams, per_stream = self._streams_for(count)
        command = pack_command(b"XREADGROUP", b"GROUP", self._group, self._consumer, b"COUNT", b"%d" % per_stream,
                               b"BLOCK", b"%d" % block_ms, b"STREAMS", *streams, *[b">"] * len(streams))
        [reply] = await send_packed(self.redis, [command], read_timeout=block_ms / 1000 + self.deadline_s)
        out: list[Delivery] = []
        self._add_read(reply, out)
        return out

    def _add_read(self, reply: Any, out: list[Delivery]) -> None:
        """The deliveries of an XREADGROUP reply. RESP3 answers a map {stream: entries}, RESP2 a list of
        [stream, entries] pairs; nil when nothing came."""
        by_stream = reply.items() if isinstance(reply, dict) else cast(list[list[Any]] | None, reply) or ()
        for stream, entries in by_stream:
            source = self.sources[stream]
            handler, keys = source.handler, source.keys
            for eid, flat in entries:
                fields = dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {}
                out.append(Delivery(handler, keys, eid, fields, 1))

    async def _read_with_lanes(self, count: int, block_ms: int) -> list[Delivery]:
        """A read of a group with priority lanes (see lanes.py): one round trip for each partition's lags
        (lane_lags.lua), one for the reads: each lane's share by `plan`, a plain XREADGROUP each, with the
        group's other streams in one non-blocking XREADGROUP. Only when all of them are empty, one blocking
        XREADGROUP over every stream (lanes too) waits for the first entry."""
        plain, lane_sets, per = self._units_for(count)
        lags = await self._send_scripts([self._lags_command(lanes) for lanes in lane_sets]) if lane_sets else []
        reads: list[bytes] = []
        plans: list[tuple[LaneSet, list[int], list[int]]] = []
        for lanes, lag in zip(lane_sets, lags, strict=True):
            known = [int(x) for x in cast(list[Any], lag)]
            reserves = lanes.reserves(per, self._floor)
            takes = plan(per, known, reserves)
            lanes.settle(reserves, takes)  # what the lags promise is what is read (unless another consumer was first)
            plans.append((lanes, known, takes))
            reads += self._lane_reads(lanes, takes)
        if plain:
            reads.append(self._xreadgroup(plain, per, None))
        out: list[Delivery] = []
        for reply in await send_packed(self.redis, reads) if reads else ():
            self._add_read(reply, out)
        if any(-1 in known for _, known, _ in plans):  # rare: Redis could not tell some lane's lag
            await self._refill(plans, out)
        if out:
            return out
        streams = [*plain, *(stream for lanes in lane_sets for stream in lanes.streams)]
        per_stream = max(1, per // max(len(lanes.streams) for lanes in lane_sets))
        [reply] = await send_packed(self.redis, [self._xreadgroup(streams, per_stream, block_ms)],
                                    read_timeout=block_ms / 1000 + self.deadline_s)
        self._add_read(reply, out)
        return out

    def _lane_reads(self, lanes: LaneSet, takes: list[int]) -> list[bytes]:
        return [self._xreadgroup([stream], n, None) for stream, n in zip(lanes.streams, takes, strict=True) if n]

    async def _refill(self, plans: list[tuple[LaneSet, list[int], list[int]]], out: list[Delivery]) -> None:
        """Read again what lanes of unknown lag were planned but did not hold (lanes.py: refill), from the
        partition's other lanes: one more round trip, only when a lag was unknown and a lane came up short."""
        got = Counter(d.keys.stream for d in out)
        reads: list[bytes] = []
        for lanes, known, takes in plans:
            reads += self._lane_reads(lanes, refill(known, takes, [got[name] for name in lanes.names]))
        for reply in await send_packed(self.redis, reads) if reads else ():
            self._add_read(reply, out)

    def _units_for(self, count: int) -> tuple[list[bytes], list[LaneSet], int]:
        """`_streams_for` with each partition's lanes as one unit: the plain streams and lane sets one read covers,
        and the count of each."""
        units: list[bytes | LaneSet] = [*self._streams, *self._lanes]
        if count >= len(units):
            chosen, per = units, count // len(units)
        else:
            start = self._next
            self._next = (start + count) % len(units)
            chosen, per = [units[(start + i) % len(units)] for i in range(count)], 1
        return ([u for u in chosen if isinstance(u, bytes)], [u for u in chosen if isinstance(u, LaneSet)], per)

    def _xreadgroup(self, streams: list[bytes], count: int, block_ms: int | None) -> bytes:
        block = (b"BLOCK", b"%d" % block_ms) if block_ms is not None else ()
        return pack_command(b"XREADGROUP", b"GROUP", self._group, self._consumer, b"COUNT", b"%d" % count, *block,
                            b"STREAMS", *streams, *[b">"] * len(streams))

    def _lags_command(self, lanes: LaneSet) -> bytes:
        return pack_command(b"EVALSHA", self._lane_lags_sha, b"%d" % len(lanes.streams), *lanes.streams, self._group)

    async def _send_scripts(self, commands: list[bytes]) -> list[object]:
        """Send commands that call lane_lags.lua by its digest; if Redis lost its script cache (a restart), load
        the script and send them once more (it only reads: nothing happened)."""
        try:
            return await send_packed(self.redis, commands)
        except NoScriptError:
            await self.redis.script_load(LANE_LAGS)
            return await send_packed(self.redis, commands)

    def _streams_for(self, count: int) -> tuple[list[bytes], int]:
        """The streams one read covers and its COUNT: all of them with count // n each, or, with fewer places than
        streams, `count` of them (taking turns) with one each."""
        streams = self._streams
        if count >= len(streams):
            return streams, count // len(streams)
        start = self._next
        self._next = (start + count) % len(streams)
        return [streams[(start + i) % len(streams)] for i in range(count)], 1

    async def claim_stalled(self, min_idle_ms: int, count: int) -> list[Delivery]:
        """XAUTOCLAIM entries idle past the lease (their consumer died or froze), with their delivery counts."""
        out: list[Delivery] = []
        for source in self.sources.values():
            if len(out) >= count:
                break
            stream = source.keys.stream
            cursor, entries, deleted = await self.redis.xautoclaim(
                stream, self.group, self.consumer, min_idle_ms, self._claim_cursor[stream], count=count - len(out))
            self._claim_cursor[stream] = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
            if deleted:
                self.deleted_seen += len(deleted)
                log.warning("%d pending entries of %s were deleted before %s could process them: %s",
                            len(deleted), stream, self.group, deleted[:10])
            out.extend(await self._reclaimed(source, [(eid, f) for eid, f in entries if f is not None]))
        return out

    async def _reclaimed(self, source: Source, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Delivery]:
        """Deliveries for reclaimed entries, with their delivery counts and recorded starts. The estimate of the
        attempt: the recorded starts, plus the first (never recorded) one and this one, but no more than Redis
        delivered it (a handed-back entry was never started)."""
        if not entries:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for eid, _ in entries:
                pipe.xpending_range(source.keys.stream, self.group, min=eid, max=eid, count=1)
            pipe.hmget(source.keys.starts(self.group), [eid for eid, _ in entries])
            *counts, starts = await pipe.execute()
        out = []
        for (eid, fields), found, recorded in zip(entries, counts, starts, strict=True):
            deliveries = max(1, int(found[0]["times_delivered"]) if found else 1)
            attempt = min(deliveries, int(recorded or 0) + 2)
            out.append(Delivery(source.handler, source.keys, eid, fields, attempt, deliveries=deliveries))
        return out

    async def take_retries(self, lease_ms: int, count: int) -> tuple[list[Delivery], list[Delivery]]:
        """Retries of this group due by Redis's clock, leased to this consumer. Returns (deliveries, gone): `gone`
        are retries whose entry no longer exists in the stream (deleted by hand); the caller drops them."""
        taken: list[tuple[Source, bytes, int]] = []
        for source in self.sources.values():
            if len(taken) >= count:
                break
            g = self.group
            keys = [source.keys.retry(g), source.keys.attempts(g), source.keys.leases(g)]
            flat = await self._take_retries(keys=keys, args=[lease_ms, count - len(taken), self.consumer])
            taken.extend((source, flat[i], int(flat[i + 1])) for i in range(0, len(flat), 2))
        if not taken:
            return [], []
        async with self.redis.pipeline(transaction=False) as pipe:
            for source, eid, _ in taken:
                pipe.xrange(source.keys.stream, min=eid, max=eid, count=1)
            found = await pipe.execute()
        ready: list[Delivery] = []
        gone: list[Delivery] = []
        for (source, eid, attempt), entries in zip(taken, found, strict=True):
            fields = entries[0][1] if entries else {}
            (ready if entries else gone).append(Delivery(source.handler, source.keys, eid, fields, attempt, True))
        return ready, gone

