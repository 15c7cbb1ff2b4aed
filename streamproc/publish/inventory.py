"""The consumer groups on an app's streams, whether some app still declares each, and removing the orphans (a renamed
or removed handler group): what `streamproc groups` shows and does."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
import redis.asyncio as aioredis

from ..keys import PartitionKeys
from ..redis.resp import text
from ..redis.scripts import DELETE_GROUP
from ..topology import ORPHAN_AFTER_MS, Topology, is_declared


class GroupRow(msgspec.Struct, frozen=True):
    """One group of one stream. status: "declared" (this app declares it), "other" (another app declared it within
    the window), "orphan" (nobody did). `exists`: the consumer group is on the stream (a registered group is missing
    until someone creates it); `declared_ago_s`: since a process last declared it (None: never recorded)."""

    stream: str
    group: str
    status: str
    exists: bool
    start: str | None
    declared_ago_s: float | None
    lag: int | None
    pending: int


async def list_groups(redis: aioredis.Redis, topology: Topology, window_ms: int = ORPHAN_AFTER_MS) -> list[GroupRow]:
    """Every group on the app's streams or in their registries, by stream and name."""
    rows: list[GroupRow] = []
    for route in topology.by_tag.values():
        own = route.all_groups()
        for keys in route.partitions:
            rows += await _stream_rows(redis, keys, own, window_ms)
    return rows


async def delete_orphans(redis: aioredis.Redis, topology: Topology, window_ms: int = ORPHAN_AFTER_MS,
                         ) -> list[GroupRow]:
    """Delete the orphan groups of the app's streams and their retry bookkeeping (dead-letter streams stay); returns
    those deleted. A group declared again meanwhile (its worker started) is kept: the check is in the same step."""
    script = redis.register_script(DELETE_GROUP)
    deleted = []
    for row in await list_groups(redis, topology, window_ms):
        if row.status != "orphan":
            continue
        keys = PartitionKeys.of_stream(row.stream)
        g = row.group
        names = [keys.stream, keys.groups(), keys.declared(), keys.checkpoints(), keys.retry(g), keys.attempts(g),
                 keys.leases(g), keys.retried(g)]
        if await script(keys=names, args=[g, window_ms]):
            deleted.append(row)
    return deleted


async def _stream_rows(redis: aioredis.Redis, keys: PartitionKeys, own: Mapping[str, str], window_ms: int,
                       ) -> list[GroupRow]:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xinfo_groups(keys.stream)
        pipe.hgetall(keys.groups())
        pipe.zrange(keys.declared(), 0, -1, withscores=True)
        pipe.time()
        infos, registry, declared, (seconds, micros) = await pipe.execute(raise_on_error=False)
    if isinstance(infos, Exception):
        if "no such key" not in str(infos):
            raise infos
        infos = []
    now_ms = seconds * 1000 + micros // 1000
    starts = {text(k): text(v) for k, v in registry.items()}
    at = {text(name): score for name, score in declared}
    on_stream = {text(info["name"]): info for info in infos}
    rows = []
    for group in sorted({*on_stream, *starts}):
        info = on_stream.get(group, {})
        status = ("declared" if group in own else
                  "other" if is_declared(group, (), starts, at.get(group), now_ms, window_ms) else "orphan")
        ago = (now_ms - at[group]) / 1000 if group in at else None
        lag = info.get("lag")
        rows.append(GroupRow(keys.stream, group, status, group in on_stream, starts.get(group), ago,
                             lag if isinstance(lag, int) else None, int(info.get("pending", 0))))
    return rows
